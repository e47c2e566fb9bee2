//! The digits classifier trained by `burn::train`'s `Learner`: Burn's supervised training loop
//! with its loss and accuracy metrics, checkpoints (the last two epochs and the best one), and
//! its terminal dashboard when stdout is a terminal (plain progress lines otherwise). The loss
//! is the head's fused op.
//!
//! ```text
//! cargo run --release --features learner --example learner -- [--epochs 30] [--hidden 64]
//! ```
//!
//! Checkpoints and metric logs go to `runs/learner/`; the test accuracy is printed at the end.

use std::path::PathBuf;

use burn::prelude::*;
use clap::Parser;
use linear_softmax_cli::data::digits;
use linear_softmax_cli::learner::{LearnerConfig, train_with_learner};
use linear_softmax_cli::metrics::evaluate;
use linear_softmax_cli::train::OptimizerKind;

/// Train the digits classifier with burn::train's Learner.
#[derive(Debug, Parser)]
struct Args {
    /// Passes over the training set.
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    /// Widths of hidden ReLU layers; none for the linear classifier.
    #[arg(long, value_delimiter = ',')]
    hidden: Vec<usize>,
    /// Where Burn writes checkpoints and metric logs.
    #[arg(long, default_value = "runs/learner")]
    out: PathBuf,
}

fn main() -> Result<(), linear_softmax_cli::Error> {
    let args = Args::parse();
    let device = Device::flex();
    let (train, test) = digits()?.stratified_split(0.2, 42)?;
    let config = LearnerConfig {
        hidden: args.hidden,
        epochs: args.epochs,
        batch_size: 32,
        optimizer: OptimizerKind::Sgd { momentum: 0.9 },
        learning_rate: 0.05,
        seed: 42,
    };
    let model = train_with_learner(&train, &test, &config, &args.out, &device)?;
    println!("test set: {}", evaluate(&model, &test, &device)?);
    println!("checkpoints: {}", args.out.join("checkpoint").display());
    Ok(())
}
