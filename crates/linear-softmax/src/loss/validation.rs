//! The checks of target data where it enters ([`Targets`](crate::Targets)'s constructors):
//! class counts, labels, probability rows.

use crate::error::{Error, Result};
use crate::loss::targets::PROBABILITY_SUM_TOLERANCE;

/// Targets need a class to point at: a count of 0 classes is refused by every constructor.
pub(super) fn check_class_count(n_classes: usize) -> Result<()> {
    if n_classes == 0 {
        return Err(Error::InvalidOption {
            name: "n_classes",
            value: "0".into(),
            expected: "at least 1",
        });
    }
    Ok(())
}

pub(super) fn validate_labels(
    labels: &[i64],
    n_classes: usize,
    ignore_index: Option<i64>,
) -> Result<()> {
    check_class_count(n_classes)?;
    let bad = labels.iter().enumerate().find(|&(_, &label)| {
        !(0..n_classes as i64).contains(&label) && Some(label) != ignore_index
    });
    match bad {
        Some((index, &value)) => Err(Error::LabelOutOfRange {
            index,
            value,
            n_classes,
        }),
        None => Ok(()),
    }
}

pub(super) fn validate_probabilities(values: &[f64], n_classes: usize) -> Result<()> {
    check_class_count(n_classes)?;
    for (row, probabilities) in values.chunks(n_classes).enumerate() {
        if let Some((class, &value)) = probabilities
            .iter()
            .enumerate()
            .find(|(_, p)| !(p.is_finite() && **p >= 0.0))
        {
            return Err(Error::InvalidTarget {
                row,
                message: format!("probability {value} of class {class} is not a finite value >= 0"),
            });
        }
        let sum: f64 = probabilities.iter().sum();
        if (sum - 1.0).abs() > PROBABILITY_SUM_TOLERANCE {
            return Err(Error::InvalidTarget {
                row,
                message: format!(
                    "probabilities sum to {sum}, not 1 (tolerance {PROBABILITY_SUM_TOLERANCE})"
                ),
            });
        }
    }
    Ok(())
}
