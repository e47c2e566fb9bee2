//! The classifier in `burn::train`'s Learner (feature `learner`): one epoch on the digits
//! learns, for the linear classifier and an MLP, and the checkpoint Burn wrote reloads into the
//! same model; the accuracy metric reads the fused pass's predictions.

use burn::data::dataloader::batcher::Batcher;
use burn::prelude::*;
use linear_softmax::LossOptions;
use linear_softmax_cli::data::digits;
use linear_softmax_cli::learner::{
    LearnerConfig, Row, RowBatcher, load_checkpoint, train_with_learner,
};
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

/// What Burn's accuracy metric reads: the `argmax` of the output rows, which are the one-hot
/// predictions of the fused pass, is `predict`'s class for every row of a batch; the loss is
/// the head's.
#[test]
fn the_metric_output_carries_the_predictions_of_the_fused_pass() {
    let device = Device::flex().autodiff();
    let (_, test) = digits().unwrap().stratified_split(0.2, 42).unwrap();
    let model = ClassifierConfig::new(test.n_features, test.n_classes)
        .with_hidden(vec![16])
        .init(&device)
        .unwrap();
    let batcher = RowBatcher {
        n_features: test.n_features,
        n_classes: test.n_classes,
    };
    let rows: Vec<Row> = (0..50)
        .map(|i| Row {
            features: test.features[i * test.n_features..(i + 1) * test.n_features].to_vec(),
            label: test.labels[i],
        })
        .collect();
    let batch = batcher.batch(rows, &device);
    let features = model.features(batch.x.clone());
    let expected_loss = model
        .head
        .loss(features.clone(), &batch.targets, &LossOptions::new())
        .unwrap();
    let output = model.forward_classification(batch);
    let int = |t: Tensor<1, Int>| t.to_data().convert::<i64>().try_to_vec::<i64>().unwrap();
    assert_eq!(
        int(output.output.clone().argmax(1).squeeze_dim(1)),
        int(model.head.predict(features).unwrap())
    );
    let sums = to_host_f64(&output.output.sum_dim(1)).unwrap();
    assert!(sums.iter().all(|&s| s == 1.0), "one-hot rows: {sums:?}");
    assert_eq!(
        to_host_f64(&output.loss).unwrap(),
        to_host_f64(&expected_loss).unwrap()
    );
}
