//! The row-pass kernel: one cube per row, strided loops over the classes, tree reductions in
//! shared memory.

use burn_cubecl::cubecl;
use cubecl::prelude::*;

/// The maximum (`max`) or the sum of `value` over the cube's units, left in `shared[0]`.
#[cube]
fn reduce<F: Float>(shared: &mut Shared<[F]>, value: F, #[comptime] max: bool) {
    let unit = UNIT_POS_X as usize;
    shared[unit] = value;
    sync_cube();
    // A runtime loop (CUBE_DIM_X = units): one barrier per halving.
    let mut stride = (CUBE_DIM_X / 2) as usize;
    while stride > 0 {
        if unit < stride {
            let other = shared[unit + stride];
            if max {
                shared[unit] = F::max(shared[unit], other);
            } else {
                shared[unit] += other;
            }
        }
        sync_cube();
        stride /= 2;
    }
}

/// One cube of `units` (a power of two, = `CUBE_DIM_X`) per row of `logits` `[R, C]`: the row's
/// loss, log-sum-exp, target log-probability and entropy, and its `dS` row in `d_logits`
/// (formulas in `fused/cpu/rows.rs`, the raw CPU kernel's row pass). Every per-row input and output is `[R]`; `class_weights` is `[C]`.
///
/// The loss and the log-probability are formed from the shifted logits `s_k - max` and
/// `log sum_k exp(s_k - max)`, never from `lse - s_y` (which keeps only the resolution of
/// `max`): a confident row's loss is as accurate as `log_softmax` makes it.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(super) fn cross_entropy_rows_kernel<F: Float, I: Numeric>(
    logits: &Tensor<F>,
    labels: &Tensor<I>,
    row_weights: &Tensor<F>,
    valid: &Tensor<F>,
    factors: &Tensor<F>,
    class_weights: &Tensor<F>,
    losses: &mut Tensor<F>,
    log_sum_exp: &mut Tensor<F>,
    target_log_probability: &mut Tensor<F>,
    entropy: &mut Tensor<F>,
    d_logits: &mut Tensor<F>,
    smoothing: f32,
    z_loss: f32,
    weight_sum: f32,
    entropy_bonus: f32,
    #[comptime] units: usize,
    #[define(F, I)] _dtypes: [ElemType; 2],
) {
    // Rows beyond 65535 (a grid dimension's limit) go to the grid's second dimension; the
    // whole cube leaves together, so no barrier is skipped by part of it.
    let row = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    if row >= losses.shape(0) {
        terminate!();
    }
    let unit = UNIT_POS_X as usize;
    let step = CUBE_DIM_X as usize;
    let c = logits.shape(1);
    let base = row * logits.stride(0);
    let mut shared = Shared::<[F]>::new_slice(units);

    // Pass 1: the row max (WGSL has no -inf literal: start from the row's first logit).
    let mut max = logits[base];
    let mut k = unit;
    while k < c {
        max = F::max(max, logits[base + k]);
        k += step;
    }
    reduce::<F>(&mut shared, max, true);
    let max = shared[0];
    sync_cube();

    // Pass 2: sum_k exp(s_k - max), sum_k w_k (s_k - max) for label smoothing, and
    // sum_k exp(s_k - max) (s_k - max) for the entropy.
    let mut sum = F::new(0.0);
    let mut weighted = F::new(0.0);
    let mut spread_out = F::new(0.0);
    let mut k = unit;
    while k < c {
        let shifted = logits[base + k] - max;
        let e = F::exp(shifted);
        weighted += class_weights[k] * shifted;
        sum += e;
        spread_out += e * shifted;
        k += step;
    }
    reduce::<F>(&mut shared, sum, false);
    let sum = shared[0];
    sync_cube();
    reduce::<F>(&mut shared, weighted, false);
    let weighted = shared[0];
    sync_cube();
    reduce::<F>(&mut shared, spread_out, false);
    let spread_out = shared[0];

    let log_sum = F::ln(sum);
    // H = log sum_k exp(s_k - max) - sum_k p_k (s_k - max)
    let row_entropy = log_sum - spread_out / sum;
    let alpha = F::cast_from(entropy_bonus);
    let lse = max + log_sum;
    let label = u32::cast_from(labels[row]) as usize;
    let true_shifted = logits[base + label] - max;
    let eps = F::cast_from(smoothing);
    let beta = F::cast_from(z_loss);
    let total = F::cast_from(weight_sum);
    let spread = eps / F::cast_from(c as u32);
    let r = row_weights[row];
    let v = valid[row];
    if unit == 0 {
        losses[row] = (F::new(1.0) - eps) * r * (log_sum - true_shifted)
            + v * spread * (total * log_sum - weighted)
            + beta * v * lse * lse
            - alpha * v * row_entropy;
        log_sum_exp[row] = lse;
        target_log_probability[row] = true_shifted - log_sum;
        entropy[row] = row_entropy;
    }

    // Pass 3: dS.
    let f = factors[row];
    let coef = (F::new(1.0) - eps) * r + spread * v * total + F::new(2.0) * beta * v * lse;
    let scale = f * coef / sum;
    let spread = f * v * spread;
    let hit = f * (F::new(1.0) - eps) * r;
    // The entropy bonus: f alpha v p_k (log p_k + H), log p_k = (s_k - max) - log_sum.
    let bonus = f * alpha * v / sum;
    let mut k = unit;
    while k < c {
        let shifted = logits[base + k] - max;
        let e = F::exp(shifted);
        let mut d =
            e * scale - spread * class_weights[k] + bonus * e * (shifted - log_sum + row_entropy);
        if k == label {
            d -= hit;
        }
        d_logits[base + k] = d;
        k += step;
    }
}
