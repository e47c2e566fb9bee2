//! The backend extension behind the fused head and its implementations for the CPU backends.
//!
//! [`FusedLinearCrossEntropyOps`] is a Burn backend extension: the `#[backend_extension]` macro
//! generates the `Dispatch` routing, so a [`Tensor`](burn::Tensor) on a Flex or NdArray device
//! (plain or autodiff) reaches the implementation of its backend. The plain backends run the
//! row-chunk kernel of `fused/chunked.rs`; `Autodiff<B, C>` is implemented by hand in
//! `fused/autodiff.rs`.

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, ExtensionType, backend_extension};

use super::chunked::{self, PlainBackend};
use super::raw::{self, RawBackend};
use crate::options::LossOptions;
use crate::targets::Targets;

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

/// The loss, the gradients the kernel was asked for and the per-row log-sum-exp, as backend
/// primitives.
#[derive(Clone, Debug)]
pub struct FusedGradients<B: Backend> {
    /// The reduced loss (without the L2 term): `[1]`, or `[N]` for reduction none.
    pub loss: FloatTensor<B>,
    /// `dX = dS W^T`, `[N, D]`.
    pub d_input: Option<FloatTensor<B>>,
    /// `dW = X^T dS`, `[D, C]`.
    pub d_weight: Option<FloatTensor<B>>,
    /// `db = colsum(dS)`, `[C]`.
    pub d_bias: Option<FloatTensor<B>>,
    /// `lse_i`, `[N]`, when `LossOptions::return_log_sum_exp` is set.
    pub log_sum_exp: Option<FloatTensor<B>>,
}

/// The upstream gradient of the per-row losses, for reduction none.
#[derive(Clone, Debug, ExtensionType)]
pub enum RowUpstream<B: Backend> {
    /// `loss.backward()`'s seed: 1 for every entry of the loss.
    Ones,
    /// `g_i`, `[N]`: scales row `i` of `dS` before `dW` is summed.
    Rows(FloatTensor<B>),
}

/// The optional bias `b` of the linear layer.
///
/// The extension macro maps tensors, and structs or enums of tensors, across the `Dispatch`
/// boundary, but not `Option`s of tensors: this enum is the `Option<FloatTensor<B>>` it can map.
#[derive(Clone, Debug, ExtensionType)]
pub enum Bias<B: Backend> {
    /// `S = X W + b`, with `b` of shape `[C]`.
    Present(FloatTensor<B>),
    /// `S = X W`.
    Absent,
}

impl<B: Backend> From<Option<FloatTensor<B>>> for Bias<B> {
    fn from(bias: Option<FloatTensor<B>>) -> Self {
        match bias {
            Some(bias) => Self::Present(bias),
            None => Self::Absent,
        }
    }
}

impl<B: Backend> Bias<B> {
    /// The bias as an `Option`.
    pub fn into_option(self) -> Option<FloatTensor<B>> {
        match self {
            Self::Present(bias) => Some(bias),
            Self::Absent => None,
        }
    }
}

/// The tuple form of [`FusedGradients`] that crosses the `Dispatch` boundary (the extension
/// macro maps tuples and options of tensors, not named structs): `(loss, dX, dW, db, lse)`.
pub type FusedGradientsTuple<B> = (
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
);

impl<B: Backend> FusedGradients<B> {
    /// `(loss, dX, dW, db, lse)`.
    pub fn into_tuple(self) -> FusedGradientsTuple<B> {
        (
            self.loss,
            self.d_input,
            self.d_weight,
            self.d_bias,
            self.log_sum_exp,
        )
    }

    /// The inverse of [`into_tuple`](Self::into_tuple).
    pub fn from_tuple(
        (loss, d_input, d_weight, d_bias, log_sum_exp): FusedGradientsTuple<B>,
    ) -> Self {
        Self {
            loss,
            d_input,
            d_weight,
            d_bias,
            log_sum_exp,
        }
    }
}

/// Linear layer + softmax cross-entropy with every [`LossOptions`] option (but the L2 term,
/// which the callers add as ordinary ops), evaluated `chunk_rows` rows at a time.
///
/// The `[N, C]` logits are never materialised (see `fused/chunked.rs`). Inputs are trusted:
/// shapes, targets and options are checked by the callers in [`super`].
///
/// # Shapes
/// - `x`: `[N, D]`, `weight`: `[D, C]`, `bias`: `[C]`, `targets`: `[N]` or `[N, C]`
/// - loss: `[1]` (`[N]` for reduction none)
#[backend_extension(Flex: cfg(feature = "flex"), NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait FusedLinearCrossEntropyOps: Backend {
    /// The loss.
    ///
    /// On a plain backend this is the forward pass alone. On `Autodiff<B, C>` the gradients
    /// of the tracked inputs are computed in the same pass and kept for the backward, which
    /// only scales them by the upstream gradient (reduction none: the backward recomputes the
    /// chunks with the per-row upstream gradient).
    fn linear_cross_entropy(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        #[extension_type] bias: Bias<Self>,
        targets: Targets,
        options: LossOptions,
        chunk_rows: usize,
    ) -> FloatTensor<Self> {
        Self::linear_cross_entropy_with_gradients(
            x,
            weight,
            bias,
            targets,
            options,
            chunk_rows,
            WantedGradients::NONE,
            RowUpstream::Ones,
        )
        .0
    }

    /// The loss, the `wanted` gradients (for the upstream `upstream`) and the per-row
    /// log-sum-exp as plain values, `(loss, dX, dW, db, lse)`.
    ///
    /// On `Autodiff<B, C>` the results are constants (not part of any graph).
    // The tuple is spelled out: the extension macro reads the output type syntactically and
    // would not see through the `FusedGradientsTuple` alias.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn linear_cross_entropy_with_gradients(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        #[extension_type] bias: Bias<Self>,
        targets: Targets,
        options: LossOptions,
        chunk_rows: usize,
        wanted: WantedGradients,
        #[extension_type] upstream: RowUpstream<Self>,
    ) -> (
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
    );
}

/// The plain backends' implementation: the raw-buffer kernel (`fused/raw.rs`) where it handles
/// the case, else the chunk kernel on tensors wrapping the primitives.
#[allow(clippy::too_many_arguments)]
fn plain_kernel<B: PlainBackend + RawBackend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Bias<B>,
    targets: Targets,
    options: LossOptions,
    chunk_rows: usize,
    wanted: WantedGradients,
    upstream: RowUpstream<B>,
) -> FusedGradientsTuple<B> {
    if let Some(output) = raw::linear_cross_entropy::<B>(
        &x, &weight, &bias, &targets, &options, chunk_rows, wanted, &upstream,
    ) {
        return output;
    }
    let output = chunked::linear_cross_entropy(
        B::wrap(x),
        B::wrap(weight),
        bias.into_option().map(B::wrap),
        &targets,
        &options,
        chunk_rows,
        wanted,
        match upstream {
            RowUpstream::Ones => None,
            RowUpstream::Rows(rows) => Some(B::wrap(rows)),
        },
        B::WEIGHT_TRANSPOSE,
    );
    FusedGradients::<B> {
        loss: B::unwrap(output.loss),
        d_input: output.d_input.map(B::unwrap),
        d_weight: output.d_weight.map(B::unwrap),
        d_bias: output.d_bias.map(B::unwrap),
        log_sum_exp: output.log_sum_exp.map(B::unwrap),
    }
    .into_tuple()
}

macro_rules! plain_fused_ops {
    ($backend:ident) => {
        impl FusedLinearCrossEntropyOps for burn::backend::$backend {
            fn linear_cross_entropy_with_gradients(
                x: FloatTensor<Self>,
                weight: FloatTensor<Self>,
                bias: Bias<Self>,
                targets: Targets,
                options: LossOptions,
                chunk_rows: usize,
                wanted: WantedGradients,
                upstream: RowUpstream<Self>,
            ) -> FusedGradientsTuple<Self> {
                plain_kernel::<Self>(
                    x, weight, bias, targets, options, chunk_rows, wanted, upstream,
                )
            }
        }
    };
}
#[cfg(feature = "flex")]
plain_fused_ops!(Flex);
#[cfg(feature = "ndarray")]
plain_fused_ops!(NdArray);
