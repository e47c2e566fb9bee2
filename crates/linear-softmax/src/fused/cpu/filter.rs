//! The gradient filter ([`GradientFilter`]) on a chunk's `dS_r`: the filtered blocks zeroed in
//! the row pass's buffer, and the blocks of classes that no row of the chunk keeps found, so
//! that the backward GEMMs skip those classes.

use std::ops::Range;

use rayon::prelude::*;

use super::float::RawFloat;
use super::gemm::Operand;
use crate::loss::GradientFilter;

/// Zeroes the filtered blocks of a chunk's `dS_r` (`buffer`, row-major `[rows, cols]`, each row
/// already an operand row, the first row starting a block) and returns the ranges of classes
/// that some block of the chunk keeps, in order: the backward GEMMs' columns.
///
/// A block is filtered when `|dS_ik| < threshold |f_i|` for each of its entries (`factors`
/// holds `f_i`); a row with `f_i = 0` is all zeros and keeps nothing. A NaN keeps its block.
pub(super) fn filter_chunk<E: RawFloat, M: Operand<E>>(
    buffer: &mut [E],
    cols: usize,
    factors: &[f64],
    filter: &GradientFilter,
) -> Vec<Range<usize>> {
    let (block_rows, block_classes) = (filter.block_rows, filter.block_classes);
    let class_blocks = cols.div_ceil(block_classes);
    // One task per block of rows: which blocks of classes it keeps, the others zeroed.
    let kept = buffer
        .par_chunks_mut(block_rows * cols)
        .zip(factors.par_chunks(block_rows))
        .map(|(rows, factors)| {
            let mut kept = vec![false; class_blocks];
            for (row, factor) in rows.chunks_exact_mut(cols).zip(factors) {
                let bound = filter.threshold * factor.abs();
                if bound == 0.0 {
                    continue;
                }
                let values = M::operand_row(row);
                for (block, kept) in values.chunks(block_classes).zip(&mut kept) {
                    *kept = *kept || block.iter().any(|v| kept_by(v.magnitude(), bound));
                }
            }
            for row in rows.chunks_exact_mut(cols) {
                let values = M::operand_row(row);
                for (block, _) in values
                    .chunks_mut(block_classes)
                    .zip(&kept)
                    .filter(|(_, kept)| !**kept)
                {
                    block.fill(M::OPERAND_ZERO);
                }
            }
            kept
        })
        .reduce(
            || vec![false; class_blocks],
            |a, b| a.iter().zip(&b).map(|(a, b)| *a || *b).collect(),
        );
    column_runs(&kept, block_classes, cols)
}

/// Whether an entry of magnitude `magnitude` keeps its block: not below the bound (a NaN
/// included).
fn kept_by(magnitude: f64, bound: f64) -> bool {
    magnitude.partial_cmp(&bound) != Some(std::cmp::Ordering::Less)
}

/// The kept blocks of classes as ranges of columns, adjacent blocks merged.
fn column_runs(kept: &[bool], block_classes: usize, cols: usize) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (block, _) in kept.iter().enumerate().filter(|(_, kept)| **kept) {
        let columns = block * block_classes..((block + 1) * block_classes).min(cols);
        match runs.last_mut() {
            Some(last) if last.end == columns.start => last.end = columns.end,
            _ => runs.push(columns),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_kept_blocks_make_one_run_and_the_last_block_is_cut_at_the_width() {
        let kept = [true, true, false, true, false, true];
        assert_eq!(column_runs(&kept, 4, 22), vec![0..8, 12..16, 20..22]);
        assert_eq!(column_runs(&[false; 3], 4, 12), Vec::<Range<usize>>::new());
    }

    #[test]
    fn blocks_below_the_threshold_are_zeroed_and_skipped() {
        // 4 rows x 6 classes, blocks of 2 x 2; threshold 0.1 with f = 1 and, in row 3, f = 0.
        let filter = GradientFilter::new()
            .with_threshold(0.1)
            .with_block_rows(2)
            .with_block_classes(2);
        #[rustfmt::skip]
        let mut buffer: Vec<f64> = vec![
            0.01, 0.02,   0.5, 0.0,    0.01, 0.0,
            0.0,  -0.09,  0.0, 0.0,    0.0,  0.0,
            0.05, 0.0,    0.0, 0.0,    0.0,  0.0,
            0.0,  0.0,    0.0, 0.0,    0.0,  f64::NAN,
        ];
        let factors = [1.0, 1.0, 1.0, 0.0];
        let runs = filter_chunk::<f64, f64>(&mut buffer, 6, &factors, &filter);
        assert_eq!(runs, vec![2..4]);
        let kept: Vec<usize> = (0..24).filter(|&i| buffer[i] != 0.0).collect();
        // Row 3's NaN is in a row with f = 0, which keeps nothing: zeroed with its block.
        assert_eq!(kept, vec![2]);
    }
}
