//! Trains a linear softmax classifier on the embedded handwritten digits with SGD driven by the
//! hand-derived gradients, after showing that those gradients agree with autodiff and with
//! finite differences.

use std::process::ExitCode;
use std::time::Instant;

use burn::prelude::*;
use linear_softmax::data::digits;
use linear_softmax::report::GradientComparison;
use linear_softmax::train::{SgdConfig, train_sgd};
use linear_softmax::{LinearSoftmaxConfig, LossOptions, Result};

/// Rows of the batch the gradient report is computed on.
const REPORT_ROWS: usize = 32;
const TEST_FRACTION: f64 = 0.2;
const SPLIT_SEED: u64 = 42;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<()> {
    let started = Instant::now();
    let device = Device::flex();
    device.seed(SPLIT_SEED);
    let (train, test) = digits()?.stratified_split(TEST_FRACTION, SPLIT_SEED)?;
    println!(
        "digits: {} training rows, {} test rows, {} features, {} classes",
        train.len(),
        test.len(),
        train.n_features,
        train.n_classes
    );
    let head = LinearSoftmaxConfig::new(train.n_features, train.n_classes).init(&device)?;
    let options = LossOptions::new();

    let first_batch = train.subset(&(0..REPORT_ROWS).collect::<Vec<_>>());
    let comparison = GradientComparison::run(
        &head,
        &first_batch.features_tensor(&device),
        &first_batch.targets(&device)?,
        &options,
    )?;
    println!("\ngradients at the first step ({REPORT_ROWS} rows, f64):\n{comparison}");

    let config = SgdConfig::new();
    println!(
        "SGD with manual gradients: {} epochs, batch {}, learning rate {}",
        config.epochs, config.batch_size, config.learning_rate
    );
    train_sgd(head, &train, &test, &options, &config, &device, |report| {
        println!(
            "epoch {:>3}  train loss {:.4}  test accuracy {:.2}%",
            report.epoch,
            report.train_loss,
            100.0 * report.test_accuracy
        );
    })?;
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
