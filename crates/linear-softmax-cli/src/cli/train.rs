//! `train`: fits a classifier and writes its metrics, charts and model to `--out`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::metrics::evaluate;
use crate::model::{self, Classifier, ClassifierConfig};
use crate::plots::{draw_confusion, draw_curves};
use crate::report::PathComparison;
use crate::train::{EpochMetrics, OptimizerKind, TrainConfig, TrainError, TrainObserver, train};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use linear_softmax::{Error as HeadError, LossPath};

use super::{Backend, DataArgs, Failure, LossArgs, path_parser};

/// Flags of `train` (also accepted without the subcommand name).
#[derive(Clone, Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    steps: StepArgs,
    #[command(flatten)]
    loss: LossArgs,
    /// Widths of hidden ReLU layers, input side first, e.g. `128,64`, each at least 1; leave
    /// it out for the plain linear softmax classifier.
    #[arg(long, value_delimiter = ',', value_name = "WIDTHS")]
    hidden: Vec<usize>,
    /// Rows of the first batch on which the paths' gradients are compared (with f64 finite
    /// differences) before training; 0 to skip.
    #[arg(long, default_value_t = 8)]
    report_rows: usize,
    /// How the gradients are computed.
    #[arg(long, default_value_t = LossPath::Manual, value_parser = path_parser())]
    path: LossPath,
    /// Seed of the parameter initialisation, the split and the batch order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of each class held out as the test set (stratified split).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// The CPU backend.
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    device: Backend,
    /// Directory for metrics.csv, curves.png, confusion.png and the model (config.json,
    /// model.bpk); created if needed.
    #[arg(long, value_name = "DIR", default_value = "runs/latest")]
    out: PathBuf,
}

/// The optimization flags `train` and `distill` share: epochs, batches, the optimizer.
#[derive(Clone, Debug, Args)]
pub(super) struct StepArgs {
    /// Passes over the training set.
    #[arg(long, default_value_t = 30)]
    pub(super) epochs: usize,
    /// Rows per optimizer step.
    #[arg(long, default_value_t = 32)]
    pub(super) batch_size: usize,
    /// The optimizer, from burn::optim.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Sgd)]
    optimizer: OptimizerArg,
    /// Momentum of SGD (PyTorch's convention: no dampening); 0 for plain SGD.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// Learning rate [default: 0.05 for sgd, 0.003 for adam].
    #[arg(long)]
    lr: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OptimizerArg {
    /// Stochastic gradient descent with momentum.
    Sgd,
    /// Adam.
    Adam,
}

impl StepArgs {
    /// The learning rate given, or the optimizer's default.
    pub(super) fn learning_rate(&self) -> f64 {
        self.lr.unwrap_or(match self.optimizer {
            OptimizerArg::Sgd => 0.05,
            OptimizerArg::Adam => 0.003,
        })
    }

    /// The optimizer.
    pub(super) fn optimizer(&self) -> OptimizerKind {
        match self.optimizer {
            OptimizerArg::Sgd => OptimizerKind::Sgd {
                momentum: self.momentum,
            },
            OptimizerArg::Adam => OptimizerKind::Adam,
        }
    }

    /// The optimizer as the run's header names it.
    pub(super) fn optimizer_name(&self) -> String {
        match self.optimizer {
            OptimizerArg::Sgd => format!("sgd (momentum {})", self.momentum),
            OptimizerArg::Adam => "adam".into(),
        }
    }

    /// Refuses a run of 0 epochs, which would write an untrained model.
    pub(super) fn check(&self) -> Result<(), HeadError> {
        if self.epochs == 0 {
            return Err(HeadError::InvalidOption {
                name: "epochs",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        Ok(())
    }
}

impl TrainArgs {
    /// Checks the flags no later check sees: a run of 0 epochs would write an untrained
    /// model, and a hidden layer of width 0 cannot carry anything.
    fn check(&self) -> Result<(), HeadError> {
        self.steps.check()?;
        if self.hidden.contains(&0) {
            return Err(HeadError::InvalidOption {
                name: "hidden",
                value: format!("{:?}", self.hidden),
                expected: "layer widths of at least 1 (leave --hidden out for the linear classifier)",
            });
        }
        Ok(())
    }
}

/// Runs `train`.
pub fn run(args: TrainArgs) -> Result<ExitCode, Failure> {
    args.check()?;
    let started = Instant::now();
    let path = args.path;
    let device = args.device.device(args.seed);
    let data = args.data.load(None)?;
    let (train_set, test_set) = data.stratified_split(args.test_fraction, args.seed)?;
    println!(
        "data: {}: {} training rows, {} test rows, {} features, {} classes",
        args.data.describe(),
        train_set.len(),
        test_set.len(),
        data.n_features,
        data.n_classes
    );
    let model_config =
        ClassifierConfig::new(data.n_features, data.n_classes).with_hidden(args.hidden.clone());
    let model = model_config.init(&device)?;
    let config = TrainConfig {
        epochs: args.steps.epochs,
        batch_size: args.steps.batch_size,
        learning_rate: args.steps.learning_rate(),
        optimizer: args.steps.optimizer(),
        options: args.loss.options().with_path(path),
        seed: args.seed,
    };
    println!(
        "model: {}\ntraining: {}, learning rate {}, batch {}, {} epochs, loss {}, {} gradients, \
         {:?} device",
        describe_model(&model_config),
        args.steps.optimizer_name(),
        config.learning_rate,
        config.batch_size,
        config.epochs,
        config.options.summary(),
        path.name(),
        args.device
    );

    if args.report_rows > 0 {
        // The first step's gradients by every path, against f64 finite differences.
        let batch =
            train_set.subset(&(0..args.report_rows.min(train_set.len())).collect::<Vec<_>>());
        let comparison = PathComparison::run(
            &model.head,
            &model.features(batch.features_tensor(&device)),
            &batch.targets(&device)?,
            &config.options,
            &LossPath::ALL,
        )?;
        println!("\nfirst step: {comparison}");
    }

    // The initial model is the last good one until an epoch completes.
    model::save(&model, &model_config, &args.out)?;
    let mut observer = RunObserver::new(&args.out, model_config.clone())?;
    let outcome = train(
        model,
        &train_set,
        &test_set,
        &config,
        &device,
        &mut observer,
    );
    let epochs = observer.finish();
    if !epochs.is_empty() {
        draw_curves(&args.out.join("curves.png"), &epochs)?;
    }
    let model = match outcome {
        Ok(model) => model,
        Err(TrainError::Invalid(err)) => return Err(err.into()),
        Err(err @ TrainError::NonFiniteLoss { .. }) => {
            let kept = match epochs.last() {
                Some(last) => format!("the model of epoch {}", last.epoch),
                None => "the initial model".into(),
            };
            return Err(Failure::Run(format!(
                "{err}: training stopped; {kept}, the last good one, is kept in {} \
                 (try a smaller --lr, or scale the features)",
                args.out.display()
            )));
        }
    };
    let on_test = evaluate(&model, &test_set, &device)?;
    draw_confusion(
        &args.out.join("confusion.png"),
        &on_test.confusion,
        &format!(
            "test set: {:.2}% correct",
            100.0 * on_test.confusion.accuracy()
        ),
    )?;
    println!(
        "test accuracy {:.2}% after {} epochs in {:.1} s; wrote metrics.csv, curves.png, \
         confusion.png, {} and {} to {}",
        100.0 * on_test.confusion.accuracy(),
        epochs.len(),
        started.elapsed().as_secs_f64(),
        model::CONFIG_FILE,
        model::WEIGHTS_FILE,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn describe_model(config: &ClassifierConfig) -> String {
    if config.hidden.is_empty() {
        return format!(
            "linear softmax classifier, {} -> {}",
            config.d_input, config.n_classes
        );
    }
    let widths: Vec<String> = std::iter::once(config.d_input)
        .chain(config.hidden.iter().copied())
        .chain(std::iter::once(config.n_classes))
        .map(|w| w.to_string())
        .collect();
    format!(
        "MLP {} (ReLU hidden layers, linear softmax head)",
        widths.join(" -> ")
    )
}

/// Draws the progress bar, prints each epoch, appends to metrics.csv and saves each epoch's
/// model (atomically), so that what is on disk is always the last good state.
struct RunObserver {
    out: PathBuf,
    model_config: ClassifierConfig,
    metrics_path: PathBuf,
    metrics_file: BufWriter<File>,
    bar: ProgressBar,
    epochs: Vec<EpochMetrics>,
}

impl RunObserver {
    fn new(out: &Path, model_config: ClassifierConfig) -> Result<Self> {
        let metrics_path = out.join("metrics.csv");
        let write_error =
            |err: std::io::Error| file_error(&metrics_path, format!("cannot write: {err}"));
        let mut metrics_file = BufWriter::new(File::create(&metrics_path).map_err(write_error)?);
        writeln!(
            metrics_file,
            "epoch,train_loss,train_accuracy,test_loss,test_accuracy,seconds"
        )
        .map_err(write_error)?;
        Ok(Self {
            out: out.to_path_buf(),
            model_config,
            metrics_path,
            metrics_file,
            bar: ProgressBar::hidden(),
            epochs: Vec::new(),
        })
    }

    fn finish(self) -> Vec<EpochMetrics> {
        self.bar.finish_and_clear();
        self.epochs
    }
}

impl TrainObserver for RunObserver {
    fn on_epoch_start(&mut self, epoch: usize, steps: usize) {
        // A new bar per epoch: indicatif hides it when stderr is not a terminal.
        self.bar = ProgressBar::new(steps as u64);
        self.bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix:>3} [{bar:30}] {pos}/{len} steps  loss {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        self.bar.set_prefix(epoch.to_string());
    }

    fn on_step(&mut self, loss: f64) {
        self.bar.set_message(format!("{loss:.4}"));
        self.bar.inc(1);
    }

    fn on_epoch_end(&mut self, metrics: &EpochMetrics, model: &Classifier) -> Result<()> {
        self.bar.finish_and_clear();
        println!(
            "epoch {:>3}  train loss {:.4}  train accuracy {:>6.2}%  test accuracy {:>6.2}%  \
             {:>5.1} s",
            metrics.epoch,
            metrics.train_loss,
            100.0 * metrics.train_accuracy,
            100.0 * metrics.test_accuracy,
            metrics.seconds
        );
        writeln!(
            self.metrics_file,
            "{},{},{},{},{},{:.3}",
            metrics.epoch,
            metrics.train_loss,
            metrics.train_accuracy,
            metrics.test_loss,
            metrics.test_accuracy,
            metrics.seconds
        )
        .and_then(|()| self.metrics_file.flush())
        .map_err(|err| file_error(&self.metrics_path, format!("cannot write: {err}")))?;
        model::save(model, &self.model_config, &self.out)?;
        self.epochs.push(*metrics);
        Ok(())
    }
}

fn file_error(path: &Path, message: String) -> Error {
    Error::Data {
        source_name: path.display().to_string(),
        message,
    }
}
