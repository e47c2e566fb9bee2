//! The loss options resolved against the targets once per call, on the logits' device and in
//! their float type: which rows count, each row's weight, the class weights, the mean's
//! denominator. Every tensor path (autodiff, manual, the fused op's tensor kernel) reads
//! them from here; the CPU kernel resolves the same rules on its host labels
//! (`fused/cpu/rows.rs`, through [`LossOptions::ignores`] and
//! [`LossOptions::class_weight_sum`]).

use core::ops::Range;

use burn::prelude::*;
use burn::tensor::DType;

use crate::loss::distillation_options::DistillationOptions;
use crate::loss::options::LossOptions;
use crate::loss::targets::{TargetKind, Targets};
use crate::loss::teacher::Teacher;

/// The options of one loss call, resolved against its targets.
///
/// With `v_i = 0` for ignored rows (else 1), class weights `w` (all 1 when absent),
/// `r_i = v_i w_{y_i}` and the targets' row weights `rho_i` (all 1 when absent): the mean
/// divides by `sum_i rho_i r_i` for class indices, by `sum_i rho_i` for probabilities. Each
/// row's loss is `rho_i` times its unweighted loss; `rho_i` scales nothing else, so the row
/// pass never sees it: the loss and the upstream gradient of row `i` are scaled instead.
#[derive(Clone, Debug)]
pub(crate) struct ResolvedLoss {
    /// The targets, ready for `gather` / `scatter` or as probabilities.
    pub(crate) targets: ResolvedTargets,
    /// `w`, `[1, C]` (absent: all 1).
    pub(crate) class_weights: Option<Tensor<2>>,
    /// `sum_k w_k` (`C` without weights).
    pub(crate) weight_sum: f64,
    /// The mean's denominator of the whole batch, `[1]` (0 when every row is ignored; the
    /// reduction replaces it by 1), or the options' `mean_denominator`.
    pub(crate) denominator: Tensor<1>,
    /// `rho_i`, the targets' row weights ([`Targets::with_row_weights`]), `[N, 1]` (absent:
    /// all 1).
    pub(crate) row_scale: Option<Tensor<2>>,
    /// Label smoothing `eps`.
    pub(crate) smoothing: f64,
    /// z-loss `beta`.
    pub(crate) z_loss: f64,
    /// The entropy bonus `alpha`.
    pub(crate) entropy_bonus: f64,
    /// The temperature `tau` (a teacher's targets: the distillation's).
    pub(crate) temperature: f64,
    /// The distillation loss, for a teacher's targets.
    pub(crate) distillation: DistillationOptions,
}

/// The targets side of a [`ResolvedLoss`].
// One value per loss call (or chunk): the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub(crate) enum ResolvedTargets {
    /// Class indices.
    Classes {
        /// `[N, 1]` labels; ignored rows point at class 0 (with `r_i = v_i = 0`).
        labels: Tensor<2, Int>,
        /// `v_i`, `[N, 1]` (absent: no row can be ignored).
        valid: Option<Tensor<2>>,
        /// `r_i = v_i w_{y_i}`, `[N, 1]` (absent: all 1).
        row_weights: Option<Tensor<2>>,
    },
    /// Class probabilities `T`, `[N, C]`.
    Probabilities(Tensor<2>),
    /// A teacher (distillation), on the logits' device in their float type.
    Teacher {
        /// The teacher's head and hidden states.
        teacher: Teacher,
        /// `[N, 1]` labels of the hard term (ignored rows point at class 0), when given.
        labels: Option<Tensor<2, Int>>,
        /// `v_i`, `[N, 1]` (absent: no row can be ignored).
        valid: Option<Tensor<2>>,
    },
}

/// Class indices `[N]` on `device` with the options' ignored rows resolved: the labels
/// `[N, 1]` (ignored rows pointing at class 0) and `v_i` `[N, 1]` in `dtype` (absent when no
/// row can be ignored).
fn resolve_labels(
    indices: &Tensor<1, Int>,
    ignore_index: Option<i64>,
    options: &LossOptions,
    device: &Device,
    dtype: DType,
) -> (Tensor<2, Int>, Option<Tensor<2>>) {
    let indices = indices.clone().to_device(device);
    let ignored = ignored_rows(&indices, ignore_index, options);
    let (labels, valid) = match ignored {
        None => (indices, None),
        Some(ignored) => (
            indices.mask_fill(ignored.clone(), 0),
            Some(ignored.bool_not().float().cast(dtype).unsqueeze_dim::<2>(1)),
        ),
    };
    (labels.unsqueeze_dim::<2>(1), valid)
}

/// The options' class weights `w` as a `[C]` tensor of `dtype` on `device`.
pub(crate) fn class_weights(
    options: &LossOptions,
    device: &Device,
    dtype: DType,
) -> Option<Tensor<1>> {
    options.weights.as_ref().map(|weights| {
        Tensor::from_data(
            TensorData::new(weights.clone(), [weights.len()]),
            (device, dtype),
        )
    })
}

/// The one rule of ignored rows (`LossOptions::ignored_labels`), on the device: the rows of
/// `labels` `[N]` whose label the options ignore; `None` when no label can be ignored.
pub(crate) fn ignored_rows(
    labels: &Tensor<1, Int>,
    ignore_index: Option<i64>,
    options: &LossOptions,
) -> Option<Tensor<1, Bool>> {
    options
        .ignored_labels(ignore_index)
        .map(|value| labels.clone().equal_elem(value))
        .reduce(|a, b| a.bool_or(b))
}

impl ResolvedLoss {
    /// Resolves `options` against `targets` for logits on `device` in `dtype`.
    pub(crate) fn new(
        targets: &Targets,
        options: &LossOptions,
        device: &Device,
        dtype: DType,
    ) -> Self {
        let class_weights = class_weights(options, device, dtype);
        Self::with_class_weights(targets, options, class_weights, device, dtype)
    }

    /// [`new`](Self::new) with the class weights `[C]` already on the device.
    pub(crate) fn with_class_weights(
        targets: &Targets,
        options: &LossOptions,
        class_weights: Option<Tensor<1>>,
        device: &Device,
        dtype: DType,
    ) -> Self {
        let n_classes = targets.n_classes();
        let class_weights = class_weights.map(|weights| weights.unsqueeze_dim::<2>(0));
        let row_scale = targets.row_weights().map(|rho| {
            let rho = rho.clone().to_device(device);
            let rho = if rho.dtype() == dtype {
                rho
            } else {
                rho.cast(dtype)
            };
            rho.unsqueeze_dim::<2>(1)
        });
        // sum_i rho_i t_i for the rows' own weights t_i (absent: all 1).
        let weighted_count = |own: Option<&Tensor<2>>, rows: usize| match (own, &row_scale) {
            (Some(own), Some(rho)) => (own.clone() * rho.clone()).sum(),
            (Some(own), None) => own.clone().sum(),
            (None, Some(rho)) => rho.clone().sum(),
            (None, None) => Tensor::full([1], rows as f64, (device, dtype)),
        };
        let (targets, denominator) = match targets.kind() {
            TargetKind::Classes { indices, .. } => {
                let rows = indices.dims()[0];
                let (labels, valid) =
                    resolve_labels(indices, targets.ignore_index(), options, device, dtype);
                let label_weights = class_weights.as_ref().map(|w| {
                    w.clone()
                        .squeeze_dim::<1>(0)
                        .select(0, labels.clone().squeeze_dim(1))
                        .unsqueeze_dim::<2>(1)
                });
                let row_weights = match (label_weights, valid.clone()) {
                    (Some(w), Some(v)) => Some(w * v),
                    (w, v) => w.or(v),
                };
                let denominator = weighted_count(row_weights.as_ref(), rows);
                (
                    ResolvedTargets::Classes {
                        labels,
                        valid,
                        row_weights,
                    },
                    denominator,
                )
            }
            TargetKind::Probabilities(probabilities) => {
                let probabilities = probabilities.clone().to_device(device);
                let probabilities = if probabilities.dtype() == dtype {
                    probabilities
                } else {
                    probabilities.cast(dtype)
                };
                let rows = probabilities.dims()[0];
                (
                    ResolvedTargets::Probabilities(probabilities),
                    weighted_count(None, rows),
                )
            }
            TargetKind::Teacher {
                teacher,
                labels,
                ignore_index,
            } => {
                let rows = teacher.hidden().dims()[0];
                let (labels, valid) = match labels {
                    Some(indices) => {
                        let (labels, valid) =
                            resolve_labels(indices, *ignore_index, options, device, dtype);
                        (Some(labels), valid)
                    }
                    None => (None, None),
                };
                let denominator = weighted_count(valid.as_ref(), rows);
                let teacher = teacher.to(device, dtype);
                (
                    ResolvedTargets::Teacher {
                        teacher,
                        labels,
                        valid,
                    },
                    denominator,
                )
            }
        };
        // The caller's denominator, when given, replaces the batch's own.
        let denominator = match options.mean_denominator {
            Some(given) => Tensor::full([1], given, (device, dtype)),
            None => denominator,
        };
        Self {
            targets,
            class_weights,
            weight_sum: options.class_weight_sum(n_classes),
            denominator,
            row_scale,
            smoothing: options.label_smoothing,
            z_loss: options.z_loss,
            entropy_bonus: options.entropy_bonus,
            temperature: options.temperature,
            distillation: options.distillation.clone(),
        }
    }

    /// Rows `range` (a chunk of the batch); the denominator stays the whole batch's.
    pub(crate) fn rows(&self, range: Range<usize>) -> Self {
        let slice = |tensor: &Tensor<2>| tensor.clone().slice([range.clone()]);
        let targets = match &self.targets {
            ResolvedTargets::Classes {
                labels,
                valid,
                row_weights,
            } => ResolvedTargets::Classes {
                labels: labels.clone().slice([range.clone()]),
                valid: valid.as_ref().map(slice),
                row_weights: row_weights.as_ref().map(slice),
            },
            ResolvedTargets::Probabilities(probabilities) => {
                ResolvedTargets::Probabilities(slice(probabilities))
            }
            ResolvedTargets::Teacher {
                teacher,
                labels,
                valid,
            } => ResolvedTargets::Teacher {
                teacher: teacher.rows(range.clone()),
                labels: labels
                    .as_ref()
                    .map(|labels| labels.clone().slice([range.clone()])),
                valid: valid.as_ref().map(slice),
            },
        };
        Self {
            targets,
            row_scale: self.row_scale.as_ref().map(slice),
            ..self.clone()
        }
    }
}
