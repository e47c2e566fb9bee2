//! Path 2: the hand-derived backward as explicit tensor code, on a plain (non-autodiff) device.
//!
//! Each piece is a `*_forward` / `*_backward` pair, side by side (see `MATH.md`):
//!
//! ```text
//! linear:                S = X W + b          dW = X^T dS, db = colsum(dS), dX = dS W^T
//! softmax cross-entropy: l_i = lse_i - S_iy   dS = g (A - Y) / N       (no softmax Jacobian)
//! L2 penalty:            lambda sum(W^2)      dW += 2 lambda W
//! ```
//!
//! Per sample this is the classic result: the true class's column of `dW` gets `(a_y - 1) x`,
//! every other column `a_j x`, averaged over the batch.

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;

use crate::error::{Error, Result};
use crate::gradients::HeadGradients;
use crate::head::LinearSoftmax;
use crate::host::to_host_f64;
use crate::options::LossOptions;
use crate::targets::Targets;

/// Scores `S = X W + b`.
///
/// # Shapes
/// - `x`: `[N, D]`, `weight`: `[D, C]`, `bias`: `[C]`, result: `[N, C]`
pub fn linear_forward(x: Tensor<2>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<2> {
    let logits = x.matmul(weight);
    match bias {
        Some(bias) => logits + bias.unsqueeze_dim(0),
        None => logits,
    }
}

/// Gradients of [`linear_forward`] given the upstream `d_logits = dL/dS`.
#[derive(Clone, Debug)]
pub struct LinearGradients {
    /// `dW = X^T dS`, `[D, C]`.
    pub d_weight: Tensor<2>,
    /// `db = sum_i dS_i`, `[C]` (when the layer has a bias).
    pub d_bias: Option<Tensor<1>>,
    /// `dX = dS W^T`, `[N, D]`.
    pub d_input: Tensor<2>,
}

/// Backward of [`linear_forward`]: `dW = X^T dS`, `db = colsum(dS)`, `dX = dS W^T`.
///
/// # Shapes
/// - `x`: `[N, D]`, `weight`: `[D, C]`, `d_logits`: `[N, C]`
pub fn linear_backward(
    x: Tensor<2>,
    weight: Tensor<2>,
    has_bias: bool,
    d_logits: Tensor<2>,
) -> LinearGradients {
    let d_bias = has_bias.then(|| d_logits.clone().sum_dim(0).squeeze_dim(0));
    let d_input = d_logits.clone().matmul(weight.transpose());
    let d_weight = x.transpose().matmul(d_logits);
    LinearGradients {
        d_weight,
        d_bias,
        d_input,
    }
}

/// What [`softmax_cross_entropy_backward`] needs from the forward pass.
#[derive(Clone, Debug)]
pub struct SoftmaxCrossEntropyCache {
    /// `A = softmax(S)`, `[N, C]`.
    pub probabilities: Tensor<2>,
    /// The labels as a `[N, 1]` column.
    labels: Tensor<2, Int>,
}

/// Per-row loss `l_i = lse_i - S_{i, y_i}` with `lse_i = m_i + log sum_k exp(S_ik - m_i)`,
/// `m_i = max_k S_ik`, and the softmax `A` for the backward.
///
/// Computing `l_i` from the log-sum-exp (not as `-log A_iy`) stays finite even when the true
/// class's probability underflows to 0.
///
/// # Shapes
/// - `logits`: `[N, C]`, `targets`: `[N]`, row losses: `[N]`
pub fn softmax_cross_entropy_forward(
    logits: Tensor<2>,
    targets: &Targets,
) -> (Tensor<1>, SoftmaxCrossEntropyCache) {
    let labels = targets.index_column(&logits.device());
    // Gather before the exponential so that `logits` is uniquely owned again and the
    // subtraction and exponential below can run in place.
    let true_logits = logits.clone().gather(1, labels.clone());
    let row_max = logits.clone().max_dim(1);
    let exp_shifted = (logits - row_max.clone()).exp();
    let sum_exp = exp_shifted.clone().sum_dim(1);
    let log_sum_exp = row_max + sum_exp.clone().log();
    let probabilities = exp_shifted / sum_exp;
    let row_losses = (log_sum_exp - true_logits).squeeze_dim(1);
    (
        row_losses,
        SoftmaxCrossEntropyCache {
            probabilities,
            labels,
        },
    )
}

/// Backward of the mean of [`softmax_cross_entropy_forward`]'s row losses, scaled by the
/// upstream gradient `d_loss`: `dS = d_loss (A - Y) / N`, in one step.
///
/// `Y` is never materialised: `-1` is scattered onto each row's label column of `A`.
///
/// # Shapes
/// - result: `[N, C]`
pub fn softmax_cross_entropy_backward(cache: SoftmaxCrossEntropyCache, d_loss: f64) -> Tensor<2> {
    let SoftmaxCrossEntropyCache {
        probabilities,
        labels,
    } = cache;
    let rows = probabilities.dims()[0];
    let minus_one = Tensor::full(
        [rows, 1],
        -1.0,
        (&probabilities.device(), probabilities.dtype()),
    );
    probabilities.scatter(1, labels, minus_one, IndexingUpdateOp::Add) * (d_loss / rows as f64)
}

/// The cs231n penalty `lambda sum(W^2)`, `[1]`.
pub fn l2_forward(weight: Tensor<2>, lambda: f64) -> Tensor<1> {
    weight.square().sum() * lambda
}

/// Backward of [`l2_forward`]: `2 lambda W`, `[D, C]`.
pub fn l2_backward(weight: Tensor<2>, lambda: f64) -> Tensor<2> {
    weight * (2.0 * lambda)
}

/// The loss and its hand-derived gradients `dW, db, dX`.
///
/// Returns [`Error::NonFiniteLoss`] naming the first row whose loss is NaN or infinite (this
/// reads the scalar loss back to the host once per call).
pub fn loss_and_gradients(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Result<HeadGradients> {
    options.validate()?;
    head.check_batch(&x, targets)?;
    let weight = head.weight();
    let bias = head.bias();
    let has_bias = bias.is_some();

    let logits = linear_forward(x.clone(), weight.clone(), bias);
    let (row_losses, cache) = softmax_cross_entropy_forward(logits, targets);
    let mut loss = row_losses.clone().mean();
    check_finite(&loss, &row_losses)?;
    let d_logits = softmax_cross_entropy_backward(cache, 1.0);
    let LinearGradients {
        mut d_weight,
        d_bias,
        d_input,
    } = linear_backward(x, weight.clone(), has_bias, d_logits);
    if options.l2 != 0.0 {
        loss = loss + l2_forward(weight.clone(), options.l2);
        d_weight = d_weight + l2_backward(weight, options.l2);
    }
    Ok(HeadGradients {
        loss,
        d_weight,
        d_bias,
        d_input,
    })
}

/// `Ok` when the mean loss is finite; otherwise the first non-finite row, read from the host.
fn check_finite(loss: &Tensor<1>, row_losses: &Tensor<1>) -> Result<()> {
    let value = to_host_f64(loss)?[0];
    if value.is_finite() {
        return Ok(());
    }
    let rows = to_host_f64(row_losses)?;
    let (row, &value) = rows
        .iter()
        .enumerate()
        .find(|(_, loss)| !loss.is_finite())
        .unwrap_or((0, &value));
    Err(Error::NonFiniteLoss { row, value })
}
