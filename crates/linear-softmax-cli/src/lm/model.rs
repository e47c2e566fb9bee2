//! A small word-level language model with our head on top: each position sees the embeddings
//! of its last `K` tokens (itself and the `K - 1` before it, zeros before the sequence starts),
//! one GELU layer makes them a hidden state `[B, T, D]`, and the [`LinearSoftmax`] head scores
//! the next token with the next-token shift (`LossOptions::shift = 1`): the labels are the
//! sequence's own tokens.

use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};
use linear_softmax::{LinearSoftmax, LinearSoftmaxConfig};
use rand::RngExt;

use crate::error::Result;

/// Shape of a [`WindowLm`].
#[derive(Config, Debug, PartialEq)]
pub struct WindowLmConfig {
    /// Vocabulary size `V`: the head's class count.
    pub vocabulary: usize,
    /// Tokens each position sees, `K` (itself included).
    #[config(default = 4)]
    pub window: usize,
    /// Embedding width `E`.
    #[config(default = 64)]
    pub embedding: usize,
    /// Hidden width `D`: the head's input.
    #[config(default = 256)]
    pub hidden: usize,
}

impl WindowLmConfig {
    /// Creates the model on `device`.
    pub fn init(&self, device: &Device) -> Result<WindowLm> {
        Ok(WindowLm {
            embedding: EmbeddingConfig::new(self.vocabulary, self.embedding).init(device),
            hidden: LinearConfig::new(self.window * self.embedding, self.hidden).init(device),
            head: LinearSoftmaxConfig::new(self.hidden, self.vocabulary).init(device)?,
            window: self.window,
        })
    }
}

/// The language model: embeddings of a causal window, a GELU layer, our head.
///
/// # Shapes
/// - tokens: `[B, T]` (Int), hidden states: `[B, T, D]`, logits: `[B, T, V]`
#[derive(Module, Debug)]
pub struct WindowLm {
    /// Token embeddings `[V, E]`.
    pub embedding: Embedding,
    /// `[K E] -> [D]`.
    pub hidden: Linear,
    /// The head: `[D] -> [V]` scores, softmax cross-entropy.
    pub head: LinearSoftmax,
    window: usize,
}

impl WindowLm {
    /// Hidden states `[B, T, D]`: position `t` from the embeddings of tokens `t - K + 1 ..= t`.
    pub fn hidden_states(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let embedded = self.embedding.forward(tokens); // [B, T, E]
        let [batch, time, width] = embedded.dims();
        // The window's j-th slot is the embedding j tokens back: the sequence moved right by
        // j, zeros in front (no token before the start).
        let slots: Vec<Tensor<3>> = (0..self.window)
            .map(|back| {
                if back == 0 {
                    return embedded.clone();
                }
                let zeros = Tensor::zeros([batch, back.min(time), width], &embedded.device());
                if back >= time {
                    return zeros;
                }
                let earlier = embedded.clone().slice([0..batch, 0..time - back, 0..width]);
                Tensor::cat(vec![zeros, earlier], 1)
            })
            .collect();
        gelu(self.hidden.forward(Tensor::cat(slots, 2)))
    }

    /// The next token after `context` (its last `K` tokens matter), drawn from the softmax of
    /// the logits over `temperature`.
    pub fn sample_next(
        &self,
        context: &[usize],
        temperature: f64,
        rng: &mut impl rand::Rng,
    ) -> Result<usize> {
        let device = self.head.weight().device();
        let start = context.len().saturating_sub(self.window);
        let ids: Vec<i64> = context[start..].iter().map(|&id| id as i64).collect();
        let length = ids.len();
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, length]), &device);
        let hidden = self.hidden_states(tokens);
        let [_, time, width] = hidden.dims();
        let last = hidden
            .slice([0..1, time - 1..time, 0..width])
            .reshape([1, width]);
        let logits = self.head.forward(last)? * (1.0 / temperature);
        let probabilities = crate::to_host_f64(&softmax(logits, 1).reshape([-1]))?;
        let mut draw: f64 = rng.random_range(0.0..1.0);
        for (id, p) in probabilities.iter().enumerate() {
            draw -= p;
            if draw < 0.0 {
                return Ok(id);
            }
        }
        Ok(probabilities.len() - 1)
    }
}
