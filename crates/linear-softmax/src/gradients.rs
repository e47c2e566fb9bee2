//! What every loss path returns: the loss and the gradients of the head's parameters and input.

use burn::prelude::*;

/// The loss and its gradients with respect to the head's parameters and its input.
///
/// # Shapes
/// - `loss`: `[1]` (`[N]` with reduction none)
/// - `d_weight`: `[D, C]`
/// - `d_bias`: `[C]` (absent when the head has no bias)
/// - `d_input`: `[N, D]`, what a final layer hands to the layers below it
#[derive(Clone, Debug)]
pub struct HeadGradients {
    /// The scalar loss.
    pub loss: Tensor<1>,
    /// `dL/dW`.
    pub d_weight: Tensor<2>,
    /// `dL/db`.
    pub d_bias: Option<Tensor<1>>,
    /// `dL/dX`.
    pub d_input: Tensor<2>,
}
