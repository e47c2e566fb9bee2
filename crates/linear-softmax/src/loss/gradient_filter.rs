//! [`GradientFilter`]: Cut Cross-Entropy's gradient filtering, an opt-in approximation of the
//! backward pass, a field of [`LossOptions`](crate::LossOptions).

use burn::prelude::*;

use crate::error::{Error, Result};

/// Gradient filtering (Wijmans et al., *Cut Your Losses in Large-Vocabulary Language Models*,
/// 2024): the backward GEMMs `dW = X^T dS` and `dX = dS W^T` skip the blocks of `dS` whose
/// entries are all negligible. Off by default (`threshold = 0`); the loss, `lse`, the
/// statistics and `db = colsum(dS)` are never filtered.
///
/// Write `dS_ik = f_i q_ik`, with `f_i` the row's factor (the upstream gradient `g_i`, times
/// the row weight `rho_i`, divided by the mean's denominator for reduction mean) and
/// `q_i = dl_i / dS_i` the gradient of the row's own loss with respect to its logits
/// `S = X W + b` (`A_i - e_{y_i}` for a plain cross-entropy; divided by the temperature when
/// there is one). The rows and classes are cut into blocks of `block_rows x block_classes`
/// (rows counted from the first row of the batch); a block is *filtered* when
/// `|q_ik| < threshold` for every entry in it (a row with `f_i = 0`, whose `dS` row is 0,
/// counts as all zeros; an ignored row's `dS` row is 0 too). The gradients are then those of `dS` with every filtered block set to 0:
///
/// ```text
/// dW~ = X^T (dS - E),   dX~ = (dS - E) W^T,   E = dS on the filtered blocks, 0 elsewhere
/// ||dW - dW~||_F <= ||X||_F ||E||_F,   ||dX - dX~||_F <= ||E||_F ||W||_F,
/// ||E||_F <= threshold sqrt(sum over filtered entries of f_i^2)
///         <= threshold max_i |f_i| sqrt(filtered blocks x block_rows x block_classes)
/// ```
///
/// With a frequency-sorted vocabulary (rare tokens last, as language models' tokenizers number
/// them) a trained model's softmax leaves most blocks of rare classes below the threshold; a
/// flat softmax (an untrained head) below it everywhere but at the labels, so filtering an
/// untrained head's gradient drops most of it. The saving is in the two backward GEMMs only;
/// the forward GEMM `S = X W` always runs.
///
/// On the fused path's CPU kernel (Flex, NdArray) the GEMMs skip the classes whose blocks are
/// filtered in every row of a chunk (the filtered blocks of other classes are zeroed, as
/// elsewhere); the fused path's tensor kernel (GPUs, and what the CPU kernel does not take) and
/// the manual path's [`gradients`](crate::LinearSoftmax::gradients) zero the filtered blocks
/// and compute the same gradients in full, so they save no time. The autodiff path, and the
/// manual path's `loss` on an autodiff device, differentiate with Burn's autograd, which
/// cannot filter: a filter is refused there.
///
/// CCE's threshold for bf16 is `2^-12`.
///
/// ```
/// use linear_softmax::{GradientFilter, LossOptions};
///
/// let options = LossOptions::new()
///     .with_gradient_filter(GradientFilter::new().with_threshold(2f64.powi(-12)));
/// assert_eq!(
///     options.summary(),
///     "mean, gradient filter 0.000244140625 in 16 x 128 blocks"
/// );
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct GradientFilter {
    /// The threshold `>= 0` on `|q_ik|`; 0 filters nothing (the default).
    #[config(default = 0.0)]
    pub threshold: f64,
    /// Rows per block, `>= 1`. The fused path's chunks, when there are several, are a whole
    /// number of blocks (their row count is rounded down to a multiple, at least one block).
    #[config(default = 16)]
    pub block_rows: usize,
    /// Classes per block, `>= 1`.
    #[config(default = 128)]
    pub block_classes: usize,
}

impl GradientFilter {
    /// Whether any block can be filtered (`threshold > 0`).
    pub fn is_on(&self) -> bool {
        self.threshold > 0.0
    }

    /// Checks the ranges: a finite threshold `>= 0`, blocks of at least one row and class.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |name, value: String, expected| Error::InvalidOption {
            name,
            value,
            expected,
        };
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(invalid(
                "gradient_filter threshold",
                self.threshold.to_string(),
                "a finite threshold >= 0",
            ));
        }
        for (name, size) in [
            ("gradient_filter block_rows", self.block_rows),
            ("gradient_filter block_classes", self.block_classes),
        ] {
            if size == 0 {
                return Err(invalid(name, size.to_string(), "a block size >= 1"));
            }
        }
        Ok(())
    }

    /// `gradient filter 0.000244140625 in 16 x 128 blocks`, for
    /// [`crate::LossOptions::summary`].
    pub(crate) fn summary(&self) -> String {
        format!(
            "gradient filter {} in {} x {} blocks",
            self.threshold, self.block_rows, self.block_classes
        )
    }

    /// `R` rounded down to a whole number of blocks (at least one) when the filter is on and
    /// the batch's `n_rows` take more than one chunk, so that every chunk starts at a block's
    /// first row.
    pub(crate) fn chunk_rows(&self, rows: usize, n_rows: usize) -> usize {
        if self.is_on() && rows < n_rows {
            (rows / self.block_rows).max(1) * self.block_rows
        } else {
            rows
        }
    }
}
