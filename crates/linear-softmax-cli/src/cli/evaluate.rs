//! `evaluate`: a saved model's accuracy, per-class precision and recall, and mean loss.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::Error;
use crate::metrics::evaluate;
use crate::model;
use clap::Args;

use super::{Backend, DataArgs, Failure};

/// Flags of `evaluate`.
#[derive(Clone, Debug, Args)]
pub struct EvaluateArgs {
    /// The model directory written by `train --out DIR`.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// The data: a whole CSV or IDX data set, or, by default, the test split of the embedded
    /// digits made with --test-fraction and --seed (train's defaults give train's test set).
    #[command(flatten)]
    data: DataArgs,
    /// Test share of the embedded digits' split.
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Seed of the embedded digits' split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The CPU backend.
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    device: Backend,
}

/// Runs `evaluate`.
pub fn run(args: EvaluateArgs) -> Result<ExitCode, Failure> {
    let device = args.device.device(args.seed);
    let (model, config) = model::load(&args.model, &device)?;
    let mut data = args.data.load(Some(config.n_classes))?;
    let mut what = args.data.describe();
    if args.data.is_embedded() {
        data = data.stratified_split(args.test_fraction, args.seed)?.1;
        what = format!(
            "{what}, test split (fraction {}, seed {})",
            args.test_fraction, args.seed
        );
    }
    if data.n_features != config.d_input {
        return Err(Error::Data {
            source_name: args.data.describe(),
            message: format!(
                "{} features per row, but the model in {} expects {}",
                data.n_features,
                args.model.display(),
                config.d_input
            ),
        }
        .into());
    }
    println!("{what}: {} rows", data.len());
    print!("{}", evaluate(&model, &data, &device)?);
    Ok(ExitCode::SUCCESS)
}
