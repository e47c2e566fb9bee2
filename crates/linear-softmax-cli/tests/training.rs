//! The main job's recipe: SGD with manual gradients on the embedded digits reaches 95% test
//! accuracy on the stratified 80/20 split.

use burn::prelude::*;
use linear_softmax::{LinearSoftmaxConfig, LossOptions, LossPath};
use linear_softmax_cli::data::{DIGITS_CLASSES, DIGITS_FEATURES, digits};
use linear_softmax_cli::metrics::evaluate;
use linear_softmax_cli::model::{Classifier, ClassifierConfig};
use linear_softmax_cli::train::{
    EpochMetrics, OptimizerKind, SgdConfig, TrainConfig, TrainObserver, accuracy, train, train_sgd,
};

#[test]
fn embedded_digits_load_whole_and_scaled() {
    let data = digits().unwrap();
    assert_eq!(data.len(), 1797);
    assert_eq!(data.features.len(), 1797 * DIGITS_FEATURES);
    assert!(data.features.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(data.features.contains(&1.0));
    let mut counts = [0usize; DIGITS_CLASSES];
    data.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert!(
        counts.iter().all(|&c| (174..=183).contains(&c)),
        "{counts:?}"
    );
}

#[test]
fn stratified_split_keeps_class_shares_and_is_reproducible() {
    let data = digits().unwrap();
    let (train, test) = data.stratified_split(0.2, 42).unwrap();
    assert_eq!(train.len() + test.len(), data.len());
    for class in 0..DIGITS_CLASSES as i64 {
        let total = data.labels.iter().filter(|&&l| l == class).count();
        let in_test = test.labels.iter().filter(|&&l| l == class).count();
        assert_eq!(
            in_test,
            (0.2 * total as f64).round() as usize,
            "class {class}"
        );
    }
    assert_eq!(data.stratified_split(0.2, 42).unwrap().1, test);
    assert_ne!(data.stratified_split(0.2, 43).unwrap().1, test);
    assert!(data.stratified_split(1.0, 42).is_err());
}

#[test]
fn manual_sgd_reaches_95_percent_on_digits() {
    let device = Device::flex();
    device.seed(42);
    let (train, test) = digits().unwrap().stratified_split(0.2, 42).unwrap();
    let head = LinearSoftmaxConfig::new(DIGITS_FEATURES, DIGITS_CLASSES)
        .init(&device)
        .unwrap();
    let before = accuracy(&head, &test, &device).unwrap();
    let mut losses = Vec::new();
    let head = train_sgd(
        head,
        &train,
        &test,
        &LossOptions::new(),
        &SgdConfig::new(),
        &device,
        |r| losses.push(r.train_loss),
    )
    .unwrap();
    let after = accuracy(&head, &test, &device).unwrap();
    assert!(before < 0.5, "an untrained head is near chance: {before}");
    assert!(after >= 0.95, "test accuracy {after}");
    assert!(
        losses.last().unwrap() < &(losses[0] * 0.5),
        "loss fell: {losses:?}"
    );
}

/// Keeps the last epoch's metrics.
struct LastEpoch(Option<EpochMetrics>);

impl TrainObserver for LastEpoch {
    fn on_epoch_end(
        &mut self,
        metrics: &EpochMetrics,
        _model: &Classifier,
    ) -> linear_softmax_cli::Result<()> {
        self.0 = Some(*metrics);
        Ok(())
    }
}

/// The train accuracy of an epoch is counted by its steps' own loss passes: with a learning
/// rate too small to move any parameter, every step sees the initial model, so the epoch's
/// train accuracy is the initial model's accuracy on the whole training set, on every path.
#[test]
fn the_train_accuracy_counts_every_row_of_the_epoch_from_the_steps() {
    let device = Device::flex();
    device.seed(5);
    let (train_set, test) = digits().unwrap().stratified_split(0.2, 42).unwrap();
    let model = ClassifierConfig::new(DIGITS_FEATURES, DIGITS_CLASSES)
        .with_hidden(vec![16])
        .init(&device)
        .unwrap();
    let expected = evaluate(&model, &train_set, &device)
        .unwrap()
        .confusion
        .accuracy();
    for path in LossPath::ALL {
        let config = TrainConfig {
            epochs: 1,
            batch_size: 50,
            learning_rate: 1e-30,
            optimizer: OptimizerKind::Sgd { momentum: 0.0 },
            options: LossOptions::new().with_path(path),
            seed: 3,
        };
        let mut last = LastEpoch(None);
        train(
            model.clone(),
            &train_set,
            &test,
            &config,
            &device,
            &mut last,
        )
        .unwrap();
        let metrics = last.0.expect("one epoch ran");
        assert_eq!(metrics.train_accuracy, expected, "{path}");
    }
}
