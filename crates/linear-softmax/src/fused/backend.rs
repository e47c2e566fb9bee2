//! The backend extension behind the fused head: device tensors in, one [`FusedOutput`] out.
//!
//! [`FusedLinearCrossEntropyOps`] is a Burn backend extension: the `#[backend_extension]` macro
//! generates the `Dispatch` routing, so a tensor on a Flex, NdArray or CubeCL (wgpu, CUDA)
//! device, plain or autodiff, reaches the implementation of its backend. A backend the op is not
//! implemented for is never dispatched to: the paths' dispatch sends its calls to the autodiff
//! path. Everything that crosses the boundary is a backend primitive (the labels as an Int tensor; probabilities, bias, class weights and
//! the per-row upstream gradient as float tensors) or plain scalars and options: nothing is
//! read back to the host on the way in or out. The plain backends run the kernel that
//! `fused/choice.rs` picks (`fused/backend_impls.rs`); `Autodiff<B, C>` is implemented by hand
//! in `fused/backward.rs`.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, ExtensionType, TensorMetadata, backend_extension};

use crate::loss::LossOptions;

/// Which gradients the fused kernel computes alongside the loss.
///
/// Only what is asked for is computed: with only `input`, neither `dW` nor `db` is formed; with
/// nothing, the kernel is a forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WantedGradients {
    /// `dL/dX`, `[N, D]`.
    pub input: bool,
    /// `dL/dW`, `[D, C]`.
    pub weight: bool,
    /// `dL/db`, `[C]` (ignored when there is no bias).
    pub bias: bool,
}

impl WantedGradients {
    /// No gradient: the loss alone.
    pub const NONE: Self = Self {
        input: false,
        weight: false,
        bias: false,
    };
    /// Every gradient.
    pub const ALL: Self = Self {
        input: true,
        weight: true,
        bias: true,
    };

    /// Whether any gradient is wanted (then `dS` must be formed chunk by chunk).
    pub fn any(&self) -> bool {
        self.input || self.weight || self.bias
    }
}

/// An optional float tensor (the bias, a gradient that was not asked for).
///
/// The extension macro maps tensors, and structs or enums of tensors, across the `Dispatch`
/// boundary, but not `Option`s of tensors inside them: this enum is the `Option` it can map.
#[derive(Clone, Debug, ExtensionType)]
pub enum Optional<B: Backend> {
    /// The tensor.
    Present(FloatTensor<B>),
    /// No tensor.
    Absent,
}

impl<B: Backend> From<Option<FloatTensor<B>>> for Optional<B> {
    fn from(tensor: Option<FloatTensor<B>>) -> Self {
        match tensor {
            Some(tensor) => Self::Present(tensor),
            None => Self::Absent,
        }
    }
}

impl<B: Backend> Optional<B> {
    /// The tensor as an `Option`.
    pub fn into_option(self) -> Option<FloatTensor<B>> {
        match self {
            Self::Present(tensor) => Some(tensor),
            Self::Absent => None,
        }
    }

    /// A borrowed `Option`.
    pub fn as_option(&self) -> Option<&FloatTensor<B>> {
        match self {
            Self::Present(tensor) => Some(tensor),
            Self::Absent => None,
        }
    }
}

/// An optional Int tensor (the per-row predictions, when statistics were not asked for).
#[derive(Clone, Debug, ExtensionType)]
pub enum OptionalInt<B: Backend> {
    /// The tensor.
    Present(IntTensor<B>),
    /// No tensor.
    Absent,
}

impl<B: Backend> OptionalInt<B> {
    /// The tensor as an `Option`.
    pub fn into_option(self) -> Option<IntTensor<B>> {
        match self {
            Self::Present(tensor) => Some(tensor),
            Self::Absent => None,
        }
    }
}

impl<B: Backend> From<Option<IntTensor<B>>> for OptionalInt<B> {
    fn from(tensor: Option<IntTensor<B>>) -> Self {
        match tensor {
            Some(tensor) => Self::Present(tensor),
            None => Self::Absent,
        }
    }
}

/// The targets as primitives of the loss's backend (validated where they were built).
#[derive(Clone, Debug, ExtensionType)]
pub enum TargetPrimitives<B: Backend> {
    /// Class indices `[N]` (Int); labels equal to an ignored value count for nothing.
    Classes(IntTensor<B>),
    /// Class probabilities `[N, C]`, rows summing to 1.
    Probabilities(FloatTensor<B>),
    /// A frozen teacher (distillation): its hidden states `[N, D_t]`, weight `[D_t, C]` and
    /// bias `[C]`, constants of any graph, and the labels `[N]` when given.
    Teacher {
        /// `X_t`.
        hidden: FloatTensor<B>,
        /// `W_t`.
        weight: FloatTensor<B>,
        /// `b_t`.
        #[extension_type]
        bias: Optional<B>,
        /// The labels (ignored rows, the hard term).
        #[extension_type]
        labels: OptionalInt<B>,
    },
}

/// The tensors of one fused call, as primitives of its backend.
///
/// # Shapes
/// - `x`: `[N, D]`, `weight`: `[D, C]`, `bias`: `[C]`, `targets`: `[N]` or `[N, C]` (a
///   teacher: `[N, D_t]`, `[D_t, C]`, `[C]` and the labels `[N]`),
///   `class_weights`: `[C]`, `row_weights`: `[N]`
#[derive(Clone, Debug, ExtensionType)]
pub struct FusedInputs<B: Backend> {
    /// The input `X`.
    pub x: FloatTensor<B>,
    /// The weight `W`.
    pub weight: FloatTensor<B>,
    /// The bias `b`.
    #[extension_type]
    pub bias: Optional<B>,
    /// The targets (validated where they were built).
    #[extension_type]
    pub targets: TargetPrimitives<B>,
    /// The class weights `w`, `[C]` (`LossOptions::weights` on the device).
    #[extension_type]
    pub class_weights: Optional<B>,
    /// The targets' row weights `rho_i`, `[N]` (`Targets::with_row_weights`, in the float type
    /// of `x`).
    #[extension_type]
    pub row_weights: Optional<B>,
}

/// The upstream gradient of the per-row losses, for reduction none.
#[derive(Clone, Debug, ExtensionType)]
pub enum RowUpstream<B: Backend> {
    /// `loss.backward()`'s seed: 1 for every entry of the loss.
    Ones,
    /// `g_i`, `[N]`: scales row `i` of `dS` before `dW` is summed.
    Rows(FloatTensor<B>),
}

/// What the fused op returns: the loss, the gradients it was asked for, the per-row
/// log-sum-exp (a by-product of the row pass, free to keep), and the per-row statistics when
/// [`FusedSpec::stats`] asked for them.
///
/// # Shapes
/// - `loss`: `[1]` (`[N]` for reduction none), without the L2 term
/// - `d_input`: `[N, D]`, `d_weight`: `[D, C]`, `d_bias`: `[C]`, `log_sum_exp`: `[N]`,
///   `predictions`: `[N]` (Int), `target_log_probability`, `entropy`: `[N]`, `correct` and
///   `counted`: `[1]` (Int)
#[derive(Clone, Debug, ExtensionType)]
pub struct FusedOutput<B: Backend> {
    /// The reduced loss.
    pub loss: FloatTensor<B>,
    /// `dX = dS W^T`.
    #[extension_type]
    pub d_input: Optional<B>,
    /// `dW = X^T dS`.
    #[extension_type]
    pub d_weight: Optional<B>,
    /// `db = colsum(dS)`.
    #[extension_type]
    pub d_bias: Optional<B>,
    /// `lse_i`, the per-row log-sum-exp of the (capped) logits.
    pub log_sum_exp: FloatTensor<B>,
    /// `argmax_k S_ik` of the logits before any softcap (the first maximum; a NaN counts as
    /// the largest), in any Int type (the callers cast to the device's).
    #[extension_type]
    pub predictions: OptionalInt<B>,
    /// `sum_k T_ik (S'_ik - lse_i)` for the targets as given, 0 for ignored rows.
    #[extension_type]
    pub target_log_probability: Optional<B>,
    /// `H_i = -sum_k A_ik log A_ik` of the (capped) softmax, 0 for ignored rows.
    #[extension_type]
    pub entropy: Optional<B>,
    /// The counted rows predicted right (see [`crate::LossStats`]).
    #[extension_type]
    pub correct: OptionalInt<B>,
    /// The rows not ignored.
    #[extension_type]
    pub counted: OptionalInt<B>,
}

/// The plain (non-tensor) part of a fused call: the loss definition, the chunk size, and
/// whether to return the per-row statistics.
#[derive(Clone, Debug)]
pub struct FusedSpec {
    /// The loss options (the L2 term is left to the callers).
    pub options: LossOptions,
    /// The targets' ignore index ([`crate::Targets::ignore_index`]).
    pub ignore_index: Option<i64>,
    /// Rows per chunk `R`.
    pub chunk_rows: usize,
    /// Whether the pass also returns the statistics of [`crate::LossStats`]
    /// ([`FusedOutput::predictions`] and the fields after it).
    pub stats: bool,
}

/// Linear layer + softmax cross-entropy with every [`LossOptions`] option (but the L2 term,
/// which the callers add as ordinary ops), evaluated `spec.chunk_rows` rows at a time.
///
/// The `[N, C]` logits are never materialised. Inputs are trusted: shapes, targets and options
/// are checked by the callers in [`super`].
///
/// # Shapes
/// - `inputs`: see [`FusedInputs`]
/// - loss: `[1]` (`[N]` for reduction none)
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait FusedLinearCrossEntropyOps: Backend {
    /// The loss, the per-row log-sum-exp `lse_i` `[N]` and, when `spec.stats`, the per-row
    /// statistics; no gradients.
    ///
    /// On a plain backend this is the forward pass alone. On `Autodiff<B, C>` the loss is a
    /// graph node: the gradients of the tracked inputs are computed in the same pass and kept
    /// for the backward, which only scales them by the upstream gradient (reduction none: the
    /// backward recomputes the chunks with the per-row upstream gradient); everything else is
    /// a constant.
    fn linear_cross_entropy(
        #[extension_type] inputs: FusedInputs<Self>,
        spec: FusedSpec,
    ) -> FusedOutput<Self> {
        Self::linear_cross_entropy_with_gradients(
            inputs,
            spec,
            WantedGradients::NONE,
            RowUpstream::Ones,
        )
    }

    /// The loss, the `wanted` gradients (for the upstream `upstream`), the per-row
    /// log-sum-exp and, when `spec.stats`, the statistics, as plain values.
    ///
    /// On `Autodiff<B, C>` the results are constants (not part of any graph).
    fn linear_cross_entropy_with_gradients(
        #[extension_type] inputs: FusedInputs<Self>,
        spec: FusedSpec,
        wanted: WantedGradients,
        #[extension_type] upstream: RowUpstream<Self>,
    ) -> FusedOutput<Self>;

    /// `g * gradient` for the `[1]` upstream gradient `g` of a scalar loss, on the device.
    ///
    /// The default is a broadcast multiply; the CPU backends read `g` from their own buffer
    /// (no device to synchronise with) and skip the pass when `g = 1`.
    fn scale_by_upstream(
        gradient: FloatTensor<Self>,
        upstream: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        broadcast_scale::<Self>(gradient, upstream)
    }
}

/// `g * gradient` for a `[1]` tensor `g`, as a broadcast multiply on the device.
pub(crate) fn broadcast_scale<B: Backend>(
    gradient: FloatTensor<B>,
    upstream: FloatTensor<B>,
) -> FloatTensor<B> {
    let ones = vec![1; gradient.shape().num_dims()];
    B::float_mul(gradient, B::float_reshape(upstream, ones.into()))
}
