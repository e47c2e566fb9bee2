//! Centred finite differences in `f64`: the independent witness of the analytic gradients.
//!
//! The loss is re-evaluated on the host in `f64` with one parameter or input entry moved by
//! `+h` and `-h`; `(L(+h) - L(-h)) / 2h` approximates the derivative with error `O(h^2)`.

use burn::prelude::*;

use crate::error::Result;
use crate::head::LinearSoftmax;
use crate::host::{to_host_f64, to_host_i64};
use crate::loss::HeadGradients;
use crate::loss::options::{LossOptions, LossReduction};
use crate::loss::targets::{TargetKind, Targets};

/// Default step `h`: balances truncation error `O(h^2)` against `f64` round-off `O(eps / h)`.
pub const DEFAULT_STEP: f64 = 1e-5;

/// How far an analytic gradient is from its reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorStats {
    /// `max_k |a_k - n_k|`.
    pub max_abs: f64,
    /// Norm-wise relative error `max_k |a_k - n_k| / max_k |n_k|` (an element-wise ratio
    /// explodes on entries that are nearly 0).
    pub max_rel: f64,
}

impl ErrorStats {
    /// Compares `actual` with `reference`, entry by entry.
    pub fn between(actual: &[f64], reference: &[f64]) -> Self {
        assert_eq!(
            actual.len(),
            reference.len(),
            "compared tensors differ in size"
        );
        let max_abs = actual
            .iter()
            .zip(reference)
            .map(|(a, r)| (a - r).abs())
            .fold(0.0, f64::max);
        let scale = reference.iter().map(|r| r.abs()).fold(0.0, f64::max);
        let max_rel = if scale > 0.0 {
            max_abs / scale
        } else {
            max_abs
        };
        Self { max_abs, max_rel }
    }
}

/// Finite-difference error of each analytic gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GradcheckReport {
    /// `dW` against finite differences.
    pub d_weight: ErrorStats,
    /// `db` against finite differences (when the head has a bias).
    pub d_bias: Option<ErrorStats>,
    /// `dX` against finite differences.
    pub d_input: ErrorStats,
}

impl GradcheckReport {
    /// The largest relative error over all gradients.
    pub fn max_rel(&self) -> f64 {
        [Some(self.d_weight), self.d_bias, Some(self.d_input)]
            .into_iter()
            .flatten()
            .map(|stats| stats.max_rel)
            .fold(0.0, f64::max)
    }
}

/// The loss and its gradients as host `f64` vectors (row-major), as finite differences see them.
#[derive(Clone, Debug, PartialEq)]
pub struct HostGradients {
    /// The loss at the unperturbed point.
    pub loss: f64,
    /// `dL/dW`, `D * C` entries.
    pub d_weight: Vec<f64>,
    /// `dL/db`, `C` entries.
    pub d_bias: Option<Vec<f64>>,
    /// `dL/dX`, `N * D` entries.
    pub d_input: Vec<f64>,
}

impl HostGradients {
    /// Reads analytic gradients back to the host.
    pub fn from_tensors(gradients: &HeadGradients) -> Result<Self> {
        Ok(Self {
            // Reduction none: the per-row losses, summed as `loss.backward()` seeds them.
            loss: to_host_f64(&gradients.loss)?.iter().sum(),
            d_weight: to_host_f64(&gradients.d_weight)?,
            d_bias: gradients.d_bias.as_ref().map(to_host_f64).transpose()?,
            d_input: to_host_f64(&gradients.d_input)?,
        })
    }
}

/// Targets on the host.
enum HostTargets {
    Classes(Vec<i64>),
    Probabilities(Vec<f64>),
}

/// A batch, the head's parameters and the options on the host in `f64`.
struct HostProblem {
    x: Vec<f64>,
    weight: Vec<f64>,
    bias: Option<Vec<f64>>,
    targets: HostTargets,
    n_features: usize,
    n_classes: usize,
    options: LossOptions,
    ignore_index: Option<i64>,
}

impl HostProblem {
    fn new(
        head: &LinearSoftmax,
        x: &Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<Self> {
        head.check_loss_inputs(x, targets, options)?;
        let ignore_index = targets.ignore_index();
        let targets = match targets.kind() {
            TargetKind::Classes { indices, .. } => HostTargets::Classes(to_host_i64(indices)?),
            TargetKind::Probabilities(p) => HostTargets::Probabilities(to_host_f64(p)?),
        };
        Ok(Self {
            x: to_host_f64(x)?,
            weight: to_host_f64(&head.weight())?,
            bias: head.bias().as_ref().map(to_host_f64).transpose()?,
            targets,
            n_features: head.n_features(),
            n_classes: head.n_classes(),
            options: options.clone(),
            ignore_index,
        })
    }

    /// The loss in `f64`, straight from the definition in [`LossOptions`], one row at a time
    /// (reduction none is summed, as `loss.backward()` seeds every entry with 1).
    fn loss(&self) -> f64 {
        let (d, c) = (self.n_features, self.n_classes);
        let options = &self.options;
        let eps = options.label_smoothing;
        let class_weight = |k: usize| options.weights.as_ref().map_or(1.0, |w| w[k]);
        let ignored = |label: i64| {
            self.ignore_index == Some(label)
                || options
                    .pad_tokens
                    .iter()
                    .flatten()
                    .any(|&pad| pad as i64 == label)
        };
        let rows = self.x.len() / d;
        let (mut total, mut denominator) = (0.0, 0.0);
        let mut logits = vec![0.0; c];
        for row in 0..rows {
            let x_row = &self.x[row * d..(row + 1) * d];
            for (k, logit) in logits.iter_mut().enumerate() {
                let score = self.bias.as_ref().map_or(0.0, |b| b[k])
                    + x_row
                        .iter()
                        .enumerate()
                        .map(|(j, x)| x * self.weight[j * c + k])
                        .sum::<f64>();
                *logit = options
                    .softcap
                    .map_or(score, |cap| cap * (score / cap).tanh());
            }
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + logits.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
            // Weighted target P_i: the loss is sum_k P_ik (lse - S_ik).
            let target: Vec<f64> = match &self.targets {
                HostTargets::Classes(labels) => {
                    let label = labels[row];
                    if ignored(label) {
                        continue;
                    }
                    let label = label as usize;
                    denominator += class_weight(label);
                    (0..c)
                        .map(|k| {
                            let hot = if k == label { 1.0 - eps } else { 0.0 };
                            hot * class_weight(label) + eps / c as f64 * class_weight(k)
                        })
                        .collect()
                }
                HostTargets::Probabilities(p) => {
                    denominator += 1.0;
                    (0..c)
                        .map(|k| class_weight(k) * ((1.0 - eps) * p[row * c + k] + eps / c as f64))
                        .collect()
                }
            };
            total += (0..c).map(|k| target[k] * (lse - logits[k])).sum::<f64>()
                + options.z_loss * lse * lse;
        }
        let reduced = match options.reduction {
            LossReduction::Mean if denominator != 0.0 => total / denominator,
            _ => total,
        };
        reduced + options.l2 * self.weight.iter().map(|w| w * w).sum::<f64>()
    }
}

/// Centred differences of `loss` with respect to every entry selected by `entries`.
fn centred_differences(
    problem: &mut HostProblem,
    step: f64,
    len: usize,
    entry: fn(&mut HostProblem, usize) -> &mut f64,
) -> Vec<f64> {
    (0..len)
        .map(|index| {
            let original = *entry(problem, index);
            *entry(problem, index) = original + step;
            let plus = problem.loss();
            *entry(problem, index) = original - step;
            let minus = problem.loss();
            *entry(problem, index) = original;
            (plus - minus) / (2.0 * step)
        })
        .collect()
}

/// Numerical gradients of the loss by centred differences with step `step`, in `f64`.
pub fn numerical_gradients(
    head: &LinearSoftmax,
    x: &Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    step: f64,
) -> Result<HostGradients> {
    let mut problem = HostProblem::new(head, x, targets, options)?;
    let loss = problem.loss();
    let (n_weight, n_input) = (problem.weight.len(), problem.x.len());
    let n_bias = problem.bias.as_ref().map(Vec::len);
    let d_weight = centred_differences(&mut problem, step, n_weight, |p, i| &mut p.weight[i]);
    let d_bias = n_bias.map(|len| {
        centred_differences(&mut problem, step, len, |p, i| {
            &mut p.bias.as_mut().expect("the head has a bias")[i]
        })
    });
    let d_input = centred_differences(&mut problem, step, n_input, |p, i| &mut p.x[i]);
    Ok(HostGradients {
        loss,
        d_weight,
        d_bias,
        d_input,
    })
}

/// Compares analytic gradients with centred finite differences (step [`DEFAULT_STEP`]).
///
/// Cast the head and `x` to `f64` first: `f32` round-off swamps the differences.
pub fn gradcheck(
    head: &LinearSoftmax,
    x: &Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    analytic: &HeadGradients,
) -> Result<GradcheckReport> {
    let numerical = numerical_gradients(head, x, targets, options, DEFAULT_STEP)?;
    let analytic = HostGradients::from_tensors(analytic)?;
    Ok(compare(&analytic, &numerical))
}

/// Per-tensor errors of `actual` against `reference`.
pub fn compare(actual: &HostGradients, reference: &HostGradients) -> GradcheckReport {
    GradcheckReport {
        d_weight: ErrorStats::between(&actual.d_weight, &reference.d_weight),
        d_bias: actual
            .d_bias
            .as_ref()
            .zip(reference.d_bias.as_ref())
            .map(|(a, r)| ErrorStats::between(a, r)),
        d_input: ErrorStats::between(&actual.d_input, &reference.d_input),
    }
}
