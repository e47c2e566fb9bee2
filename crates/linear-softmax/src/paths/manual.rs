//! Path 2: the hand-derived backward, [`crate::math`]'s `*_forward` / `*_backward` pairs
//! composed as explicit tensor code on a plain (non-autodiff) device.
//!
//! ```text
//! forward:   S = X W + b  ->  S' = c tanh(S / c)  ->  S'' = S' / tau  ->  l_i, lse_i
//!            ->  L = sum_i l_i / den (+ lambda sum(W^2))
//! backward:  g_i = dL / den  ->  dS'' = g_i [(sum_k P_ik + 2 beta v_i lse_i) A_i - P_i]
//!            ->  dS' = dS'' / tau  ->  dS = dS' (1 - (S' / c)^2)
//!            ->  dW = X^T dS (+ 2 lambda W), db = colsum(dS), dX = dS W^T
//! ```
//!
//! For a teacher's targets the softmax cross-entropy pair is replaced by the distillation pair
//! (`math/distillation.rs`): `dS` of the divergence and the hard term, then the same linear
//! backward.
//!
//! The entry points are [`LinearSoftmax::loss`], [`loss_output`](LinearSoftmax::loss_output)
//! and [`gradients`](LinearSoftmax::gradients) with
//! [`LossPath::Manual`](crate::LossPath::Manual); the caller checked the inputs.

use burn::prelude::*;

use crate::head::LinearSoftmax;
use crate::loss::resolved::ResolvedLoss;
use crate::loss::{HeadGradients, LossOptions, LossOutput, LossStats, TargetKind, Targets};
use crate::math::block_filter::{filter_blocks, row_factors};
use crate::math::distillation::{
    DistillationCache, distillation_backward, distillation_forward_resolved,
};
use crate::math::{
    LinearGradients, linear_backward, linear_forward, reduction_backward, reduction_forward,
    softcap_backward, softcap_forward, softmax_cross_entropy_backward,
    softmax_cross_entropy_forward, temperature_backward, temperature_forward, with_l2,
    with_l2_gradient,
};

/// The logits the softmax sees, `S''`: `S` soft-capped and divided by the temperature, each
/// only when its option is on.
fn softmax_input(
    logits: &Tensor<2>,
    capped: Option<&Tensor<2>>,
    options: &LossOptions,
) -> Tensor<2> {
    let capped = capped.cloned().unwrap_or_else(|| logits.clone());
    match options.temperature {
        1.0 => capped,
        tau => temperature_forward(capped, tau),
    }
}

/// A teacher's distillation loss on the student's logits `S = X W + b`: the reduced loss
/// (without the L2 term), the mean's denominator and what the backward needs.
fn distillation(
    logits: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> (Tensor<1>, Tensor<1>, DistillationCache) {
    let resolved = ResolvedLoss::new(targets, options, &logits.device(), logits.dtype());
    let (row_losses, cache) = distillation_forward_resolved(logits, &resolved);
    let denominator = resolved.denominator;
    let loss = reduction_forward(row_losses, denominator.clone(), options.reduction);
    (loss, denominator, cache)
}

/// The loss composed of [`crate::math`]'s forward functions (on an autodiff device, Burn's
/// autograd differentiates it), its `lse` and, when `stats`, the statistics from the `[N, C]`
/// logits this path forms anyway; `lse` and the statistics are detached from any graph.
pub(crate) fn loss_output(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    stats: bool,
) -> LossOutput {
    let weight = head.weight();
    let logits = linear_forward(x, weight.clone(), head.bias());
    if let TargetKind::Teacher { .. } = targets.kind() {
        let (loss, _, cache) = distillation(logits, targets, options);
        return LossOutput {
            loss: with_l2(loss, weight, options),
            log_sum_exp: cache.log_sum_exp.detach(),
            stats: None,
        };
    }
    let capped = options
        .softcap
        .map(|cap| softcap_forward(logits.clone(), cap));
    let tempered = softmax_input(&logits, capped.as_ref(), options);
    let (row_losses, cache) = softmax_cross_entropy_forward(tempered.clone(), targets, options);
    let log_sum_exp = cache.log_sum_exp.clone();
    let stats = stats.then(|| {
        let (row_max, log_sum) = (cache.row_max.clone(), cache.log_sum.clone());
        LossStats::from_shifted(logits, tempered, row_max, log_sum, targets, options)
    });
    let loss = reduction_forward(row_losses, cache.denominator, options.reduction);
    LossOutput {
        loss: with_l2(loss, weight, options),
        log_sum_exp: log_sum_exp.detach(),
        stats,
    }
}

/// The loss and its hand-derived gradients `dW, db, dX` (upstream gradient 1 for every entry
/// of the loss, as `loss.backward()` would seed it), and the statistics when `options.stats`.
///
/// NaN and infinity in `x` or the head propagate to the loss and gradients, as on every path
/// (nothing is read back); [`LinearSoftmax::check_finite`] finds and names them.
pub(crate) fn gradients(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> HeadGradients {
    let weight = head.weight();
    let bias = head.bias();
    let has_bias = bias.is_some();
    let rows = x.dims()[0];

    let logits = linear_forward(x.clone(), weight.clone(), bias);
    // dW, db, dX from dS (the gradient filter on the way) and the outputs assembled.
    let backward = |d_logits, d_rows, loss: Tensor<1>, log_sum_exp, stats| {
        let LinearGradients {
            d_weight,
            d_bias,
            d_input,
        } = filtered_linear_backward(
            x,
            weight.clone(),
            has_bias,
            d_logits,
            d_rows,
            targets,
            options,
        );
        HeadGradients {
            loss: with_l2(loss, weight.clone(), options),
            d_weight: with_l2_gradient(d_weight, weight.clone(), options),
            d_bias,
            d_input,
            log_sum_exp,
            stats,
        }
    };
    if let TargetKind::Teacher { .. } = targets.kind() {
        let (loss, denominator, cache) = distillation(logits, targets, options);
        let log_sum_exp = cache.log_sum_exp.clone().detach();
        let d_rows = reduction_backward(loss.ones_like(), denominator, options.reduction, rows);
        let d_logits = distillation_backward(cache, d_rows.clone());
        return backward(d_logits, d_rows, loss, log_sum_exp, None);
    }
    let capped = options
        .softcap
        .map(|cap| softcap_forward(logits.clone(), cap));
    let tempered = softmax_input(&logits, capped.as_ref(), options);
    let (row_losses, cache) = softmax_cross_entropy_forward(tempered.clone(), targets, options);
    let log_sum_exp = cache.log_sum_exp.clone();
    let stats = options.stats.then(|| {
        let (row_max, log_sum) = (cache.row_max.clone(), cache.log_sum.clone());
        LossStats::from_shifted(logits, tempered, row_max, log_sum, targets, options)
    });
    let denominator = cache.denominator.clone();
    let loss = reduction_forward(row_losses, denominator.clone(), options.reduction);

    let d_rows = reduction_backward(loss.ones_like(), denominator, options.reduction, rows);
    let mut d_logits = softmax_cross_entropy_backward(cache, d_rows.clone());
    if options.temperature != 1.0 {
        d_logits = temperature_backward(options.temperature, d_logits);
    }
    if let (Some(capped), Some(cap)) = (capped, options.softcap) {
        d_logits = softcap_backward(capped, cap, d_logits);
    }
    backward(d_logits, d_rows, loss, log_sum_exp.detach(), stats)
}

/// [`linear_backward`] with the options' gradient filter on `dS` for `dW` and `dX` (`f_i` is
/// the row's upstream `d_rows` times its row weight); `db` from the whole `dS`, which the
/// filter leaves alone.
fn filtered_linear_backward(
    x: Tensor<2>,
    weight: Tensor<2>,
    has_bias: bool,
    d_logits: Tensor<2>,
    d_rows: Tensor<1>,
    targets: &Targets,
    options: &LossOptions,
) -> LinearGradients {
    if !options.gradient_filter.is_on() {
        return linear_backward(x, weight, has_bias, d_logits);
    }
    let (device, dtype) = (d_logits.device(), d_logits.dtype());
    let row_scale = targets.row_weights().map(|rho| {
        rho.clone()
            .to_device(&device)
            .cast(dtype)
            .unsqueeze_dim::<2>(1)
    });
    let factors = row_factors(d_rows, row_scale.as_ref());
    let d_bias = has_bias.then(|| d_logits.clone().sum_dim(0).squeeze_dim(0));
    let d_logits = filter_blocks(d_logits, factors, &options.gradient_filter);
    LinearGradients {
        d_bias,
        ..linear_backward(x, weight, false, d_logits)
    }
}
