//! [`LossOptions`]: the loss's definition, with PyTorch's `F.cross_entropy` conventions, and the
//! settings of how it is computed (path, chunking, statistics), taken by every entry point.

use burn::prelude::*;

use crate::error::{Error, Result};
use crate::loss::chunking::Chunking;
use crate::loss::distillation_options::DistillationOptions;
use crate::loss::gradient_filter::GradientFilter;
use crate::loss::path::LossPath;

/// How the per-row losses `l_i` are combined (PyTorch's `reduction`; named apart from
/// `burn::nn::loss::Reduction`, which has no `None`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum LossReduction {
    /// `sum_i l_i / denominator`: the number of non-ignored rows, or the sum of their class
    /// weights when class weights are given (PyTorch's weighted mean), or `N` for probability
    /// targets.
    Mean,
    /// `sum_i l_i`.
    Sum,
    /// The per-row losses `[N]` (one per row of `x`'s leading dimensions, in their order); the
    /// upstream gradient is then per row.
    None,
}

/// Options of the softmax cross-entropy loss, and the settings of how it is computed: the one
/// set of knobs every entry point takes ([`LinearSoftmax::loss`](crate::LinearSoftmax::loss),
/// [`loss_output`](crate::LinearSoftmax::loss_output),
/// [`gradients`](crate::LinearSoftmax::gradients)).
///
/// With `S' = c tanh(S / c) / tau` (softcap `c`, else `S' = S / tau`; temperature `tau`, 1 by
/// default: the temperature divides the capped logits), `logp = log_softmax(S')`,
/// `lse_i = log sum_k exp(S'_ik)`, class weights `w` (all 1 when absent), label smoothing
/// `eps`, z-loss coefficient `beta`, entropy bonus `alpha` with `H_i = -sum_k A_ik logp_ik`
/// (`A = softmax(S')`), and `v_i = 1` unless row `i` is ignored:
///
/// ```text
/// class indices:  l_i = v_i [ (1 - eps) w_{y_i} (-logp_{i,y_i}) + (eps / C) sum_k w_k (-logp_ik) ] + beta v_i lse_i^2 - alpha v_i H_i
/// probabilities:  l_i = sum_k w_k ((1 - eps) T_ik + eps / C) (-logp_ik) + beta lse_i^2 - alpha H_i
/// mean:           L = sum_i l_i / sum_i v_i w_{y_i}   (N for probability targets)
/// mean over d:    L = sum_i l_i / d                   (`mean_denominator` d)
/// ```
/// plus `l2 * sum(W^2)` for the L2 option. Targets with row weights `rho_i`
/// ([`Targets::with_row_weights`](crate::Targets::with_row_weights): per-token weights, data
/// like the labels) multiply each `l_i` by `rho_i` and the mean's denominator's terms alike
/// (`sum_i rho_i v_i w_{y_i}`, `sum_i rho_i`). Row `i` is ignored (`v_i = 0`) when its label is the
/// targets' ignore index ([`Targets::from_indices_with_ignore`](crate::Targets::from_indices_with_ignore):
/// the ignore index belongs to the labels, which are validated against it) or one of the
/// `pad_tokens`. The z-loss is averaged with the same denominator as
/// the main loss. When the denominator is 0 (every row ignored) the loss and the gradients are
/// 0, where PyTorch and Burn return NaN. Targets that carry a teacher
/// ([`Targets::from_teacher`](crate::Targets::from_teacher)) replace the cross-entropy by the
/// distillation loss of [`DistillationOptions`] (at the temperature `tau`), with reduction,
/// `mean_denominator`, ignored rows, row weights and `l2` as above; the options it has no term
/// for (class weights, label smoothing, z-loss, entropy bonus, softcap, shift, stats) are
/// refused.
///
/// | option | PyTorch `F.cross_entropy` | Burn `CrossEntropyLossConfig` |
/// |---|---|---|
/// | `reduction` | `reduction` | mean only |
/// | `mean_denominator` | - (Hugging Face's `num_items_in_batch`) | - |
/// | (on the [`Targets`](crate::Targets)) | `ignore_index` (default -100) | - |
/// | `pad_tokens` | - | `pad_tokens` |
/// | `weights` | `weight` | `weights` |
/// | `label_smoothing` | `label_smoothing` | `smoothing` |
/// | `z_loss` | - (Liger's `lse_square_scale`) | - |
/// | `entropy_bonus` | - (RL's entropy bonus: TorchRL's `entropy_coef`) | - |
/// | `softcap` | - (Gemma 2's final-logit soft-capping) | - |
/// | `temperature` | - (`F.cross_entropy(S / tau, ..)`; Liger's `temperature`) | - |
/// | `shift` | - (`logits[:, :-s]` against `labels[:, s:]`; Cut Cross-Entropy's `shift`) | - |
/// | `l2` | - (cs231n's `reg`) | - |
/// | `gradient_filter` | - (Cut Cross-Entropy's `filter_eps`) | - |
/// | `distillation` | - (Liger's `LigerFusedLinearJSD`: `jsd_beta`; its distillation base's `weight_hard_loss`, `weight_soft_loss`) | - |
///
/// The settings change how the loss is computed, never its value (beyond rounding):
///
/// | setting | what it chooses |
/// |---|---|
/// | `path` | [`LossPath`]: fused (the default), autodiff or manual |
/// | `chunking` | [`Chunking`]: rows per chunk of the fused path |
/// | `stats` | whether [`loss_output`](crate::LinearSoftmax::loss_output) and [`gradients`](crate::LinearSoftmax::gradients) return [`LossStats`](crate::LossStats) |
///
/// ```
/// use linear_softmax::{Chunking, LossOptions, LossPath, LossReduction};
///
/// let options = LossOptions::new()
///     .with_reduction(LossReduction::Sum)
///     .with_label_smoothing(0.1)
///     .with_path(LossPath::Manual)
///     .with_chunking(Chunking::new().with_rows(Some(64)));
/// assert_eq!(options.summary(), "sum, label smoothing 0.1");
/// assert_eq!((options.path, options.chunking.rows), (LossPath::Manual, Some(64)));
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct LossOptions {
    /// How the per-row losses are combined.
    #[config(default = "LossReduction::Mean")]
    pub reduction: LossReduction,
    /// The mean's denominator `d > 0` given by the caller, in place of this batch's own
    /// (`sum_i v_i w_{y_i}`, or `N`): for gradient accumulation, the denominator of the whole
    /// optimiser step over all its micro-batches (Hugging Face's `num_items_in_batch`), so
    /// that the micro-batches' summed gradients are those of the whole batch's ordinary mean.
    /// [`Targets::mean_denominator`](crate::Targets::mean_denominator) gives each
    /// micro-batch's share. Reduction mean only.
    #[config(default = "None")]
    pub mean_denominator: Option<f64>,
    /// Rows whose label is one of these classes are ignored (Burn's `pad_tokens`).
    #[config(default = "None")]
    pub pad_tokens: Option<Vec<usize>>,
    /// Class weights `w` `[C]`, finite and `>= 0` (PyTorch's `weight`).
    #[config(default = "None")]
    pub weights: Option<Vec<f64>>,
    /// Label smoothing `eps` in `[0, 1]`.
    #[config(default = 0.0)]
    pub label_smoothing: f64,
    /// z-loss coefficient `beta >= 0` of `beta * lse^2` (PaLM; Liger's `lse_square_scale`).
    #[config(default = 0.0)]
    pub z_loss: f64,
    /// Entropy bonus `alpha >= 0`: `- alpha H_i` joins each counted row's loss, with
    /// `H_i = -sum_k A_ik log A_ik` the entropy of its softmax (capped and tempered), so that
    /// minimising the loss keeps the policy from collapsing (policy-gradient RL). Its gradient,
    /// `d(-alpha H_i)/dS'_ik = alpha A_ik (log A_ik + H_i)`, is derived by hand on the manual and
    /// fused paths.
    #[config(default = 0.0)]
    pub entropy_bonus: f64,
    /// Logit soft-capping `c > 0`: the loss sees `c tanh(S / c)` (Gemma 2).
    #[config(default = "None")]
    pub softcap: Option<f64>,
    /// Temperature `tau > 0`: the softmax (and so the loss, `lse`, the z-loss and the
    /// statistics) sees `S' / tau`, after the softcap when there is one: the log-probabilities
    /// a sampler at temperature `tau` draws from (RL fine-tuning), or a distillation's
    /// softened student. 1 leaves the logits as they are.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Next-token shift `s` for sequence batches (Cut Cross-Entropy's `shift`): with `x`
    /// `[.., T, D]` and targets `[.., T]`, position `t` is scored against the label of
    /// position `t + s` of the same sequence, and the last `s` positions of each sequence are
    /// not counted (their loss is 0, as an ignored row's). So the labels of a language model
    /// are its input tokens, unshifted: no copy of `x` (the rows stay `x.reshape([B * T, D])`)
    /// and no shifted copy made by the caller. Class-index targets only; `s` below `T`.
    #[config(default = 0)]
    pub shift: usize,
    /// Coefficient `lambda >= 0` of the L2 penalty `lambda * sum(W^2)` on the weight (not the
    /// bias); a scalar, so it needs reduction mean or sum.
    #[config(default = 0.0)]
    pub l2: f64,
    /// The distillation loss, for targets that carry a teacher
    /// ([`Targets::from_teacher`](crate::Targets::from_teacher)): the divergence (`beta`) and
    /// its mix with the hard labels. The temperature above is then the distillation's: both
    /// distributions see the logits divided by it, the hard-label term does not. Ignored for
    /// other targets.
    #[config(default = "DistillationOptions::new()")]
    pub distillation: DistillationOptions,
    /// Gradient filtering (Cut Cross-Entropy's): the backward GEMMs skip the blocks of `dS`
    /// whose entries are all below a threshold, an approximation of `dW` and `dX` with a
    /// documented bound. Off by default; refused where Burn's autograd derives the gradient.
    #[config(default = "GradientFilter::new()")]
    pub gradient_filter: GradientFilter,
    /// Which path computes the loss and its gradients (a setting: every path gives the same
    /// values).
    #[config(default = "LossPath::Fused")]
    pub path: LossPath,
    /// How many rows the fused path takes at a time (the other paths form the whole `[N, C]`
    /// logits and ignore it, but still refuse a bad one).
    #[config(default = "Chunking::new()")]
    pub chunking: Chunking,
    /// Whether [`loss_output`](crate::LinearSoftmax::loss_output) and
    /// [`gradients`](crate::LinearSoftmax::gradients) also return the per-row
    /// [`LossStats`](crate::LossStats) (predictions, accuracy counts, target log-probabilities)
    /// from the same pass.
    #[config(default = false)]
    pub stats: bool,
}

impl Default for LossOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl LossOptions {
    /// The loss's definition: the reduction, then every option that differs from its default,
    /// e.g. `mean, label smoothing 0.1, l2 0.001` (the `Display` of a `Config` is its JSON). The
    /// settings (`path`, `chunking`, `stats`) are left out: they change how the loss is
    /// computed, not what it is.
    pub fn summary(&self) -> String {
        let mut text = match self.reduction {
            LossReduction::Mean => "mean",
            LossReduction::Sum => "sum",
            LossReduction::None => "no reduction",
        }
        .to_string();
        if let Some(denominator) = self.mean_denominator {
            text += &format!(" over {denominator}");
        }
        if let Some(pads) = &self.pad_tokens {
            text += &format!(", pad tokens {pads:?}");
        }
        if let Some(weights) = &self.weights {
            text += &format!(", class weights {weights:?}");
        }
        for (name, value) in [
            ("label smoothing", self.label_smoothing),
            ("z-loss", self.z_loss),
            ("entropy bonus", self.entropy_bonus),
            ("l2", self.l2),
        ] {
            if value != 0.0 {
                text += &format!(", {name} {value}");
            }
        }
        if let Some(cap) = self.softcap {
            text += &format!(", softcap {cap}");
        }
        if self.temperature != 1.0 {
            text += &format!(", temperature {}", self.temperature);
        }
        if self.shift != 0 {
            text += &format!(", next-token shift {}", self.shift);
        }
        if self.distillation != DistillationOptions::new() {
            text += &format!(", {}", self.distillation.summary());
        }
        if self.gradient_filter.is_on() {
            text += &format!(", {}", self.gradient_filter.summary());
        }
        text
    }
}

fn invalid(name: &'static str, value: impl ToString, expected: &'static str) -> Error {
    Error::InvalidOption {
        name,
        value: value.to_string(),
        expected,
    }
}

impl LossOptions {
    /// Checks every option's range; each path calls this before computing anything.
    pub fn validate(&self) -> Result<()> {
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(invalid("l2", self.l2, "a finite coefficient >= 0"));
        }
        if self.l2 != 0.0 && self.reduction == LossReduction::None {
            return Err(invalid(
                "l2",
                self.l2,
                "0 with reduction none (the penalty is a scalar: use mean or sum)",
            ));
        }
        if let Some(denominator) = self.mean_denominator {
            if !(denominator.is_finite() && denominator > 0.0) {
                return Err(invalid(
                    "mean_denominator",
                    denominator,
                    "a finite denominator > 0",
                ));
            }
            if self.reduction != LossReduction::Mean {
                return Err(invalid(
                    "mean_denominator",
                    denominator,
                    "no denominator with reduction sum or none (it divides the mean)",
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.label_smoothing) {
            return Err(invalid(
                "label_smoothing",
                self.label_smoothing,
                "a value in [0, 1]",
            ));
        }
        if !(self.z_loss.is_finite() && self.z_loss >= 0.0) {
            return Err(invalid("z_loss", self.z_loss, "a finite coefficient >= 0"));
        }
        if !(self.entropy_bonus.is_finite() && self.entropy_bonus >= 0.0) {
            return Err(invalid(
                "entropy_bonus",
                self.entropy_bonus,
                "a finite coefficient >= 0",
            ));
        }
        if let Some(cap) = self.softcap
            && !(cap.is_finite() && cap > 0.0)
        {
            return Err(invalid("softcap", cap, "a finite cap > 0"));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(invalid(
                "temperature",
                self.temperature,
                "a finite temperature > 0",
            ));
        }
        if let Some(weights) = &self.weights
            && let Some(bad) = weights.iter().find(|w| !(w.is_finite() && **w >= 0.0))
        {
            return Err(invalid("class weight", bad, "finite weights >= 0"));
        }
        self.distillation.validate()?;
        self.gradient_filter.validate()?;
        if self.gradient_filter.is_on() && self.path == LossPath::Autodiff {
            return Err(invalid(
                "gradient_filter threshold",
                self.gradient_filter.threshold,
                "0 on the autodiff path (Burn's autograd derives its gradient and cannot \
                 filter it: use the fused or manual path)",
            ));
        }
        if self.chunking.rows == Some(0) {
            return Err(invalid("chunk rows", 0, "at least 1 row per chunk"));
        }
        Ok(())
    }

    /// Checks the options, and the class weights and pad tokens against a head with
    /// `n_classes` classes.
    pub fn validate_for(&self, n_classes: usize) -> Result<()> {
        self.validate()?;
        if let Some(weights) = &self.weights
            && weights.len() != n_classes
        {
            return Err(Error::ShapeMismatch {
                what: "class weights",
                expected: vec![n_classes],
                got: vec![weights.len()],
            });
        }
        if let Some(pad) = self
            .pad_tokens
            .iter()
            .flatten()
            .find(|&&pad| pad >= n_classes)
        {
            return Err(invalid(
                "pad token",
                pad,
                "a class index below the number of classes",
            ));
        }
        Ok(())
    }

    /// The labels whose rows are ignored: the targets' `ignore_index` and the pad tokens. This
    /// is the one rule of ignored rows; the tensor paths apply it on the device
    /// (`ResolvedLoss::new`), the CPU kernel on its host labels ([`ignores`](Self::ignores)).
    pub(crate) fn ignored_labels(
        &self,
        ignore_index: Option<i64>,
    ) -> impl Iterator<Item = i64> + '_ {
        let pads = self.pad_tokens.iter().flatten().map(|&pad| pad as i64);
        ignore_index.into_iter().chain(pads)
    }

    /// Whether a row labelled `label` is ignored.
    pub(crate) fn ignores(&self, ignore_index: Option<i64>, label: i64) -> bool {
        self.ignored_labels(ignore_index)
            .any(|ignored| ignored == label)
    }

    /// Whether any row can be ignored.
    pub(crate) fn ignores_rows(&self, ignore_index: Option<i64>) -> bool {
        self.ignored_labels(ignore_index).next().is_some()
    }

    /// `sum_k w_k`: the sum of the class weights, `C` without them.
    pub(crate) fn class_weight_sum(&self, n_classes: usize) -> f64 {
        self.weights
            .as_ref()
            .map_or(n_classes as f64, |weights| weights.iter().sum())
    }
}
