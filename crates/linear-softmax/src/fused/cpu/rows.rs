//! The row pass: one chunk's logits turned into row losses, log-sum-exps and `dS` in place.
//!
//! ```text
//! l_i  = (1 - eps) r_i (lse - s_y) + v_i (eps / C) (W lse - sum_k w_k s_k) + beta v_i lse^2 - alpha v_i H_i
//! dS_i = f_i [coef_i softmax(s) - v_i (eps / C) w] - f_i (1 - eps) r_i e_y
//!        + f_i alpha v_i softmax(s) (log softmax(s) + H_i)
//! ```
//!
//! Three passes over each row (bias and max, `exp` and its sum, `dS`), vectorised through
//! `LANES` independent accumulators, in the AVX-512 or AVX2 + FMA build the call's [`Isa`]
//! names, on rayon tasks over the chunk's rows.

use rayon::prelude::*;

use super::float::RawFloat;
use super::isa::{CpuIsa, Isa};
use crate::loss::options::LossOptions;

/// Per-row target data, read once from the host labels and options.
pub(super) struct RowTargets<E> {
    /// `y_i` (0 for ignored rows).
    pub(super) labels: Vec<usize>,
    /// `v_i`, 1 or 0 (absent: all rows count).
    pub(super) valid: Option<Vec<bool>>,
    /// Class weights `w` `[C]` (absent: all 1).
    pub(super) class_weights: Option<Vec<E>>,
    /// `sum_k w_k` (`C` without weights).
    pub(super) weight_sum: f64,
    /// Label smoothing `eps`.
    pub(super) smoothing: f64,
    /// z-loss `beta`.
    pub(super) z_loss: f64,
    /// The entropy bonus `alpha`.
    pub(super) entropy_bonus: f64,
    /// The targets' row weights `rho_i` (absent: all 1): they scale row `i`'s loss here and
    /// its upstream factor `f_i` where the factors are made.
    pub(super) row_scale: Option<Vec<f64>>,
}

impl<E: RawFloat> RowTargets<E> {
    /// `rho_i`.
    pub(super) fn row_scale(&self, row: usize) -> f64 {
        self.row_scale.as_ref().map_or(1.0, |rho| rho[row])
    }

    /// `r_i = v_i w_{y_i}`.
    pub(super) fn row_weight(&self, row: usize) -> f64 {
        if self.valid.as_ref().is_some_and(|valid| !valid[row]) {
            return 0.0;
        }
        self.class_weights
            .as_ref()
            .map_or(1.0, |w| w[self.labels[row]].to_f64())
    }

    pub(super) fn is_valid(&self, row: usize) -> bool {
        self.valid.as_ref().is_none_or(|valid| valid[row])
    }
}

/// The per-row target data of a batch: its labels, class weights and row weights (read from
/// the backend's buffers) and the options, resolved once per call.
pub(super) fn row_targets<E: RawFloat>(
    labels: &[i64],
    class_weights: Option<&[E]>,
    row_scale: Option<Vec<f64>>,
    n_classes: usize,
    options: &LossOptions,
    ignore_index: Option<i64>,
) -> RowTargets<E> {
    let valid = options.ignores_rows(ignore_index).then(|| {
        labels
            .iter()
            .map(|&label| !options.ignores(ignore_index, label))
            .collect()
    });
    RowTargets {
        // Ignored rows point at class 0 (their weight is 0), as on the device.
        labels: labels
            .iter()
            .map(|&label| {
                if options.ignores(ignore_index, label) {
                    0
                } else {
                    label as usize
                }
            })
            .collect(),
        valid,
        class_weights: class_weights.map(<[E]>::to_vec),
        weight_sum: options.class_weight_sum(n_classes),
        smoothing: options.label_smoothing,
        z_loss: options.z_loss,
        entropy_bonus: options.entropy_bonus,
        row_scale,
    }
}

/// Below this many `[R, C]` elements a chunk's row pass runs on the calling thread.
const PARALLEL_ELEMENTS: usize = 1 << 15;

/// What a chunk's row pass needs to know about its rows.
pub(super) struct ChunkRows<'a, E> {
    /// The chunk's first row in the batch.
    pub(super) start: usize,
    /// `b`, added to each row of logits first.
    pub(super) bias: Option<&'a [E]>,
    pub(super) targets: &'a RowTargets<E>,
    /// `f_i`, per row of the chunk.
    pub(super) factors: &'a [f64],
    /// Whether to turn the logits into `dS`.
    pub(super) gradients: bool,
    /// Whether to find each row's prediction (its first maximum).
    pub(super) stats: bool,
    pub(super) n_classes: usize,
    /// The build of the row code, detected once per call.
    pub(super) isa: Isa,
}

/// What the row pass writes per row, for a run of consecutive rows.
pub(in crate::fused) struct RowOutputs<'a, E> {
    /// `l_i`.
    pub(super) losses: &'a mut [E],
    /// `lse_i`.
    pub(super) log_sum_exp: &'a mut [E],
    /// `argmax_k S_ik`, when the statistics are wanted.
    pub(super) predictions: Option<&'a mut [i64]>,
    /// `log A_{i, y_i}`, when the statistics are wanted.
    pub(super) target_log_probabilities: Option<&'a mut [E]>,
    /// `H_i`, when the statistics are wanted.
    pub(super) entropies: Option<&'a mut [E]>,
}

impl<'a, E> RowOutputs<'a, E> {
    /// The number of rows.
    pub(super) fn len(&self) -> usize {
        self.losses.len()
    }

    /// Row `row`'s results.
    #[inline(always)]
    pub(super) fn set(&mut self, row: usize, result: RowResult<E>) {
        self.losses[row] = result.loss;
        self.log_sum_exp[row] = result.log_sum_exp;
        if let Some(predictions) = self.predictions.as_deref_mut() {
            predictions[row] = result.prediction as i64;
        }
        if let Some(log_probabilities) = self.target_log_probabilities.as_deref_mut() {
            log_probabilities[row] = result.target_log_probability;
        }
        if let Some(entropies) = self.entropies.as_deref_mut() {
            entropies[row] = result.entropy;
        }
    }

    /// Rows `start..end`, borrowed.
    pub(super) fn rows(&mut self, start: usize, end: usize) -> RowOutputs<'_, E> {
        RowOutputs {
            losses: &mut self.losses[start..end],
            log_sum_exp: &mut self.log_sum_exp[start..end],
            predictions: self.predictions.as_deref_mut().map(|p| &mut p[start..end]),
            target_log_probabilities: self
                .target_log_probabilities
                .as_deref_mut()
                .map(|t| &mut t[start..end]),
            entropies: self.entropies.as_deref_mut().map(|h| &mut h[start..end]),
        }
    }

    /// Consecutive blocks of `rows` rows (the last may be shorter).
    pub(super) fn split(self, rows: usize) -> Vec<RowOutputs<'a, E>> {
        let blocks = self.len().div_ceil(rows);
        let mut predictions = optional_blocks(self.predictions, rows, blocks).into_iter();
        let mut log_probabilities =
            optional_blocks(self.target_log_probabilities, rows, blocks).into_iter();
        let mut entropies = optional_blocks(self.entropies, rows, blocks).into_iter();
        self.losses
            .chunks_mut(rows)
            .zip(self.log_sum_exp.chunks_mut(rows))
            .map(|(losses, log_sum_exp)| RowOutputs {
                losses,
                log_sum_exp,
                predictions: predictions.next().flatten(),
                target_log_probabilities: log_probabilities.next().flatten(),
                entropies: entropies.next().flatten(),
            })
            .collect()
    }
}

/// `blocks` blocks of `rows` elements of `values`, or `blocks` `None`s.
fn optional_blocks<T>(
    values: Option<&mut [T]>,
    rows: usize,
    blocks: usize,
) -> Vec<Option<&mut [T]>> {
    let mut split: Vec<Option<&mut [T]>> = match values {
        Some(values) => values.chunks_mut(rows).map(Some).collect(),
        None => Vec::new(),
    };
    split.resize_with(blocks, || None);
    split
}

/// One row's results.
#[derive(Clone, Copy, Debug)]
pub(super) struct RowResult<E> {
    /// `l_i`.
    pub(super) loss: E,
    /// `lse_i`.
    pub(super) log_sum_exp: E,
    /// `argmax_k S_ik` (0 unless the chunk wants statistics).
    pub(super) prediction: usize,
    /// `log A_{i, y_i} = (S_{i, y_i} - m_i) - log sum_k exp(S_ik - m_i)`.
    pub(super) target_log_probability: E,
    /// `H_i = log sum_k exp(S_ik - m_i) - sum_k A_ik (S_ik - m_i)` (0 unless the chunk wants
    /// statistics or the entropy bonus is on).
    pub(super) entropy: E,
}

/// The row pass over a chunk's logits `[rows, C]`: row losses and log-sum-exps (and the
/// statistics), the logits turned into `dS` in place (when gradients are wanted), and
/// `colsum(dS)` when `bias`; then `finish_row` on each row's `dS`, while the row is in cache
/// (the backward GEMMs' operand made of it: bf16 rounds it in place).
pub(super) fn row_pass<E: RawFloat>(
    logits: &mut [E],
    chunk: &ChunkRows<'_, E>,
    out: RowOutputs<'_, E>,
    bias: bool,
    finish_row: Option<fn(&mut [E])>,
) -> Option<Vec<E>> {
    let c = chunk.n_classes;
    let rows = out.len();
    let tasks = if rows * c < PARALLEL_ELEMENTS {
        1
    } else {
        (2 * rayon::current_num_threads()).min(rows)
    };
    let rows_per_task = rows.div_ceil(tasks);
    let block = |(task, (logits, mut out)): (usize, (&mut [E], RowOutputs<'_, E>))| {
        let mut partial = bias.then(|| vec![E::ZERO; c]);
        let first = task * rows_per_task;
        for (offset, row) in logits.chunks_exact_mut(c).enumerate() {
            let result = row_dispatch(row, chunk, first + offset, partial.as_deref_mut());
            out.set(offset, result);
            if let Some(finish) = finish_row {
                finish(row);
            }
        }
        partial
    };
    let blocks = logits
        .chunks_mut(rows_per_task * c)
        .zip(out.split(rows_per_task))
        .enumerate();
    let partials: Vec<Option<Vec<E>>> = if tasks == 1 {
        blocks.map(block).collect()
    } else {
        blocks
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(block)
            .collect()
    };
    let mut partials = partials.into_iter().flatten();
    let mut sum = partials.next()?;
    for partial in partials {
        sum.iter_mut().zip(partial).for_each(|(s, p)| *s += p);
    }
    Some(sum)
}

/// One row, with the AVX-512 or AVX2 + FMA build of the row code when the call's [`Isa`] has
/// it (f32 only; f64 uses the portable build).
fn row_dispatch<E: RawFloat>(
    row: &mut [E],
    chunk: &ChunkRows<'_, E>,
    local: usize,
    partial: Option<&mut [E]>,
) -> RowResult<E> {
    #[cfg(target_arch = "x86_64")]
    if std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>() {
        match chunk.isa.level() {
            // SAFETY: `Isa::detect` names these levels only on CPUs that have the features.
            CpuIsa::Avx512 | CpuIsa::Avx512Bf16 => {
                return unsafe { row_avx512(row, chunk, local, partial) };
            }
            // SAFETY: as above.
            CpuIsa::Avx2 => return unsafe { row_avx2(row, chunk, local, partial) },
            CpuIsa::Portable => {}
        }
    }
    row_kernel(row, chunk, local, partial)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn row_avx512<E: RawFloat>(
    row: &mut [E],
    chunk: &ChunkRows<'_, E>,
    local: usize,
    partial: Option<&mut [E]>,
) -> RowResult<E> {
    row_kernel(row, chunk, local, partial)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2<E: RawFloat>(
    row: &mut [E],
    chunk: &ChunkRows<'_, E>,
    local: usize,
    partial: Option<&mut [E]>,
) -> RowResult<E> {
    row_kernel(row, chunk, local, partial)
}

/// Lanes of the independent accumulators that let the reductions vectorise.
pub(super) const LANES: usize = 16;

/// One row `s` (`C` logits, row `local` of the chunk): returns `l_i`, `lse_i`, `log A_{i, y_i}`
/// and, when the chunk wants statistics, the row's prediction; when the chunk wants gradients,
/// overwrites `s` with `dS_i` (adding it to `partial`, the column sums).
///
/// The prediction is the first maximum, or the first NaN when the row has one: the rule of
/// Burn's `argmax` on the CPU backends (and of PyTorch's), so that it equals what
/// `LinearSoftmax::predict` gives for the same logits.
///
/// ```text
/// l_i  = (1 - eps) r_i (lse - s_y) + v_i (eps / C) (W lse - sum_k w_k s_k) + beta v_i lse^2 - alpha v_i H_i
/// dS_i = f_i [coef_i softmax(s) - v_i (eps / C) w] - f_i (1 - eps) r_i e_y
///        + f_i alpha v_i softmax(s) (log softmax(s) + H_i)
/// coef_i = (1 - eps) r_i + (eps / C) v_i W + 2 beta v_i lse_i,   W = sum_k w_k
/// ```
///
/// With the entropy bonus (`alpha > 0`) and gradients, pass 2 keeps the logits and pass 3
/// computes `exp(s_k - max)` again: `log softmax(s)_k` needs `s_k - max`.
///
/// `lse - s_k` is formed as `log sum_j exp(s_j - max) - (s_k - max)` in f64, never from `lse`
/// after `max` was added back (which keeps only the resolution of `max` in `E`): a confident
/// row's loss is as accurate as `log_softmax` makes it.
#[inline(always)]
pub(super) fn row_kernel<E: RawFloat>(
    s: &mut [E],
    chunk: &ChunkRows<'_, E>,
    local: usize,
    partial: Option<&mut [E]>,
) -> RowResult<E> {
    let targets = chunk.targets;
    let row = chunk.start + local;
    let c = chunk.n_classes;
    let label = targets.labels[row];
    let valid = targets.is_valid(row);
    let r = targets.row_weight(row);
    let eps = targets.smoothing;

    // Pass 1: the bias, the row max (and the weighted logit sum for label smoothing).
    let max = match chunk.bias {
        Some(bias) => lane_add_max(s, bias),
        None => lane_max(s),
    };
    // sum_k w_k s_k summed in f64, whose 53 bits keep W max - sum_k w_k s_k (formed below)
    // free of cancellation at E's resolution.
    let weighted_sum = if eps > 0.0 && valid {
        match &targets.class_weights {
            Some(w) => s
                .iter()
                .zip(w)
                .map(|(&s, &w)| s.to_f64() * w.to_f64())
                .sum(),
            None => s.iter().map(|&s| s.to_f64()).sum(),
        }
    } else {
        0.0
    };
    let true_logit = s[label];
    // Before pass 2 overwrites the logits (the row is still in cache).
    let prediction = if chunk.stats { first_max(s, max) } else { 0 };

    // Pass 2: exp(s - max) in place (kept as logits when pass 3 needs them), its sum, and
    // sum_k exp(s_k - max) (s_k - max) for the entropy.
    let alpha = targets.entropy_bonus;
    let keep_logits = alpha > 0.0 && chunk.gradients;
    let wants_entropy = chunk.stats || alpha > 0.0;
    let (sum, spread_out) = if keep_logits {
        lane_exp_sum_spread::<E, true>(s, max)
    } else if wants_entropy {
        lane_exp_sum_spread::<E, false>(s, max)
    } else {
        (lane_exp_sum(s, max), E::ZERO)
    };
    let log_sum = sum.ln();
    let lse = max + log_sum;
    let (max64, log_sum64) = (max.to_f64(), log_sum.to_f64());
    let lse64 = max64 + log_sum64;
    // S_y - max, exact in f64 for E's values.
    let true_shifted = true_logit.to_f64() - max64;
    let v = if valid { 1.0 } else { 0.0 };
    let weighted_shifted = weighted_sum - targets.weight_sum * max64;
    let entropy = if wants_entropy {
        log_sum64 - spread_out.to_f64() / sum.to_f64()
    } else {
        0.0
    };
    let loss = (1.0 - eps) * r * (log_sum64 - true_shifted)
        + v * (eps / c as f64) * (targets.weight_sum * log_sum64 - weighted_shifted)
        + targets.z_loss * v * lse64 * lse64
        - alpha * v * entropy;

    if chunk.gradients {
        // Pass 3: dS_i in place.
        let f = chunk.factors[local];
        let coef = (1.0 - eps) * r
            + (eps / c as f64) * v * targets.weight_sum
            + 2.0 * targets.z_loss * v * lse64;
        let scale = E::of(f * coef / sum.to_f64());
        let spread = f * v * eps / c as f64;
        if keep_logits {
            // f alpha v p_k (log p_k + H) = bonus e_k ((s_k - max) - log_sum + H)
            let bonus = E::of(f * alpha * v / sum.to_f64());
            let offset = E::of(entropy - log_sum64);
            let spread = E::of(spread);
            let step = |s: &mut E, w: E| {
                let shifted = *s - max;
                let e = shifted.exp_nonpositive();
                *s = e * scale - spread * w + bonus * e * (shifted + offset);
            };
            // One loop per case, with no branch inside, so that each vectorises.
            match &targets.class_weights {
                Some(w) => s.iter_mut().zip(w).for_each(|(s, &w)| step(s, w)),
                None => s.iter_mut().for_each(|s| step(s, E::of(1.0))),
            }
        } else {
            match (&targets.class_weights, spread != 0.0) {
                (Some(w), true) => {
                    let spread = E::of(spread);
                    s.iter_mut()
                        .zip(w)
                        .for_each(|(s, &w)| *s = *s * scale - spread * w);
                }
                (None, true) => {
                    let spread = E::of(spread);
                    s.iter_mut().for_each(|s| *s = *s * scale - spread);
                }
                (_, false) => s.iter_mut().for_each(|s| *s = *s * scale),
            }
        }
        s[label] = s[label] - E::of(f * (1.0 - eps) * r);
        if let Some(partial) = partial {
            partial.iter_mut().zip(s.iter()).for_each(|(p, &s)| *p += s);
        }
    }
    RowResult {
        loss: E::of(targets.row_scale(row) * loss),
        log_sum_exp: lse,
        prediction,
        target_log_probability: E::of(true_shifted - log_sum64),
        entropy: E::of(entropy),
    }
}

/// The index of the first NaN of `s` if it has one, else of the first element equal to `max`
/// (the row maximum, which skipped NaNs: comparisons with NaN are false): Burn's `argmax`.
#[inline(always)]
fn first_max<E: RawFloat>(s: &[E], max: E) -> usize {
    // A branch-free fold that vectorises; the position scans stop early.
    let has_nan = s.iter().fold(false, |any, value| any | value.is_nan());
    let position = if has_nan {
        s.iter().position(|value| value.is_nan())
    } else {
        s.iter().position(|&value| value == max)
    };
    position.unwrap_or(0)
}

#[inline(always)]
fn lane_max<E: RawFloat>(s: &[E]) -> E {
    let mut lanes = [E::NEG_INFINITY; LANES];
    let mut blocks = s.chunks_exact(LANES);
    for block in &mut blocks {
        for (lane, &value) in lanes.iter_mut().zip(block) {
            if value > *lane {
                *lane = value;
            }
        }
    }
    let mut max = E::NEG_INFINITY;
    for &value in lanes.iter().chain(blocks.remainder()) {
        if value > max {
            max = value;
        }
    }
    max
}

/// `s += b`, returning `max(s)`.
#[inline(always)]
fn lane_add_max<E: RawFloat>(s: &mut [E], bias: &[E]) -> E {
    let mut lanes = [E::NEG_INFINITY; LANES];
    let mut blocks = s.chunks_exact_mut(LANES);
    let mut bias_blocks = bias.chunks_exact(LANES);
    for (block, bias) in (&mut blocks).zip(&mut bias_blocks) {
        for ((lane, value), &b) in lanes.iter_mut().zip(block.iter_mut()).zip(bias) {
            *value += b;
            if *value > *lane {
                *lane = *value;
            }
        }
    }
    let mut max = E::NEG_INFINITY;
    for (value, &b) in blocks
        .into_remainder()
        .iter_mut()
        .zip(bias_blocks.remainder())
    {
        *value += b;
        if *value > max {
            max = *value;
        }
    }
    lanes
        .iter()
        .fold(max, |max, &lane| if lane > max { lane } else { max })
}

/// `sum_k exp(s_k - max)` and `sum_k exp(s_k - max) (s_k - max)`, with `exp(s - max)` written
/// in place unless `KEEP` (pass 3 of the entropy bonus needs the logits).
#[inline(always)]
fn lane_exp_sum_spread<E: RawFloat, const KEEP: bool>(s: &mut [E], max: E) -> (E, E) {
    let mut lanes = [E::ZERO; LANES];
    let mut spread = [E::ZERO; LANES];
    let step = |value: &mut E, sum: &mut E, spread: &mut E| {
        let shifted = *value - max;
        let e = shifted.exp_nonpositive();
        if !KEEP {
            *value = e;
        }
        *sum += e;
        *spread += e * shifted;
    };
    let mut blocks = s.chunks_exact_mut(LANES);
    for block in &mut blocks {
        for ((lane, spread), value) in lanes.iter_mut().zip(&mut spread).zip(block.iter_mut()) {
            step(value, lane, spread);
        }
    }
    let (mut sum, mut spread_sum) = (E::ZERO, E::ZERO);
    for value in blocks.into_remainder() {
        step(value, &mut sum, &mut spread_sum);
    }
    (
        lanes.iter().fold(sum, |acc, &lane| acc + lane),
        spread.iter().fold(spread_sum, |acc, &lane| acc + lane),
    )
}

#[inline(always)]
fn lane_exp_sum<E: RawFloat>(s: &mut [E], max: E) -> E {
    let mut lanes = [E::ZERO; LANES];
    let mut blocks = s.chunks_exact_mut(LANES);
    for block in &mut blocks {
        for (lane, value) in lanes.iter_mut().zip(block.iter_mut()) {
            let e = (*value - max).exp_nonpositive();
            *value = e;
            *lane += e;
        }
    }
    let mut sum = E::ZERO;
    for value in blocks.into_remainder() {
        let e = (*value - max).exp_nonpositive();
        *value = e;
        sum += e;
    }
    lanes.iter().fold(sum, |acc, &lane| acc + lane)
}
