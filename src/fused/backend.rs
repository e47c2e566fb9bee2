//! The backend extension behind the fused head and its implementations for the CPU backends.
//!
//! [`FusedLinearCrossEntropyOps`] is a Burn backend extension: the `#[backend_extension]` macro
//! generates the `Dispatch` routing, so a [`Tensor`](burn::Tensor) on a Flex or NdArray device
//! (plain or autodiff) reaches the implementation of its backend. The plain backends run the
//! row-chunk kernel of `fused/chunked.rs`; `Autodiff<B, C>` is implemented by hand in
//! `fused/autodiff.rs`.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, ExtensionType, Flex, NdArray, backend_extension};

use super::chunked::{self, WeightTranspose};

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

/// The loss and the gradients the kernel was asked for, as backend primitives.
///
/// The gradients are those of the mean loss itself (upstream gradient 1).
#[derive(Clone, Debug)]
pub struct FusedGradients<B: Backend> {
    /// `L = (1/N) sum_i (lse_i - S_{i, y_i})`, `[1]`.
    pub loss: FloatTensor<B>,
    /// `dX = dS W^T`, `[N, D]`.
    pub d_input: Option<FloatTensor<B>>,
    /// `dW = X^T dS`, `[D, C]`.
    pub d_weight: Option<FloatTensor<B>>,
    /// `db = colsum(dS)`, `[C]`.
    pub d_bias: Option<FloatTensor<B>>,
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
/// macro maps tuples and options of tensors, not named structs): `(loss, dX, dW, db)`.
pub type FusedGradientsTuple<B> = (
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
    Option<FloatTensor<B>>,
);

impl<B: Backend> FusedGradients<B> {
    /// `(loss, dX, dW, db)`.
    pub fn into_tuple(self) -> FusedGradientsTuple<B> {
        (self.loss, self.d_input, self.d_weight, self.d_bias)
    }

    /// The inverse of [`into_tuple`](Self::into_tuple).
    pub fn from_tuple((loss, d_input, d_weight, d_bias): FusedGradientsTuple<B>) -> Self {
        Self {
            loss,
            d_input,
            d_weight,
            d_bias,
        }
    }
}

/// Linear layer + mean softmax cross-entropy, evaluated `chunk_rows` rows at a time.
///
/// `L = (1/N) sum_i (lse_i - S_{i, y_i})` with `S = X W + b`; the `[N, C]` logits are never
/// materialised (see `fused/chunked.rs`). Inputs are trusted: shapes and labels are checked by
/// the callers in [`super`].
///
/// # Shapes
/// - `x`: `[N, D]`, `weight`: `[D, C]`, `bias`: `[C]`, `labels`: `[N]` (Int, in `0..C`)
/// - loss: `[1]`
#[backend_extension(Flex, NdArray, Autodiff)]
pub trait FusedLinearCrossEntropyOps: Backend {
    /// The mean loss `[1]`.
    ///
    /// On a plain backend this is the forward pass alone. On `Autodiff<B, C>` the gradients
    /// of the tracked inputs are computed in the same pass and kept for the backward, which
    /// only scales them by the upstream gradient.
    fn linear_cross_entropy(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        #[extension_type] bias: Bias<Self>,
        labels: IntTensor<Self>,
        chunk_rows: usize,
    ) -> FloatTensor<Self> {
        Self::linear_cross_entropy_with_gradients(
            x,
            weight,
            bias,
            labels,
            chunk_rows,
            WantedGradients::NONE,
        )
        .0
    }

    /// The mean loss and the `wanted` gradients as plain values, `(loss, dX, dW, db)`.
    ///
    /// On `Autodiff<B, C>` the results are constants (not part of any graph).
    // The tuple is spelled out: the extension macro reads the output type syntactically and
    // would not see through the `FusedGradientsTuple` alias.
    #[allow(clippy::type_complexity)]
    fn linear_cross_entropy_with_gradients(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        #[extension_type] bias: Bias<Self>,
        labels: IntTensor<Self>,
        chunk_rows: usize,
        wanted: WantedGradients,
    ) -> (
        FloatTensor<Self>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
        Option<FloatTensor<Self>>,
    );
}

impl FusedLinearCrossEntropyOps for Flex {
    fn linear_cross_entropy_with_gradients(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Bias<Self>,
        labels: IntTensor<Self>,
        chunk_rows: usize,
        wanted: WantedGradients,
    ) -> FusedGradientsTuple<Self> {
        // Flex's GEMM reads strided operands directly: `W^T` stays a view.
        chunked::linear_cross_entropy::<Self>(
            x,
            weight,
            bias.into_option(),
            labels,
            chunk_rows,
            wanted,
            WeightTranspose::View,
        )
        .into_tuple()
    }
}

impl FusedLinearCrossEntropyOps for NdArray {
    fn linear_cross_entropy_with_gradients(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Bias<Self>,
        labels: IntTensor<Self>,
        chunk_rows: usize,
        wanted: WantedGradients,
    ) -> FusedGradientsTuple<Self> {
        // NdArray's matmul copies a non-contiguous operand on every call: copy `W^T` once.
        chunked::linear_cross_entropy::<Self>(
            x,
            weight,
            bias.into_option(),
            labels,
            chunk_rows,
            wanted,
            WeightTranspose::Contiguous,
        )
        .into_tuple()
    }
}
