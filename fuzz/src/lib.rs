//! The checks behind the fuzz targets (`fuzz_targets/*.rs`). Each takes arbitrary bytes, hands
//! them to one entry point for untrusted input, and panics only where that entry point breaks
//! its contract: it panics itself, or it accepts input that then fails where it is used.
//!
//! `crates/linear-softmax-cli/tests/fuzz_regressions.rs` includes this file and runs every
//! input under `fuzz/regressions/<target>/` (the inputs that once failed) through it.

use burn::prelude::*;
use linear_softmax::{LinearSoftmax, LinearSoftmaxConfig, LossOptions, LossPath, Targets};
use linear_softmax_cli::data::{Dataset, LabelColumn, idx_dataset, parse_csv, parse_labelled_csv};
use linear_softmax_cli::model;

/// The most classes a target check builds a head for (a valid `Targets` may promise any count).
const MAX_HEAD_CLASSES: usize = 4096;

/// A CSV file, as a labelled data set (labels in the last column, classes inferred from them)
/// and as feature rows: what the loader accepts must be a consistent data set the head takes.
pub fn csv(data: &[u8]) {
    // `read_text` refuses what is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(dataset) = parse_labelled_csv(text, "fuzz.csv", &LabelColumn::Last, None) {
        check_dataset(&dataset);
    }
    if let Ok(rows) = parse_csv(text, "fuzz.csv", None) {
        assert!(rows.n_features > 0 && !rows.is_empty());
        assert_eq!(rows.features.len(), rows.len() * rows.n_features);
        assert!(rows.features.iter().all(|value| value.is_finite()));
    }
}

/// An IDX images file and an IDX labels file (plain or gzipped): the first two bytes are the
/// length of the images part (little-endian), the rest after it is the labels file.
pub fn idx(data: &[u8]) {
    let (images, labels) = split_in_two(data);
    for n_classes in [None, Some(10)] {
        if let Ok(dataset) = idx_dataset((images, "images.idx"), (labels, "labels.idx"), n_classes)
        {
            check_dataset(&dataset);
        }
    }
}

/// A model directory: `config.json` and `model.bpk` split from the input as in [`idx`]. A model
/// that loads must predict classes in its range for a batch of its input width.
pub fn model_dir(data: &[u8]) {
    let (config, weights) = split_in_two(data);
    let dir = std::env::temp_dir().join(format!("linear-softmax-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    std::fs::write(dir.join(model::CONFIG_FILE), config).expect("writable scratch directory");
    std::fs::write(dir.join(model::WEIGHTS_FILE), weights).expect("writable scratch directory");
    let device = Device::flex();
    if let Ok((classifier, config)) = model::load(&dir, &device) {
        let x = Tensor::<2>::zeros([2, config.d_input], &device);
        let predictions = classifier.predict(x).expect("a loaded model predicts");
        let predictions = predictions.into_data().convert::<i64>();
        let predictions = predictions.as_slice::<i64>().expect("i64 predictions");
        assert!(
            predictions
                .iter()
                .all(|&class| (0..config.n_classes as i64).contains(&class))
        );
    }
}

/// `Targets` from arbitrary values through each constructor (the first byte picks it; then the
/// shape and the values): every target a constructor accepts gives a finite loss and finite
/// gradients on every path, through `.backward()`, for an input of the targets' leading shape
/// (`[N, D]`, or `[B, T, D]` for a sequence batch).
pub fn targets(data: &[u8]) {
    let mut input = Bytes(data);
    let device = Device::flex();
    let constructor = input.u8() % 7;
    let n_classes = input.u64() as usize;
    let rows = input.u64() as usize;
    let ignore_index = input.i64();
    let targets = match constructor {
        0 => Targets::from_indices(&input.i64s(), n_classes, &device),
        1 => Targets::from_indices_with_ignore(&input.i64s(), n_classes, ignore_index, &device),
        2 => Targets::from_probabilities(&input.f64s(), [rows, n_classes], &device),
        3 => Targets::from_multi_hot(&input.bools(), [rows, n_classes], &device),
        4 => {
            let labels = input.i64s();
            let len = labels.len();
            Targets::from_tensor(
                Tensor::<1, Int>::from_data(TensorData::new(labels, [len]), &device),
                n_classes,
                None,
            )
        }
        5 => {
            let labels = input.i64s();
            let batch = rows.clamp(1, labels.len().max(1));
            let time = labels.len() / batch;
            let labels = labels[..batch * time].to_vec();
            Targets::from_tensor(
                Tensor::<2, Int>::from_data(TensorData::new(labels, [batch, time]), &device),
                n_classes,
                Some(ignore_index),
            )
        }
        _ => {
            let values = input.f64s();
            let width = n_classes.clamp(1, values.len().max(1));
            let height = values.len() / width;
            let values = values[..height * width].to_vec();
            Targets::from_probability_tensor(Tensor::<2>::from_data(
                TensorData::new(values, [height, width]),
                &device,
            ))
        }
    };
    let Ok(targets) = targets else {
        return;
    };
    if targets.is_empty() || targets.n_classes() > MAX_HEAD_CLASSES {
        return;
    }
    let device = device.autodiff();
    let head = LinearSoftmaxConfig::new(3, targets.n_classes())
        .init(&device)
        .expect("a valid head");
    let x = Tensor::<2>::ones([targets.len(), 3], &device);
    match targets.shape() {
        &[_] => loss_on_every_path(&head, x, &targets),
        &[batch, time] => loss_on_every_path(&head, x.reshape([batch, time, 3]), &targets),
        shape => panic!("targets of rank 1 or 2 from these constructors, not {shape:?}"),
    }
}

/// The loss of `head` on `(x, targets)` on every path: accepted, finite, and with a finite
/// gradient of the weight through `.backward()`.
fn loss_on_every_path<const K: usize>(head: &LinearSoftmax, x: Tensor<K>, targets: &Targets) {
    for path in LossPath::ALL {
        let options = LossOptions::new().with_path(path);
        let loss = head
            .loss(x.clone(), targets, &options)
            .unwrap_or_else(|err| panic!("{path}: accepted targets refused: {err}"));
        // The user's route ends in backward (which also frees the graph: Burn keeps the graph
        // of a tracked loss that never reaches backward, tracel-ai/burn#4970).
        let grads = loss.clone().sum().backward();
        let loss = loss.sum().into_scalar::<f64>();
        assert!(loss.is_finite(), "{path}: loss {loss}");
        let d_weight = head.weight().grad(&grads).expect("the weight is tracked");
        let d_weight = d_weight.abs().max().into_scalar::<f64>();
        assert!(d_weight.is_finite(), "{path}: dW max {d_weight}");
    }
}

/// What every loaded data set must be: consistent shapes, finite features, labels in range,
/// and accepted by the head as they are.
fn check_dataset(dataset: &Dataset) {
    assert!(!dataset.is_empty() && dataset.n_features > 0 && dataset.n_classes >= 2);
    assert_eq!(dataset.features.len(), dataset.len() * dataset.n_features);
    assert!(dataset.features.iter().all(|value| value.is_finite()));
    let device = Device::flex();
    dataset
        .targets(&device)
        .expect("the loader's labels are valid targets");
}

/// The input split at the length its first two bytes give (little-endian).
fn split_in_two(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((length, rest)) = data.split_first_chunk::<2>() else {
        return (&[], &[]);
    };
    rest.split_at(usize::from(u16::from_le_bytes(*length)).min(rest.len()))
}

/// Reads fixed-size values off the front of the input; zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn u64(&mut self) -> u64 {
        // Mostly small sizes, with the whole range reachable: the low bits alone unless the top
        // bit of the first byte is set.
        let bytes = self.take::<8>();
        if bytes[0] & 0x80 == 0 {
            u64::from(u16::from_le_bytes([bytes[0], bytes[1]]))
        } else {
            u64::from_le_bytes(bytes)
        }
    }

    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take::<8>())
    }

    fn i64s(&mut self) -> Vec<i64> {
        // One byte per small label, sign-extended, so that the fuzzer reaches valid labels.
        std::mem::take(&mut self.0)
            .iter()
            .map(|&b| i64::from(b as i8))
            .collect()
    }

    fn f64s(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.0)
            .chunks_exact(4)
            .map(|value| f64::from(f32::from_le_bytes(value.try_into().expect("4 bytes"))))
            .collect()
    }

    fn bools(&mut self) -> Vec<bool> {
        std::mem::take(&mut self.0)
            .iter()
            .map(|&b| b & 1 == 1)
            .collect()
    }
}
