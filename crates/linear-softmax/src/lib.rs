//! # linear-softmax
//!
//! A `Linear` layer followed by softmax cross-entropy for [Burn](https://burn.dev), with three
//! ways of computing its gradients that are tested to agree:
//!
//! 1. [`autodiff`]: ordinary tensor ops, differentiated by Burn's autograd (the reference);
//! 2. [`manual`]: the hand-derived backward `dS = (A - Y) / N`, `dW = X^T dS`,
//!    `db = colsum(dS)`, `dX = dS W^T`, as explicit tensor code;
//! 3. [`fused`]: one custom autodiff op, chunked over rows, whose gradients are computed in the
//!    forward pass and never need the `[N, C]` logits (the default of [`LinearSoftmax::loss`]);
//!
//! and [`gradcheck`]: centred finite differences in `f64`, the independent witness.
//! [`LossPath`] switches between the three wherever a loss is asked for.
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
//! use linear_softmax::{LinearSoftmaxConfig, LossOptions, Targets, autodiff, manual};
//!
//! let device = Device::flex();
//! let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
//! let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], &device);
//! let targets = Targets::from_indices(&[3, 0], 4, &device)?;
//! let options = LossOptions::new();
//!
//! let by_hand = manual::loss_and_gradients(&head, x.clone(), &targets, &options)?;
//! let by_autograd = autodiff::loss_and_gradients(&head, x, &targets, &options)?;
//! let difference = (by_hand.d_weight - by_autograd.d_weight).abs().max().into_scalar::<f32>();
//! assert!(difference < 1e-6);
//! # Ok::<(), linear_softmax::Error>(())
//! ```

pub mod autodiff;
mod error;
pub mod fused;
pub mod gradcheck;
mod gradients;
mod head;
mod host;
mod loss_path;
pub mod manual;
mod options;
mod resolved;
mod stats;
mod targets;

pub use error::{Error, Result};
pub use fused::Chunking;
pub use gradients::HeadGradients;
pub use head::{LinearSoftmax, LinearSoftmaxConfig, check_dtype, log_sum_exp};
pub use loss_path::LossPath;
pub use options::{LossOptions, Reduction};
pub use stats::LossStats;
pub use targets::{PROBABILITY_SUM_TOLERANCE, TargetKind, Targets};

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
