//! Where a command's data comes from: the embedded digits, a CSV file, or MNIST IDX files.

use std::path::PathBuf;

use crate::data::{Dataset, LabelColumn, digits, load_csv, load_idx};
use crate::error::Result;
use clap::Args;

/// The data set flags shared by `train`, `compare` and `evaluate`.
#[derive(Clone, Debug, Args)]
pub struct DataArgs {
    /// A CSV file of numeric columns (one row per example, optional header) instead of the
    /// embedded digits.
    #[arg(long, value_name = "FILE.csv", conflicts_with_all = ["idx_images", "idx_labels"])]
    pub data: Option<PathBuf>,
    /// The CSV column holding the class labels (integers 0, 1, ...): a header name, a 0-based
    /// index, or `last`.
    #[arg(long, value_name = "NAME|INDEX", default_value = "last")]
    pub label_column: LabelColumn,
    /// MNIST-format IDX images (unsigned bytes, [count, rows, cols]; gzipped or not);
    /// pixels are scaled to [0, 1].
    #[arg(long, value_name = "FILE", requires = "idx_labels")]
    pub idx_images: Option<PathBuf>,
    /// MNIST-format IDX labels (one dimension: the count; gzipped or not), one per image.
    #[arg(long, value_name = "FILE", requires = "idx_images")]
    pub idx_labels: Option<PathBuf>,
}

impl DataArgs {
    /// Whether the data is the embedded digits (no file given).
    pub fn is_embedded(&self) -> bool {
        self.data.is_none() && self.idx_images.is_none()
    }

    /// A short name for messages.
    pub fn describe(&self) -> String {
        match (&self.data, &self.idx_images) {
            (Some(csv), _) => csv.display().to_string(),
            (None, Some(images)) => images.display().to_string(),
            (None, None) => "embedded digits".into(),
        }
    }

    /// Loads the data; `n_classes` (a model's) bounds the labels, otherwise it is inferred.
    pub fn load(&self, n_classes: Option<usize>) -> Result<Dataset> {
        match (&self.data, &self.idx_images, &self.idx_labels) {
            (Some(csv), _, _) => load_csv(csv, &self.label_column, n_classes),
            (None, Some(images), Some(labels)) => load_idx(images, labels, n_classes),
            _ => digits(),
        }
    }
}
