//! How well a classifier does on a data set: confusion matrix, accuracy, per-class precision
//! and recall, mean cross-entropy.

use std::fmt;

use burn::prelude::*;

use crate::data::Dataset;
use crate::error::Result;
use crate::model::Classifier;
use linear_softmax::host::{to_host_f64, to_host_i64};
use linear_softmax::{LossOptions, LossReduction, Targets, math};

/// Rows per forward pass when evaluating, to bound memory on large data sets.
const EVALUATION_ROWS: usize = 4096;

/// Counts of (true class, predicted class) pairs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    /// Number of classes `C`.
    pub n_classes: usize,
    /// `C * C` counts, row = true class, column = predicted class.
    pub counts: Vec<usize>,
}

impl ConfusionMatrix {
    /// An all-zero matrix.
    pub fn new(n_classes: usize) -> Self {
        Self {
            n_classes,
            counts: vec![0; n_classes * n_classes],
        }
    }

    /// Counts each `(label, prediction)` pair (both must lie in `0..C`).
    pub fn add(&mut self, labels: &[i64], predictions: &[i64]) {
        for (&label, &prediction) in labels.iter().zip(predictions) {
            self.counts[label as usize * self.n_classes + prediction as usize] += 1;
        }
    }

    /// The count of rows of class `actual` predicted as `predicted`.
    pub fn count(&self, actual: usize, predicted: usize) -> usize {
        self.counts[actual * self.n_classes + predicted]
    }

    /// Number of rows counted.
    pub fn total(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Fraction of rows predicted correctly (0 for an empty matrix).
    pub fn accuracy(&self) -> f64 {
        let correct: usize = (0..self.n_classes).map(|c| self.count(c, c)).sum();
        ratio(correct, self.total())
    }

    /// Rows of class `class` (the support).
    pub fn support(&self, class: usize) -> usize {
        (0..self.n_classes).map(|p| self.count(class, p)).sum()
    }

    /// Of the rows predicted as `class`, the fraction that are (0 when none is).
    pub fn precision(&self, class: usize) -> f64 {
        let predicted: usize = (0..self.n_classes).map(|a| self.count(a, class)).sum();
        ratio(self.count(class, class), predicted)
    }

    /// Of the rows of class `class`, the fraction predicted as it (0 when there are none).
    pub fn recall(&self, class: usize) -> f64 {
        ratio(self.count(class, class), self.support(class))
    }
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A classifier's results on a data set.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Predictions against labels.
    pub confusion: ConfusionMatrix,
    /// Mean cross-entropy over the rows (no L2 penalty).
    pub mean_loss: f64,
}

/// Runs `model` over `data` in batches.
pub fn evaluate(model: &Classifier, data: &Dataset, device: &Device) -> Result<Evaluation> {
    let mut confusion = ConfusionMatrix::new(data.n_classes);
    let mut loss_sum = 0.0;
    let rows: Vec<usize> = (0..data.len()).collect();
    for chunk in rows.chunks(EVALUATION_ROWS) {
        let batch = data.subset(chunk);
        let logits = model.forward(batch.features_tensor(device))?;
        let targets = batch.targets(device)?;
        let predictions = to_host_i64(&logits.clone().argmax(1).squeeze_dim::<1>(1))?;
        confusion.add(&batch.labels, &predictions);
        loss_sum += to_host_f64(&cross_entropy(logits, &targets))?[0] * chunk.len() as f64;
    }
    Ok(Evaluation {
        confusion,
        mean_loss: loss_sum / data.len().max(1) as f64,
    })
}

/// Mean softmax cross-entropy of `logits` `[N, C]` against class-index `targets`, `[1]`.
fn cross_entropy(logits: Tensor<2>, targets: &Targets) -> Tensor<1> {
    let (rows, cache) = math::softmax_cross_entropy_forward(logits, targets, &LossOptions::new());
    math::reduction_forward(rows, cache.denominator, LossReduction::Mean)
}

impl fmt::Display for Evaluation {
    /// Accuracy, mean loss and a per-class precision / recall table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let confusion = &self.confusion;
        writeln!(
            f,
            "accuracy {:.2}% ({} of {} rows)   mean loss {:.4}",
            100.0 * confusion.accuracy(),
            (0..confusion.n_classes)
                .map(|c| confusion.count(c, c))
                .sum::<usize>(),
            confusion.total(),
            self.mean_loss
        )?;
        writeln!(
            f,
            "{:>6} {:>10} {:>10} {:>8}",
            "class", "precision", "recall", "rows"
        )?;
        for class in 0..confusion.n_classes {
            writeln!(
                f,
                "{class:>6} {:>9.2}% {:>9.2}% {:>8}",
                100.0 * confusion.precision(class),
                100.0 * confusion.recall(class),
                confusion.support(class)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_and_recall_from_counts() {
        let mut confusion = ConfusionMatrix::new(2);
        // Three of class 0 (one predicted 1), one of class 1 (predicted 1).
        confusion.add(&[0, 0, 0, 1], &[0, 0, 1, 1]);
        assert_eq!(confusion.accuracy(), 0.75);
        assert_eq!(confusion.precision(1), 0.5);
        assert_eq!(confusion.recall(0), 2.0 / 3.0);
        assert_eq!(confusion.support(0), 3);
    }
}
