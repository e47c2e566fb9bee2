//! Distillation's pair: the student's loss against a frozen teacher's distribution and its
//! hand-derived gradient with respect to the student's logits (`docs/MATH.md`,
//! "Distillation").
//!
//! ```text
//! lq = log_softmax(S / tau), Q = exp(lq)      lp = log_softmax(T / tau), P = exp(lp)
//! beta = 0:  D = sum_k P (lp - lq)                          dD/dS = (Q - P) / tau
//! beta = 1:  D = sum_k Q (lq - lp)                          dD/dS = Q (lq - lp - D) / tau
//! else:      D = beta sum_k P (lp - log M)                  dD/dS = (1 - beta) Q (lq - log M - G) / tau,
//!                + (1 - beta) sum_k Q (lq - log M)                  G = sum_k Q (lq - log M)
//! l_i = s_i [ w_soft D_i + w_hard (lse(S_i) - S_{i, y_i}) ]  dS_i = g_i s_i [ w_soft dD_i/dS_i + w_hard (A_i - e_{y_i}) ]
//! ```
//!
//! with `M = beta P + (1 - beta) Q`, `A = softmax(S)` (the hard term at temperature 1) and
//! `s_i = rho_i v_i` the row's weight times its validity. A gradient `h_k` with respect to
//! `lq_k` becomes `(h_k - Q_k sum_j h_j) / tau` with respect to `S_k`: the three `dD/dS` are
//! that rule applied to `h = -P`, `h = Q (lq - lp) + Q` and `h = (1 - beta) Q (lq - log M)`.

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;

use crate::loss::distillation_options::DistillationOptions;
use crate::loss::resolved::{ResolvedLoss, ResolvedTargets};

/// `log_softmax` of `logits` `[N, C]` from the shifted logits, with its parts: `(log p, m,
/// log sum_k exp(z_k - m))`, `m` the detached row maximum (the loss does not depend on it).
fn log_softmax_parts(logits: Tensor<2>) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let row_max = logits.clone().max_dim(1).detach();
    let shifted = logits - row_max.clone();
    let log_sum = shifted.clone().exp().sum_dim(1).log();
    (shifted - log_sum.clone(), row_max, log_sum)
}

/// The divergence's side of the cache: what its gradient needs, by `beta`.
#[derive(Clone, Debug)]
enum DivergenceCache {
    /// `beta = 0`: `P`.
    Forward { teacher: Tensor<2> },
    /// `beta = 1`: `lq - lp - D`.
    Reverse { centred: Tensor<2> },
    /// Otherwise: `(1 - beta) (lq - log M - G)`.
    Mixed { centred: Tensor<2> },
}

/// What [`distillation_backward`] needs from the forward pass.
#[derive(Clone, Debug)]
pub(crate) struct DistillationCache {
    /// `Q = softmax(S / tau)`, `[N, C]`.
    student: Tensor<2>,
    divergence: DivergenceCache,
    /// `A = softmax(S)` and the labels `[N, 1]` of the hard term, when its weight is not 0.
    hard: Option<(Tensor<2>, Tensor<2, Int>)>,
    /// `s_i = rho_i v_i`, `[N, 1]` (absent: all 1).
    scale: Option<Tensor<2>>,
    options: DistillationOptions,
    temperature: f64,
    /// `lse_i` of `S / tau`, `[N]`.
    pub(crate) log_sum_exp: Tensor<1>,
}

/// The per-row distillation losses `l_i` `[N]` of the student's `logits` against the
/// teacher's `teacher_logits` (both `[N, C]`, untempered), and what the backward needs.
///
/// `labels` `[N, 1]` are needed when `options.hard_weight` is not 0; `scale` `[N, 1]` is
/// `rho_i v_i`. Every term is formed from log-probabilities of shifted logits, never from
/// `log` of an underflowed probability: `log M` is `m + log(beta exp(lp - m) + (1 - beta)
/// exp(lq - m))` with `m` the larger of the two (each term's log weight included), whose sum
/// is at least `min(beta, 1 - beta)`.
pub(crate) fn distillation_forward(
    logits: Tensor<2>,
    teacher_logits: Tensor<2>,
    labels: Option<&Tensor<2, Int>>,
    scale: Option<Tensor<2>>,
    options: &DistillationOptions,
    temperature: f64,
) -> (Tensor<1>, DistillationCache) {
    let beta = options.beta;
    // `* (1 / tau)`, not `/ tau`: see `math::softcap_forward`.
    let inverse = 1.0 / temperature;
    let (student_log, row_max, log_sum) = log_softmax_parts(logits.clone() * inverse);
    let log_sum_exp = (row_max + log_sum).squeeze_dim(1);
    // The teacher is a constant: nothing of it is differentiated.
    let (teacher_log, _, _) = log_softmax_parts((teacher_logits * inverse).detach());
    let student = student_log.clone().exp();
    let (divergence, cache) = if beta == 0.0 {
        let teacher = teacher_log.clone().exp();
        let divergence = (teacher.clone() * (teacher_log - student_log)).sum_dim(1);
        (divergence, DivergenceCache::Forward { teacher })
    } else if beta == 1.0 {
        let difference = student_log - teacher_log;
        let divergence = (student.clone() * difference.clone()).sum_dim(1);
        let centred = difference - divergence.clone();
        (divergence, DivergenceCache::Reverse { centred })
    } else {
        let teacher_term = teacher_log.clone() + beta.ln();
        let student_term = student_log.clone() + (1.0 - beta).ln();
        let larger = teacher_term.clone().max_pair(student_term.clone()).detach();
        let log_mixture = larger.clone()
            + ((teacher_term - larger.clone()).exp() + (student_term - larger).exp()).log();
        let teacher = teacher_log.clone().exp();
        let student_excess = student_log - log_mixture.clone();
        let student_part = (student.clone() * student_excess.clone()).sum_dim(1);
        let divergence = (teacher * (teacher_log - log_mixture)).sum_dim(1) * beta
            + student_part.clone() * (1.0 - beta);
        let centred = (student_excess - student_part) * (1.0 - beta);
        (divergence, DivergenceCache::Mixed { centred })
    };
    let mut row_losses = divergence * options.soft_weight;
    // The hard term at temperature 1: its loss joins the row's, `A` and the labels its backward.
    let mut hard = None;
    if options.hard_weight != 0.0 {
        let labels = labels
            .expect("the hard term's labels were checked (Targets::check_teacher)")
            .clone();
        let (log_probabilities, _, _) = log_softmax_parts(logits);
        let nll = log_probabilities.clone().gather(1, labels.clone()).neg();
        row_losses = row_losses + nll * options.hard_weight;
        hard = Some((log_probabilities.exp(), labels));
    }
    if let Some(scale) = &scale {
        row_losses = row_losses * scale.clone();
    }
    (
        row_losses.squeeze_dim(1),
        DistillationCache {
            student,
            divergence: cache,
            hard,
            scale,
            options: options.clone(),
            temperature,
            log_sum_exp,
        },
    )
}

/// Backward of [`distillation_forward`] given `d_row_losses = dL/dl_i` `[N]`: the gradient
/// `dS` `[N, C]` of the student's logits (see the module docs).
pub(crate) fn distillation_backward(
    cache: DistillationCache,
    d_row_losses: Tensor<1>,
) -> Tensor<2> {
    let DistillationCache {
        student,
        divergence,
        hard,
        scale,
        options,
        temperature,
        ..
    } = cache;
    let soft = options.soft_weight / temperature;
    let mut d_logits = match divergence {
        DivergenceCache::Forward { teacher } => (student - teacher) * soft,
        DivergenceCache::Reverse { centred } | DivergenceCache::Mixed { centred } => {
            student * centred * soft
        }
    };
    if let Some((probabilities, labels)) = hard {
        let rows = labels.dims()[0];
        let minus_one = Tensor::full(
            [rows, 1],
            -options.hard_weight,
            (&d_logits.device(), d_logits.dtype()),
        );
        d_logits = d_logits
            + (probabilities * options.hard_weight).scatter(
                1,
                labels,
                minus_one,
                IndexingUpdateOp::Add,
            );
    }
    let d_rows = d_row_losses.unsqueeze_dim::<2>(1);
    let d_rows = match scale {
        Some(scale) => d_rows * scale,
        None => d_rows,
    };
    d_logits * d_rows
}

/// [`distillation_forward`] for a teacher's resolved targets (the whole batch, or one chunk's
/// rows on the fused path): the teacher's logits formed here, the scale `s_i = rho_i v_i`.
pub(crate) fn distillation_forward_resolved(
    logits: Tensor<2>,
    resolved: &ResolvedLoss,
) -> (Tensor<1>, DistillationCache) {
    let ResolvedTargets::Teacher {
        teacher,
        labels,
        valid,
    } = &resolved.targets
    else {
        unreachable!("the paths send only a teacher's targets here");
    };
    let scale = match (valid.clone(), resolved.row_scale.clone()) {
        (Some(valid), Some(rho)) => Some(valid * rho),
        (valid, rho) => valid.or(rho),
    };
    distillation_forward(
        logits,
        teacher.logits(),
        labels.as_ref(),
        scale,
        &resolved.distillation,
        resolved.temperature,
    )
}
