//! Distillation on a [`Dataset`]: a linear student learns from a trained teacher (an MLP
//! saved by `train --hidden`) through the head's distillation loss, with the same loop, seed
//! and batches as a student trained on the labels alone, so the two can be compared.
//!
//! Each step's targets are the batch's labels with the teacher: its penultimate features
//! `X_t` (the teacher's hidden layers, frozen) and its head `W_t, b_t`
//! ([`Targets::with_teacher`](linear_softmax::Targets::with_teacher)); the loss is [`DistillationOptions`]'s, on the fused path by
//! default, so neither `[N, C]` logits tensor is kept.
//!
//! [`DistillationOptions`]: linear_softmax::DistillationOptions

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::data::Dataset;
use crate::error::Result;

use crate::metrics::evaluate;
use crate::model::Classifier;
use crate::train::{TrainConfig, TrainError, check_step_settings};
use linear_softmax::Error as HeadError;
use linear_softmax::host::to_host_f64;

/// What one epoch of [`train_student`] reached.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StudentEpoch {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps (the distillation loss with a teacher).
    pub train_loss: f64,
    /// Accuracy on the test set after the epoch.
    pub test_accuracy: f64,
}

/// Trains `student` on `train`, from `teacher` (frozen) when given, else from the labels
/// alone, with `config` (its options: with a teacher, the
/// [`DistillationOptions`](linear_softmax::DistillationOptions) and temperature, and the
/// path); `on_epoch` sees each epoch's result. The same seed gives the same batches with or
/// without the teacher.
///
/// # Errors
/// [`TrainError::Invalid`] for a teacher whose input width or class count is not the data's,
/// bad settings or options; [`TrainError::NonFiniteLoss`] when a step's loss is NaN or
/// infinite (the step is not taken).
pub fn train_student(
    mut student: Classifier,
    teacher: Option<&Classifier>,
    train: &Dataset,
    test: &Dataset,
    config: &TrainConfig,
    device: &Device,
    mut on_epoch: impl FnMut(&StudentEpoch),
) -> Result<Classifier, TrainError> {
    check_step_settings(config.batch_size, config.learning_rate)?;
    config.options.validate_for(student.head.n_classes())?;
    if let Some(teacher) = teacher {
        check_teacher(teacher, train)?;
    }
    let mut optimizer = config.optimizer.init()?;
    student = student.train();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        let steps = order.len().div_ceil(config.batch_size);
        for (step, rows) in order.chunks(config.batch_size).enumerate() {
            let batch = train.subset(rows);
            let x = batch.features_tensor(device);
            let labels = batch.targets(device)?;
            let targets = match teacher {
                // The teacher's penultimate features: its hidden layers, frozen.
                Some(teacher) => labels.with_teacher(&teacher.head, teacher.features(x.clone()))?,
                None => labels,
            };
            let loss = student
                .head
                .loss(student.features(x), &targets, &config.options)?;
            let value = to_host_f64(&loss)?[0];
            // As `train`: a non-finite loss stops the run before its step is applied.
            if !value.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    epoch,
                    step: step + 1,
                    value,
                });
            }
            loss_sum += value;
            let gradients = GradientsParams::from_grads(loss.backward(), &student);
            student = optimizer.step(config.learning_rate, student, gradients);
        }
        let on_test = evaluate(&student.valid(), test, device)?;
        on_epoch(&StudentEpoch {
            epoch,
            train_loss: loss_sum / steps as f64,
            test_accuracy: on_test.confusion.accuracy(),
        });
    }
    Ok(student.valid())
}

/// Checks that `teacher` was made for `data`: its input width and class count.
pub fn check_teacher(teacher: &Classifier, data: &Dataset) -> Result<()> {
    if teacher.d_input() != data.n_features {
        return Err(HeadError::InputWidthMismatch {
            got: data.n_features,
            expected: teacher.d_input(),
        }
        .into());
    }
    if teacher.head.n_classes() != data.n_classes {
        return Err(HeadError::ClassCountMismatch {
            targets: data.n_classes,
            head: teacher.head.n_classes(),
        }
        .into());
    }
    Ok(())
}
