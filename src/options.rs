//! Loss options shared by every path.

use burn::prelude::*;

use crate::error::{Error, Result};

/// Options of the softmax cross-entropy loss, accepted by every path.
///
/// The loss is
/// `L = (1/N) sum_i (lse_i - S_{i, y_i}) + l2 * sum(W * W)`,
/// where `l2` is cs231n's `reg` (the bias is not regularised).
#[derive(Config, Debug, PartialEq)]
pub struct LossOptions {
    /// Coefficient `lambda` of the L2 penalty `lambda * sum(W^2)` on the weight (not the bias).
    #[config(default = 0.0)]
    pub l2: f64,
}

impl Default for LossOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl LossOptions {
    /// Checks every option's range; each path calls this before computing anything.
    pub fn validate(&self) -> Result<()> {
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(Error::InvalidOption {
                name: "l2",
                value: self.l2.to_string(),
                expected: "a finite coefficient >= 0",
            });
        }
        Ok(())
    }
}
