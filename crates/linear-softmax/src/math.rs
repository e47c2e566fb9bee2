//! The math of the head, one `*_forward` / `*_backward` pair per piece, side by side: the
//! hand-derived backward as explicit tensor code. The manual path is these pairs composed
//! (forward, then backward); the autodiff path and the fused op's tensor kernel use the same
//! forward pieces; the raw CPU and Cube kernels apply the same formulas row by row.
//!
//! The pairs (see `docs/MATH.md`):
//!
//! ```text
//! linear:                S = X W + b            dW = X^T dS, db = colsum(dS), dX = dS W^T
//! softcap:               S' = c tanh(S / c)     dS = dS' (1 - (S' / c)^2)
//! temperature:           S'' = S' / tau         dS' = dS'' / tau
//! softmax cross-entropy: l_i = rho_i [ sum_k P_ik (lse_i - S'_ik) + beta v_i lse_i^2 - alpha v_i H_i ]
//!                        dS'_i = g_i rho_i [ (sum_k P_ik + 2 beta v_i lse_i) A_i - P_i
//!                                            + alpha v_i A_i (log A_i + H_i) ]
//! reduction:             L = sum_i l_i / den    g_i = dL / den
//! L2 penalty:            lambda sum(W^2)        dW += 2 lambda W
//! ```
//!
//! `P` is the weighted target: for class indices `P_i = (1 - eps) v_i w_{y_i} e_{y_i} +
//! (eps / C) v_i w`, for probabilities `P_i = w * ((1 - eps) T_i + eps / C)`. Without options
//! this is the classic `dS = (A - Y) / N`: per sample, the true class's column of `dW` gets
//! `(a_y - 1) x`, every other column `a_j x`. Softmax and cross-entropy are differentiated
//! together (no softmax Jacobian), and the one-hot `Y` is never materialised: the label
//! terms are scattered onto `A`.
//!
//! z-loss: `d(beta lse_i^2)/dS'_ik = 2 beta lse_i A_ik`, since `d lse_i / dS'_ik = A_ik`.
//! Entropy `H_i = -sum_k A_ik log A_ik`: with `d log A_ij / dS'_ik = [j = k] - A_ik`,
//! `dH_i/dS'_ik = -sum_j A_ij ([j = k] - A_ik)(log A_ij + 1) = -A_ik (log A_ik + H_i)`, so the
//! bonus `-alpha H_i` adds `alpha A_ik (log A_ik + H_i)`; `log A_ik = (S'_ik - m_i) -
//! log sum_j exp(S'_ij - m_i)`, never `log` of an underflowed `A_ik`.
//! Row weights `rho_i` (the targets', 1 without them) scale a row's whole loss, so they scale
//! its gradient alike: the kernels apply them to the row's loss and its upstream `g_i`.
//! softcap: `d(c tanh(S / c))/dS = 1 - tanh^2(S / c) = 1 - (S' / c)^2`, reusing `S'`.
//! In the softmax cross-entropy line `S'` stands for the logits the softmax sees: capped,
//! then divided by the temperature (`S''`; either step absent when its option is off).
//!
//! Distillation (targets that carry a teacher) replaces the softmax cross-entropy pair by its
//! own, in `math/distillation.rs`: the generalised JSD of the student's and the teacher's
//! tempered distributions, mixed with the hard-label cross-entropy, and its gradient
//! `dD/dS = (Q - P) / tau` (forward KL), `Q (lq - lp - D) / tau` (reverse KL),
//! `(1 - beta) Q (lq - log M - G) / tau` (JSD).

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;

use crate::loss::resolved::{ResolvedLoss, ResolvedTargets};
use crate::loss::{LossOptions, LossReduction, Targets};

pub(crate) mod block_filter;
pub(crate) mod distillation;

/// Scores `S = X W + b`.
///
/// # Shapes
/// - `x`: `[N, D]`, `weight`: `[D, C]`, `bias`: `[C]`, result: `[N, C]`
pub fn linear_forward(x: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    let logits = x.matmul(weight);
    match bias {
        Some(bias) => logits + bias.unsqueeze_dim(0),
        None => logits,
    }
}

/// Gradients of [`linear_forward`] given the upstream `d_logits = dL/dS`.
#[derive(Clone, Debug)]
pub struct LinearGradients {
    /// `dW = X^T dS`, `[D, C]`.
    pub d_weight: Tensor<2>,
    /// `db = sum_i dS_i`, `[C]` (when the layer has a bias).
    pub d_bias: Option<Tensor<1>>,
    /// `dX = dS W^T`, `[N, D]`.
    pub d_input: Tensor<2>,
}

/// Backward of [`linear_forward`]: `dW = X^T dS`, `db = colsum(dS)`, `dX = dS W^T`.
///
/// # Shapes
/// - `x`: `[N, D]`, `weight`: `[D, C]`, `d_logits`: `[N, C]`
pub fn linear_backward(
    x: Tensor<2>,
    weight: Tensor<2>,
    has_bias: bool,
    d_logits: Tensor<2>,
) -> LinearGradients {
    let d_bias = has_bias.then(|| d_logits.clone().sum_dim(0).squeeze_dim(0));
    let d_input = d_logits.clone().matmul(weight.transpose());
    let d_weight = x.transpose().matmul(d_logits);
    LinearGradients {
        d_weight,
        d_bias,
        d_input,
    }
}

/// Soft-capping `S' = c tanh(S / c)` (Gemma 2): logits bounded by `c`, unchanged near 0.
pub fn softcap_forward(logits: Tensor<2>, cap: f64) -> Tensor<2> {
    // `* (1 / c)`, not `/ c`: on an autodiff device, Burn 0.22.1's `div_scalar` backward rounds
    // the scalar to f32, which would cost f64 gradients 8 digits.
    (logits * (1.0 / cap)).tanh() * cap
}

/// Backward of [`softcap_forward`] from its output: `dS = dS' (1 - (S' / c)^2)`.
pub fn softcap_backward(capped_logits: Tensor<2>, cap: f64, d_capped: Tensor<2>) -> Tensor<2> {
    d_capped * ((capped_logits / cap).square().neg() + 1.0)
}

/// Temperature `S'' = S' / tau`: the softmax of the tempered logits is the distribution a
/// sampler at temperature `tau` draws from.
pub fn temperature_forward(logits: Tensor<2>, temperature: f64) -> Tensor<2> {
    // `* (1 / tau)`, not `/ tau`: see `softcap_forward`.
    logits * (1.0 / temperature)
}

/// Backward of [`temperature_forward`]: `dS' = dS'' / tau`.
pub fn temperature_backward(temperature: f64, d_tempered: Tensor<2>) -> Tensor<2> {
    d_tempered * (1.0 / temperature)
}

/// The targets side of the loss, as the backward needs it.
// One value per loss call: the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum WeightedTarget {
    /// Class indices: `P_i = (1 - eps) r_i e_{y_i} + (eps / C) v_i w` with `r_i = v_i w_{y_i}`.
    Classes {
        /// `[N, 1]` labels (ignored rows point at class 0, with `r_i = v_i = 0`).
        labels: Tensor<2, Int>,
        /// `r_i`, `[N, 1]` (absent: all 1).
        row_weights: Option<Tensor<2>>,
        /// `v_i`, `[N, 1]` (absent: all 1).
        valid: Option<Tensor<2>>,
        /// `w`, `[1, C]` (absent: all 1).
        class_weights: Option<Tensor<2>>,
        /// `eps`.
        smoothing: f64,
        /// `sum_k w_k` (`C` without weights), from the host options.
        weight_sum: f64,
    },
    /// Probabilities: `P = w * ((1 - eps) T + eps / C)`, `[N, C]`.
    Probabilities(Tensor<2>),
}

/// What [`softmax_cross_entropy_backward`] needs from the forward pass.
#[derive(Clone, Debug)]
pub struct SoftmaxCrossEntropyCache {
    /// `A = softmax(S')`, `[N, C]`.
    pub probabilities: Tensor<2>,
    /// `lse_i`, `[N]`.
    pub log_sum_exp: Tensor<1>,
    /// The mean's denominator, `[1]`: `sum_i rho_i v_i w_{y_i}`, or `sum_i rho_i` (`N`) for
    /// probability targets, or the options' `mean_denominator`.
    pub denominator: Tensor<1>,
    /// `m_i = max_k S'_ik`, `[N, 1]`.
    pub(crate) row_max: Tensor<2>,
    /// `log sum_k exp(S'_ik - m_i) = lse_i - m_i`, `[N, 1]`, as computed (not from `lse_i`).
    pub(crate) log_sum: Tensor<2>,
    /// The targets' row weights `rho_i`, `[N, 1]` (absent: all 1).
    row_scale: Option<Tensor<2>>,
    target: WeightedTarget,
    z_loss: f64,
    /// What the entropy bonus's backward needs, when it is on.
    entropy_bonus: Option<EntropyBonus>,
}

/// The entropy bonus `-alpha v_i H_i` of [`SoftmaxCrossEntropyCache`].
#[derive(Clone, Debug)]
struct EntropyBonus {
    /// `log A = (S' - m) - log sum_k exp(S'_k - m)`, `[N, C]`.
    log_probabilities: Tensor<2>,
    /// `H_i`, `[N, 1]`.
    entropy: Tensor<2>,
    /// `v_i`, `[N, 1]` (absent: all 1).
    valid: Option<Tensor<2>>,
    alpha: f64,
}

/// Per-row loss `l_i = rho_i [ sum_k P_ik (lse_i - S'_ik) + beta v_i lse_i^2 ]` (see the module
/// docs; `rho_i` the targets' row weights, 1 without them), with
/// `lse_i = m_i + log sum_k exp(S'_ik - m_i)`, `m_i = max_k S'_ik`, and what the backward
/// needs.
///
/// The loss is formed from the shifted logits, as `log sum_k exp(S'_ik - m_i) - (S'_ik - m_i)`:
/// never from `log A_ik`, so it stays finite when a probability underflows to 0, and never
/// from `lse_i - S'_ik` after `m_i` was added back into `lse_i`, which would keep only the
/// resolution of `m_i` (in f32, `2^-24 |m_i|`: all of a confident row's loss of 1e-6 at
/// `m_i = 40`). A confident row's loss is as accurate as PyTorch's `log_softmax` gives it.
///
/// # Shapes
/// - `logits`: `[N, C]` (already soft-capped if that option is on), row losses: `[N]`
pub fn softmax_cross_entropy_forward(
    logits: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> (Tensor<1>, SoftmaxCrossEntropyCache) {
    let resolved = ResolvedLoss::new(targets, options, &logits.device(), logits.dtype());
    softmax_cross_entropy_forward_resolved(logits, &resolved)
}

/// [`softmax_cross_entropy_forward`] with the options already resolved (once per call, then
/// sliced per chunk by the fused op's tensor kernel).
pub(crate) fn softmax_cross_entropy_forward_resolved(
    logits: Tensor<2>,
    resolved: &ResolvedLoss,
) -> (Tensor<1>, SoftmaxCrossEntropyCache) {
    let n_classes = logits.dims()[1];
    // Detached: the loss's derivative with respect to m_i is 0 (m_i cancels), so autograd
    // (the manual path's forward under autodiff) need not route the two cancelling halves.
    let row_max = logits.clone().max_dim(1).detach();
    // S' - m: every loss term below is formed from these, with log_sum in place of lse.
    let shifted = logits - row_max.clone();
    let exp_shifted = shifted.clone().exp();
    let sum_exp = exp_shifted.clone().sum_dim(1);
    let log_sum = sum_exp.clone().log(); // [N, 1]
    let log_sum_exp = row_max.clone() + log_sum.clone();
    let probabilities = exp_shifted / sum_exp;
    let eps = resolved.smoothing;
    let class_weights = resolved.class_weights.clone();

    let (mut row_losses, target, valid) = match &resolved.targets {
        ResolvedTargets::Classes {
            labels,
            valid,
            row_weights,
        } => {
            let true_shifted = shifted.clone().gather(1, labels.clone());
            let mut nll = log_sum.clone() - true_shifted;
            if let Some(r) = row_weights {
                nll = nll * r.clone();
            }
            let mut losses = nll * (1.0 - eps);
            if eps > 0.0 {
                // (eps / C) v_i sum_k w_k (lse_i - S'_ik), with lse_i - S'_ik as above
                let weighted_shifted = match &class_weights {
                    Some(w) => shifted.clone().matmul(w.clone().transpose()),
                    None => shifted.clone().sum_dim(1),
                };
                let mut smooth = log_sum.clone() * resolved.weight_sum - weighted_shifted;
                if let Some(v) = valid {
                    smooth = smooth * v.clone();
                }
                losses = losses + smooth * (eps / n_classes as f64);
            }
            let target = WeightedTarget::Classes {
                labels: labels.clone(),
                row_weights: row_weights.clone(),
                valid: valid.clone(),
                class_weights: class_weights.clone(),
                smoothing: eps,
                weight_sum: resolved.weight_sum,
            };
            (losses, target, valid.clone())
        }
        ResolvedTargets::Probabilities(probabilities_target) => {
            let mut weighted = probabilities_target.clone() * (1.0 - eps) + eps / n_classes as f64;
            if let Some(w) = &class_weights {
                weighted = weighted * w.clone();
            }
            let losses = log_sum.clone() * weighted.clone().sum_dim(1)
                - (weighted.clone() * shifted.clone()).sum_dim(1);
            (losses, WeightedTarget::Probabilities(weighted), None)
        }
        ResolvedTargets::Teacher { .. } => {
            unreachable!("a teacher's targets take the distillation pair (math/distillation.rs)")
        }
    };
    let z_loss = resolved.z_loss;
    if z_loss > 0.0 {
        let mut z = log_sum_exp.clone().square() * z_loss;
        if let Some(v) = &valid {
            z = z * v.clone();
        }
        row_losses = row_losses + z;
    }
    let entropy_bonus = (resolved.entropy_bonus > 0.0).then(|| {
        let log_probabilities = shifted - log_sum.clone();
        let entropy = (probabilities.clone() * log_probabilities.clone())
            .sum_dim(1)
            .neg();
        EntropyBonus {
            log_probabilities,
            entropy,
            valid: valid.clone(),
            alpha: resolved.entropy_bonus,
        }
    });
    if let Some(bonus) = &entropy_bonus {
        let mut term = bonus.entropy.clone() * -bonus.alpha;
        if let Some(v) = &bonus.valid {
            term = term * v.clone();
        }
        row_losses = row_losses + term;
    }
    // The targets' row weights scale each row's whole loss (and, in the backward, its
    // upstream gradient).
    if let Some(rho) = &resolved.row_scale {
        row_losses = row_losses * rho.clone();
    }
    (
        row_losses.squeeze_dim(1),
        SoftmaxCrossEntropyCache {
            probabilities,
            log_sum_exp: log_sum_exp.squeeze_dim(1),
            denominator: resolved.denominator.clone(),
            row_max,
            log_sum,
            row_scale: resolved.row_scale.clone(),
            target,
            z_loss,
            entropy_bonus,
        },
    )
}

/// Backward of [`softmax_cross_entropy_forward`] given `d_row_losses = dL/dl_i` `[N]`:
/// `dS'_i = g_i rho_i [ (sum_k P_ik + 2 beta v_i lse_i) A_i - P_i ]`, in one step (for plain
/// class targets: `dS = g (A - Y)`).
///
/// # Shapes
/// - `d_row_losses`: `[N]`, result: `[N, C]`
pub fn softmax_cross_entropy_backward(
    cache: SoftmaxCrossEntropyCache,
    d_row_losses: Tensor<1>,
) -> Tensor<2> {
    let SoftmaxCrossEntropyCache {
        probabilities,
        log_sum_exp,
        target,
        z_loss,
        row_scale,
        entropy_bonus,
        ..
    } = cache;
    // alpha v_i A_i (log A_i + H_i), from A before the match below takes it.
    let bonus = entropy_bonus.map(|bonus| {
        let term = probabilities.clone() * (bonus.log_probabilities + bonus.entropy) * bonus.alpha;
        match bonus.valid {
            Some(v) => term * v,
            None => term,
        }
    });
    let [rows, n_classes] = probabilities.dims();
    let (device, dtype) = (probabilities.device(), probabilities.dtype());
    let d_rows = d_row_losses.unsqueeze_dim::<2>(1);
    let d_rows = match row_scale {
        Some(rho) => d_rows * rho,
        None => d_rows,
    };
    let z_term = |valid: Option<&Tensor<2>>| {
        (z_loss > 0.0).then(|| {
            let z = log_sum_exp.clone().unsqueeze_dim::<2>(1) * (2.0 * z_loss);
            match valid {
                Some(v) => z * v.clone(),
                None => z,
            }
        })
    };
    let d_logits = match target {
        WeightedTarget::Classes {
            labels,
            row_weights,
            valid,
            class_weights,
            smoothing: eps,
            weight_sum,
        } => {
            // Coefficient of A_i: (1 - eps) r_i + (eps / C) v_i sum_k w_k + 2 beta v_i lse_i.
            let ones = || Tensor::<2>::ones([rows, 1], (&device, dtype));
            let r = row_weights.unwrap_or_else(ones);
            let mut coefficient = r.clone() * (1.0 - eps);
            if eps > 0.0 {
                let v = valid.clone().unwrap_or_else(ones);
                coefficient = coefficient + v * (eps * weight_sum / n_classes as f64);
            }
            if let Some(z) = z_term(valid.as_ref()) {
                coefficient = coefficient + z;
            }
            let mut d_logits = (probabilities * coefficient).scatter(
                1,
                labels,
                r * -(1.0 - eps),
                IndexingUpdateOp::Add,
            );
            if eps > 0.0 {
                let spread = match class_weights {
                    Some(w) => w * (eps / n_classes as f64),
                    None => Tensor::full([1, n_classes], eps / n_classes as f64, (&device, dtype)),
                };
                let spread = match valid {
                    Some(v) => v * spread,
                    None => spread,
                };
                d_logits = d_logits - spread;
            }
            d_logits
        }
        WeightedTarget::Probabilities(weighted) => {
            let mut coefficient = weighted.clone().sum_dim(1);
            if let Some(z) = z_term(None) {
                coefficient = coefficient + z;
            }
            probabilities * coefficient - weighted
        }
    };
    let d_logits = match bonus {
        Some(bonus) => d_logits + bonus,
        None => d_logits,
    };
    d_logits * d_rows
}

/// The mean's denominator with 0 replaced by 1: an all-ignored batch then has loss 0 and zero
/// gradients (its row losses are all 0) instead of PyTorch's NaN.
fn safe_denominator(denominator: Tensor<1>) -> Tensor<1> {
    let is_zero = denominator.clone().equal_elem(0.0);
    denominator.mask_fill(is_zero, 1.0)
}

/// Combines the row losses `[N]`: mean (`sum / den`), sum, or none (unchanged).
pub fn reduction_forward(
    row_losses: Tensor<1>,
    denominator: Tensor<1>,
    reduction: LossReduction,
) -> Tensor<1> {
    match reduction {
        LossReduction::Mean => row_losses.sum() / safe_denominator(denominator),
        LossReduction::Sum => row_losses.sum(),
        LossReduction::None => row_losses,
    }
}

/// Backward of [`reduction_forward`]: `dL/dl_i` `[N]` from the upstream `d_loss` (`[1]`, or
/// `[N]` for reduction none).
pub fn reduction_backward(
    d_loss: Tensor<1>,
    denominator: Tensor<1>,
    reduction: LossReduction,
    rows: usize,
) -> Tensor<1> {
    match reduction {
        LossReduction::Mean => (d_loss / safe_denominator(denominator)).expand([rows]),
        LossReduction::Sum => d_loss.expand([rows]),
        LossReduction::None => d_loss,
    }
}

/// The cs231n penalty `lambda sum(W^2)`, `[1]`.
pub fn l2_forward(weight: Tensor<2>, lambda: f64) -> Tensor<1> {
    weight.square().sum() * lambda
}

/// Backward of [`l2_forward`]: `2 lambda W`, `[D, C]`.
pub fn l2_backward(weight: Tensor<2>, lambda: f64) -> Tensor<2> {
    weight * (2.0 * lambda)
}

/// `L + lambda sum(W^2)` for the options' `l2` (nothing to add when it is 0): the one place
/// every path adds the penalty to its loss.
pub(crate) fn with_l2(loss: Tensor<1>, weight: Tensor<2>, options: &LossOptions) -> Tensor<1> {
    match options.l2 {
        0.0 => loss,
        lambda => loss + l2_forward(weight, lambda),
    }
}

/// `dW + 2 lambda W`: [`with_l2`]'s share of `dW`, for the paths that form `dW` by hand.
pub(crate) fn with_l2_gradient(
    d_weight: Tensor<2>,
    weight: Tensor<2>,
    options: &LossOptions,
) -> Tensor<2> {
    match options.l2 {
        0.0 => d_weight,
        lambda => d_weight + l2_backward(weight, lambda),
    }
}

/// Stable `lse_i = log sum_k exp(S_ik)` of each row of `logits` `[N, C]`, as `[N]`: the row
/// maximum is subtracted before `exp` and added back after `log`.
pub(crate) fn log_sum_exp(logits: Tensor<2>) -> Tensor<1> {
    let row_max = logits.clone().max_dim(1).detach();
    let sum_exp = (logits - row_max.clone()).exp().sum_dim(1);
    (row_max + sum_exp.log()).squeeze_dim(1)
}
