//! The language model of `linear-softmax lm` on a slice of the embedded Shakespeare: a few
//! training steps take its validation loss below the unigram baseline, and its first step's
//! loss is the same through the fused head (next-token shift, padding ignored), the autodiff
//! path and Burn's `CrossEntropyLoss` on explicitly shifted logits.

use burn::prelude::*;
use linear_softmax::LossPath;
use linear_softmax_cli::lm::baselines::Baselines;
use linear_softmax_cli::lm::corpus::{Corpus, shakespeare};
use linear_softmax_cli::lm::model::WindowLmConfig;
use linear_softmax_cli::lm::{LmEpoch, LmLoss, LmTrainConfig, train_language_model};

/// Characters of the text the tests train on: the first ~260 speeches.
const SLICE: usize = 60_000;
/// f32 losses of the same step computed by different graphs (sums in other orders).
const SAME_STEP: f64 = 1e-5;

fn corpus() -> Corpus {
    let text = shakespeare().unwrap();
    Corpus::new(&text[..SLICE], 2, 24, 0.1).unwrap()
}

fn config(loss: LmLoss, max_steps: usize) -> LmTrainConfig {
    LmTrainConfig {
        model: WindowLmConfig::new(0)
            .with_window(3)
            .with_embedding(16)
            .with_hidden(32),
        time: 24,
        batch_size: 16,
        epochs: 20,
        max_steps: Some(max_steps),
        learning_rate: 1e-2,
        seed: 7,
        loss,
    }
}

/// The epochs' figures of a run.
fn train(corpus: &Corpus, config: &LmTrainConfig) -> Vec<LmEpoch> {
    let mut epochs = Vec::new();
    train_language_model(corpus, config, &Device::flex(), |epoch, _| {
        epochs.push(epoch.clone());
        Ok(())
    })
    .unwrap();
    epochs
}

#[test]
fn a_few_steps_beat_the_unigram_baseline() {
    let corpus = corpus();
    let vocabulary = corpus.tokenizer.len();
    assert!(vocabulary > 100, "vocabulary {vocabulary}");
    let [unigram, bigram] = Baselines::fit(&corpus.train, vocabulary).loss(&corpus.validation);
    assert!(bigram < unigram, "bigram {bigram} vs unigram {unigram}");
    let epochs = train(&corpus, &config(LmLoss::Head(LossPath::Fused), 120));
    let last = epochs.last().unwrap();
    // Before training every token is about equally likely: ln V nats, far above the unigram.
    assert!(unigram < (vocabulary as f64).ln());
    assert!(
        last.validation_loss < unigram,
        "validation {} vs unigram {unigram} after {} epochs",
        last.validation_loss,
        epochs.len()
    );
    assert!(last.validation_accuracy > 0.0 && last.validation_accuracy < 1.0);
    assert!(last.tokens_per_second > 0.0);
}

#[test]
fn the_first_step_is_the_same_loss_by_every_loss() {
    let corpus = corpus();
    let first_step = |loss| train(&corpus, &config(loss, 1))[0].train_loss;
    let fused = first_step(LmLoss::Head(LossPath::Fused));
    for loss in [
        LmLoss::Head(LossPath::Autodiff),
        LmLoss::Head(LossPath::Manual),
        LmLoss::BurnCrossEntropy,
    ] {
        let other = first_step(loss);
        assert!(
            (fused - other).abs() <= SAME_STEP * fused,
            "{loss:?}: {other} vs fused {fused}"
        );
    }
}

#[test]
fn a_sample_decodes_to_text() {
    let corpus = corpus();
    let model = train_language_model(
        &corpus,
        &config(LmLoss::Head(LossPath::Fused), 5),
        &Device::flex(),
        |_, _| Ok(()),
    )
    .unwrap();
    let mut context = corpus.tokenizer.encode("First Citizen:");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    for _ in 0..20 {
        let next = model.sample_next(&context, 0.8, &mut rng).unwrap();
        assert!(next < corpus.tokenizer.len());
        context.push(next);
    }
    assert!(
        corpus
            .tokenizer
            .decode(&context)
            .starts_with("first citizen:")
    );
}
