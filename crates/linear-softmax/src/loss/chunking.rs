//! [`Chunking`]: how many rows the fused path processes at a time, a setting of
//! [`LossOptions`](crate::LossOptions).

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::{Error, Result};

/// How many rows the fused kernel processes at a time.
///
/// With `rows` unset, `R` follows from `memory_budget`, the bytes one chunk's `[R, C]` logits
/// buffer may take, but never drops below `min_rows`:
///
/// ```text
/// R = min(max(floor(memory_budget / (C * bytes_per_element)), min_rows), N)
/// ```
///
/// The defaults (30 MiB, 192 rows) give `R = 240` for `C = 32768` in `f32`, which keeps a whole
/// language-model step (`D = 512`: the 64 MiB `dW`, `dX` and the buffer) under 100 MiB; the
/// whole batch in one chunk for small `C` (`C = 10`: up to 786 432 rows); and `R = 192` for
/// `C = 131072`.
///
/// Why a minimum: each chunk reads and writes the whole `[D, C]` gradient once
/// (`dW += X_r^T dS_r`) and packs `W` twice, costs shared by the chunk's `R` rows. Below ~200
/// rows they show: at `C = 131072`, `R = 64` (what a 32 MiB budget alone gives) made the step
/// 1.4x slower than `R = 256` (see docs/BENCHMARKS_HISTORY.md). Set `min_rows` to 1 for a hard budget.
///
/// The raw CPU kernels hold exactly one such buffer (in f32 for a bf16 batch, whose row pass
/// runs in f32: [`rows_on`](Self::rows_on) budgets it so); the tensor-level kernel
/// (probability targets, softcap, other float types) holds up to two (a broadcast operation
/// that a backend does not run in place); for a teacher's targets (distillation) about four
/// (the chunk's teacher logits and the divergence's terms beside the student's: measured
/// 285 MiB for a whole LM step at `R = 240` on Flex, 204 MiB at `R = 64`, which is 22 %
/// slower), with the same rule for `R`.
///
/// On a GPU (a CubeCL device) the budget is the larger of `memory_budget` and the size of the
/// input `X` itself, `N * D * bytes_per_element` ([`rows_on`](Self::rows_on)): a GPU wants
/// large GEMMs and is not bound by a CPU cache, and a chunk whose logits take as much memory
/// as `X` keeps the extra memory of the same order as what the caller already holds (the rule
/// of Liger-Kernel's fused linear cross-entropy). `D = 4096`, `C = 32768`, `N = 8192` rows in
/// `f32`: `R = 1024`.
#[derive(Config, Debug, PartialEq)]
pub struct Chunking {
    /// Rows per chunk `R`; `None` derives it from `memory_budget` and `min_rows`.
    #[config(default = "None")]
    pub rows: Option<usize>,
    /// Bytes one chunk's `[R, C]` logits buffer may take when `rows` is `None`.
    #[config(default = 31457280)]
    pub memory_budget: usize,
    /// The fewest rows per chunk the budget may pick (fewer only when `N` is smaller).
    #[config(default = 192)]
    pub min_rows: usize,
}

impl Default for Chunking {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunking {
    /// The chunk size `R` for a batch of `n_rows` rows, `n_classes` classes, in `dtype`, by the
    /// CPU rule (the `memory_budget` alone).
    ///
    /// Returns [`Error::InvalidOption`] when `rows` is `Some(0)`.
    pub fn rows_for(&self, n_rows: usize, n_classes: usize, dtype: DType) -> Result<usize> {
        let rows = match self.rows {
            Some(0) => {
                return Err(Error::InvalidOption {
                    name: "chunk rows",
                    value: "0".into(),
                    expected: "at least 1 row per chunk",
                });
            }
            Some(rows) => rows,
            None => {
                let bytes_per_row = n_classes.max(1) * dtype.size();
                (self.memory_budget / bytes_per_row).max(self.min_rows)
            }
        };
        Ok(rows.clamp(1, n_rows.max(1)))
    }
}
