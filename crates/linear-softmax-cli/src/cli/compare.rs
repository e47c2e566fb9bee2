//! `compare`: every gradient path against the others and against finite differences.

use linear_softmax::Error as HeadError;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::Error;
use crate::model::{self, ClassifierConfig};
use crate::report::PathComparison;
use clap::Args;
use linear_softmax::LossPath;

use super::{Backend, DataArgs, Failure, LossArgs};

/// Flags of `compare`.
#[derive(Clone, Debug, Args)]
pub struct CompareArgs {
    /// A model saved by `train` (its hidden layers feed the head); a fresh linear head if absent.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Rows of the batch (the first rows of the data). Finite differences cost two forward
    /// passes per entry of W, b and X, so keep it small on wide data.
    #[arg(long, default_value_t = 16)]
    rows: usize,
    #[command(flatten)]
    loss: LossArgs,
    /// Seed of a fresh head's initialisation.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The CPU backend.
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    device: Backend,
    /// Print the comparison as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `compare`; exit status 1 when a difference exceeds its tolerance.
pub fn run(args: CompareArgs) -> Result<ExitCode, Failure> {
    if args.rows == 0 {
        return Err(HeadError::InvalidOption {
            name: "rows",
            value: "0".into(),
            expected: "at least 1",
        }
        .into());
    }
    let device = args.device.device(args.seed);
    let loaded = args
        .model
        .as_ref()
        .map(|dir| model::load(dir, &device).map(|(model, _)| (dir, model)))
        .transpose()?;
    let data = args
        .data
        .load(loaded.as_ref().map(|(_, model)| model.head.n_classes()))?;
    let model = match loaded {
        Some((dir, model)) => {
            if model.d_input() != data.n_features {
                return Err(Error::Data {
                    source_name: args.data.describe(),
                    message: format!(
                        "{} features per row, but the model in {} expects {}",
                        data.n_features,
                        dir.display(),
                        model.d_input()
                    ),
                }
                .into());
            }
            model
        }
        None => ClassifierConfig::new(data.n_features, data.n_classes).init(&device)?,
    };
    let batch = data.subset(&(0..args.rows.min(data.len())).collect::<Vec<_>>());
    let features = model.features(batch.features_tensor(&device));
    let comparison = PathComparison::run(
        &model.head,
        &features,
        &batch.targets(&device)?,
        &args.loss.options(),
        &LossPath::ALL,
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&comparison).expect("plain numbers and strings")
        );
    } else {
        print!("{comparison}");
    }
    if comparison.passed() {
        Ok(ExitCode::SUCCESS)
    } else {
        let failures = comparison
            .differences
            .iter()
            .filter(|d| !d.within_tolerance)
            .count();
        Err(Failure::Run(format!(
            "{failures} of {} differences exceed their tolerance",
            comparison.differences.len()
        )))
    }
}
