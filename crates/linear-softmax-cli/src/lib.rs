//! `linear-softmax-cli`: the command-line tool around the [`linear_softmax`] head.
//!
//! The data loaders (the embedded digits, CSV, MNIST IDX), a word-level language model on the
//! embedded Shakespeare ([`lm`]), the classifier (the head alone or
//! as the last layer of an MLP) with atomic save and load, the training loop, metrics, the
//! gradient-comparison report and the PNG charts. The binary `linear-softmax` is a thin
//! [`cli`] over them; `cargo run --release` trains on the embedded digits.

pub mod cli;
pub mod data;
pub mod distill;
mod error;

#[cfg(feature = "learner")]
pub mod learner;
pub mod lm;
pub mod metrics;
pub mod model;
pub mod plots;
pub mod report;
pub mod train;

pub use error::{Error, Result};
pub use linear_softmax::host::{to_host_f64, to_host_i64};

#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
