//! The tensor kernel of the fused head (`Kernel::Tensor`): the chunk
//! loop on tensor operations over a plain backend's primitives: on the CubeCL backends (wgpu,
//! CUDA) for every call, on the CPU backends for what the raw kernels do not take (probability
//! targets, softcap, float types other than f32, f64 and bf16).
//!
//! For rows `r = r0..r1` of the batch (at most `R` of them at a time):
//!
//! ```text
//! S_r   = X_r W + b  (softcapped if asked)            [R, C]  the chunk's logits
//! l_i   = sum_k P_ik (lse_i - S_ik) + beta v_i lse_i^2        (math::softmax_cross_entropy_forward)
//! dS_r  = g_i [(sum_k P_ik + 2 beta v_i lse_i) A_i - P_i]       (math::softmax_cross_entropy_backward)
//! dW   += X_r^T dS_r,   db += colsum(dS_r),   dX_r = dS_r W^T
//! ```
//!
//! so the `[N, C]` logits never exist: peak extra memory is `O(R C + D C)`. The chunk's math is
//! [`crate::math`]'s forward/backward pair (the manual path's), run on `R` rows at a time;
//! every option of [`LossOptions`] therefore holds here exactly as it does there.
//!
//! A teacher's targets (distillation) take the same loop with [`crate::math`]'s distillation
//! pair: each chunk forms the teacher's logits `T_r = X_t,r W_t + b_t` beside the student's,
//! so neither `[N, C]` exists.
//!
//! The options are resolved once for the whole batch (`ResolvedLoss`) and sliced per chunk.
//! The per-row upstream gradient `g_i` is 1 for the sum, and for the mean the chunks are
//! computed as for the sum and the finished gradients scaled once by `1 / den`. For reduction
//! none, `g_i` is the caller's upstream vector.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{
    Backend, BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind,
};
use burn::prelude::*;

use super::backend::WantedGradients;
use crate::loss::options::{LossOptions, LossReduction};
use crate::loss::resolved::{ResolvedLoss, ResolvedTargets};
use crate::loss::stats;
use crate::loss::targets::Targets;
use crate::math;
use crate::math::distillation;

/// How the kernel gets `W^T` for `dX_r = dS_r W^T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WeightTranspose {
    /// A strided view: for backends whose matmul reads any strides without copying (Flex).
    View,
    /// One contiguous copy of `W^T` made before the loop: for backends whose matmul copies a
    /// non-contiguous operand on every call (NdArray would copy `[C, D]` once per chunk).
    #[cfg_attr(not(feature = "ndarray"), allow(dead_code))]
    Contiguous,
}

/// A plain (non-autodiff) backend whose float primitives the kernel wraps as [`Tensor`]s, so that
/// the chunk's math is written once, with the manual path's functions.
pub(crate) trait PlainBackend: Backend {
    /// How this backend's matmul wants `W^T`.
    const WEIGHT_TRANSPOSE: WeightTranspose;
    /// The primitive as a (non-autodiff) tensor.
    fn wrap<const D: usize>(primitive: FloatTensor<Self>) -> Tensor<D>;
    /// The tensor's primitive back.
    fn unwrap<const D: usize>(tensor: Tensor<D>) -> FloatTensor<Self>;
    /// An Int primitive as a (non-autodiff) tensor.
    fn wrap_int<const D: usize>(primitive: IntTensor<Self>) -> Tensor<D, Int>;
    /// The Int tensor's primitive back.
    fn unwrap_int<const D: usize>(tensor: Tensor<D, Int>) -> IntTensor<Self>;
}

macro_rules! plain_backend {
    ($backend:ident, $transpose:expr) => {
        // NdArray is deprecated upstream in favour of Flex; this crate still serves both.
        #[allow(deprecated)]
        impl PlainBackend for burn::backend::$backend {
            const WEIGHT_TRANSPOSE: WeightTranspose = $transpose;
            fn wrap<const D: usize>(primitive: FloatTensor<Self>) -> Tensor<D> {
                Tensor::from_dispatch(DispatchTensor {
                    kind: DispatchTensorKind::$backend(BackendTensor::Float(primitive)),
                    autodiff: DispatchAutodiffContext::Disabled,
                })
            }
            fn wrap_int<const D: usize>(primitive: IntTensor<Self>) -> Tensor<D, Int> {
                Tensor::from_dispatch(DispatchTensor {
                    kind: DispatchTensorKind::$backend(BackendTensor::Int(primitive)),
                    autodiff: DispatchAutodiffContext::Disabled,
                })
            }
            fn unwrap_int<const D: usize>(tensor: Tensor<D, Int>) -> IntTensor<Self> {
                match tensor.into_dispatch().kind {
                    DispatchTensorKind::$backend(tensor) => tensor.int(),
                    _ => unreachable!(
                        "a {} kernel produced a tensor of another backend",
                        stringify!($backend)
                    ),
                }
            }
            fn unwrap<const D: usize>(tensor: Tensor<D>) -> FloatTensor<Self> {
                match tensor.into_dispatch().kind {
                    DispatchTensorKind::$backend(tensor) => tensor.float(),
                    _ => unreachable!(
                        "a {} kernel produced a tensor of another backend",
                        stringify!($backend)
                    ),
                }
            }
        }
    };
}
#[cfg(feature = "flex")]
plain_backend!(Flex, WeightTranspose::View);
#[cfg(feature = "ndarray")]
plain_backend!(NdArray, WeightTranspose::Contiguous);
// CubeCL's matmul reads a row- or column-major operand from its strides: a view is enough.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
plain_backend!(Cube, WeightTranspose::View);

/// Who runs each chunk's row pass (losses, log-sum-exps, `dS` from the logits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowPass {
    /// [`crate::math`]'s tensor functions: every option and target kind.
    Tensor,
    /// One CubeCL kernel launch per chunk (`fused/cube/`): class indices, no softcap.
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    Cube,
}

/// The loss, the wanted gradients, the per-row log-sum-exp and the per-row statistics when
/// asked for, as tensors.
pub(crate) struct ChunkedOutput {
    /// The reduced loss: `[1]`, or `[N]` for reduction none.
    pub loss: Tensor<1>,
    pub d_input: Option<Tensor<2>>,
    pub d_weight: Option<Tensor<2>>,
    pub d_bias: Option<Tensor<1>>,
    /// `lse_i`, `[N]`.
    pub log_sum_exp: Tensor<1>,
    /// The per-row statistics, when asked for.
    pub stats: Option<RowStats>,
}

/// The per-row statistics of [`ChunkedOutput`], each `[N]` (any value for ignored rows).
pub(crate) struct RowStats {
    /// `argmax_k S_ik` of the uncapped logits.
    pub predictions: Tensor<1, Int>,
    /// `sum_k T_ik log softmax(S')_ik` of the (capped) logits.
    pub target_log_probabilities: Tensor<1>,
    /// `-sum_k A_ik log A_ik`, `A = softmax(S')`.
    pub entropies: Tensor<1>,
}

/// Runs the chunked forward pass and the gradients in `wanted`, with each row's prediction and
/// target log-probability when `stats`.
///
/// `row_upstream` is the upstream gradient of each row's loss for reduction none (`None`:
/// `loss.backward()`'s seed of ones); the L2 term is not included (the caller adds it).
///
/// # Shapes
/// - `x`: `[N, D]`, `weight`: `[D, C]`, `bias`: `[C]`, `row_upstream`: `[N]`
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_cross_entropy(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    targets: &Targets,
    class_weights: Option<Tensor<1>>,
    options: &LossOptions,
    chunk_rows: usize,
    wanted: WantedGradients,
    stats: bool,
    row_upstream: Option<Tensor<1>>,
    weight_transpose: WeightTranspose,
    row_pass: RowPass,
) -> ChunkedOutput {
    let [n_rows, d_input] = x.dims();
    let chunk_rows = chunk_rows.clamp(1, n_rows);
    let wanted = WantedGradients {
        bias: wanted.bias && bias.is_some(),
        ..wanted
    };
    let weight_transposed = wanted.input.then(|| match weight_transpose {
        WeightTranspose::View => weight.clone().transpose(),
        // Reshaping a non-contiguous tensor to its own shape makes it contiguous.
        WeightTranspose::Contiguous => {
            let [d, c] = weight.dims();
            weight.clone().transpose().reshape([c, d])
        }
    });

    // The options resolved once for the whole batch (class weights uploaded once, the
    // denominator summed over every row), then sliced per chunk.
    let resolved =
        ResolvedLoss::with_class_weights(targets, options, class_weights, &x.device(), x.dtype());
    let mut row_losses = Vec::with_capacity(n_rows.div_ceil(chunk_rows));
    let mut log_sum_exps = Vec::new();
    let mut predictions = Vec::new();
    let mut target_log_probabilities = Vec::new();
    let mut entropies = Vec::new();
    let mut d_weight: Option<Tensor<2>> = None;
    let mut d_bias: Option<Tensor<1>> = None;
    let mut d_input_chunks = Vec::with_capacity(n_rows.div_ceil(chunk_rows));

    for start in (0..n_rows).step_by(chunk_rows) {
        let end = (start + chunk_rows).min(n_rows);
        let x_chunk = x.clone().slice([start..end, 0..d_input]);
        let logits = math::linear_forward(x_chunk.clone(), weight.clone(), bias.clone());
        let d_rows = || match &row_upstream {
            Some(upstream) => upstream.clone().slice(start..end),
            None => Tensor::ones([end - start], (&x.device(), x.dtype())),
        };
        let rows = resolved.rows(start..end);
        if stats {
            // Before the softcap, as `LinearSoftmax::predict` sees the logits.
            predictions.push(logits.clone().argmax(1).squeeze_dim(1));
        }
        let d_logits = match row_pass {
            // A teacher's chunk: its logits beside the student's, the distillation pair.
            RowPass::Tensor if matches!(rows.targets, ResolvedTargets::Teacher { .. }) => {
                let (losses, cache) = distillation::distillation_forward_resolved(logits, &rows);
                row_losses.push(losses);
                log_sum_exps.push(cache.log_sum_exp.clone());
                if !wanted.any() {
                    continue;
                }
                distillation::distillation_backward(cache, d_rows())
            }
            RowPass::Tensor => {
                let capped = options
                    .softcap
                    .map(|cap| math::softcap_forward(logits.clone(), cap));
                // Without statistics the forward takes the only handle on the logits (Burn
                // may then reuse their buffer).
                let kept = stats.then(|| capped.clone().unwrap_or_else(|| logits.clone()));
                let (losses, cache) = math::softmax_cross_entropy_forward_resolved(
                    capped.clone().unwrap_or(logits),
                    &rows,
                );
                if let Some(kept) = kept {
                    let (row_max, log_sum) = (&cache.row_max, &cache.log_sum);
                    let log_probabilities =
                        stats::target_log_probabilities(&kept, row_max, log_sum, &rows.targets);
                    target_log_probabilities.push(log_probabilities);
                    entropies.push(stats::entropies(&kept, row_max, log_sum));
                }
                row_losses.push(losses);
                log_sum_exps.push(cache.log_sum_exp.clone());
                if !wanted.any() {
                    continue;
                }
                let d_logits = math::softmax_cross_entropy_backward(cache, d_rows());
                match (capped, options.softcap) {
                    (Some(capped), Some(cap)) => math::softcap_backward(capped, cap, d_logits),
                    _ => d_logits,
                }
            }
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            RowPass::Cube => {
                let (losses, log_sum_exp, log_probabilities, entropy, d_logits) =
                    super::cube::row_pass(logits, &rows, d_rows());
                if stats {
                    target_log_probabilities.push(log_probabilities);
                    entropies.push(entropy);
                }
                row_losses.push(losses);
                log_sum_exps.push(log_sum_exp);
                if !wanted.any() {
                    continue;
                }
                d_logits
            }
        };
        // db from the whole dS, before the filter, which acts on the GEMMs' operand only.
        if wanted.bias {
            let column_sums = d_logits.clone().sum_dim(0).squeeze_dim(0);
            d_bias = Some(accumulate(d_bias, column_sums));
        }
        let d_logits = if options.gradient_filter.is_on() {
            let factors = math::block_filter::row_factors(d_rows(), rows.row_scale.as_ref());
            math::block_filter::filter_blocks(d_logits, factors, &options.gradient_filter)
        } else {
            d_logits
        };
        if let Some(weight_transposed) = &weight_transposed {
            d_input_chunks.push(d_logits.clone().matmul(weight_transposed.clone()));
        }
        if wanted.weight {
            d_weight = Some(accumulate(d_weight, x_chunk.transpose().matmul(d_logits)));
        }
    }

    let denominator = resolved.denominator;
    let row_losses = Tensor::cat(row_losses, 0);
    let loss = math::reduction_forward(row_losses, denominator.clone(), options.reduction);
    let d_input = match d_input_chunks.len() {
        0 => None,
        1 => d_input_chunks.pop(),
        _ => Some(Tensor::cat(d_input_chunks, 0)),
    };
    // The chunks used g_i = 1 for the mean: scale by 1 / den once, now that den is known.
    let mean_scale = |gradient: Tensor<2>| match options.reduction {
        LossReduction::Mean => {
            let scale = math::reduction_backward(
                Tensor::ones([1], (&gradient.device(), gradient.dtype())),
                denominator.clone(),
                LossReduction::Mean,
                1,
            );
            gradient * scale.unsqueeze_dim::<2>(0)
        }
        LossReduction::Sum | LossReduction::None => gradient,
    };
    ChunkedOutput {
        loss,
        d_input: d_input.map(mean_scale),
        d_weight: d_weight.map(mean_scale),
        d_bias: d_bias.map(|d_bias| mean_scale(d_bias.unsqueeze_dim(0)).squeeze_dim(0)),
        log_sum_exp: Tensor::cat(log_sum_exps, 0),
        stats: stats.then(|| RowStats {
            predictions: Tensor::cat(predictions, 0),
            target_log_probabilities: Tensor::cat(target_log_probabilities, 0),
            entropies: Tensor::cat(entropies, 0),
        }),
    }
}

/// `sum + term`, where the first term starts the sum (no zero tensor, no extra buffer).
fn accumulate<const D: usize>(sum: Option<Tensor<D>>, term: Tensor<D>) -> Tensor<D> {
    match sum {
        Some(sum) => sum + term,
        None => term,
    }
}
