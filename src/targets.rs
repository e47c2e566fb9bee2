//! Validated classification targets.
//!
//! Labels are checked once, where they enter (host data or an Int tensor), so the loss paths
//! never need a per-step host round trip to know they are in range.

use burn::prelude::*;

use crate::error::{Error, Result};
use crate::host::to_host_i64;

/// Class-index targets known to lie in `0..n_classes`.
///
/// # Shapes
/// - `indices`: `[N]` (Int)
///
/// # Example
/// ```
/// use burn::prelude::*;
/// use linear_softmax::Targets;
///
/// let device = Device::flex();
/// let targets = Targets::from_indices(&[0, 2, 1], 3, &device).unwrap();
/// assert_eq!(targets.len(), 3);
/// let err = Targets::from_indices(&[0, 3], 3, &device).unwrap_err();
/// assert!(err.to_string().contains("label 3 at index 1"));
/// ```
#[derive(Clone, Debug)]
pub struct Targets {
    indices: Tensor<1, Int>,
    n_classes: usize,
}

impl Targets {
    /// Validates host labels and puts them on `device`.
    ///
    /// Returns [`Error::LabelOutOfRange`] naming the first label outside `0..n_classes`.
    pub fn from_indices(labels: &[i64], n_classes: usize, device: &Device) -> Result<Self> {
        validate_labels(labels, n_classes)?;
        let indices =
            Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [labels.len()]), device);
        Ok(Self { indices, n_classes })
    }

    /// Validates an Int tensor of labels (one read back to the host, here and only here).
    pub fn from_tensor(labels: Tensor<1, Int>, n_classes: usize) -> Result<Self> {
        validate_labels(&to_host_i64(&labels)?, n_classes)?;
        Ok(Self {
            indices: labels,
            n_classes,
        })
    }

    /// Number of targets (rows).
    pub fn len(&self) -> usize {
        self.indices.dims()[0]
    }

    /// Whether there are no targets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes the labels were validated against.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// The class indices, `[N]`.
    pub fn indices(&self) -> &Tensor<1, Int> {
        &self.indices
    }

    /// The class indices as a `[N, 1]` column on `device`, the layout `gather` and `scatter`
    /// along the class dimension need.
    pub(crate) fn index_column(&self, device: &Device) -> Tensor<2, Int> {
        self.indices.clone().to_device(device).unsqueeze_dim(1)
    }

    /// The same targets on another device.
    pub fn to_device(self, device: &Device) -> Self {
        Self {
            indices: self.indices.to_device(device),
            n_classes: self.n_classes,
        }
    }
}

fn validate_labels(labels: &[i64], n_classes: usize) -> Result<()> {
    match labels
        .iter()
        .enumerate()
        .find(|(_, label)| !(0..n_classes as i64).contains(label))
    {
        Some((index, &value)) => Err(Error::LabelOutOfRange {
            index,
            value,
            n_classes,
        }),
        None => Ok(()),
    }
}
