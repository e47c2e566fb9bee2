//! Path 1, the reference: the loss built from ordinary tensor ops, differentiated by Burn's
//! autograd.
//!
//! A direct transcription of PyTorch's `F.cross_entropy` (see [`LossOptions`]):
//! `S = X W + b`, `S' = c tanh(S / c)` (softcap), divided by the temperature `tau`,
//! `logp = log_softmax(S')` (stable: the row
//! maximum is subtracted),
//! `l_i = v_i [(1 - eps) w_{y_i} (-logp_{i,y_i}) + (eps / C) sum_k w_k (-logp_ik)] + beta v_i lse_i^2 - alpha v_i H_i`
//! with the entropy `H_i = -sum_k exp(logp_ik) logp_ik`,
//! reduced by mean, sum or none, plus `lambda sum(W^2)`. For a teacher's targets the rows are
//! the distillation loss instead (`DistillationOptions`), from `log_softmax` of both heads'
//! logits at the temperature.
//!
//! The entry points are [`LinearSoftmax::loss`], [`loss_output`](LinearSoftmax::loss_output)
//! and [`gradients`](LinearSoftmax::gradients) with
//! [`LossPath::Autodiff`](crate::LossPath::Autodiff); the caller checked the inputs.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::head::LinearSoftmax;
use crate::loss::resolved::{ResolvedLoss, ResolvedTargets};
use crate::loss::{HeadGradients, LossOptions, LossOutput, LossStats, TargetKind, Targets};
use crate::math::{linear_forward, log_sum_exp, reduction_forward, with_l2};

/// The per-row losses `l_i` `[N]` of `logits` `[N, C]` (times the targets' row weights) and
/// the mean's denominator `[1]`.
///
/// `logits` are taken as they are: apply the softcap and the temperature first if wanted;
/// for a teacher's targets, give them untempered (the distillation tempers them itself).
pub(crate) fn cross_entropy_rows(
    logits: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> (Tensor<1>, Tensor<1>) {
    let n_classes = logits.dims()[1];
    let resolved = ResolvedLoss::new(targets, options, &logits.device(), logits.dtype());
    if let ResolvedTargets::Teacher { .. } = &resolved.targets {
        return distillation_rows(logits, &resolved);
    }
    let log_probabilities = log_softmax(logits.clone(), 1);
    // -sum_k A_ik log A_ik, for the entropy bonus.
    let entropy = (resolved.entropy_bonus > 0.0).then(|| {
        (log_probabilities.clone().exp() * log_probabilities.clone())
            .sum_dim(1)
            .squeeze_dim::<1>(1)
            .neg()
    });
    let eps = resolved.smoothing;
    let (row_losses, valid) = match &resolved.targets {
        ResolvedTargets::Classes {
            labels,
            valid,
            row_weights,
        } => {
            let nll = log_probabilities.clone().gather(1, labels.clone()).neg();
            let nll = match row_weights {
                Some(r) => nll * r.clone(),
                None => nll,
            };
            let mut losses = nll * (1.0 - eps);
            if eps > 0.0 {
                let weighted = match &resolved.class_weights {
                    Some(w) => log_probabilities * w.clone(),
                    None => log_probabilities,
                };
                let mut smooth = weighted.sum_dim(1).neg();
                if let Some(v) = valid {
                    smooth = smooth * v.clone();
                }
                losses = losses + smooth * (eps / n_classes as f64);
            }
            (losses.squeeze_dim::<1>(1), valid.clone())
        }
        ResolvedTargets::Teacher { .. } => unreachable!("returned above"),
        ResolvedTargets::Probabilities(probabilities) => {
            let mut smoothed = probabilities.clone() * (1.0 - eps) + eps / n_classes as f64;
            if let Some(w) = &resolved.class_weights {
                smoothed = smoothed * w.clone();
            }
            let losses = (log_probabilities * smoothed)
                .sum_dim(1)
                .squeeze_dim(1)
                .neg();
            (losses, None)
        }
    };
    let row_losses = if resolved.z_loss > 0.0 {
        let z = log_sum_exp(logits).square() * resolved.z_loss;
        row_losses
            + match &valid {
                Some(v) => z * v.clone().squeeze_dim(1),
                None => z,
            }
    } else {
        row_losses
    };
    let row_losses = match entropy {
        Some(entropy) => {
            let bonus = entropy * -resolved.entropy_bonus;
            row_losses
                + match &valid {
                    Some(v) => bonus * v.clone().squeeze_dim(1),
                    None => bonus,
                }
        }
        None => row_losses,
    };
    // The targets' row weights scale each row's whole loss.
    let row_losses = match resolved.row_scale {
        Some(rho) => row_losses * rho.squeeze_dim(1),
        None => row_losses,
    };
    (row_losses, resolved.denominator)
}

/// The per-row distillation losses `l_i` `[N]` of the student's untempered `logits` against
/// the resolved targets' teacher, and the mean's denominator `[1]`: `DistillationOptions`'s
/// formula transcribed with `log_softmax` (autograd derives the gradient).
fn distillation_rows(logits: Tensor<2>, resolved: &ResolvedLoss) -> (Tensor<1>, Tensor<1>) {
    let ResolvedTargets::Teacher {
        teacher,
        labels,
        valid,
    } = &resolved.targets
    else {
        unreachable!("the caller matched a teacher");
    };
    let options = &resolved.distillation;
    let beta = options.beta;
    let inverse = 1.0 / resolved.temperature;
    let student = log_softmax(logits.clone() * inverse, 1);
    let teacher = log_softmax(teacher.logits().detach() * inverse, 1);
    // KL(A || B) per row from log-probabilities, `[N, 1]`.
    let kl = |a: &Tensor<2>, b: &Tensor<2>| (a.clone().exp() * (a.clone() - b.clone())).sum_dim(1);
    let divergence = match beta {
        0.0 => kl(&teacher, &student),
        1.0 => kl(&student, &teacher),
        _ => {
            // log M = logaddexp(log beta + lp, log(1 - beta) + lq), around the larger term.
            let (a, b) = (
                teacher.clone() + beta.ln(),
                student.clone() + (1.0 - beta).ln(),
            );
            let larger = a.clone().max_pair(b.clone()).detach();
            let log_mixture =
                larger.clone() + ((a - larger.clone()).exp() + (b - larger).exp()).log();
            kl(&teacher, &log_mixture) * beta + kl(&student, &log_mixture) * (1.0 - beta)
        }
    };
    let mut row_losses = divergence * options.soft_weight;
    if options.hard_weight != 0.0 {
        let labels = labels.clone().expect("the hard term's labels were checked");
        let nll = log_softmax(logits, 1).gather(1, labels).neg();
        row_losses = row_losses + nll * options.hard_weight;
    }
    if let Some(v) = valid {
        row_losses = row_losses * v.clone();
    }
    if let Some(rho) = &resolved.row_scale {
        row_losses = row_losses * rho.clone();
    }
    (row_losses.squeeze_dim(1), resolved.denominator.clone())
}

/// The loss of `head` on `(x, targets)` as a graph of ordinary ops, alone.
pub(crate) fn loss(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Tensor<1> {
    loss_of_parts(x, head.weight(), head.bias(), targets, options).0
}

/// The loss of `head` on `(x, targets)` as a graph of ordinary ops, its `lse` and, when
/// `stats`, the statistics from the full `[N, C]` logits this path forms anyway; `lse` and the
/// statistics are detached from the graph. On an autodiff device, `loss.backward()` gives
/// every tracked tensor (the head's parameters, `x` and whatever produced it) its gradient.
pub(crate) fn loss_output(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    stats: bool,
) -> LossOutput {
    let (loss, logits) = loss_of_parts(x, head.weight(), head.bias(), targets, options);
    let log_sum_exp = log_sum_exp(logits.capped.clone().detach());
    let stats = stats.then(|| LossStats::from_logits(logits.raw, logits.capped, targets, options));
    LossOutput {
        loss,
        log_sum_exp,
        stats,
    }
}

/// The logits of a loss: `S = X W + b` and `S'`, what the softmax sees: after the softcap and
/// the temperature (`S` itself without either).
pub(crate) struct Logits {
    pub(crate) raw: Tensor<2>,
    pub(crate) capped: Tensor<2>,
}

/// The loss and the logits from explicit parameters; the callers check.
pub(crate) fn loss_of_parts(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    targets: &Targets,
    options: &LossOptions,
) -> (Tensor<1>, Logits) {
    let raw = linear_forward(x, weight.clone(), bias);
    let capped = match options.softcap {
        // Written out rather than calling `math::softcap_forward`: this path is the reference.
        // `* (1 / c)`, not `/ c`: Burn 0.22.1's autodiff `div_scalar` backward rounds the
        // scalar to f32, which would cost f64 gradients 8 digits.
        Some(cap) => (raw.clone() * (1.0 / cap)).tanh() * cap,
        None => raw.clone(),
    };
    let capped = match options.temperature {
        1.0 => capped,
        tau => capped * (1.0 / tau),
    };
    // A teacher's distillation tempers both distributions itself (its hard term does not).
    let scored = match targets.kind() {
        TargetKind::Teacher { .. } => raw.clone(),
        _ => capped.clone(),
    };
    let (rows, denominator) = cross_entropy_rows(scored, targets, options);
    let loss = reduction_forward(rows, denominator, options.reduction);
    (with_l2(loss, weight, options), Logits { raw, capped })
}

/// The loss and the gradients `dW, db, dX` that Burn's autograd derives (the loss's every
/// entry seeded with 1, as `loss.backward()` does), and the statistics when `options.stats`.
///
/// `head` and `x` may live on a plain device: detached copies get autodiff enabled, so the
/// caller's tensors are not touched. The gradients come back as plain tensors.
pub(crate) fn gradients(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> HeadGradients {
    let track = |tensor: Tensor<2>| tensor.detach().autodiff().require_grad();
    let x = track(x);
    let weight = track(head.weight());
    let bias = head
        .bias()
        .map(|bias| bias.detach().autodiff().require_grad());
    let (loss, logits) = loss_of_parts(x.clone(), weight.clone(), bias.clone(), targets, options);
    let log_sum_exp = log_sum_exp(logits.capped.clone().detach()).inner();
    let stats = options.stats.then(|| {
        let (raw, capped) = (logits.raw.detach().inner(), logits.capped.detach().inner());
        LossStats::from_logits(raw, capped, targets, options)
    });
    let grads = loss.clone().sum().backward();
    let gradient = |tensor: &Tensor<2>| {
        tensor
            .grad(&grads)
            .expect("a tracked tensor of the loss has a gradient")
    };
    HeadGradients {
        d_weight: gradient(&weight),
        d_bias: bias.map(|bias| bias.grad(&grads).expect("the tracked bias has a gradient")),
        d_input: gradient(&x),
        loss: loss.inner(),
        log_sum_exp,
        stats,
    }
}
