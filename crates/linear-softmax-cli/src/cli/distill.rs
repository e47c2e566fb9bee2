//! `distill`: a linear student trained from a saved teacher (an MLP from `train --hidden`),
//! against the same student trained on the labels alone.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use linear_softmax::{DistillationOptions, LossOptions, LossPath};

use crate::distill::{StudentEpoch, train_student};
use crate::error::Error;
use crate::metrics::evaluate;
use crate::model::{self, ClassifierConfig};
use crate::train::{TrainConfig, TrainError};

use super::train::StepArgs;
use super::{Backend, DataArgs, Failure, path_parser};

/// Flags of `distill`.
#[derive(Clone, Debug, Args)]
pub struct DistillArgs {
    /// The teacher: a model directory written by `train --out DIR` (an MLP, `--hidden`).
    #[arg(long, value_name = "DIR")]
    teacher: PathBuf,
    /// The data; the embedded digits by default, split with --test-fraction and --seed (train's
    /// defaults give the split the teacher was trained on).
    #[command(flatten)]
    data: DataArgs,
    /// The optimization of both students.
    #[command(flatten)]
    steps: StepArgs,
    /// The distillation's temperature: both distributions see the logits divided by it.
    #[arg(long, default_value_t = 2.0, value_name = "TAU")]
    temperature: f64,
    /// The divergence: 0 the forward KL(teacher || student), 1 the reverse KL, in between the
    /// generalised JSD.
    #[arg(long, default_value_t = 0.0)]
    beta: f64,
    /// Weight of the divergence from the teacher.
    #[arg(long, default_value_t = 0.5)]
    soft_weight: f64,
    /// Weight of the cross-entropy on the labels (at temperature 1).
    #[arg(long, default_value_t = 0.5)]
    hard_weight: f64,
    /// How the head's loss is computed, as a node of the student's graph (`manual`: Burn's
    /// autograd over the manual forward functions; `train --path manual` is where the
    /// hand-derived backward runs a network).
    #[arg(long, default_value_t = LossPath::Fused, value_parser = path_parser())]
    path: LossPath,
    /// Seed of the initialisation, the split and the batch order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of each class held out as the test set (stratified split).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// The CPU backend.
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    device: Backend,
    /// Directory for the distilled student (config.json, model.bpk); created if needed.
    #[arg(long, value_name = "DIR", default_value = "runs/student")]
    out: PathBuf,
}

/// Runs `distill`.
pub fn run(args: DistillArgs) -> Result<ExitCode, Failure> {
    let started = Instant::now();
    let device = args.device.device(args.seed);
    let (teacher, teacher_config) = model::load(&args.teacher, &device)?;
    let data = args.data.load(Some(teacher_config.n_classes))?;
    if data.n_features != teacher_config.d_input {
        return Err(Error::Data {
            source_name: args.data.describe(),
            message: format!(
                "{} features per row, but the teacher in {} expects {}",
                data.n_features,
                args.teacher.display(),
                teacher_config.d_input
            ),
        }
        .into());
    }
    let (train_set, test_set) = data.stratified_split(args.test_fraction, args.seed)?;
    println!(
        "data: {}: {} training rows, {} test rows",
        args.data.describe(),
        train_set.len(),
        test_set.len()
    );
    let distillation = DistillationOptions::new()
        .with_beta(args.beta)
        .with_soft_weight(args.soft_weight)
        .with_hard_weight(args.hard_weight);
    let options = LossOptions::new()
        .with_path(args.path)
        .with_temperature(args.temperature)
        .with_distillation(distillation);
    // Refused here, before any training, rather than at the first step.
    options.validate()?;
    args.steps.check()?;
    let mut config = TrainConfig {
        epochs: args.steps.epochs,
        batch_size: args.steps.batch_size,
        learning_rate: args.steps.learning_rate(),
        optimizer: args.steps.optimizer(),
        options: LossOptions::new().with_path(args.path),
        seed: args.seed,
    };
    let teacher_accuracy = evaluate(&teacher, &test_set, &device)?.confusion.accuracy();
    println!(
        "teacher: {} (hidden {:?}), test accuracy {:.2}%",
        args.teacher.display(),
        teacher_config.hidden,
        100.0 * teacher_accuracy
    );
    println!(
        "students: linear {} -> {}, {}, {} epochs, learning rate {}, batch {}; distillation: {}",
        data.n_features,
        data.n_classes,
        args.steps.optimizer_name(),
        config.epochs,
        config.learning_rate,
        config.batch_size,
        options.summary()
    );
    let student_config = ClassifierConfig::new(data.n_features, data.n_classes);
    // One initial student for both runs: its parameters drawn now (Burn draws them at first
    // use), then cloned, so both start from the same values whatever runs in between.
    let initial = student_config.init(&device)?;
    let _drawn = (initial.head.weight(), initial.head.bias());
    let fresh = || initial.clone();
    let mut alone = Vec::new();
    train_student(
        fresh(),
        None,
        &train_set,
        &test_set,
        &config,
        &device,
        |epoch: &StudentEpoch| alone.push(*epoch),
    )
    .map_err(failure)?;
    config.options = options;
    println!("epoch  labels alone: loss, test accuracy   distilled: loss, test accuracy");
    let mut distilled = Vec::new();
    let student = train_student(
        fresh(),
        Some(&teacher),
        &train_set,
        &test_set,
        &config,
        &device,
        |epoch: &StudentEpoch| {
            let base = &alone[epoch.epoch - 1];
            println!(
                "{:>5}  {:>12.4} {:>14.2}%   {:>9.4} {:>14.2}%",
                epoch.epoch,
                base.train_loss,
                100.0 * base.test_accuracy,
                epoch.train_loss,
                100.0 * epoch.test_accuracy
            );
            distilled.push(*epoch);
        },
    )
    .map_err(failure)?;
    model::save(&student, &student_config, &args.out)?;
    let last = |epochs: &[StudentEpoch]| epochs.last().map_or(0.0, |e| e.test_accuracy);
    println!(
        "test accuracy: linear student on labels alone {:.2}%, distilled from the teacher {:.2}% \
         (teacher {:.2}%); {:.1} s; wrote {} and {} to {}",
        100.0 * last(&alone),
        100.0 * last(&distilled),
        100.0 * teacher_accuracy,
        started.elapsed().as_secs_f64(),
        model::CONFIG_FILE,
        model::WEIGHTS_FILE,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A student's training error as the command's failure: bad input (exit status 2), or a loss
/// that became non-finite (1).
fn failure(err: TrainError) -> Failure {
    match err {
        TrainError::Invalid(err) => err.into(),
        err @ TrainError::NonFiniteLoss { .. } => {
            Failure::Run(format!("{err}: training stopped (try a smaller --lr)"))
        }
    }
}
