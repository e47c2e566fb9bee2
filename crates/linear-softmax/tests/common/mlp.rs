//! A two-hidden-layer MLP (Linear + ReLU twice) with the head on top, and a batch for it.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::relu;
use linear_softmax::{Chunking, LinearSoftmax, LossOptions, LossPath, Targets};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{host, tensor, uniform};

pub const N: usize = 47;
pub const INPUT: usize = 13;
pub const HIDDEN_1: usize = 29;
pub const HIDDEN_2: usize = 31;
pub const CLASSES: usize = 123;

#[derive(Module, Debug)]
pub struct Mlp {
    pub hidden_1: Linear,
    pub hidden_2: Linear,
    pub head: LinearSoftmax,
}

impl Mlp {
    /// A seeded network in `dtype`: weights `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, as Burn's
    /// default initialiser, but reproducible and in any float type.
    pub fn new(dtype: DType, device: &Device, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut layer = |d_in: usize, d_out: usize| {
            let scale = 1.0 / (d_in as f64).sqrt();
            let weight = tensor(
                uniform(&mut rng, d_in * d_out, scale),
                [d_in, d_out],
                dtype,
                device,
            );
            let bias = tensor(uniform(&mut rng, d_out, scale), [d_out], dtype, device);
            (weight, bias)
        };
        let linear = |(weight, bias): (Tensor<2>, Tensor<1>)| Linear {
            weight: Param::from_tensor(weight),
            bias: Some(Param::from_tensor(bias)),
        };
        let hidden_1 = linear(layer(INPUT, HIDDEN_1));
        let hidden_2 = linear(layer(HIDDEN_1, HIDDEN_2));
        let (weight, bias) = layer(HIDDEN_2, CLASSES);
        let head = LinearSoftmax::from_tensors(weight, Some(bias)).expect("valid head");
        Self {
            hidden_1,
            hidden_2,
            head,
        }
    }

    /// The hidden features `relu(relu(x W1 + b1) W2 + b2)`, `[N, HIDDEN_2]`.
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        relu(self.hidden_2.forward(relu(self.hidden_1.forward(x))))
    }

    /// The training loss with the head's gradient from `path`; the fused head runs in chunks
    /// of 7 rows so that the 47 rows end in a partial chunk (the other paths ignore the
    /// chunking).
    pub fn loss(&self, x: Tensor<2>, targets: &Targets, path: LossPath) -> Tensor<1> {
        let options = LossOptions::new()
            .with_path(path)
            .with_chunking(Chunking::new().with_rows(Some(7)));
        let features = self.features(x);
        self.head
            .loss(features, targets, &options)
            .expect("a valid batch")
    }

    /// Every parameter, named, as host values (the values themselves, or their gradients).
    pub fn parameters(&self) -> Vec<(&'static str, Tensor<2>)> {
        let column = |bias: &Option<Param<Tensor<1>>>| {
            bias.as_ref()
                .expect("every layer has a bias")
                .val()
                .unsqueeze_dim(0)
        };
        vec![
            ("hidden_1.weight", self.hidden_1.weight.val()),
            ("hidden_1.bias", column(&self.hidden_1.bias)),
            ("hidden_2.weight", self.hidden_2.weight.val()),
            ("hidden_2.bias", column(&self.hidden_2.bias)),
            ("head.weight", self.head.linear.weight.val()),
            ("head.bias", column(&self.head.linear.bias)),
        ]
    }

    /// The gradient of every parameter, in the order of [`parameters`](Self::parameters).
    pub fn gradients(&self, grads: &burn::tensor::Gradients) -> Vec<(&'static str, Vec<f64>)> {
        let weight = |param: &Param<Tensor<2>>| host(&param.grad(grads).expect("tracked weight"));
        let bias = |param: &Option<Param<Tensor<1>>>| {
            host(&param.as_ref().unwrap().grad(grads).expect("tracked bias"))
        };
        vec![
            ("hidden_1.weight", weight(&self.hidden_1.weight)),
            ("hidden_1.bias", bias(&self.hidden_1.bias)),
            ("hidden_2.weight", weight(&self.hidden_2.weight)),
            ("hidden_2.bias", bias(&self.hidden_2.bias)),
            ("head.weight", weight(&self.head.linear.weight)),
            ("head.bias", bias(&self.head.linear.bias)),
        ]
    }
}

/// A batch: inputs in `[-2, 2)` and labels in `0..CLASSES`.
pub fn batch(dtype: DType, device: &Device, seed: u64) -> (Tensor<2>, Targets) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = tensor(uniform(&mut rng, N * INPUT, 2.0), [N, INPUT], dtype, device);
    let labels: Vec<i64> = (0..N)
        .map(|_| rng.random_range(0..CLASSES as i64))
        .collect();
    let targets = Targets::from_indices(&labels, CLASSES, device).expect("labels in range");
    (x, targets)
}
