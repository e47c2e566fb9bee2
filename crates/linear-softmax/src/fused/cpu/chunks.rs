//! The kernel for many classes: chunks of `R` rows, three GEMMs each, around the row pass.

use super::filter::filter_chunk;
use super::float::RawFloat;
use super::gemm::{MatMut, MatRef, Operand};
use super::isa::Isa;
use super::rows::{ChunkRows, RowTargets, row_pass};
use super::{Inputs, Outputs};
use crate::loss::GradientFilter;

/// The batch-wide settings of the chunk loop.
pub(super) struct Chunks<'a, E> {
    /// `b`, added in the row pass.
    pub(super) bias: Option<&'a [E]>,
    pub(super) targets: &'a RowTargets<E>,
    /// `f_i` of row `i` of the batch.
    pub(super) factor: &'a dyn Fn(usize) -> f64,
    /// Rows per chunk `R`.
    pub(super) chunk_rows: usize,
    /// Whether the row pass finds the predictions.
    pub(super) stats: bool,
    pub(super) isa: Isa,
    /// The gradient filter: when on, the chunks start at its blocks' first rows.
    pub(super) filter: &'a GradientFilter,
}

/// Runs the batch `chunk_rows` rows at a time through one reused `[R, C]` buffer:
/// `S_r = X_r W`, the row pass (`S_r <- dS_r` in place), `dW += X_r^T dS_r`, `dX_r = dS_r W^T`.
///
/// The GEMMs' operands are of type `M`: `E` itself, or bf16 with `E = f32`, where the row pass
/// rounds each row of `dS_r` once to bf16 after forming it, and every GEMM sums in f32.
pub(super) fn pass<E: RawFloat, M: Operand<E>>(
    inputs: Inputs<'_, M>,
    chunks: &Chunks<'_, E>,
    mut out: Outputs<'_, E>,
) {
    let Inputs {
        x,
        weight,
        features: d,
    } = inputs;
    let Chunks {
        bias,
        targets,
        factor,
        chunk_rows,
        stats,
        isa,
        filter,
    } = *chunks;
    let n_rows = out.rows.len();
    let c = weight.len() / d;
    let weight = MatRef::row_major(weight, d, c);
    let gradients = out.d_input.is_some() || out.d_weight.is_some() || out.d_bias.is_some();
    // Whether the backward GEMMs run, taking `dS_r` as their operand.
    let operands = out.d_input.is_some() || out.d_weight.is_some();
    // Each chunk starts a block of the filter's rows (`fused::prepare` rounds `R`).
    debug_assert!(
        !filter.is_on() || chunk_rows % filter.block_rows == 0 || chunk_rows >= n_rows,
        "chunks of {chunk_rows} rows for blocks of {}",
        filter.block_rows
    );
    let mut buffer = vec![E::ZERO; chunk_rows * c];

    for start in (0..n_rows).step_by(chunk_rows) {
        let end = (start + chunk_rows).min(n_rows);
        let rows = end - start;
        let logits = &mut buffer[..rows * c];
        let x_chunk = MatRef::row_major(&x[start * d..end * d], rows, d);
        // S_r = X_r W (the bias is added in the row pass, while the row is in cache).
        M::gemm(x_chunk, weight, E::ZERO, MatMut::row_major(logits, rows, c));

        let factors: Vec<f64> = (start..end).map(factor).collect();
        let chunk = ChunkRows {
            start,
            bias,
            targets,
            factors: &factors,
            gradients,
            stats,
            n_classes: c,
            isa,
        };
        let partial_bias = row_pass(
            logits,
            &chunk,
            out.rows.rows(start, end),
            out.d_bias.is_some(),
            operands.then_some(M::finish_row as fn(&mut [E])),
        );
        if let (Some(d_bias), Some(partial)) = (&mut out.d_bias, partial_bias) {
            d_bias
                .iter_mut()
                .zip(partial)
                .for_each(|(sum, p)| *sum += p);
        }
        if !operands {
            continue;
        }
        // The classes the backward GEMMs take: all, or those the gradient filter keeps (its
        // filtered blocks zeroed; dS_r's other classes are all zero, which the GEMMs skip).
        let classes = if filter.is_on() {
            filter_chunk::<E, M>(logits, c, &factors, filter)
        } else {
            std::iter::once(0..c).collect()
        };
        let d_logits = M::operand_matrix(logits, rows, c);
        if let Some(d_weight) = &mut out.d_weight {
            // dW += X_r^T dS_r, X_r^T read through strides; the first chunk overwrites the
            // zeros (beta = 0: no read of dW; columns it skips keep their zeros).
            let beta = if start == 0 { E::ZERO } else { E::of(1.0) };
            for columns in &classes {
                let d_weight = MatMut::row_major(d_weight, d, c).columns(columns.clone());
                M::gemm(
                    x_chunk.t(),
                    d_logits.columns(columns.clone()),
                    beta,
                    d_weight,
                );
            }
        }
        if let Some(d_input) = &mut out.d_input {
            // dX_r = dS_r W^T straight into the output, W^T read through strides; a sum over
            // the kept classes' ranges (none: dX_r keeps its zeros).
            for (run, columns) in classes.iter().enumerate() {
                let beta = if run == 0 { E::ZERO } else { E::of(1.0) };
                let d_input = MatMut::row_major(&mut d_input[start * d..end * d], rows, d);
                let d_logits = d_logits.columns(columns.clone());
                M::gemm(d_logits, weight.columns(columns.clone()).t(), beta, d_input);
            }
        }
    }
}
