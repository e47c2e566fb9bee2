//! The command line: clap definitions shared by the subcommands, and the dispatch.

mod compare;
mod data;
mod distill;
mod evaluate;
mod lm;
mod predict;
mod train;

use std::process::ExitCode;

use burn::prelude::*;
use clap::{Args, Parser, Subcommand, ValueEnum};
use linear_softmax::LossOptions;
use linear_softmax::LossPath;

pub use data::DataArgs;

/// Train, check and use a Linear + softmax cross-entropy classifier whose gradients are computed
/// by hand, by Burn's autograd and by a fused op, and checked against each other and against
/// finite differences.
///
/// Without a subcommand, `train` runs: on the embedded handwritten digits unless `--data` or
/// `--idx-images` names your own data.
#[derive(Debug, Parser)]
#[command(
    name = "linear-softmax",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: train::TrainArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a classifier (the default): progress, one line per epoch, and metrics.csv,
    /// curves.png, confusion.png and the model written to --out.
    Train(train::TrainArgs),
    /// Compare the gradient paths with each other and with finite differences, in f32 and f64;
    /// exit status 1 when a difference exceeds its tolerance.
    Compare(compare::CompareArgs),
    /// Evaluate a saved model: accuracy, per-class precision and recall, mean loss.
    Evaluate(evaluate::EvaluateArgs),
    /// Predict the class of each row of a CSV file with a saved model.
    Predict(predict::PredictArgs),
    /// Train a word-level language model on the embedded Shakespeare with the head on top
    /// (next-token shift, padding, token accuracy from the head's pass): its validation loss
    /// against unigram and bigram baselines, tokens per second, and a sampled continuation.
    Lm(lm::LmArgs),
    /// Train a linear student from a saved teacher (an MLP from `train --hidden`) through the
    /// head's distillation loss, beside the same student trained on the labels alone: both
    /// test accuracies, epoch by epoch, and the distilled student written to --out.
    Distill(distill::DistillArgs),
}

/// How a run ends badly: bad input (exit status 2, like clap's usage errors) or a run that
/// completed its work and found a failure (exit status 1).
#[derive(Debug)]
pub enum Failure {
    /// Malformed data, a missing or corrupt model, an invalid option.
    Input(crate::Error),
    /// Training diverged, or a comparison exceeded its tolerance.
    Run(String),
}

impl From<crate::Error> for Failure {
    fn from(err: crate::Error) -> Self {
        Self::Input(err)
    }
}

impl From<linear_softmax::Error> for Failure {
    fn from(err: linear_softmax::Error) -> Self {
        Self::Input(err.into())
    }
}

impl Failure {
    /// Prints the one-line message and gives the exit status.
    pub fn report(self) -> ExitCode {
        match self {
            Self::Input(err) => {
                eprintln!("error: {err}");
                ExitCode::from(2)
            }
            Self::Run(message) => {
                eprintln!("error: {message}");
                ExitCode::from(1)
            }
        }
    }
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        None => train::run(cli.train),
        Some(Command::Train(args)) => train::run(args),
        Some(Command::Compare(args)) => compare::run(args),
        Some(Command::Evaluate(args)) => evaluate::run(args),
        Some(Command::Predict(args)) => predict::run(args),
        Some(Command::Lm(args)) => lm::run(args),
        Some(Command::Distill(args)) => distill::run(args),
    }
}

/// The backend to run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Burn's pure-Rust CPU backend (gemm matmul).
    #[default]
    Flex,
    /// The ndarray backend (matrixmultiply matmul); built with the `ndarray` feature.
    #[cfg(feature = "ndarray")]
    Ndarray,
    /// Burn's wgpu backend on the default GPU (Vulkan, Metal, DX12); built with the `wgpu`
    /// feature.
    #[cfg(feature = "wgpu")]
    Wgpu,
    /// Burn's CUDA backend on GPU 0; built with the `cuda` feature.
    #[cfg(feature = "cuda")]
    Cuda,
}

impl Backend {
    /// The device, seeded so that parameter initialisation is reproducible.
    pub fn device(self, seed: u64) -> Device {
        #[allow(deprecated)]
        let device = match self {
            Self::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            Self::Ndarray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "cuda")]
            Self::Cuda => Device::cuda(0),
        };
        device.seed(seed);
        device
    }
}

/// The loss options (see `LossOptions`; PyTorch's names in brackets).
#[derive(Clone, Debug, Args)]
pub struct LossArgs {
    /// L2 penalty `lambda * sum(W^2)` on the head's weight, added to the loss.
    #[arg(long, default_value_t = 0.0)]
    l2: f64,
    /// Label smoothing in [0, 1] [label_smoothing].
    #[arg(long, default_value_t = 0.0)]
    label_smoothing: f64,
    /// Class weights, one per class, e.g. `1,1,2,...` [weight].
    #[arg(long, value_delimiter = ',', value_name = "WEIGHTS")]
    class_weights: Vec<f64>,
    /// z-loss coefficient of `beta * logsumexp^2` (PaLM).
    #[arg(long, default_value_t = 0.0)]
    z_loss: f64,
    /// Soft-cap the logits to `c * tanh(S / c)` (Gemma 2).
    #[arg(long, value_name = "C")]
    softcap: Option<f64>,
    /// Divide the (capped) logits by this temperature before the softmax.
    #[arg(long, default_value_t = 1.0, value_name = "TAU")]
    temperature: f64,
}

impl LossArgs {
    /// The options these flags describe (validated where the loss is computed).
    pub fn options(&self) -> LossOptions {
        LossOptions::new()
            .with_l2(self.l2)
            .with_label_smoothing(self.label_smoothing)
            .with_weights((!self.class_weights.is_empty()).then(|| self.class_weights.clone()))
            .with_z_loss(self.z_loss)
            .with_softcap(self.softcap)
            .with_temperature(self.temperature)
    }
}

/// `--path autodiff|manual|fused`: the library's [`LossPath`], with its names as the choices.
pub fn path_parser() -> impl clap::builder::TypedValueParser<Value = LossPath> {
    use clap::builder::TypedValueParser;
    let names = LossPath::ALL.map(LossPath::name);
    clap::builder::PossibleValuesParser::new(names).map(|name| {
        name.parse::<LossPath>()
            .expect("clap accepts only the names of LossPath::ALL")
    })
}
