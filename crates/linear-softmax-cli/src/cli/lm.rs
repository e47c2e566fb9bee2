//! `lm`: a word-level language model on the embedded Shakespeare, our head on top.

use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use linear_softmax::Error as HeadError;
use linear_softmax::LossPath;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::lm::baselines::Baselines;
use crate::lm::corpus::{Corpus, shakespeare};
use crate::lm::model::WindowLmConfig;
use crate::lm::{LmLoss, LmTrainConfig, train_language_model};

use super::{Backend, Failure, path_parser};

/// Flags of `lm`.
#[derive(Clone, Debug, Args)]
pub struct LmArgs {
    /// Passes over the training text (the validation loss is lowest after the second; the
    /// third overfits).
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Stop after this many steps in all.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Sequences per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 64)]
    time: usize,
    /// Tokens each position sees (itself and those before it).
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Embedding width.
    #[arg(long, default_value_t = 64)]
    embedding: usize,
    /// Hidden width: the head's input.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Words seen fewer times in the training text become <unk>.
    #[arg(long, default_value_t = 2)]
    min_count: usize,
    /// Adam's step size.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// The head's loss path.
    #[arg(long, value_parser = path_parser(), default_value = "fused")]
    path: LossPath,
    /// Seed of the initialisation, the shuffles and the sample.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The backend.
    #[arg(long, value_enum, default_value_t = Backend::Flex)]
    device: Backend,
    /// Tokens to sample after training.
    #[arg(long, default_value_t = 60)]
    sample: usize,
    /// The sample's first words.
    #[arg(long, default_value = "ROMEO:")]
    prompt: String,
    /// The sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
}

/// Runs `lm`: the corpus and its baselines, one line per epoch, a sampled continuation.
pub fn run(args: LmArgs) -> Result<ExitCode, Failure> {
    for (name, value) in [
        ("epochs", args.epochs),
        ("batch size", args.batch_size),
        ("window", args.window),
        ("embedding", args.embedding),
        ("hidden", args.hidden),
    ] {
        if value == 0 {
            return Err(HeadError::InvalidOption {
                name,
                value: "0".into(),
                expected: "at least 1",
            }
            .into());
        }
    }
    if !(args.temperature.is_finite() && args.temperature > 0.0) {
        return Err(HeadError::InvalidOption {
            name: "temperature",
            value: args.temperature.to_string(),
            expected: "a finite temperature > 0",
        }
        .into());
    }
    let device = args.device.device(args.seed);
    let corpus = Corpus::new(&shakespeare()?, args.min_count, args.time, 0.1)?;
    let vocabulary = corpus.tokenizer.len();
    let [train_tokens, validation_tokens] =
        [&corpus.train, &corpus.validation].map(|s| Corpus::predicted_tokens(s));
    println!(
        "data: embedded Shakespeare, vocabulary {vocabulary} (min count {}), \
         {train_tokens} training and {validation_tokens} validation tokens to predict",
        args.min_count
    );
    let baselines = Baselines::fit(&corpus.train, vocabulary);
    let [unigram, bigram] = baselines.loss(&corpus.validation);
    println!("baselines (validation, nats/token): unigram {unigram:.3}, bigram {bigram:.3}");
    let config = LmTrainConfig {
        model: WindowLmConfig::new(vocabulary)
            .with_window(args.window)
            .with_embedding(args.embedding)
            .with_hidden(args.hidden),
        time: args.time,
        batch_size: args.batch_size,
        epochs: args.epochs,
        max_steps: args.max_steps,
        learning_rate: args.lr,
        seed: args.seed,
        loss: LmLoss::Head(args.path),
    };
    let started = Instant::now();
    let model = train_language_model(&corpus, &config, &device, |epoch, _| {
        println!(
            "epoch {:>2}: train {:.3}  validation {:.3} nats/token  token accuracy {:.1}%  \
             {:.0} tokens/s",
            epoch.epoch,
            epoch.train_loss,
            epoch.validation_loss,
            100.0 * epoch.validation_accuracy,
            epoch.tokens_per_second
        );
        Ok(())
    })?;
    println!("trained in {:.1} s", started.elapsed().as_secs_f64());
    let mut context = corpus.tokenizer.encode(&args.prompt);
    if context.is_empty() {
        return Err(HeadError::InvalidOption {
            name: "prompt",
            value: format!("{:?}", args.prompt),
            expected: "at least one word or punctuation mark",
        }
        .into());
    }
    let prompt_length = context.len();
    let mut rng = StdRng::seed_from_u64(args.seed);
    for _ in 0..args.sample {
        let next = model.sample_next(&context, args.temperature, &mut rng)?;
        context.push(next);
    }
    println!(
        "sample (temperature {}):\n{}{}",
        args.temperature,
        corpus.tokenizer.decode(&context[..prompt_length]),
        {
            let continuation = corpus.tokenizer.decode(&context[prompt_length..]);
            if continuation.starts_with('\n') {
                continuation
            } else {
                format!(" {continuation}")
            }
        }
    );
    Ok(ExitCode::SUCCESS)
}
