//! What the entry points return besides the bare loss: [`LossOutput`] (the loss as a graph node
//! and what the same pass knows) and [`HeadGradients`] (the gradients as plain values).

use burn::prelude::*;

use crate::loss::stats::LossStats;

/// What [`LinearSoftmax::loss_output`](crate::LinearSoftmax::loss_output) returns: the loss and
/// what the same pass computed on the way, by whichever path the options chose.
///
/// `loss` is the graph node [`loss`](crate::LinearSoftmax::loss) returns; everything else is
/// detached from the graph.
///
/// # Shapes
/// With `N` the number of rows of `x` (the product of its leading dimensions):
/// - `loss`: `[1]` (`[N]` with reduction none)
/// - `log_sum_exp`: `[N]`
/// - `stats`: see [`LossStats`]
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// The loss, a node of the caller's graph.
    pub loss: Tensor<1>,
    /// `lse_i = log sum_k exp(S'_ik)` of the (capped) logits, `[N]`: e.g. to watch the quantity
    /// a z-loss pulls towards 0.
    pub log_sum_exp: Tensor<1>,
    /// The per-row statistics, when [`LossOptions::stats`](crate::LossOptions::stats) asked
    /// for them.
    pub stats: Option<LossStats>,
}

/// What [`LinearSoftmax::gradients`](crate::LinearSoftmax::gradients) returns: the loss and its
/// gradients with respect to the head's parameters and its input, as plain values (no graph).
///
/// The gradients are those of the loss with every entry's upstream gradient 1, as
/// `loss.backward()` seeds it (for reduction none: of the sum of the per-row losses).
///
/// # Shapes
/// - `loss`: `[1]` (`[N]` with reduction none)
/// - `d_weight`: `[D, C]`
/// - `d_bias`: `[C]` (absent when the head has no bias)
/// - `d_input`: `[N, D]`, what a final layer hands to the layers below it (the rows of an `x`
///   of any leading shape)
/// - `log_sum_exp`: `[N]`
#[derive(Clone, Debug)]
pub struct HeadGradients {
    /// The loss: `[1]`, or the per-row losses `[N]` with reduction none.
    pub loss: Tensor<1>,
    /// `dL/dW`.
    pub d_weight: Tensor<2>,
    /// `dL/db`.
    pub d_bias: Option<Tensor<1>>,
    /// `dL/dX`.
    pub d_input: Tensor<2>,
    /// `lse_i` of the (capped) logits, `[N]`.
    pub log_sum_exp: Tensor<1>,
    /// The per-row statistics, when [`LossOptions::stats`](crate::LossOptions::stats) asked
    /// for them.
    pub stats: Option<LossStats>,
}
