//! # linear-softmax
//!
//! A `Linear` layer followed by softmax cross-entropy for [Burn](https://burn.dev), whose
//! gradients are computed three ways that are tested to agree:
//!
//! 1. **autodiff**: ordinary tensor ops, differentiated by Burn's autograd (the reference);
//! 2. **manual**: the hand-derived backward `dS = (A - Y) / N`, `dW = X^T dS`,
//!    `db = colsum(dS)`, `dX = dS W^T`, as explicit tensor code ([`math`] has every pair);
//! 3. **fused**: one custom autodiff op, chunked over rows, whose gradients are computed in the
//!    forward pass and never need the `[N, C]` logits (the default);
//!
//! and [`gradcheck`]: centred finite differences in `f64`, the independent witness, for our head
//! and for any Burn function or module (check your own backward with it).
//!
//! # One call per job
//!
//! | job | the call |
//! |---|---|
//! | the loss as a graph node, `x` `[.., D]` | [`head.loss(x, &targets, &options)?`](LinearSoftmax::loss), then `.backward()` |
//! | the loss and `lse`, statistics from the same pass | [`head.loss_output(..)`](LinearSoftmax::loss_output) -> [`LossOutput`] |
//! | the gradients `dW, db, dX` as plain values | [`head.gradients(..)`](LinearSoftmax::gradients) -> [`HeadGradients`] |
//! | which path, which chunking, statistics or not | fields of [`LossOptions`]: [`LossPath`], [`Chunking`], `stats` |
//! | logits, probabilities, predictions | [`forward`](LinearSoftmax::forward), [`probabilities`](LinearSoftmax::probabilities), [`predict`](LinearSoftmax::predict) |
//! | targets: labels (ignore index), probabilities, multi-hot | [`Targets`]'s constructors |
//! | the pieces of the math, forward and backward | [`math`] |
//! | finite differences: any function's or module's backward, PyTorch's `gradcheck` | [`gradcheck::gradcheck`], [`gradcheck::gradcheck_module`] |
//! | which kernel runs, the CPU's instruction set | [`diagnostics`] |
//!
//! # Errors, NaN and infinity
//!
//! What can be checked from metadata (shapes, float types, devices, options) and what is
//! validated once where it enters (labels, probabilities) is an [`Error`] on every path. Values
//! are not inspected in the hot path: NaN and infinity in the input or the parameters
//! propagate to the loss and gradients on every path, as in PyTorch, with no read back to the
//! host. [`LinearSoftmax::check_finite`] is the opt-in check that finds and names them.
//!
//! ```
//! use burn::prelude::*;
//! use linear_softmax::{LinearSoftmaxConfig, LossOptions, LossPath, Targets};
//!
//! let device = Device::flex();
//! let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
//! let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], &device);
//! let targets = Targets::from_indices(&[3, 0], 4, &device)?;
//! let options = LossOptions::new();
//!
//! let fused = head.gradients(x.clone(), &targets, &options)?;
//! let reference = head.gradients(x, &targets, &options.with_path(LossPath::Autodiff))?;
//! let difference = (fused.d_weight - reference.d_weight).abs().max().into_scalar::<f32>();
//! assert!(difference < 1e-6);
//! # Ok::<(), linear_softmax::Error>(())
//! ```

pub mod diagnostics;
mod error;
mod fused;
pub mod gradcheck;
mod head;
pub mod host;
mod loss;
pub mod math;
mod paths;

pub use error::{Error, Result};
pub use head::{LinearSoftmax, LinearSoftmaxConfig, check_dtype};
pub use loss::{
    Chunking, DistillationOptions, GradientFilter, HeadGradients, LossOptions, LossOutput,
    LossPath, LossReduction, LossStats, PROBABILITY_SUM_TOLERANCE, TargetKind, Targets, Teacher,
};

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
