//! Data sets for the classifier: an in-memory [`Dataset`], the embedded digits, CSV and
//! MNIST-IDX loaders, and splits.

mod csv;
mod digits;
mod idx;

pub use csv::{CsvRows, LabelColumn, load_csv, load_csv_features, parse_csv, parse_labelled_csv};
pub use digits::{DIGITS_CLASSES, DIGITS_FEATURES, digits};
pub use idx::{IdxArray, idx_dataset, load_idx, parse_idx};

use linear_softmax::Error as HeadError;
use std::path::Path;

use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::{Error, Result};
use linear_softmax::Targets;

/// A labelled data set held on the host: row-major `f32` features and class labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `len() * n_features` values, row-major.
    pub features: Vec<f32>,
    /// One label in `0..n_classes` per row.
    pub labels: Vec<i64>,
    /// Features per row `D`.
    pub n_features: usize,
    /// Number of classes `C`.
    pub n_classes: usize,
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the data set has no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The rows at `rows`, in that order.
    pub fn subset(&self, rows: &[usize]) -> Self {
        let d = self.n_features;
        Self {
            features: rows
                .iter()
                .flat_map(|&row| &self.features[row * d..(row + 1) * d])
                .copied()
                .collect(),
            labels: rows.iter().map(|&row| self.labels[row]).collect(),
            n_features: d,
            n_classes: self.n_classes,
        }
    }

    /// Splits into `(train, test)` so that each class keeps its share in both parts:
    /// `round(test_fraction * count)` rows of every class go to the test set, chosen by a
    /// shuffle seeded with `seed`.
    pub fn stratified_split(&self, test_fraction: f64, seed: u64) -> Result<(Self, Self)> {
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            return Err(HeadError::InvalidOption {
                name: "test fraction",
                value: test_fraction.to_string(),
                expected: "a fraction strictly between 0 and 1",
            }
            .into());
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut train, mut test) = (Vec::new(), Vec::new());
        for class in 0..self.n_classes as i64 {
            let mut rows: Vec<usize> = (0..self.len())
                .filter(|&row| self.labels[row] == class)
                .collect();
            rows.shuffle(&mut rng);
            let n_test = (test_fraction * rows.len() as f64).round() as usize;
            test.extend_from_slice(&rows[..n_test]);
            train.extend_from_slice(&rows[n_test..]);
        }
        // Interleave the classes so that consecutive rows are not all of one class.
        train.shuffle(&mut rng);
        test.shuffle(&mut rng);
        Ok((self.subset(&train), self.subset(&test)))
    }

    /// The features as an `[N, D]` tensor on `device`.
    pub fn features_tensor(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.features.clone(), [self.len(), self.n_features]),
            device,
        )
    }

    /// The labels as validated [`Targets`] on `device`.
    pub fn targets(&self, device: &Device) -> Result<Targets> {
        Ok(Targets::from_indices(&self.labels, self.n_classes, device)?)
    }
}

/// An [`Error::Data`] about `source`.
pub(crate) fn data_error(source: &str, message: String) -> Error {
    Error::Data {
        source_name: source.to_string(),
        message,
    }
}

/// The whole of a UTF-8 text file, or an error naming it.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let source = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|err| data_error(&source, format!("cannot read: {err}")))?;
    String::from_utf8(bytes).map_err(|err| {
        data_error(
            &source,
            format!(
                "offset {}: not UTF-8 text: expected a CSV file",
                err.utf8_error().valid_up_to()
            ),
        )
    })
}
