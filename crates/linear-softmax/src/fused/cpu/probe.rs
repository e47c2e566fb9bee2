//! The chunk loop's three GEMMs, each alone and timed: the per-GEMM rates that the
//! `peak_memory` example prints beside the whole step's.

use std::time::{Duration, Instant};

use burn::tensor::{DType, bf16};

use super::float::RawFloat;
use super::gemm::{MatMut, MatRef, Operand};
use crate::{Error, Result};

/// The time of each GEMM of one chunk of the raw CPU kernel, run as the chunk loop runs them
/// on this CPU and its rayon threads: `[S_r = X_r W, dW += X_r^T dS_r, dX_r = dS_r W^T]`
/// for `rows` rows, `features` features and `classes` classes in `dtype`, each the best of
/// `repeats` runs (after one run that touches every buffer). A measuring tool, not part of
/// the API.
///
/// Returns [`Error::UnsupportedDType`] for a float type other than f32, f64 and bf16, and
/// [`super::cpu_isa`]'s error for an invalid `LINEAR_SOFTMAX_MAX_CPU_ISA`.
#[doc(hidden)]
pub fn chunk_gemm_times(
    rows: usize,
    features: usize,
    classes: usize,
    dtype: DType,
    repeats: usize,
) -> Result<[Duration; 3]> {
    super::cpu_isa()?;
    let shape = [rows, features, classes];
    match dtype {
        DType::F32 => Ok(times::<f32, f32>(shape, f32::from, repeats)),
        DType::F64 => Ok(times::<f64, f64>(shape, f64::from, repeats)),
        DType::BF16 => Ok(times::<f32, bf16>(shape, bf16::from_f32, repeats)),
        other => Err(Error::UnsupportedDType {
            dtype: other,
            device: "the raw CPU kernel".into(),
            reason: "its GEMMs take f32, f64 or bf16",
        }),
    }
}

/// [`chunk_gemm_times`] with operands of type `M` summing in `E`.
fn times<E: RawFloat, M: Operand<E>>(
    [rows, d, c]: [usize; 3],
    operand: impl Fn(f32) -> M,
    repeats: usize,
) -> [Duration; 3] {
    // Small values of both signs; every buffer written before it is timed, so that no page
    // is first touched inside a GEMM.
    let value = |i: usize| ((i * 7919 % 211) as f32 - 105.0) / 1024.0;
    let x: Vec<M> = (0..rows * d).map(|i| operand(value(i))).collect();
    let weight: Vec<M> = (0..d * c).map(|i| operand(value(i + 1))).collect();
    let mut logits: Vec<E> = (0..rows * c).map(|i| E::of(value(i + 2).into())).collect();
    let mut d_weight: Vec<E> = (0..d * c).map(|i| E::of(value(i + 3).into())).collect();
    let mut d_input: Vec<E> = (0..rows * d).map(|i| E::of(value(i + 4).into())).collect();
    let x_chunk = MatRef::row_major(&x, rows, d);
    let weight = MatRef::row_major(&weight, d, c);
    let mut best = [Duration::MAX; 3];
    for run in 0..=repeats.max(1) {
        let start = Instant::now();
        M::gemm(
            x_chunk,
            weight,
            E::ZERO,
            MatMut::row_major(&mut logits, rows, c),
        );
        let s = start.elapsed();
        // dS_r, as the backward GEMMs take it (bf16: rounded in place).
        logits.chunks_mut(c).for_each(M::finish_row);
        let d_logits = M::operand_matrix(&logits, rows, c);
        let start = Instant::now();
        M::gemm(
            x_chunk.t(),
            d_logits,
            E::of(1.0),
            MatMut::row_major(&mut d_weight, d, c),
        );
        let w = start.elapsed();
        let start = Instant::now();
        M::gemm(
            d_logits,
            weight.t(),
            E::ZERO,
            MatMut::row_major(&mut d_input, rows, d),
        );
        let i = start.elapsed();
        if run > 0 {
            for (best, time) in best.iter_mut().zip([s, w, i]) {
                *best = (*best).min(time);
            }
        }
    }
    best
}
