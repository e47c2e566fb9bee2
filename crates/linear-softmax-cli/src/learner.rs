//! The classifier in `burn::train`'s `Learner` (feature `learner`): Burn's training-step traits
//! for [`Classifier`] with the head's fused loss, a batcher for a [`Dataset`], and
//! [`train_with_learner`], which runs Burn's supervised training with its loss and accuracy
//! metrics, checkpoints (Burn's default strategy: the last two epochs and the one with the best
//! validation loss), and the terminal dashboard where there is a terminal (plain lines
//! otherwise).

use std::path::Path;
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderBuilder};
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::prelude::*;
use burn::store::ModuleRecord;
use burn::tensor::IndexingUpdateOp;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use linear_softmax::{LossOptions, Targets};

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Classifier, ClassifierConfig};
use crate::train::OptimizerKind;

/// One row of a [`Dataset`]: its features and label.
#[derive(Clone, Debug)]
pub struct Row {
    /// `D` features.
    pub features: Vec<f32>,
    /// The class.
    pub label: i64,
}

/// A batch: the inputs `[B, D]` and their validated targets, on the device the Learner asks for.
#[derive(Clone, Debug)]
pub struct RowBatch {
    /// The inputs `[B, D]`.
    pub x: Tensor<2>,
    /// The labels as validated class-index targets.
    pub targets: Targets,
}

/// Turns [`Row`]s into a [`RowBatch`], validating the labels against the class count once
/// (the loaders already did; a label out of range here is a bug, reported as such).
#[derive(Clone, Debug)]
pub struct RowBatcher {
    /// Features per row `D`.
    pub n_features: usize,
    /// Classes `C`.
    pub n_classes: usize,
}

impl Batcher<Row, RowBatch> for RowBatcher {
    fn batch(&self, rows: Vec<Row>, device: &Device) -> RowBatch {
        let labels: Vec<i64> = rows.iter().map(|row| row.label).collect();
        let features: Vec<f32> = rows.iter().flat_map(|row| row.features.clone()).collect();
        RowBatch {
            x: Tensor::from_data(
                TensorData::new(features, [rows.len(), self.n_features]),
                device,
            ),
            targets: Targets::from_indices(&labels, self.n_classes, device)
                .expect("the data set's labels were validated when it was loaded"),
        }
    }
}

impl Classifier {
    /// The fused loss of a batch, with the predictions and labels Burn's metrics read.
    ///
    /// Burn's `AccuracyMetric` takes the `argmax` of `ClassificationOutput`'s `output`: the
    /// one-hot rows of the predictions the fused pass found (`LossOptions::stats`) carry exactly
    /// that, so the metric needs no second forward pass through the head. They are constants,
    /// outside the graph.
    pub fn forward_classification(&self, batch: RowBatch) -> ClassificationOutput {
        let features = self.features(batch.x);
        let options = LossOptions::new().with_stats(true);
        let output = self
            .head
            .loss_output(features, &batch.targets, &options)
            .expect("train_with_learner checked the batches' shape against the model");
        let stats = output.stats.expect("options.stats asks for them");
        let loss = output.loss;
        let rows = stats.predictions.dims()[0];
        let device = loss.device();
        let predicted = Tensor::<2>::zeros([rows, self.head.n_classes()], &device).scatter(
            1,
            stats.predictions.unsqueeze_dim(1),
            Tensor::ones([rows, 1], &device),
            IndexingUpdateOp::Add,
        );
        let labels = batch
            .targets
            .indices()
            .expect("class-index targets")
            .clone();
        ClassificationOutput::new(loss, predicted, labels)
    }
}

impl TrainStep for Classifier {
    type Input = RowBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: RowBatch) -> TrainOutput<ClassificationOutput> {
        let item = self.forward_classification(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl InferenceStep for Classifier {
    type Input = RowBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: RowBatch) -> ClassificationOutput {
        self.forward_classification(batch)
    }
}

/// Settings of [`train_with_learner`].
#[derive(Clone, Debug)]
pub struct LearnerConfig {
    /// The classifier's hidden layers (empty: the linear classifier).
    pub hidden: Vec<usize>,
    /// Passes over the training set.
    pub epochs: usize,
    /// Rows per step.
    pub batch_size: usize,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Its (constant) learning rate.
    pub learning_rate: f64,
    /// Seed of the initialisation and the batch order.
    pub seed: u64,
}

/// Trains a classifier for `train` with `burn::train`'s supervised training, validating on
/// `valid` after each epoch; checkpoints and metric logs go to `directory`
/// (`checkpoint/model-{epoch}.bpk`, as Burn writes them, kept for the last two epochs and the
/// best one). Returns the trained model (on the device's plain view); an interrupted run (the
/// dashboard quit) is an error.
pub fn train_with_learner(
    train: &Dataset,
    valid: &Dataset,
    config: &LearnerConfig,
    directory: &Path,
    device: &Device,
) -> Result<Classifier> {
    check(config, train, valid)?;
    device.seed(config.seed);
    let model = ClassifierConfig::new(train.n_features, train.n_classes)
        .with_hidden(config.hidden.clone())
        .init(&device.clone().autodiff())?;
    let loader = |data: &Dataset| -> Arc<dyn DataLoader<RowBatch>> {
        DataLoaderBuilder::new(RowBatcher {
            n_features: data.n_features,
            n_classes: data.n_classes,
        })
        .batch_size(config.batch_size)
        .shuffle(config.seed)
        .build(InMemDataset::new(rows(data)))
    };
    let training = SupervisedTraining::new(directory, loader(train), loader(valid))
        .metrics((AccuracyMetric::new(), LossMetric::new()))
        .with_default_checkpointers()
        .num_epochs(config.epochs)
        .summary();
    let learner = Learner::new(model, config.optimizer.init()?, config.learning_rate);
    let result = training.launch(learner);
    let failure = |message: String| Error::Data {
        source_name: directory.display().to_string(),
        message,
    };
    if let Some(error) = result.error {
        return Err(failure(format!("training failed: {error}")));
    }
    if let Some(interruption) = result.interrupted {
        let reason = interruption.reason.unwrap_or_else(|| "stopped".into());
        return Err(failure(format!("training interrupted ({reason})")));
    }
    Ok(result.model)
}

/// What the training steps cannot report (they return no `Result`): the settings, and a
/// validation set of the training set's shape.
fn check(config: &LearnerConfig, train: &Dataset, valid: &Dataset) -> Result<()> {
    let invalid = |name, value: String, expected| -> Result<()> {
        Err(linear_softmax::Error::InvalidOption {
            name,
            value,
            expected,
        }
        .into())
    };
    if config.epochs == 0 {
        return invalid("epochs", "0".into(), "at least 1");
    }
    if config.batch_size == 0 {
        return invalid("batch size", "0".into(), "at least 1");
    }
    if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
        return invalid(
            "learning rate",
            config.learning_rate.to_string(),
            "a finite rate > 0",
        );
    }
    for (what, data) in [("training", train), ("validation", valid)] {
        if data.is_empty() || data.n_features == 0 {
            return invalid(
                "data set",
                format!(
                    "{what}: {} rows of {} features",
                    data.len(),
                    data.n_features
                ),
                "at least one row and one feature",
            );
        }
    }
    if (valid.n_features, valid.n_classes) != (train.n_features, train.n_classes) {
        return invalid(
            "validation set",
            format!("{} features, {} classes", valid.n_features, valid.n_classes),
            "the training set's features and classes",
        );
    }
    Ok(())
}

/// Loads the checkpoint Burn's training wrote after `epoch` (1-based) into a classifier of
/// `config`'s shape on `device`.
pub fn load_checkpoint(
    directory: &Path,
    epoch: usize,
    config: &ClassifierConfig,
    device: &Device,
) -> Result<Classifier> {
    let path = directory.join(format!("checkpoint/model-{epoch}.bpk"));
    let not_loaded = |message: String| Error::Data {
        source_name: path.display().to_string(),
        message,
    };
    let record =
        ModuleRecord::load(&path).map_err(|err| not_loaded(format!("cannot read: {err}")))?;
    config
        .init(device)?
        .try_load_record(record)
        .map_err(|err| not_loaded(format!("does not fit {config:?}: {err}")))
}

fn rows(data: &Dataset) -> Vec<Row> {
    data.features
        .chunks(data.n_features)
        .zip(&data.labels)
        .map(|(features, &label)| Row {
            features: features.to_vec(),
            label,
        })
        .collect()
}
