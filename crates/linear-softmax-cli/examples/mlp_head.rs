//! An MLP (two hidden layers, ReLU) with the fused linear-softmax head, trained with Adam on the
//! embedded handwritten digits through the ordinary `loss.backward()` / `GradientsParams` loop.
//!
//! ```text
//! cargo run --release --example mlp_head
//! ```
//!
//! The head's gradients come from the fused op (computed chunk by chunk in the forward pass);
//! Burn's autograd carries them on into the hidden layers.

use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation::relu;
use linear_softmax::{LinearSoftmax, LinearSoftmaxConfig, LossOptions, Targets};
use linear_softmax_cli::data::{Dataset, digits};
use linear_softmax_cli::to_host_i64;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

const HIDDEN: [usize; 2] = [128, 64];
const EPOCHS: usize = 40;
const BATCH_SIZE: usize = 32;
const LEARNING_RATE: f64 = 1e-3;
const SEED: u64 = 42;

/// `x -> relu(x W1 + b1) -> relu(. W2 + b2) -> head`.
#[derive(Module, Debug)]
struct Mlp {
    hidden_1: Linear,
    hidden_2: Linear,
    head: LinearSoftmax,
}

impl Mlp {
    fn new(n_features: usize, n_classes: usize, device: &Device) -> linear_softmax::Result<Self> {
        Ok(Self {
            hidden_1: LinearConfig::new(n_features, HIDDEN[0]).init(device),
            hidden_2: LinearConfig::new(HIDDEN[0], HIDDEN[1]).init(device),
            head: LinearSoftmaxConfig::new(HIDDEN[1], n_classes).init(device)?,
        })
    }

    /// The features the head sees, `[N, HIDDEN[1]]`.
    fn features(&self, x: Tensor<2>) -> Tensor<2> {
        relu(self.hidden_2.forward(relu(self.hidden_1.forward(x))))
    }

    /// Mean cross-entropy through the fused head, `[1]`.
    fn loss(&self, x: Tensor<2>, targets: &Targets) -> linear_softmax::Result<Tensor<1>> {
        self.head
            .loss(self.features(x), targets, &LossOptions::new())
    }

    /// Fraction of `dataset` classified correctly.
    fn accuracy(&self, dataset: &Dataset, device: &Device) -> linear_softmax_cli::Result<f64> {
        let features = self.features(dataset.features_tensor(device));
        let predictions = to_host_i64(&self.head.predict(features)?)?;
        let correct = predictions
            .iter()
            .zip(&dataset.labels)
            .filter(|(prediction, label)| prediction == label)
            .count();
        Ok(correct as f64 / dataset.len() as f64)
    }
}

fn main() -> linear_softmax_cli::Result<()> {
    let device = Device::flex();
    // Burn's initialisers draw from the device's generator: seed it for a reproducible run.
    device.seed(SEED);
    let (train, test) = digits()?.stratified_split(0.2, SEED)?;
    println!(
        "digits: {} training rows, {} test rows, {} features, {} classes",
        train.len(),
        test.len(),
        train.n_features,
        train.n_classes
    );

    let mut model = Mlp::new(train.n_features, train.n_classes, &device)?.train();
    let mut optimizer = AdamConfig::new().init();
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in 1..=EPOCHS {
        order.shuffle(&mut rng);
        // Linear decay to a tenth of the initial rate: Adam's late steps settle instead of
        // jumping around the minimum.
        let progress = (epoch - 1) as f64 / EPOCHS as f64;
        let learning_rate = LEARNING_RATE * (1.0 - 0.9 * progress);
        let mut loss_sum = 0.0;
        let mut steps = 0;
        for rows in order.chunks(BATCH_SIZE) {
            let batch = train.subset(rows);
            let x = batch.features_tensor(&device);
            let targets = batch.targets(&device)?;
            let loss = model.loss(x, &targets)?;
            loss_sum += linear_softmax_cli::to_host_f64(&loss)?[0];
            steps += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(learning_rate, model, grads);
        }
        if epoch % 5 == 0 || epoch == 1 {
            let accuracy = model.valid().accuracy(&test, &device)?;
            println!(
                "epoch {epoch:>2}: train loss {:.4}, test accuracy {:.2}%",
                loss_sum / steps as f64,
                100.0 * accuracy
            );
        }
    }
    let accuracy = model.valid().accuracy(&test, &device)?;
    println!("final test accuracy: {:.2}%", 100.0 * accuracy);
    Ok(())
}
