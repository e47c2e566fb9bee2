//! The classifier in `burn::train`'s Learner (feature `learner`): one epoch on the digits
//! learns, for the linear classifier and an MLP, and the checkpoint Burn wrote reloads into the
//! same model.

use burn::prelude::*;
use linear_softmax_cli::data::digits;
use linear_softmax_cli::learner::{LearnerConfig, load_checkpoint, train_with_learner};
use linear_softmax_cli::metrics::evaluate;
use linear_softmax_cli::model::{Classifier, ClassifierConfig};
use linear_softmax_cli::to_host_f64;
use linear_softmax_cli::train::OptimizerKind;

/// One epoch of SGD with momentum on the 1,437 training digits: the linear classifier reaches
/// ~93% test accuracy after it in the main job; well below that means the Learner did not train
/// through the fused loss.
const LINEAR_ONE_EPOCH: f64 = 0.85;
/// An MLP with one hidden layer of 16 starts slower (measured: 65% after one epoch); chance is
/// 10%.
const MLP_ONE_EPOCH: f64 = 0.5;

/// One epoch of the CLI's default SGD (momentum 0.9, learning rate 0.05, batches of 32).
fn one_epoch(hidden: Vec<usize>) -> LearnerConfig {
    LearnerConfig {
        hidden,
        epochs: 1,
        batch_size: 32,
        optimizer: OptimizerKind::Sgd { momentum: 0.9 },
        learning_rate: 0.05,
        seed: 7,
    }
}

#[test]
fn one_epoch_through_the_learner_learns_and_its_checkpoint_reloads() {
    let device = Device::flex();
    let (train, test) = digits().unwrap().stratified_split(0.2, 42).unwrap();
    for (hidden, expected) in [(vec![], LINEAR_ONE_EPOCH), (vec![16], MLP_ONE_EPOCH)] {
        let config = one_epoch(hidden.clone());
        let dir = tempfile::TempDir::new().unwrap();
        let model = train_with_learner(&train, &test, &config, dir.path(), &device).unwrap();
        let accuracy = evaluate(&model, &test, &device)
            .unwrap()
            .confusion
            .accuracy();
        assert!(
            accuracy >= expected,
            "hidden {hidden:?}: test accuracy {accuracy}"
        );

        let shape =
            ClassifierConfig::new(train.n_features, train.n_classes).with_hidden(hidden.clone());
        let reloaded = load_checkpoint(dir.path(), 1, &shape, &device).unwrap();
        let x = test.features_tensor(&device);
        let probabilities =
            |model: &Classifier| to_host_f64(&model.probabilities(x.clone()).unwrap()).unwrap();
        assert_eq!(
            probabilities(&reloaded),
            probabilities(&model),
            "hidden {hidden:?}"
        );
    }
}

#[test]
fn a_validation_set_of_another_shape_is_an_error_before_training() {
    let device = Device::flex();
    let (train, test) = digits().unwrap().stratified_split(0.2, 42).unwrap();
    let mut fewer_classes = test.clone();
    fewer_classes.n_classes = 9;
    let config = one_epoch(vec![]);
    let dir = tempfile::TempDir::new().unwrap();
    let err = train_with_learner(&train, &fewer_classes, &config, dir.path(), &device)
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("validation set = 64 features, 9 classes"),
        "{err}"
    );
    let nan_rate = LearnerConfig {
        learning_rate: f64::NAN,
        ..config
    };
    let err = train_with_learner(&train, &test, &nan_rate, dir.path(), &device)
        .expect_err("refused")
        .to_string();
    assert!(err.contains("learning rate = NaN"), "{err}");
}
