//! A word-level language model on the embedded Shakespeare, trained with our head on top of
//! `[B, T, D]` hidden states: next-token shift, padding and token accuracy from the head's own
//! pass; what `linear-softmax lm` runs.
//!
//! | file | what it holds |
//! |---|---|
//! | `tokenizer.rs` | words, punctuation and line breaks; `<unk>` for rare words |
//! | `corpus.rs` | the embedded text, speeches cut into sequences, `[B, T]` batches |
//! | `baselines.rs` | the unigram and bigram losses on the same tokens |
//! | `model.rs` | embeddings of a causal window, a GELU layer, our head |
//! | `mod.rs` | training and validation |

pub mod baselines;
pub mod corpus;
pub mod model;
pub mod tokenizer;

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use linear_softmax::{LossOptions, LossPath, LossReduction};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::Result;
use crate::to_host_f64;
use crate::to_host_i64;
use corpus::{Batch, Corpus};
use model::{WindowLm, WindowLmConfig};
use tokenizer::PAD;

/// How the training loss is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LmLoss {
    /// Our head's loss by this path, with the next-token shift.
    Head(LossPath),
    /// `head.forward` to `[B, T, V]` logits, `logits[:, :-1]` against `tokens[:, 1:]`, Burn's
    /// `CrossEntropyLoss` with `<pad>` as its pad token: what a Burn user writes today.
    BurnCrossEntropy,
}

/// How to train.
#[derive(Clone, Debug)]
pub struct LmTrainConfig {
    /// The model's shape (its vocabulary is the corpus's).
    pub model: WindowLmConfig,
    /// Tokens per sequence `T`.
    pub time: usize,
    /// Sequences per step `B`.
    pub batch_size: usize,
    /// Passes over the training sequences.
    pub epochs: usize,
    /// Stop after this many steps in all (`None`: the epochs decide).
    pub max_steps: Option<usize>,
    /// Adam's step size.
    pub learning_rate: f64,
    /// Seed of the initialisation and the shuffles.
    pub seed: u64,
    /// The loss.
    pub loss: LmLoss,
}

/// One epoch's figures.
#[derive(Clone, Debug)]
pub struct LmEpoch {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss per token over the epoch's steps, in nats.
    pub train_loss: f64,
    /// Validation loss per token, in nats.
    pub validation_loss: f64,
    /// Share of the validation tokens predicted right (the head's statistics).
    pub validation_accuracy: f64,
    /// Training tokens (predicted ones) per second of training so far.
    pub tokens_per_second: f64,
}

/// Validation loss and accuracy per token of `model` on `sequences`, by the fused path's
/// statistics (no `[N, V]` logits).
pub fn evaluate(
    model: &WindowLm,
    sequences: &[Vec<usize>],
    time: usize,
    batch_size: usize,
    device: &Device,
) -> Result<(f64, f64)> {
    let options = LossOptions::new()
        .with_reduction(LossReduction::Sum)
        .with_shift(1)
        .with_stats(true);
    let vocabulary = model.head.n_classes();
    let (mut loss, mut correct, mut counted) = (0.0, 0i64, 0i64);
    for chunk in sequences.chunks(batch_size) {
        let batch = Batch::new(&chunk.iter().collect::<Vec<_>>(), time, device);
        let targets = batch.targets(vocabulary)?;
        let output =
            model
                .head
                .loss_output(model.hidden_states(batch.tokens), &targets, &options)?;
        let stats = output.stats.expect("asked for");
        loss += to_host_f64(&output.loss)?[0];
        correct += to_host_i64(&stats.correct)?[0];
        counted += to_host_i64(&stats.counted)?[0];
    }
    let counted = counted.max(1) as f64;
    Ok((loss / counted, correct as f64 / counted))
}

/// Trains a [`WindowLm`] on `corpus` with Adam, calling `on_epoch` after each epoch; returns
/// the model (on the plain device).
pub fn train_language_model(
    corpus: &Corpus,
    config: &LmTrainConfig,
    device: &Device,
    mut on_epoch: impl FnMut(&LmEpoch, &WindowLm) -> Result<()>,
) -> Result<WindowLm> {
    device.seed(config.seed);
    let vocabulary = corpus.tokenizer.len();
    let model_config = WindowLmConfig {
        vocabulary,
        ..config.model.clone()
    };
    let mut model = model_config.init(device)?.train();
    let mut optimizer: ModuleOptimizer = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut order: Vec<&Vec<usize>> = corpus.train.iter().collect();
    let options = LossOptions::new().with_shift(1);
    let (mut steps, mut tokens, mut seconds) = (0usize, 0usize, 0.0);
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut epoch_steps) = (0.0, 0usize);
        for sequences in order.chunks(config.batch_size) {
            if config.max_steps.is_some_and(|max| steps >= max) {
                break;
            }
            let started = Instant::now();
            let batch = Batch::new(sequences, config.time, device);
            let (loss, gradients) = step(&model, &batch, vocabulary, &options, config.loss)?;
            model = optimizer.step(config.learning_rate, model, gradients);
            seconds += started.elapsed().as_secs_f64();
            tokens += sequences.iter().map(|s| s.len() - 1).sum::<usize>();
            loss_sum += loss;
            epoch_steps += 1;
            steps += 1;
        }
        let plain = model.valid();
        let (validation_loss, validation_accuracy) = evaluate(
            &plain,
            &corpus.validation,
            config.time,
            config.batch_size,
            device,
        )?;
        let figures = LmEpoch {
            epoch,
            train_loss: loss_sum / epoch_steps.max(1) as f64,
            validation_loss,
            validation_accuracy,
            tokens_per_second: tokens as f64 / seconds.max(f64::MIN_POSITIVE),
        };
        on_epoch(&figures, &plain)?;
        if config.max_steps.is_some_and(|max| steps >= max) {
            break;
        }
    }
    Ok(model.valid())
}

/// One training step's mean loss per token (read back) and gradients.
fn step(
    model: &WindowLm,
    batch: &Batch,
    vocabulary: usize,
    options: &LossOptions,
    loss: LmLoss,
) -> Result<(f64, GradientsParams)> {
    let hidden = model.hidden_states(batch.tokens.clone());
    let loss = match loss {
        LmLoss::Head(path) => {
            let targets = batch.targets(vocabulary)?;
            let options = options.clone().with_path(path);
            model.head.loss(hidden, &targets, &options)?
        }
        LmLoss::BurnCrossEntropy => {
            let [batch_size, time, _] = hidden.dims();
            let logits = model.head.forward(hidden)?;
            let predicting = logits
                .slice([0..batch_size, 0..time - 1, 0..vocabulary])
                .reshape([batch_size * (time - 1), vocabulary]);
            let next = batch
                .tokens
                .clone()
                .slice([0..batch_size, 1..time])
                .reshape([batch_size * (time - 1)]);
            CrossEntropyLossConfig::new()
                .with_pad_tokens(Some(vec![PAD]))
                .init(&predicting.device())
                .forward(predicting, next)
        }
    };
    let value = to_host_f64(&loss)?[0];
    Ok((value, GradientsParams::from_grads(loss.backward(), model)))
}
