//! Plain minibatch SGD on a [`Dataset`], driven by the hand-derived gradients.

use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::head::LinearSoftmax;
use crate::host::{to_host_f64, to_host_i64};
use crate::manual;
use crate::options::LossOptions;

/// Settings of [`train_sgd`].
#[derive(Config, Debug)]
pub struct SgdConfig {
    /// Passes over the training set.
    #[config(default = 30)]
    pub epochs: usize,
    /// Rows per step.
    #[config(default = 32)]
    pub batch_size: usize,
    /// Step size: `W <- W - learning_rate * dW`.
    #[config(default = 0.5)]
    pub learning_rate: f64,
    /// Seed of the batch order.
    #[config(default = 42)]
    pub seed: u64,
}

/// What one epoch reached.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Accuracy on the test set after the epoch.
    pub test_accuracy: f64,
}

/// Trains `head` with SGD on `train` using [`manual::loss_and_gradients`], calling `on_epoch`
/// after each epoch with the test accuracy on `test`.
pub fn train_sgd(
    mut head: LinearSoftmax,
    train: &Dataset,
    test: &Dataset,
    options: &LossOptions,
    config: &SgdConfig,
    device: &Device,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<LinearSoftmax> {
    if config.batch_size == 0 {
        return Err(Error::InvalidOption {
            name: "batch size",
            value: "0".into(),
            expected: "at least 1",
        });
    }
    if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
        return Err(Error::InvalidOption {
            name: "learning rate",
            value: config.learning_rate.to_string(),
            expected: "a finite rate > 0",
        });
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        let mut steps = 0;
        for rows in order.chunks(config.batch_size) {
            let batch = train.subset(rows);
            let x = batch.features_tensor(device);
            let targets = batch.targets(device)?;
            let gradients = manual::loss_and_gradients(&head, x, &targets, options)?;
            loss_sum += to_host_f64(&gradients.loss)?[0];
            steps += 1;
            head = sgd_step(
                head,
                gradients.d_weight,
                gradients.d_bias,
                config.learning_rate,
            );
        }
        on_epoch(&EpochReport {
            epoch,
            train_loss: loss_sum / steps as f64,
            test_accuracy: accuracy(&head, test, device)?,
        });
    }
    Ok(head)
}

/// `W <- W - lr dW`, `b <- b - lr db`, keeping the parameters' identities.
fn sgd_step(
    mut head: LinearSoftmax,
    d_weight: Tensor<2>,
    d_bias: Option<Tensor<1>>,
    learning_rate: f64,
) -> LinearSoftmax {
    head.linear.weight = head.linear.weight.map(|w| w - d_weight * learning_rate);
    if let (Some(bias), Some(d_bias)) = (head.linear.bias.take(), d_bias) {
        head.linear.bias = Some(bias.map(|b| b - d_bias * learning_rate));
    }
    head
}

/// Fraction of rows of `dataset` whose predicted class is the label.
pub fn accuracy(head: &LinearSoftmax, dataset: &Dataset, device: &Device) -> Result<f64> {
    let predictions = to_host_i64(&head.predict(dataset.features_tensor(device))?)?;
    let correct = predictions
        .iter()
        .zip(&dataset.labels)
        .filter(|(p, l)| p == l)
        .count();
    Ok(correct as f64 / dataset.len() as f64)
}
