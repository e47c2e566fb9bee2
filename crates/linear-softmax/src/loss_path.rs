//! [`LossPath`]: which of the three paths computes a loss, and the one place that dispatches on it.

use std::fmt;
use std::str::FromStr;

use burn::prelude::*;

use crate::error::{Error, Result};
use crate::gradients::HeadGradients;
use crate::head::LinearSoftmax;
use crate::options::LossOptions;
use crate::stats::LossStats;
use crate::targets::Targets;
use crate::{autodiff, fused, manual};

/// Which of the three paths computes the loss and its gradients.
///
/// All three give the same loss and the same gradients; they differ in how the gradients come
/// about and what they cost. Two forms of each:
///
/// - [`loss`](Self::loss): the loss as a graph node; on an autodiff device `loss.backward()`
///   gives every tracked tensor (the head's parameters, `x` and whatever produced it) its
///   gradient. [`LinearSoftmax::loss`] is this with [`LossPath::Fused`].
/// - [`loss_and_gradients`](Self::loss_and_gradients): the loss and `dW, db, dX` as plain
///   values, no graph: what the side-by-side comparisons and the hand-driven training use.
///
/// ```
/// use burn::prelude::*;
/// use linear_softmax::{LinearSoftmaxConfig, LossOptions, LossPath, Targets};
///
/// let device = Device::flex();
/// let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
/// let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], &device);
/// let targets = Targets::from_indices(&[3, 0], 4, &device)?;
/// let options = LossOptions::new();
/// let losses = LossPath::ALL.map(|path| {
///     let loss = path.loss_and_gradients(&head, x.clone(), &targets, &options).unwrap().loss;
///     loss.into_scalar::<f32>()
/// });
/// assert!(losses.iter().all(|loss| (loss - losses[0]).abs() < 1e-6));
/// assert_eq!("manual".parse::<LossPath>()?, LossPath::Manual);
/// # Ok::<(), linear_softmax::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LossPath {
    /// Ordinary tensor ops differentiated by Burn's autograd ([`crate::autodiff`]), the
    /// reference: keeps several `[N, C]` tensors for the backward pass.
    Autodiff,
    /// The hand-derived backward ([`crate::manual`]): `loss_and_gradients` computes
    /// `dS = (A - Y) / N`, `dW = X^T dS`, `db = colsum(dS)`, `dX = dS W^T` as explicit tensor
    /// code, on a plain device. As a graph node ([`loss`](Self::loss)) it is the manual
    /// forward functions, which Burn's autograd differentiates like [`LossPath::Autodiff`].
    Manual,
    /// The fused op ([`crate::fused`]): chunked over rows, gradients computed in the forward
    /// pass, never an `[N, C]` tensor. The default. Implemented for Flex, NdArray and the
    /// CubeCL backends (wgpu, CUDA, with this crate's features of those names); on a device of
    /// any other backend it runs the [`LossPath::Autodiff`] path (the same loss and gradients,
    /// none of the memory savings), which [`crate::fused::kernel_for`] reports.
    #[default]
    Fused,
}

impl LossPath {
    /// Every path, in the order reports show them.
    pub const ALL: [LossPath; 3] = [LossPath::Manual, LossPath::Autodiff, LossPath::Fused];

    /// The path's name, as `Display`, `FromStr` and the command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Autodiff => "autodiff",
            Self::Manual => "manual",
            Self::Fused => "fused",
        }
    }

    /// The loss of `head` on `(x, targets)` through this path, as a graph node.
    ///
    /// # Shapes
    /// - `x`: `[N, D]`, `targets`: `[N]` or `[N, C]`, result: `[1]` (`[N]` with reduction none)
    pub fn loss(
        self,
        head: &LinearSoftmax,
        x: Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<Tensor<1>> {
        match self {
            Self::Autodiff => autodiff::loss(head, x, targets, options),
            Self::Manual => manual::loss(head, x, targets, options),
            Self::Fused => fused::loss(head, x, targets, options),
        }
    }

    /// The loss of a sequence batch (an LM head) through this path: `x` `[B, T, D]` is taken as
    /// the `N = B * T` rows `x.reshape([B * T, D])` (a view of a contiguous `x`, no copy), row
    /// `b * T + t` for position `t` of sequence `b`; build the targets with
    /// [`Targets::from_sequence_tensor`] (`[B, T]` labels, padding marked by an ignore index).
    /// `.backward()` gives `x` its gradient in `x`'s shape.
    ///
    /// # Shapes
    /// - `x`: `[B, T, D]`, `targets`: `B * T` rows, result: `[1]` (`[B * T]` with reduction
    ///   none: `.reshape([B, T])` gives the grid)
    pub fn sequence_loss(
        self,
        head: &LinearSoftmax,
        x: Tensor<3>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<Tensor<1>> {
        self.loss(head, head.sequence_rows(x)?, targets, options)
    }

    /// [`loss`](Self::loss) and the per-row log-sum-exp `lse_i` `[N]` of the (capped) logits,
    /// detached from the graph (every path computes it on the way to the loss).
    pub fn loss_and_log_sum_exp(
        self,
        head: &LinearSoftmax,
        x: Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<(Tensor<1>, Tensor<1>)> {
        match self {
            Self::Autodiff => autodiff::loss_and_log_sum_exp(head, x, targets, options),
            Self::Manual => manual::loss_and_log_sum_exp(head, x, targets, options),
            Self::Fused => fused::loss_and_log_sum_exp(head, x, targets, options),
        }
    }

    /// [`loss`](Self::loss) and the per-row [`LossStats`] (predictions, the correct and
    /// counted rows, target log-probabilities, `lse`), detached from the graph: the fused path
    /// computes them in its chunked pass, the others from the `[N, C]` logits they form.
    ///
    /// # Shapes
    /// - `x`: `[N, D]`, `targets`: `[N]` or `[N, C]`, loss: `[1]` (`[N]` with reduction none)
    pub fn loss_with_stats(
        self,
        head: &LinearSoftmax,
        x: Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<(Tensor<1>, LossStats)> {
        match self {
            Self::Autodiff => autodiff::loss_with_stats(head, x, targets, options),
            Self::Manual => manual::loss_with_stats(head, x, targets, options),
            Self::Fused => fused::loss_with_stats(head, x, targets, options),
        }
    }

    /// [`sequence_loss`](Self::sequence_loss) and the per-token [`LossStats`]: the
    /// predictions and target log-probabilities come as `B * T` rows (`.reshape([B, T])`
    /// gives the grid), and padding is not counted.
    pub fn sequence_loss_with_stats(
        self,
        head: &LinearSoftmax,
        x: Tensor<3>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<(Tensor<1>, LossStats)> {
        self.loss_with_stats(head, head.sequence_rows(x)?, targets, options)
    }

    /// The loss and its gradients `dW, db, dX` through this path, as plain values.
    pub fn loss_and_gradients(
        self,
        head: &LinearSoftmax,
        x: Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<HeadGradients> {
        match self {
            Self::Autodiff => autodiff::loss_and_gradients(head, x, targets, options),
            Self::Manual => manual::loss_and_gradients(head, x, targets, options),
            Self::Fused => fused::loss_and_gradients(head, x, targets, options),
        }
    }
}

impl fmt::Display for LossPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LossPath {
    type Err = Error;

    /// `autodiff`, `manual` or `fused`.
    fn from_str(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|path| path.name() == name)
            .ok_or_else(|| Error::InvalidOption {
                name: "loss path",
                value: name.to_string(),
                expected: "one of autodiff, manual, fused",
            })
    }
}
