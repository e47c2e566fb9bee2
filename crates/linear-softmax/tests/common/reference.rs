//! The loss in `f64` on the host, straight from the definition in `LossOptions`' docs, one row
//! at a time: a witness of the paths' loss values independent of every tensor op.

use burn::prelude::*;
use linear_softmax::host::{to_host_f64, to_host_i64};
use linear_softmax::{LinearSoftmax, LossOptions, LossReduction, TargetKind, Targets};

/// The loss of `head` on `(x, targets)` (reduction none: the per-row losses summed, as
/// `loss.backward()` seeds every entry with 1).
pub fn reference_loss(
    head: &LinearSoftmax,
    x: &Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> f64 {
    let (d, c) = (head.n_features(), head.n_classes());
    let x = to_host_f64(x).unwrap();
    let weight = to_host_f64(&head.weight()).unwrap();
    let bias = head.bias().as_ref().map(|b| to_host_f64(b).unwrap());
    let eps = options.label_smoothing;
    let class_weight = |k: usize| options.weights.as_ref().map_or(1.0, |w| w[k]);
    let ignore_index = targets.ignore_index();
    let ignored = |label: i64| {
        ignore_index == Some(label)
            || options
                .pad_tokens
                .iter()
                .flatten()
                .any(|&pad| pad as i64 == label)
    };
    let (labels, probabilities) = match targets.kind() {
        TargetKind::Classes { indices, .. } => (Some(to_host_i64(indices).unwrap()), None),
        TargetKind::Probabilities(p) => (None, Some(to_host_f64(p).unwrap())),
        TargetKind::Teacher { .. } => unimplemented!("the naive reference has no distillation"),
    };
    let rows = x.len() / d;
    let rho = match targets.row_weights() {
        Some(rho) => to_host_f64(rho).unwrap(),
        None => vec![1.0; rows],
    };
    // The next-token shift s: row i takes the target of row i + s of its sequence (the last
    // dimension of the targets' shape), and the last s rows of each sequence count nowhere.
    let time = *targets.shape().last().unwrap();
    let source = |row: usize| (row % time + options.shift < time).then_some(row + options.shift);
    let (mut total, mut denominator) = (0.0, 0.0);
    let mut logits = vec![0.0; c];
    for row in 0..rows {
        let x_row = &x[row * d..(row + 1) * d];
        for (k, logit) in logits.iter_mut().enumerate() {
            let score = bias.as_ref().map_or(0.0, |b| b[k])
                + x_row
                    .iter()
                    .enumerate()
                    .map(|(j, x)| x * weight[j * c + k])
                    .sum::<f64>();
            let capped = options
                .softcap
                .map_or(score, |cap| cap * (score / cap).tanh());
            *logit = capped / options.temperature;
        }
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + logits.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
        // Weighted target P_i: the loss is sum_k P_ik (lse - S_ik).
        let Some(row) = source(row) else {
            continue;
        };
        let target: Vec<f64> = match (&labels, &probabilities) {
            (Some(labels), _) => {
                let label = labels[row];
                if ignored(label) {
                    continue;
                }
                let label = label as usize;
                denominator += rho[row] * class_weight(label);
                (0..c)
                    .map(|k| {
                        let hot = if k == label { 1.0 - eps } else { 0.0 };
                        hot * class_weight(label) + eps / c as f64 * class_weight(k)
                    })
                    .collect()
            }
            (None, Some(p)) => {
                denominator += rho[row];
                (0..c)
                    .map(|k| class_weight(k) * ((1.0 - eps) * p[row * c + k] + eps / c as f64))
                    .collect()
            }
            (None, None) => unreachable!("targets are labels or probabilities"),
        };
        let entropy: f64 = logits.iter().map(|s| -(s - lse).exp() * (s - lse)).sum();
        total += rho[row]
            * ((0..c).map(|k| target[k] * (lse - logits[k])).sum::<f64>()
                + options.z_loss * lse * lse
                - options.entropy_bonus * entropy);
    }
    let denominator = options.mean_denominator.unwrap_or(denominator);
    let reduced = match options.reduction {
        LossReduction::Mean if denominator != 0.0 => total / denominator,
        _ => total,
    };
    reduced + options.l2 * weight.iter().map(|w| w * w).sum::<f64>()
}
