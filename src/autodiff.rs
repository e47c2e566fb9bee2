//! Path 1, the reference: the loss built from ordinary tensor ops, differentiated by Burn's
//! autograd.
//!
//! `S = X W + b`, `logp = log_softmax(S)` (stable: the row maximum is subtracted),
//! `L = -(1/N) sum_i logp_{i, y_i} + lambda sum(W^2)`.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use crate::error::Result;
use crate::gradients::HeadGradients;
use crate::head::LinearSoftmax;
use crate::manual::linear_forward;
use crate::options::LossOptions;
use crate::targets::Targets;

/// Mean softmax cross-entropy of `logits` `[N, C]` against `targets`, as a `[1]` tensor.
pub fn cross_entropy(logits: Tensor<2>, targets: &Targets) -> Tensor<1> {
    let log_probabilities = log_softmax(logits, 1);
    let labels = targets.index_column(&log_probabilities.device());
    log_probabilities.gather(1, labels).neg().mean()
}

/// The loss of `head` on `(x, targets)` as a graph of ordinary ops.
///
/// On an autodiff device, `loss.backward()` gives every tracked tensor (the head's parameters,
/// `x` and whatever produced it) its gradient.
///
/// # Shapes
/// - `x`: `[N, D]`, `targets`: `[N]`, result: `[1]`
pub fn loss(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Result<Tensor<1>> {
    options.validate()?;
    head.check_batch(&x, targets)?;
    Ok(loss_of_parts(
        x,
        head.weight(),
        head.bias(),
        targets,
        options,
    ))
}

/// The loss from explicit parameters (no checks; the callers check).
pub(crate) fn loss_of_parts(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    targets: &Targets,
    options: &LossOptions,
) -> Tensor<1> {
    let loss = cross_entropy(linear_forward(x, weight.clone(), bias), targets);
    if options.l2 == 0.0 {
        loss
    } else {
        loss + weight.square().sum() * options.l2
    }
}

/// The loss and the gradients `dW, db, dX` that Burn's autograd derives.
///
/// `head` and `x` may live on a plain device: detached copies get autodiff enabled, so the
/// caller's tensors are not touched. The gradients come back as plain tensors.
pub fn loss_and_gradients(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Result<HeadGradients> {
    options.validate()?;
    head.check_batch(&x, targets)?;
    let track = |tensor: Tensor<2>| tensor.detach().autodiff().require_grad();
    let x = track(x);
    let weight = track(head.weight());
    let bias = head
        .bias()
        .map(|bias| bias.detach().autodiff().require_grad());
    let loss = loss_of_parts(x.clone(), weight.clone(), bias.clone(), targets, options);
    let grads = loss.backward();
    let gradient = |tensor: &Tensor<2>| {
        tensor
            .grad(&grads)
            .expect("a tracked tensor of the loss has a gradient")
    };
    Ok(HeadGradients {
        d_weight: gradient(&weight),
        d_bias: bias.map(|bias| bias.grad(&grads).expect("the tracked bias has a gradient")),
        d_input: gradient(&x),
        loss: loss.inner(),
    })
}
