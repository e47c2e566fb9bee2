//! `predict`: the class of each row of a CSV file, with its probability.

use linear_softmax::Error as HeadError;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::data::{LabelColumn, load_csv_features};
use crate::error::Error;
use crate::model;
use burn::prelude::*;
use clap::Args;

use super::{Backend, Failure};

/// Flags of `predict`.
#[derive(Clone, Debug, Args)]
pub struct PredictArgs {
    /// The model directory written by `train --out DIR`.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// A CSV file of feature rows (optional header), as many columns as the model's inputs.
    #[arg(long, value_name = "FILE.csv")]
    input: PathBuf,
    /// A label column to skip (name, 0-based index or `last`), e.g. to predict on training data.
    #[arg(long, value_name = "NAME|INDEX")]
    label_column: Option<LabelColumn>,
    /// Also print the K most probable classes of each row, with their probabilities.
    #[arg(long, value_name = "K", default_value_t = 1)]
    top_k: usize,
    /// The CPU backend.
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    device: Backend,
}

/// Runs `predict`: CSV on stdout, `line,class,probability` and, for `--top-k K > 1`, the
/// `class_k,probability_k` of the next most probable classes.
pub fn run(args: PredictArgs) -> Result<ExitCode, Failure> {
    let device = args.device.device(0);
    let (model, config) = model::load(&args.model, &device)?;
    if !(1..=config.n_classes).contains(&args.top_k) {
        return Err(HeadError::InvalidOption {
            name: "top-k",
            value: args.top_k.to_string(),
            expected: "between 1 and the model's number of classes",
        }
        .into());
    }
    let rows = load_csv_features(&args.input, args.label_column.as_ref())?;
    if rows.n_features != config.d_input {
        return Err(Error::Data {
            source_name: args.input.display().to_string(),
            message: format!(
                "line {}: {} feature columns, but the model in {} expects {}",
                rows.lines[0],
                rows.n_features,
                args.model.display(),
                config.d_input
            ),
        }
        .into());
    }
    let x = Tensor::<2>::from_data(
        TensorData::new(rows.features.clone(), [rows.len(), rows.n_features]),
        &device,
    );
    let probabilities = model.probabilities(x)?;
    let (top_probabilities, top_classes) = probabilities.topk_with_indices(args.top_k, 1);
    let top_probabilities = top_probabilities
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|err| HeadError::ReadBack(format!("{err:?}")))?;
    let top_classes = crate::to_host_i64(&top_classes)?;

    let mut header = vec!["line".to_string(), "class".into(), "probability".into()];
    for k in 2..=args.top_k {
        header.push(format!("class_{k}"));
        header.push(format!("probability_{k}"));
    }
    println!("{}", header.join(","));
    for (row, line) in rows.lines.iter().enumerate() {
        let mut cells = vec![line.to_string()];
        for k in 0..args.top_k {
            let at = row * args.top_k + k;
            cells.push(top_classes[at].to_string());
            // `{}` prints the shortest text that reads back to the same f32: exact round trips.
            cells.push(top_probabilities[at].to_string());
        }
        println!("{}", cells.join(","));
    }
    Ok(ExitCode::SUCCESS)
}
