//! The raw kernel for few classes (`C <= MAX_CLASSES`, a classifier head): one streaming pass
//! over the rows instead of three GEMMs.
//!
//! A GEMM with ten output columns fills a fraction of its micro-kernel's width and packs all of
//! `X` twice (for `XW` and for `X^T dS`): for `N = 256, D = 784, C = 10` matrixmultiply's three
//! GEMMs take ~0.2 ms on one core, several times their arithmetic, and do not thread at that
//! size. With `C <= 16` a row of logits is one vector (`LANES` = 16 elements), so each row is
//! finished in one visit, `ROWS` = 4 rows at a time so that each vector of `W` read from cache
//! serves four rows:
//!
//! ```text
//! rayon over blocks of rows; per group of 4 rows r of the block:
//!     s_r       = sum_k x_rk W_k           W padded to [D, 16]; 2 accumulators per row
//!     s_r      <- dS_r                     the chunk kernel's row code (bias, loss, lse, dS, db)
//!     dX_r      = sum_j dS_rj W^T_j        32 features at a time
//!     dW^T_j   += sum_r dS_rj x_r          the block's own [C, D] part, 32 features at a time
//! dW = the sum of the blocks' parts, transposed
//! ```
//!
//! On AVX-512 the three products of a full `f32` group are intrinsics (`few_classes/avx512.rs`); everything
//! else runs the generic loops below, with fused multiply-adds in the AVX2 build. Against the
//! GEMMs: 0.22-0.26 ms vs 0.25-0.27 ms per step at N = 256, 1.49 ms vs 2.48 ms at N = 2560
//! (docs/BENCHMARKS_HISTORY.md). The options, per-row factors and upstream gradients are exactly the chunk
//! kernel's: the row code is shared, only the matrix products differ.

use rayon::prelude::*;

use super::float::RawFloat;
use super::isa::CpuIsa;
use super::rows::{ChunkRows, LANES, RowOutputs, row_kernel};
use super::{Inputs, Outputs};

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Up to this many classes the streaming pass replaces the GEMMs: one row of logits is
/// `LANES` elements.
pub(crate) const MAX_CLASSES: usize = LANES;

/// Features per accumulator block of `dX` and `dW` (two vector registers in f32, per row).
const FEATURE_BLOCK: usize = 2 * LANES;

/// Below this many multiply-adds (`N D`) the pass runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 15;

/// Runs the pass over the whole batch; `chunk` describes it (`start = 0`, one factor per row).
pub(super) fn pass<E: RawFloat>(
    inputs: Inputs<'_, E>,
    chunk: &ChunkRows<'_, E>,
    out: Outputs<'_, E>,
) {
    let (d, c) = (inputs.features, chunk.n_classes);
    let n = out.rows.len();
    debug_assert!(c <= MAX_CLASSES && inputs.x.len() == n * d);
    // W [D, C] padded to [D, LANES], and W^T [C, D] (each class's weights contiguous).
    let mut weight_padded = vec![E::ZERO; d * LANES];
    let mut weight_t = vec![E::ZERO; c * d];
    for (k, (row, padded)) in inputs
        .weight
        .chunks_exact(c)
        .zip(weight_padded.chunks_exact_mut(LANES))
        .enumerate()
    {
        padded[..c].copy_from_slice(row);
        for (j, &w) in row.iter().enumerate() {
            weight_t[j * d + k] = w;
        }
    }
    let parallel = n * d >= PARALLEL_WORK;
    let tasks = if parallel {
        rayon::current_num_threads().min(n)
    } else {
        1
    };
    let rows_per_task = n.div_ceil(tasks);

    let mut d_input_blocks: Vec<Option<&mut [E]>> = match out.d_input {
        Some(d_input) => d_input.chunks_mut(rows_per_task * d).map(Some).collect(),
        None => Vec::new(),
    };
    d_input_blocks.resize_with(tasks, || None);
    let blocks: Vec<Block<'_, E>> = out
        .rows
        .split(rows_per_task)
        .into_iter()
        .zip(d_input_blocks)
        .enumerate()
        .map(|(task, (rows, d_input))| Block {
            first: task * rows_per_task,
            rows,
            d_input,
        })
        .collect();
    let shared = Shared {
        x: inputs.x,
        weight_padded: &weight_padded,
        weight_t: &weight_t,
        d,
        chunk,
        want_bias: out.d_bias.is_some(),
        want_weight: out.d_weight.is_some(),
    };
    let run = |block: Block<'_, E>| block_dispatch(block, &shared);
    let partials: Vec<Partials<E>> = if parallel {
        blocks.into_par_iter().map(run).collect()
    } else {
        blocks.into_iter().map(run).collect()
    };

    if let Some(d_bias) = out.d_bias {
        for partial in partials.iter().filter_map(|p| p.d_bias.as_ref()) {
            d_bias
                .iter_mut()
                .zip(partial)
                .for_each(|(sum, &p)| *sum += p);
        }
    }
    if let Some(d_weight) = out.d_weight {
        // dW [D, C] = the sum of the blocks' dW^T [C, D], transposed.
        for partial in partials.iter().filter_map(|p| p.d_weight_t.as_ref()) {
            for (k, row) in d_weight.chunks_exact_mut(c).enumerate() {
                for (j, sum) in row.iter_mut().enumerate() {
                    *sum += partial[j * d + k];
                }
            }
        }
    }
}

/// What every block reads.
struct Shared<'a, E> {
    x: &'a [E],
    weight_padded: &'a [E],
    weight_t: &'a [E],
    d: usize,
    chunk: &'a ChunkRows<'a, E>,
    want_bias: bool,
    want_weight: bool,
}

/// One block of consecutive rows and its slices of the row outputs.
struct Block<'a, E> {
    first: usize,
    rows: RowOutputs<'a, E>,
    d_input: Option<&'a mut [E]>,
}

/// A block's share of the sums over rows: `colsum(dS)` and `dS^T X` (`[C, D]`).
struct Partials<E> {
    d_bias: Option<Vec<E>>,
    d_weight_t: Option<Vec<E>>,
}

/// The block with the AVX-512 or AVX2 + FMA build when the call's `Isa` has it, the portable
/// build (separate multiply and add) otherwise.
fn block_dispatch<E: RawFloat>(block: Block<'_, E>, shared: &Shared<'_, E>) -> Partials<E> {
    #[cfg(target_arch = "x86_64")]
    match shared.chunk.isa.level() {
        // SAFETY: `Isa::detect` names these levels only on CPUs that have the features.
        CpuIsa::Avx512 | CpuIsa::Avx512Bf16 => return unsafe { block_avx512(block, shared) },
        // SAFETY: as above.
        CpuIsa::Avx2 => return unsafe { block_avx2(block, shared) },
        CpuIsa::Portable => {}
    }
    block_rows::<E, false, false>(block, shared)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn block_avx512<E: RawFloat>(block: Block<'_, E>, shared: &Shared<'_, E>) -> Partials<E> {
    block_rows::<E, true, true>(block, shared)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_avx2<E: RawFloat>(block: Block<'_, E>, shared: &Shared<'_, E>) -> Partials<E> {
    block_rows::<E, true, false>(block, shared)
}

/// `a b + c`: fused where the build has FMA instructions.
#[inline(always)]
fn madd<E: RawFloat, const FMA: bool>(a: E, b: E, c: E) -> E {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// The pass over one block of rows, `ROWS` rows at a time (the rest one by one). `FMA`: the
/// build has fused multiply-adds; `AVX512`: full `f32` groups may take the intrinsics.
#[inline(always)]
fn block_rows<E: RawFloat, const FMA: bool, const AVX512: bool>(
    block: Block<'_, E>,
    shared: &Shared<'_, E>,
) -> Partials<E> {
    let c = shared.chunk.n_classes;
    let d = shared.d;
    let rows = block.rows.len();
    let mut state = BlockState {
        d_bias: shared.want_bias.then(|| vec![E::ZERO; c]),
        d_weight_t: shared.want_weight.then(|| vec![E::ZERO; c * d]),
        rows: block.rows,
        d_input: block.d_input,
    };
    let grouped = rows - rows % ROWS;
    for offset in (0..grouped).step_by(ROWS) {
        row_group::<E, FMA, AVX512, ROWS>(shared, block.first, offset, &mut state);
    }
    for offset in grouped..rows {
        row_group::<E, FMA, AVX512, 1>(shared, block.first, offset, &mut state);
    }
    Partials {
        d_bias: state.d_bias,
        d_weight_t: state.d_weight_t,
    }
}

/// Rows handled together: each vector of `W` (logits, `dX`) or of `dW^T` (its update) loaded
/// serves `ROWS` rows.
const ROWS: usize = 4;

/// A block's outputs and running sums while its rows are processed.
struct BlockState<'a, E> {
    d_bias: Option<Vec<E>>,
    /// The block's `dS^T X` `[C, D]`.
    d_weight_t: Option<Vec<E>>,
    rows: RowOutputs<'a, E>,
    d_input: Option<&'a mut [E]>,
}

/// `R` consecutive rows of a block, starting at `offset` within it.
#[inline(always)]
fn row_group<E: RawFloat, const FMA: bool, const AVX512: bool, const R: usize>(
    shared: &Shared<'_, E>,
    first: usize,
    offset: usize,
    state: &mut BlockState<'_, E>,
) {
    let Shared {
        x,
        weight_padded,
        weight_t,
        d,
        chunk,
        ..
    } = *shared;
    let c = chunk.n_classes;
    let x_rows: [&[E]; R] =
        std::array::from_fn(|r| &x[(first + offset + r) * d..(first + offset + r + 1) * d]);
    let mut logits = logits_dispatch::<E, FMA, AVX512, R>(&x_rows, weight_padded);
    for (r, logits) in logits.iter_mut().enumerate() {
        let local = offset + r;
        let result = row_kernel(
            &mut logits[..c],
            chunk,
            first + local,
            state.d_bias.as_deref_mut(),
        );
        state.rows.set(local, result);
    }
    if !chunk.gradients {
        return;
    }
    // `AVX512` is true only in `block_avx512`, which runs when the call's `Isa` is AVX-512.
    #[cfg(target_arch = "x86_64")]
    if AVX512 && let Some(groups) = F32Rows::of(&x_rows, &logits) {
        if let Some(d_input) = state.d_input.as_deref_mut() {
            let d_rows = as_f32_mut(&mut d_input[offset * d..(offset + ROWS) * d]);
            // SAFETY: the CPU supports AVX-512 (see `AVX512` above).
            unsafe { avx512::d_input_rows(d_rows, groups.d_logits, c, as_f32(weight_t)) };
        }
        if let Some(d_weight_t) = state.d_weight_t.as_deref_mut() {
            let d_weight_t = as_f32_mut(d_weight_t);
            // SAFETY: as above.
            unsafe { avx512::d_weight_rows(d_weight_t, &groups.x_rows, groups.d_logits, c) };
        }
        return;
    }
    if let Some(d_input) = state.d_input.as_deref_mut() {
        let d_rows = &mut d_input[offset * d..(offset + R) * d];
        d_input_rows::<E, FMA, R>(d_rows, &logits, c, weight_t);
    }
    if let Some(d_weight_t) = state.d_weight_t.as_deref_mut() {
        d_weight_rows::<E, FMA, R>(d_weight_t, &x_rows, &logits, c);
    }
}

/// A full group of `ROWS` rows in `f32`, as the AVX-512 micro-kernels take it.
#[cfg(target_arch = "x86_64")]
struct F32Rows<'a> {
    x_rows: [&'a [f32]; ROWS],
    d_logits: &'a [[f32; LANES]; ROWS],
}

#[cfg(target_arch = "x86_64")]
impl<'a> F32Rows<'a> {
    /// `Some` when `E` is `f32` and the group has `ROWS` rows.
    fn of<E: RawFloat, const R: usize>(
        x_rows: &[&'a [E]; R],
        d_logits: &'a [[E; LANES]; R],
    ) -> Option<Self> {
        if R != ROWS || std::any::TypeId::of::<E>() != std::any::TypeId::of::<f32>() {
            return None;
        }
        // SAFETY: E is f32 and R is ROWS (checked above): the same types.
        let d_logits =
            unsafe { &*(d_logits as *const [[E; LANES]; R]).cast::<[[f32; LANES]; ROWS]>() };
        Some(Self {
            x_rows: std::array::from_fn(|r| as_f32(x_rows[r])),
            d_logits,
        })
    }
}

/// `values` as `f32`; only called where `E` is `f32`.
#[cfg(target_arch = "x86_64")]
fn as_f32<E: RawFloat>(values: &[E]) -> &[f32] {
    assert!(std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>());
    // SAFETY: E is f32 (asserted above).
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast(), values.len()) }
}

/// `values` as `f32`, mutably; only called where `E` is `f32`.
#[cfg(target_arch = "x86_64")]
fn as_f32_mut<E: RawFloat>(values: &mut [E]) -> &mut [f32] {
    assert!(std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>());
    // SAFETY: E is f32 (asserted above).
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast(), values.len()) }
}

/// [`logits_rows`], by the AVX-512 micro-kernel for full `f32` groups.
#[inline(always)]
fn logits_dispatch<E: RawFloat, const FMA: bool, const AVX512: bool, const R: usize>(
    x_rows: &[&[E]; R],
    weight_padded: &[E],
) -> [[E; LANES]; R] {
    // `AVX512` is true only in `block_avx512`, which runs when the call's `Isa` is AVX-512.
    #[cfg(target_arch = "x86_64")]
    if AVX512 && R == ROWS && std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>() {
        let x_f32: [&[f32]; ROWS] = std::array::from_fn(|r| as_f32(x_rows[r]));
        // SAFETY: the CPU supports AVX-512 (see `AVX512` above).
        let logits = unsafe { avx512::logits_rows(&x_f32, as_f32(weight_padded)) };
        // SAFETY: E is f32 and R is ROWS (checked above): the same type.
        return unsafe { std::mem::transmute_copy(&logits) };
    }
    logits_rows::<E, FMA, R>(x_rows, weight_padded)
}

/// `s_r = x_r W` for `R` rows, `W` padded to `[D, LANES]`: two accumulators per row (even and
/// odd features, summed at the end), each a vector of `LANES` classes.
#[inline(always)]
fn logits_rows<E: RawFloat, const FMA: bool, const R: usize>(
    x_rows: &[&[E]; R],
    weight_padded: &[E],
) -> [[E; LANES]; R] {
    let mut accumulators = [[[E::ZERO; LANES]; R]; 2];
    let d = x_rows[0].len();
    let pairs = d / 2;
    for k in 0..pairs {
        for (u, accumulators) in accumulators.iter_mut().enumerate() {
            let feature = 2 * k + u;
            let w = &weight_padded[feature * LANES..(feature + 1) * LANES];
            for (accumulator, x_row) in accumulators.iter_mut().zip(x_rows) {
                let x = x_row[feature];
                for (a, &w) in accumulator.iter_mut().zip(w) {
                    *a = madd::<E, FMA>(x, w, *a);
                }
            }
        }
    }
    let [mut sums, rest] = accumulators;
    for feature in 2 * pairs..d {
        let w = &weight_padded[feature * LANES..(feature + 1) * LANES];
        for (sum, x_row) in sums.iter_mut().zip(x_rows) {
            let x = x_row[feature];
            for (a, &w) in sum.iter_mut().zip(w) {
                *a = madd::<E, FMA>(x, w, *a);
            }
        }
    }
    for (sum, rest) in sums.iter_mut().zip(rest) {
        for (a, b) in sum.iter_mut().zip(rest) {
            *a += b;
        }
    }
    sums
}

/// `dX_r = sum_j dS_rj W^T_j` for `R` rows (`d_rows` is `[R, D]`), `FEATURE_BLOCK` features
/// at a time (fixed-size loops, so that the accumulators stay in vector registers).
#[inline(always)]
fn d_input_rows<E: RawFloat, const FMA: bool, const R: usize>(
    d_rows: &mut [E],
    d_logits: &[[E; LANES]; R],
    c: usize,
    weight_t: &[E],
) {
    let d = d_rows.len() / R;
    let full = d - d % FEATURE_BLOCK;
    for first in (0..full).step_by(FEATURE_BLOCK) {
        let mut accumulators = [[E::ZERO; FEATURE_BLOCK]; R];
        for (j, w_row) in weight_t.chunks_exact(d).take(c).enumerate() {
            let w = block::<E>(w_row, first);
            for (accumulator, g) in accumulators.iter_mut().zip(d_logits) {
                let g = g[j];
                for (a, &w) in accumulator.iter_mut().zip(w) {
                    *a = madd::<E, FMA>(g, w, *a);
                }
            }
        }
        for (r, accumulator) in accumulators.iter().enumerate() {
            d_rows[r * d + first..r * d + first + FEATURE_BLOCK].copy_from_slice(accumulator);
        }
    }
    // The last d % FEATURE_BLOCK features (loops, not closures: closures do not inherit the
    // caller's target features).
    for k in full..d {
        for (r, g) in d_logits.iter().enumerate() {
            let mut sum = E::ZERO;
            for (&g, w_row) in g[..c].iter().zip(weight_t.chunks_exact(d)) {
                sum = madd::<E, FMA>(g, w_row[k], sum);
            }
            d_rows[r * d + k] = sum;
        }
    }
}

/// The `FEATURE_BLOCK` elements of `values` from `first`.
#[inline(always)]
fn block<E: RawFloat>(values: &[E], first: usize) -> &[E; FEATURE_BLOCK] {
    values[first..first + FEATURE_BLOCK]
        .try_into()
        .expect("a whole block")
}

/// `dW^T += sum_r dS_r^T x_r` for `R` rows (`d_weight_t` is `[C, D]`): per block of
/// `FEATURE_BLOCK` features and class, one load and store of `dW^T` for `R` rows' updates.
#[inline(always)]
fn d_weight_rows<E: RawFloat, const FMA: bool, const R: usize>(
    d_weight_t: &mut [E],
    x_rows: &[&[E]; R],
    d_logits: &[[E; LANES]; R],
    c: usize,
) {
    let d = x_rows[0].len();
    let full = d - d % FEATURE_BLOCK;
    for first in (0..full).step_by(FEATURE_BLOCK) {
        let xs: [&[E; FEATURE_BLOCK]; R] = std::array::from_fn(|r| block::<E>(x_rows[r], first));
        for (j, d_w) in d_weight_t.chunks_exact_mut(d).take(c).enumerate() {
            let out: &mut [E; FEATURE_BLOCK] = (&mut d_w[first..first + FEATURE_BLOCK])
                .try_into()
                .expect("a whole block");
            let mut accumulator = *out;
            for (x, g) in xs.iter().zip(d_logits) {
                let g = g[j];
                for (a, &x) in accumulator.iter_mut().zip(x.iter()) {
                    *a = madd::<E, FMA>(g, x, *a);
                }
            }
            *out = accumulator;
        }
    }
    // The last d % FEATURE_BLOCK features.
    for k in full..d {
        for (j, d_w) in d_weight_t.chunks_exact_mut(d).take(c).enumerate() {
            for (x, g) in x_rows.iter().zip(d_logits) {
                d_w[k] = madd::<E, FMA>(g[j], x[k], d_w[k]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::isa::Isa;
    use super::super::rows::RowTargets;
    use super::*;

    /// f32 sums of up to 37 products, in different orders and with one or two roundings per
    /// product: relative to the largest value compared.
    const SUM_ORDER: f32 = 1e-5;

    /// The portable build (separate multiply and add), the generic FMA build and the dispatched
    /// build (the AVX-512 intrinsics, on a CPU that has them) compute the same pass: the
    /// integration tests only reach the build the test machine dispatches to.
    #[test]
    fn every_build_of_the_pass_agrees() {
        // D = 37: one 32-feature step and a remainder; 13 rows: three groups of four and one.
        let (n, d, c) = (13, 37, 10);
        let value = |i: usize, scale: f32| ((i * 7919 % 101) as f32 / 50.0 - 1.0) * scale;
        let x: Vec<f32> = (0..n * d).map(|i| value(i, 1.0)).collect();
        let weight: Vec<f32> = (0..d * c).map(|i| value(i + 3, 0.3)).collect();
        let bias: Vec<f32> = (0..c).map(|i| value(i + 5, 0.1)).collect();
        let targets = RowTargets::<f32> {
            labels: (0..n).map(|i| i % c).collect(),
            valid: None,
            class_weights: None,
            weight_sum: c as f64,
            smoothing: 0.1,
            z_loss: 0.01,
            entropy_bonus: 0.0,
            row_scale: None,
        };
        let factors = vec![1.0 / n as f64; n];
        let chunk = ChunkRows {
            start: 0,
            bias: Some(&bias),
            targets: &targets,
            factors: &factors,
            gradients: true,
            stats: true,
            n_classes: c,
            isa: Isa::detect(),
        };
        let mut weight_padded = vec![0.0; d * LANES];
        let mut weight_t = vec![0.0; c * d];
        for k in 0..d {
            for j in 0..c {
                weight_padded[k * LANES + j] = weight[k * c + j];
                weight_t[j * d + k] = weight[k * c + j];
            }
        }
        let shared = Shared {
            x: &x,
            weight_padded: &weight_padded,
            weight_t: &weight_t,
            d,
            chunk: &chunk,
            want_bias: true,
            want_weight: true,
        };
        let run = |build: &dyn Fn(Block<'_, f32>) -> Partials<f32>| -> ([Vec<f32>; 6], Vec<i64>) {
            let (mut losses, mut lse, mut d_input) = (vec![0.0; n], vec![0.0; n], vec![0.0; n * d]);
            let (mut predictions, mut log_probabilities) = (vec![0; n], vec![0.0; n]);
            let partials = build(Block {
                first: 0,
                rows: RowOutputs {
                    losses: &mut losses,
                    log_sum_exp: &mut lse,
                    predictions: Some(&mut predictions),
                    target_log_probabilities: Some(&mut log_probabilities),
                    entropies: None,
                },
                d_input: Some(&mut d_input),
            });
            let d_weight_t = partials.d_weight_t.expect("wanted");
            let d_bias = partials.d_bias.expect("wanted");
            (
                [losses, lse, d_input, d_weight_t, d_bias, log_probabilities],
                predictions,
            )
        };
        let (portable, portable_predictions) =
            run(&|block| block_rows::<f32, false, false>(block, &shared));
        let (fused, fused_predictions) =
            run(&|block| block_rows::<f32, true, false>(block, &shared));
        let (dispatched, dispatched_predictions) = run(&|block| block_dispatch(block, &shared));
        // The logits of these rows are far from ties: every build predicts the same classes.
        assert_eq!(portable_predictions, fused_predictions);
        assert_eq!(portable_predictions, dispatched_predictions);
        let names = [
            "losses",
            "lse",
            "dX",
            "dW^T",
            "db",
            "target log-probabilities",
        ];
        for (name, (p, (f, x))) in names
            .iter()
            .zip(portable.iter().zip(fused.iter().zip(&dispatched)))
        {
            let tolerance = SUM_ORDER * p.iter().fold(1.0_f32, |m, v| m.max(v.abs()));
            for ((a, b), e) in p.iter().zip(f).zip(x) {
                assert!(
                    (a - b).abs() <= tolerance,
                    "{name}: portable {a} vs fma {b}"
                );
                assert!(
                    (a - e).abs() <= tolerance,
                    "{name}: portable {a} vs dispatched {e}"
                );
            }
        }
        // And the pass computed something: positive losses, a non-zero dW.
        assert!(portable[0].iter().all(|&l| l.is_finite() && l > 0.0));
        assert!(portable[3].iter().any(|&g| g != 0.0));
    }
}
