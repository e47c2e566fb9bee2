//! Gradient filtering on tensors ([`GradientFilter`]): the filtered blocks of `dS` set to 0,
//! for the manual path's backward and the fused path's tensor kernel (the CPU kernel does the
//! same on its buffer, `fused/cpu/filter.rs`, and skips what it can).

use burn::prelude::*;
use burn::tensor::DType;

use crate::loss::GradientFilter;

/// `f_i`, the factor of row `i` of `dS` (`[R, 1]`): the upstream gradient the backward was
/// seeded with (`d_rows`, `[R]`) times the row weight `rho_i` when there is one (`[R, 1]`).
pub(crate) fn row_factors(d_rows: Tensor<1>, row_scale: Option<&Tensor<2>>) -> Tensor<2> {
    let d_rows = d_rows.unsqueeze_dim::<2>(1);
    match row_scale {
        Some(rho) => d_rows * rho.clone(),
        None => d_rows,
    }
}

/// `dS` with every filtered block set to 0: the blocks of `block_rows x block_classes`
/// (counted from row 0 of `d_logits`, which starts a block) in which every entry has
/// `|dS_ik| < threshold |f_i|`, a row with `f_i = 0` counting as all zeros. Unchanged when
/// the filter is off.
///
/// # Shapes
/// - `d_logits`: `[R, C]`, `factors`: `[R, 1]`, result: `[R, C]`
pub(crate) fn filter_blocks(
    d_logits: Tensor<2>,
    factors: Tensor<2>,
    filter: &GradientFilter,
) -> Tensor<2> {
    if !filter.is_on() {
        return d_logits;
    }
    let [rows, classes] = d_logits.dims();
    let (block_rows, block_classes) = (filter.block_rows, filter.block_classes);
    let (row_blocks, class_blocks) = (rows.div_ceil(block_rows), classes.div_ceil(block_classes));
    // The decisions in f32 at least: in f16 `threshold |f_i|` underflows to 0 for the factors
    // of ordinary batches (2^-12 / 8192 < 2^-24), which would filter everything.
    let decision_dtype = match d_logits.dtype() {
        DType::F16 | DType::BF16 => DType::F32,
        dtype => dtype,
    };
    let (magnitudes, factors) = (
        d_logits.clone().abs().cast(decision_dtype),
        factors.cast(decision_dtype),
    );
    // 1 where an entry keeps its block: not |dS_ik| < threshold |f_i| (a NaN keeps it), in a
    // row with f_i != 0.
    let counted = factors
        .clone()
        .not_equal_elem(0.0)
        .float()
        .cast(decision_dtype);
    let bound = factors.abs() * filter.threshold;
    let keeps = (magnitudes - bound)
        .lower_elem(0.0)
        .bool_not()
        .float()
        .cast(decision_dtype)
        * counted;
    // Padded to whole blocks with zeros (which keep nothing), then reduced per block.
    let padded = keeps.pad(
        [
            (0, row_blocks * block_rows - rows),
            (0, class_blocks * block_classes - classes),
        ],
        burn::tensor::ops::PadMode::Constant(0.0),
    );
    let filtered = padded
        .reshape([row_blocks, block_rows, class_blocks, block_classes])
        .sum_dim(3)
        .sum_dim(1)
        .equal_elem(0.0);
    let filtered = filtered
        .expand([row_blocks, block_rows, class_blocks, block_classes])
        .reshape([row_blocks * block_rows, class_blocks * block_classes])
        .slice([0..rows, 0..classes]);
    // Set to 0 (not multiplied by 0: a NaN in a filtered row of f_i = 0 goes too, as on the
    // CPU kernel).
    d_logits.mask_fill(filtered, 0.0)
}
