//! Training loops on a [`Dataset`].
//!
//! - [`train`]: a [`Classifier`] (linear or MLP) with a `burn::optim` optimizer (SGD with
//!   momentum, Adam), its gradients from a chosen [`LossPath`]; what the CLI runs.
//! - [`train_sgd`]: the smallest possible loop, plain SGD on the bare head driven by the
//!   hand-derived gradients.

use linear_softmax::Error as HeadError;
use std::time::Instant;

use burn::module::Module;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::relu;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::metrics::evaluate;
use crate::model::Classifier;
use linear_softmax::LossOptions;
use linear_softmax::Targets;
use linear_softmax::host::{to_host_f64, to_host_i64};
use linear_softmax::math;
use linear_softmax::{LinearSoftmax, LossPath, LossStats};

/// The optimizer of [`train`], from `burn::optim`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// SGD with (PyTorch-style, undampened) momentum; `0` is plain SGD.
    Sgd {
        /// Momentum factor in `[0, 1)`.
        momentum: f64,
    },
    /// Adam with Burn's default betas.
    Adam,
}

impl OptimizerKind {
    /// The optimizer, or an error for a momentum outside `[0, 1)`.
    pub fn init(self) -> Result<ModuleOptimizer> {
        match self {
            Self::Sgd { momentum } if !(0.0..1.0).contains(&momentum) => {
                Err(HeadError::InvalidOption {
                    name: "momentum",
                    value: momentum.to_string(),
                    expected: "a factor in [0, 1)",
                }
                .into())
            }
            Self::Sgd { momentum } => Ok(burn::optim::SgdConfig::new()
                .with_momentum((momentum > 0.0).then(|| {
                    MomentumConfig::new()
                        .with_momentum(momentum)
                        .with_dampening(0.0)
                }))
                .init()),
            Self::Adam => Ok(AdamConfig::new().init()),
        }
    }
}

/// Settings of [`train`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Rows per step.
    pub batch_size: usize,
    /// The optimizer's step size.
    pub learning_rate: f64,
    /// Which optimizer.
    pub optimizer: OptimizerKind,
    /// The loss options (L2, ...) and the gradient path, [`LossOptions::path`]: the head's in
    /// every step, and with [`LossPath::Manual`] the hand-derived backward through the hidden
    /// layers too.
    pub options: LossOptions,
    /// Seed of the batch order.
    pub seed: u64,
}

/// What one epoch of [`train`] reached.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochMetrics {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps (with the L2 penalty, as optimised).
    pub train_loss: f64,
    /// Accuracy on the epoch's training batches, each counted by its own step's loss pass
    /// (before that step's update; `LossOptions::stats`, no second forward pass), as Keras and
    /// burn-train report it.
    pub train_accuracy: f64,
    /// Mean cross-entropy on the test set after the epoch.
    pub test_loss: f64,
    /// Accuracy on the test set after the epoch.
    pub test_accuracy: f64,
    /// Seconds since training started.
    pub seconds: f64,
}

impl From<HeadError> for TrainError {
    fn from(err: HeadError) -> Self {
        Self::Invalid(err.into())
    }
}

/// Why [`train`] stopped early.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad data, shapes or options.
    #[error(transparent)]
    Invalid(#[from] Error),
    /// The loss of a step was NaN or infinite: the step was not taken.
    #[error("the training loss became non-finite ({value}) at epoch {epoch}, step {step}")]
    NonFiniteLoss {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// The loss.
        value: f64,
    },
}

/// Hooks [`train`] calls as it goes.
pub trait TrainObserver {
    /// Before the first step of an epoch with `steps` steps.
    fn on_epoch_start(&mut self, _epoch: usize, _steps: usize) {}
    /// After each step, with its loss.
    fn on_step(&mut self, _loss: f64) {}
    /// After each epoch, with its metrics and the model it ended with (a plain module). An error
    /// stops training.
    fn on_epoch_end(&mut self, _metrics: &EpochMetrics, _model: &Classifier) -> Result<()> {
        Ok(())
    }
}

/// Trains `model` on `train`, evaluating on `test` after each epoch.
///
/// A non-finite loss stops training before its step is applied, with
/// [`TrainError::NonFiniteLoss`] naming the epoch and step; the observer has seen every
/// completed epoch's model.
pub fn train(
    mut model: Classifier,
    train: &Dataset,
    test: &Dataset,
    config: &TrainConfig,
    device: &Device,
    observer: &mut impl TrainObserver,
) -> Result<Classifier, TrainError> {
    config.options.validate_for(model.head.n_classes())?;
    check_step_settings(config.batch_size, config.learning_rate)?;
    let mut optimizer = config.optimizer.init()?;
    // `burn::optim` steps only autodiff parameters, so the model lives on an autodiff device
    // whatever the path; the manual path computes on its plain `valid()` view.
    model = model.train();
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        let steps = order.len().div_ceil(config.batch_size);
        observer.on_epoch_start(epoch, steps);
        let mut loss_sum = 0.0;
        // The epoch's correct and counted rows, summed on the device, read once at its end.
        let mut tally: Option<[Tensor<1, Int>; 2]> = None;
        for (step, rows) in order.chunks(config.batch_size).enumerate() {
            let batch = train.subset(rows);
            let x = batch.features_tensor(device);
            let targets = batch.targets(device)?;
            let Step {
                loss,
                gradients,
                stats,
            } = match config.options.path {
                path @ (LossPath::Autodiff | LossPath::Fused) => {
                    graph_step(&model, x, &targets, &config.options, path)
                }
                LossPath::Manual => manual_step(&model.valid(), x, &targets, &config.options),
            }?;
            // Every path lets NaN and infinity propagate (the head's policy: no read back per
            // step inside it); the loss is on the host here anyway, so a non-finite one stops
            // training before its step is applied.
            if !loss.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    epoch,
                    step: step + 1,
                    value: loss,
                });
            }
            model = optimizer.step(config.learning_rate, model, gradients);
            loss_sum += loss;
            tally = Some(match tally {
                Some([correct, counted]) => [correct + stats.correct, counted + stats.counted],
                None => [stats.correct, stats.counted],
            });
            observer.on_step(loss);
        }
        let plain = model.valid();
        let on_test = evaluate(&plain, test, device)?;
        let train_accuracy = match &tally {
            Some([correct, counted]) => {
                let counted = to_host_i64(counted)?[0];
                to_host_i64(correct)?[0] as f64 / counted.max(1) as f64
            }
            None => 0.0,
        };
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / steps as f64,
            train_accuracy,
            test_loss: on_test.mean_loss,
            test_accuracy: on_test.confusion.accuracy(),
            seconds: started.elapsed().as_secs_f64(),
        };
        observer.on_epoch_end(&metrics, &plain)?;
    }
    Ok(model.valid())
}

/// What one training step computed.
struct Step {
    /// The batch's loss, on the host.
    loss: f64,
    gradients: GradientsParams,
    /// The batch's predictions and correct rows, from the loss's own pass.
    stats: LossStats,
}

/// Burn's autograd through the whole network, the head's loss through `path` (the autodiff
/// graph, or the fused op handing `dX` to the hidden layers); `model` lives on an autodiff
/// device.
fn graph_step(
    model: &Classifier,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    path: LossPath,
) -> Result<Step> {
    let options = options.clone().with_path(path).with_stats(true);
    let output = model
        .head
        .loss_output(model.features(x), targets, &options)?;
    let stats = output.stats.expect("options.stats asks for the statistics");
    Ok(Step {
        loss: to_host_f64(&output.loss)?[0],
        gradients: GradientsParams::from_grads(output.loss.backward(), model),
        stats,
    })
}

/// The hand-derived backward: the head's `dW, db, dX`, then, layer by layer downwards,
/// ReLU backward `dZ = dA * [Z > 0]` and [`math::linear_backward`].
fn manual_step(
    model: &Classifier,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Result<Step> {
    // Forward, keeping each hidden layer's input and pre-activation for the backward.
    let mut saved = Vec::with_capacity(model.hidden.len());
    let mut activation = x;
    for layer in &model.hidden {
        let pre_activation = layer.forward(activation.clone());
        saved.push((activation, pre_activation.clone()));
        activation = relu(pre_activation);
    }
    let options = options.clone().with_path(LossPath::Manual).with_stats(true);
    let head = model.head.gradients(activation, targets, &options)?;
    let stats = head.stats.expect("options.stats asks for the statistics");
    let mut gradients = GradientsParams::new();
    let linear = &model.head.linear;
    gradients.register(linear.weight.id, head.d_weight);
    if let (Some(bias), Some(d_bias)) = (&linear.bias, head.d_bias) {
        gradients.register(bias.id, d_bias);
    }
    let mut d_activation = head.d_input;
    for (layer, (input, pre_activation)) in model.hidden.iter().zip(saved).rev() {
        let d_pre_activation = d_activation.mask_fill(pre_activation.lower_equal_elem(0.0), 0.0);
        let layer_gradients = math::linear_backward(
            input,
            layer.weight.val(),
            layer.bias.is_some(),
            d_pre_activation,
        );
        gradients.register(layer.weight.id, layer_gradients.d_weight);
        if let (Some(bias), Some(d_bias)) = (&layer.bias, layer_gradients.d_bias) {
            gradients.register(bias.id, d_bias);
        }
        d_activation = layer_gradients.d_input;
    }
    Ok(Step {
        loss: to_host_f64(&head.loss)?[0],
        gradients,
        stats,
    })
}

/// Refuses a batch of 0 rows and a learning rate that is not finite and `> 0`.
pub(crate) fn check_step_settings(batch_size: usize, learning_rate: f64) -> Result<()> {
    if batch_size == 0 {
        return Err(HeadError::InvalidOption {
            name: "batch size",
            value: "0".into(),
            expected: "at least 1",
        }
        .into());
    }
    if !(learning_rate.is_finite() && learning_rate > 0.0) {
        return Err(HeadError::InvalidOption {
            name: "learning rate",
            value: learning_rate.to_string(),
            expected: "a finite rate > 0",
        }
        .into());
    }
    Ok(())
}

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

/// Trains `head` with SGD on `train` using the hand-derived gradients
/// ([`LinearSoftmax::gradients`] with [`LossPath::Manual`], which overrides `options.path`),
/// calling `on_epoch` after each epoch with the test accuracy on `test`.
pub fn train_sgd(
    mut head: LinearSoftmax,
    train: &Dataset,
    test: &Dataset,
    options: &LossOptions,
    config: &SgdConfig,
    device: &Device,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<LinearSoftmax> {
    check_step_settings(config.batch_size, config.learning_rate)?;
    let options = options.clone().with_path(LossPath::Manual);
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
            let gradients = head.gradients(x, &targets, &options)?;
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
