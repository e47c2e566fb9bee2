//! The fused head as the last layer of a real network: a two-hidden-layer MLP (Linear + ReLU
//! twice, then the head) gets the same gradient for every parameter, and Adam follows the same
//! trajectory, whether the head is fused or differentiated by Burn's autograd.

mod common;

use burn::module::Param;
use burn::nn::Linear;
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::relu;
use common::{
    ADAM_TRAJECTORY_F32, ADAM_TRAJECTORY_F64, F32_NETWORK, F64_AGREEMENT, assert_close, backends,
    host, tensor, uniform,
};
use linear_softmax::{Chunking, LinearSoftmax, LossOptions, LossPath, Targets, autodiff, fused};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const N: usize = 47;
const INPUT: usize = 13;
const HIDDEN_1: usize = 29;
const HIDDEN_2: usize = 31;
const CLASSES: usize = 123;

#[derive(Module, Debug)]
struct Mlp {
    hidden_1: Linear,
    hidden_2: Linear,
    head: LinearSoftmax,
}

impl Mlp {
    /// A seeded network in `dtype`: weights `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, as Burn's
    /// default initialiser, but reproducible and in any float type.
    fn new(dtype: DType, device: &Device, seed: u64) -> Self {
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
    fn features(&self, x: Tensor<2>) -> Tensor<2> {
        relu(self.hidden_2.forward(relu(self.hidden_1.forward(x))))
    }

    /// The training loss with the head's gradient from `path`; the fused head runs in chunks
    /// of 7 rows so that the 47 rows end in a partial chunk.
    fn loss(&self, x: Tensor<2>, targets: &Targets, path: LossPath) -> Tensor<1> {
        let options = LossOptions::new();
        let features = self.features(x);
        match path {
            LossPath::Fused => fused::loss_with_chunking(
                &self.head,
                features,
                targets,
                &options,
                &Chunking::new().with_rows(Some(7)),
            ),
            LossPath::Autodiff => autodiff::loss(&self.head, features, targets, &options),
            LossPath::Manual => self.head.loss_with_path(features, targets, &options, path),
        }
        .expect("a valid batch")
    }

    /// Every parameter, named, as host values (the values themselves, or their gradients).
    fn parameters(&self) -> Vec<(&'static str, Tensor<2>)> {
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
    fn gradients(&self, grads: &burn::tensor::Gradients) -> Vec<(&'static str, Vec<f64>)> {
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
fn batch(dtype: DType, device: &Device, seed: u64) -> (Tensor<2>, Targets) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = tensor(uniform(&mut rng, N * INPUT, 2.0), [N, INPUT], dtype, device);
    let labels: Vec<i64> = (0..N)
        .map(|_| rng.random_range(0..CLASSES as i64))
        .collect();
    let targets = Targets::from_indices(&labels, CLASSES, device).expect("labels in range");
    (x, targets)
}

fn network_tolerances() -> [(DType, f64, f64); 2] {
    [
        (DType::F32, F32_NETWORK, ADAM_TRAJECTORY_F32),
        (DType::F64, F64_AGREEMENT, ADAM_TRAJECTORY_F64),
    ]
}

#[test]
fn every_parameter_gets_the_same_gradient_with_the_fused_head() {
    for (backend, device) in backends() {
        for (dtype, tolerance, _) in network_tolerances() {
            let net = Mlp::new(dtype, &device, 1);
            let (x, targets) = batch(dtype, &device, 2);
            let gradients = |path: LossPath| {
                let net = net.clone().train();
                let loss = net.loss(x.clone(), &targets, path);
                let grads = loss.backward();
                (host(&loss.inner()), net.gradients(&grads))
            };
            let (fused_loss, fused) = gradients(LossPath::Fused);
            let (reference_loss, reference) = gradients(LossPath::Autodiff);
            let context = format!("{backend} {dtype:?}");
            assert_close(
                &format!("{context} loss"),
                &fused_loss,
                &reference_loss,
                tolerance,
            );
            assert_eq!(fused.len(), 6);
            for ((name, actual), (_, expected)) in fused.iter().zip(&reference) {
                assert!(
                    expected.iter().any(|g| g.abs() > 1e-6),
                    "{context} {name}: the reference gradient is not trivially zero"
                );
                assert_close(&format!("{context} {name}"), actual, expected, tolerance);
            }
        }
    }
}

#[test]
fn adam_follows_the_same_trajectory_with_the_fused_head() {
    const STEPS: usize = 5;
    const LEARNING_RATE: f64 = 1e-2;
    for (backend, device) in backends() {
        for (dtype, _, tolerance) in network_tolerances() {
            let (x, targets) = batch(dtype, &device, 4);
            let train = |path: LossPath| {
                let mut net = Mlp::new(dtype, &device, 3).train();
                let mut optimizer = AdamConfig::new().init();
                let mut trajectory = Vec::with_capacity(STEPS);
                for _ in 0..STEPS {
                    let loss = net.loss(x.clone(), &targets, path);
                    let grads = GradientsParams::from_grads(loss.backward(), &net);
                    net = optimizer.step(LEARNING_RATE, net, grads);
                    trajectory.push(
                        net.parameters()
                            .into_iter()
                            .map(|(name, value)| (name, host(&value)))
                            .collect::<Vec<_>>(),
                    );
                }
                trajectory
            };
            let fused = train(LossPath::Fused);
            let reference = train(LossPath::Autodiff);
            let initial = Mlp::new(dtype, &device, 3).parameters();
            for (step, (actual, expected)) in fused.iter().zip(&reference).enumerate() {
                for (((name, actual), (_, expected)), (_, initial)) in
                    actual.iter().zip(expected).zip(&initial)
                {
                    let context = format!("{backend} {dtype:?} step {} {name}", step + 1);
                    assert!(expected != &host(initial), "{context}: the parameter moved");
                    assert_close(&context, actual, expected, tolerance);
                }
            }
        }
    }
}
