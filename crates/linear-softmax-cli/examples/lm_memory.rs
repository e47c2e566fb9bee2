//! Peak memory and step time of the `linear-softmax lm` language model's training with the
//! head's loss by the fused op, by the autodiff path, and by Burn's `CrossEntropyLoss` on the
//! `[B, T, V]` logits: the same model, batches and steps.
//!
//! ```sh
//! cargo run --release --example lm_memory
//! ```
//!
//! A counting global allocator records the peak of the bytes allocated during training above
//! what was allocated before it (the corpus): the model, its activations and gradients and
//! Adam's state, alike in every row but for the loss's own share. Flex, f32; the CLI's default
//! shape (`B` 32, `T` 64, window 4, embedding 64, hidden 256) and vocabulary.

// The library's peak-memory example's counting allocator, shared rather than copied.
#[path = "../../linear-softmax/examples/peak_memory/allocator.rs"]
mod allocator;

use std::sync::atomic::Ordering;

use burn::prelude::*;
use linear_softmax::LossPath;
use linear_softmax_cli::lm::corpus::{Corpus, shakespeare};
use linear_softmax_cli::lm::model::WindowLmConfig;
use linear_softmax_cli::lm::{LmLoss, LmTrainConfig, train_language_model};

use allocator::{ALLOCATED, PEAK};

const MIB: f64 = 1024.0 * 1024.0;
/// Training steps measured per loss (the first one warms the allocator's pools).
const STEPS: usize = 6;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = Corpus::new(&shakespeare()?, 2, 64, 0.1)?;
    // Validation on a few sequences only: the measurement is of training.
    let corpus = Corpus {
        validation: corpus.validation[..32].to_vec(),
        ..corpus
    };
    let vocabulary = corpus.tokenizer.len();
    println!(
        "language model: vocabulary V = {vocabulary}, B = 32 sequences of T = 64 tokens, \
         hidden D = 256; {STEPS} Adam steps each, Flex f32"
    );
    println!("| loss | peak memory of training | tokens per second |");
    println!("|---|---:|---:|");
    for (name, loss) in [
        ("head, fused", LmLoss::Head(LossPath::Fused)),
        ("head, autodiff path", LmLoss::Head(LossPath::Autodiff)),
        ("Burn's CrossEntropyLoss", LmLoss::BurnCrossEntropy),
    ] {
        let config = LmTrainConfig {
            model: WindowLmConfig::new(vocabulary),
            time: 64,
            batch_size: 32,
            epochs: 1,
            max_steps: Some(STEPS),
            learning_rate: 3e-3,
            seed: 42,
            loss,
        };
        let before = ALLOCATED.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let mut tokens_per_second = 0.0;
        train_language_model(&corpus, &config, &Device::flex(), |epoch, _| {
            tokens_per_second = epoch.tokens_per_second;
            Ok(())
        })?;
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before) as f64 / MIB;
        println!("| {name} | {peak:.1} MiB | {tokens_per_second:.0} |");
    }
    Ok(())
}
