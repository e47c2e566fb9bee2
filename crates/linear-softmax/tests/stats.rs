//! `loss_output` with `stats`: each row's prediction, the correct and counted rows, the target
//! log-probabilities and `lse` from the loss's own pass, on every path, kernel, CPU backend
//! and float type, checked against `predict` (the predictions, exactly) and against host
//! arithmetic in f64 on the logits `head.forward` gives (the rest). The loss it returns is a
//! graph node like `loss`'s: `.backward()` gives the same gradients.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::cases::{IGNORE, Kind, cases, small_chunks, targets};
use common::{assert_close, backends, dtypes, host, problem, tensor, uniform};
use linear_softmax::diagnostics::{Kernel, kernel_for};
use linear_softmax::{
    LinearSoftmax, LossOptions, LossOutput, LossPath, LossReduction, TargetKind, Targets,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The softcap of the softcap case: small enough to bend the logits (|S| reaches ~10 here).
const SOFTCAP: f64 = 5.0;

/// What the statistics of a batch must be, from `predict` and host f64 arithmetic.
struct Expected {
    predictions: Vec<i64>,
    correct: i64,
    counted: i64,
    target_log_probability: Vec<f64>,
    entropy: Vec<f64>,
    log_sum_exp: Vec<f64>,
}

fn host_int(tensor: &Tensor<1, Int>) -> Vec<i64> {
    tensor
        .to_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("readable Int tensor")
}

/// The statistics of `head` on `(x, targets)` by definition: the predictions are `predict`'s,
/// the rest host f64 arithmetic on the logits `head.forward` gives (the softcap and the
/// temperature applied in f64).
fn expected(
    head: &LinearSoftmax,
    x: &Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Expected {
    let predictions = host_int(&head.predict(x.clone()).unwrap());
    let [n, c] = [x.dims()[0], head.n_classes()];
    let logits: Vec<f64> = host(&head.forward(x.clone()).unwrap())
        .into_iter()
        .map(|s| options.softcap.map_or(s, |cap| cap * (s / cap).tanh()) / options.temperature)
        .collect();
    let log_sum_exp: Vec<f64> = logits
        .chunks(c)
        .map(|row| {
            let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            max + row.iter().map(|s| (s - max).exp()).sum::<f64>().ln()
        })
        .collect();
    let (mut correct, mut counted) = (0, 0);
    let mut target_log_probability = vec![0.0; n];
    // H_i = -sum_k p_k log p_k of each row; 0 where the row does not count.
    let row_entropy = |i: usize| -> f64 {
        logits[i * c..(i + 1) * c]
            .iter()
            .map(|s| -(s - log_sum_exp[i]).exp() * (s - log_sum_exp[i]))
            .sum()
    };
    let mut entropy = vec![0.0; n];
    match targets.kind() {
        TargetKind::Classes { indices, .. } => {
            let labels = host_int(indices);
            // The next-token shift: row i is scored against row i + s of its sequence.
            let time = *targets.shape().last().unwrap();
            for i in 0..n {
                if i % time + options.shift >= time {
                    continue;
                }
                let label = labels[i + options.shift];
                let ignored = targets.ignore_index() == Some(label)
                    || options
                        .pad_tokens
                        .iter()
                        .flatten()
                        .any(|&p| p as i64 == label);
                if ignored {
                    continue;
                }
                counted += 1;
                correct += i64::from(predictions[i] == label);
                target_log_probability[i] = logits[i * c + label as usize] - log_sum_exp[i];
                entropy[i] = row_entropy(i);
            }
        }
        TargetKind::Probabilities(probabilities) => {
            let probabilities = host(probabilities);
            for (i, row) in probabilities.chunks(c).enumerate() {
                counted += 1;
                let largest = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                correct += i64::from(row[predictions[i] as usize] == largest);
                entropy[i] = row_entropy(i);
                target_log_probability[i] = row
                    .iter()
                    .zip(&logits[i * c..(i + 1) * c])
                    .map(|(t, s)| t * (s - log_sum_exp[i]))
                    .sum();
            }
        }
        TargetKind::Teacher { .. } => unreachable!("statistics with a teacher are refused"),
    }
    Expected {
        predictions,
        correct,
        counted,
        target_log_probability,
        entropy,
        log_sum_exp,
    }
}

/// `options` on `path`, asking for the statistics.
fn with_stats(options: &LossOptions, path: LossPath) -> LossOptions {
    options.clone().with_path(path).with_stats(true)
}

/// The statistics of `output` and its `lse` are `expected`'s.
#[track_caller]
fn assert_stats(what: &str, output: &LossOutput, expected: &Expected, tolerance: f64) {
    let stats = output.stats.as_ref().expect("asked for");
    assert_eq!(
        host_int(&stats.predictions),
        expected.predictions,
        "{what}: predictions"
    );
    assert_eq!(
        host_int(&stats.correct),
        [expected.correct],
        "{what}: correct"
    );
    assert_eq!(
        host_int(&stats.counted),
        [expected.counted],
        "{what}: counted"
    );
    assert_close(
        &format!("{what}: target log-probability"),
        &host(&stats.target_log_probability),
        &expected.target_log_probability,
        tolerance,
    );
    assert_close(
        &format!("{what}: entropy"),
        &host(&stats.entropy),
        &expected.entropy,
        tolerance,
    );
    assert_close(
        &format!("{what}: lse"),
        &host(&output.log_sum_exp),
        &expected.log_sum_exp,
        tolerance,
    );
    let accuracy = stats.accuracy().unwrap();
    let wanted = (expected.counted > 0).then(|| expected.correct as f64 / expected.counted as f64);
    assert_eq!(accuracy, wanted, "{what}: accuracy");
}

/// The cases: the shared option/target table plus softcap (the tensor kernel on the CPU).
fn all_cases(c: usize) -> Vec<(&'static str, LossOptions, Kind)> {
    let mut all = cases(c);
    all.push((
        "softcap",
        LossOptions::new().with_softcap(Some(SOFTCAP)),
        Kind::Classes,
    ));
    all
}

/// Every path (the fused one with the default and with 3-row chunks) on the model's autodiff
/// device, through `loss_output` and `.backward()`: the statistics are right, and the loss
/// and `dX` are `loss`'s.
#[test]
fn every_path_gives_the_statistics_of_the_logits() {
    // C = 7: the few-classes kernel; C = 40: the chunked raw kernel. N = 23: chunks of 3 with a
    // short last one, and groups of 4 rows with a remainder.
    for (backend, device) in backends() {
        let device = device.autodiff();
        for (dtype, tolerance) in dtypes() {
            for c in [7, 40] {
                let mut kernels = Vec::new();
                for (name, options, kind) in all_cases(c) {
                    let p = problem([23, 9, c], true, dtype, &device, 17);
                    let head = p.head.clone().train();
                    let targets = targets(kind, &p, [23, c], &device, 5);
                    let expected = expected(&head, &p.x, &targets, &options);
                    let choice = kernel_for(&head, &p.x, &targets, &options);
                    kernels.push(choice.expect("the fused path").kernel);
                    let mut rng = StdRng::seed_from_u64(3);
                    let upstream = tensor(uniform(&mut rng, 23, 1.0), [23], dtype, &device);
                    let reference = loss_and_input_gradient(
                        &options,
                        &upstream,
                        |x| head.loss(x, &targets, &options).unwrap(),
                        &p.x,
                    );
                    let chunked =
                        with_stats(&options, LossPath::Fused).with_chunking(small_chunks());
                    let runs = LossPath::ALL
                        .map(|path| (path.name(), with_stats(&options, path)))
                        .into_iter()
                        .chain([("fused, 3-row chunks", chunked)]);
                    for (path, run) in runs {
                        let what = format!("{backend} {dtype:?} C={c} {name}, {path}");
                        let mut output = None;
                        let (loss, d_input) = loss_and_input_gradient(
                            &options,
                            &upstream,
                            |x| {
                                let out = head.loss_output(x, &targets, &run).unwrap();
                                let loss = out.loss.clone();
                                output = Some(out);
                                loss
                            },
                            &p.x,
                        );
                        assert_stats(&what, &output.unwrap(), &expected, tolerance);
                        assert_close(&format!("{what}: loss"), &loss, &reference.0, tolerance);
                        assert_close(&format!("{what}: dX"), &d_input, &reference.1, tolerance);
                    }
                }
                // The table reaches every CPU kernel for this class count.
                let raw = if c <= 16 {
                    Kernel::FewClasses
                } else {
                    Kernel::Raw
                };
                for kernel in [raw, Kernel::Tensor] {
                    assert!(
                        kernels.contains(&kernel),
                        "{backend} C={c}: {kernel:?} not reached"
                    );
                }
            }
        }
    }
}

/// The loss (`[1]` or `[N]`) and `dX` of `.backward()` (reduction none: of `loss * upstream`)
/// for a fresh tracked copy of `x`.
fn loss_and_input_gradient(
    options: &LossOptions,
    upstream: &Tensor<1>,
    mut loss_of: impl FnMut(Tensor<2>) -> Tensor<1>,
    x: &Tensor<2>,
) -> (Vec<f64>, Vec<f64>) {
    let x = x.clone().detach().require_grad();
    let loss = loss_of(x.clone());
    let grads = match options.reduction {
        LossReduction::None => (loss.clone() * upstream.clone()).sum().backward(),
        _ => loss.clone().backward(),
    };
    (host(&loss), host(&x.grad(&grads).expect("x is tracked")))
}

/// Equal logits: every kernel takes the first maximum, as `argmax` (and `predict`) do. Class
/// 0 wins where all logits are 0, class 3 where columns 3 and 5 hold the same largest weights.
#[test]
fn ties_go_to_the_first_class() {
    for (backend, device) in backends() {
        for (dtype, _) in dtypes() {
            for c in [7, 40] {
                let x = tensor(vec![1.0; 4 * 2], [4, 2], dtype, &device);
                let zero = LinearSoftmax::from_tensors(
                    tensor(vec![0.0; 2 * c], [2, c], dtype, &device),
                    Some(tensor(vec![0.0; c], [c], dtype, &device)),
                )
                .unwrap();
                let mut weight = vec![0.0; 2 * c];
                for row in weight.chunks_mut(c) {
                    row[3] = 0.5;
                    row[5] = 0.5;
                }
                let tied =
                    LinearSoftmax::from_tensors(tensor(weight, [2, c], dtype, &device), None)
                        .unwrap();
                let classes = Targets::from_indices(&[0, 3, 5, 1], c, &device).unwrap();
                let uniform = vec![1.0 / c as f64; 4 * c];
                let probabilities = Targets::from_probabilities(&uniform, [4, c], &device).unwrap();
                for (head, first) in [(&zero, 0), (&tied, 3)] {
                    assert_eq!(host_int(&head.predict(x.clone()).unwrap()), [first; 4]);
                    for targets in [&classes, &probabilities] {
                        for path in LossPath::ALL {
                            let options = with_stats(&LossOptions::new(), path);
                            let output = head.loss_output(x.clone(), targets, &options).unwrap();
                            let stats = output.stats.expect("asked for");
                            let what = format!("{backend} {dtype:?} C={c} {path}");
                            assert_eq!(host_int(&stats.predictions), [first; 4], "{what}");
                        }
                    }
                }
            }
        }
    }
}

/// A NaN logit is the prediction, as in `argmax`: the NaN weights of class 5 make every row's
/// logit 5 NaN, after a larger logit (class 2) and before another (class 6).
#[test]
fn a_nan_logit_is_the_prediction_as_in_argmax() {
    for (backend, device) in backends() {
        for (dtype, _) in dtypes() {
            for c in [7, 40] {
                let x = tensor(vec![1.0; 3 * 2], [3, 2], dtype, &device);
                let mut weight = vec![0.0; 2 * c];
                for row in weight.chunks_mut(c) {
                    row[2] = 3.0;
                    row[5] = f64::NAN;
                    row[6] = 3.0;
                }
                let head =
                    LinearSoftmax::from_tensors(tensor(weight, [2, c], dtype, &device), None)
                        .unwrap();
                let predicted = host_int(&head.predict(x.clone()).unwrap());
                assert_eq!(predicted, [5; 3], "{backend} {dtype:?}: Burn's argmax");
                let targets = Targets::from_indices(&[0, 2, 5], c, &device).unwrap();
                for path in LossPath::ALL {
                    let options = with_stats(&LossOptions::new(), path);
                    let output = head.loss_output(x.clone(), &targets, &options).unwrap();
                    let stats = output.stats.expect("asked for");
                    let what = format!("{backend} {dtype:?} C={c} {path}");
                    assert_eq!(host_int(&stats.predictions), predicted, "{what}");
                    assert!(
                        host(&output.loss)[0].is_nan(),
                        "{what}: the loss shows the NaN too"
                    );
                }
            }
        }
    }
}

/// An LM head on padded `[B, T, D]`: the token statistics of `loss_output` on it are
/// those of the flat rows; padding is neither counted nor given a log-probability.
#[test]
fn sequence_statistics_count_the_tokens_that_are_not_padding() {
    let device = Device::flex().autodiff();
    let (batch, time, d, c) = (3, 5, 6, 50);
    let p = problem([batch * time, d, c], true, DType::F32, &device, 9);
    let head = p.head.clone().train();
    let lengths = [5, 2, 4];
    let labels: Vec<i64> = (0..batch * time)
        .map(|i| {
            if i % time < lengths[i / time] {
                p.labels[i]
            } else {
                IGNORE
            }
        })
        .collect();
    let grid = Tensor::<2, Int>::from_data(TensorData::new(labels.clone(), [batch, time]), &device);
    let targets = Targets::from_tensor(grid, c, Some(IGNORE)).unwrap();
    let options = LossOptions::new().with_stats(true);
    let x = p.x.clone().reshape([batch, time, d]).require_grad();
    let output = head.loss_output(x.clone(), &targets, &options).unwrap();
    assert!(x.grad(&output.loss.clone().backward()).is_some());
    let expected = expected(&head, &p.x, &targets, &options);
    assert_eq!(expected.counted, 11);
    assert_stats("sequence", &output, &expected, common::F32_AGREEMENT);
    let stats = output.stats.expect("asked for");
    assert_eq!(
        stats.predictions.reshape([batch, time]).dims(),
        [batch, time]
    );
}

/// No counted row: the accuracy is `None`, not NaN.
#[test]
fn no_counted_row_has_no_accuracy() {
    let device = Device::flex();
    let p = problem([6, 4, 20], true, DType::F32, &device, 2);
    let targets = targets(Kind::AllIgnored, &p, [6, 20], &device, 1);
    for path in LossPath::ALL {
        let options = with_stats(&LossOptions::new(), path);
        let output = p.head.loss_output(p.x.clone(), &targets, &options);
        let stats = output.unwrap().stats.expect("asked for");
        assert_eq!(host_int(&stats.counted), [0], "{path}");
        assert_eq!(stats.accuracy().unwrap(), None, "{path}");
    }
}

/// Bad input is refused as by `loss`, before anything runs.
#[test]
fn bad_input_is_refused_as_by_loss() {
    let device = Device::flex();
    let p = problem([6, 4, 20], true, DType::F32, &device, 2);
    let wrong_rows = Targets::from_indices(&[1, 2], 20, &device).unwrap();
    let bad_option = LossOptions::new().with_label_smoothing(1.5);
    for path in LossPath::ALL {
        let plain = LossOptions::new().with_path(path);
        let stats = plain.clone().with_stats(true);
        let stats_error = p.head.loss_output(p.x.clone(), &wrong_rows, &stats);
        let stats_error = stats_error.unwrap_err();
        let loss_error = p.head.loss(p.x.clone(), &wrong_rows, &plain);
        let loss_error = loss_error.unwrap_err();
        assert_eq!(stats_error.to_string(), loss_error.to_string(), "{path}");
        let bad = with_stats(&bad_option, path);
        let stats_error = p.head.loss_output(p.x.clone(), &p.targets, &bad);
        let stats_error = stats_error.unwrap_err();
        assert!(
            stats_error.to_string().contains("1.5"),
            "{path}: {stats_error}"
        );
    }
}

/// Batches large enough that the row pass runs on several rayon tasks (the chunked kernel:
/// `R C >= 2^15` elements; the few-classes kernel: `N D >= 2^15`), so each task writes its
/// statistics at an offset into the batch.
#[test]
fn statistics_of_a_batch_split_over_tasks() {
    for (backend, device) in backends() {
        for c in [7, 40] {
            let p = problem([1000, 40, c], true, DType::F32, &device, 21);
            let targets = targets(Kind::Ignored, &p, [1000, c], &device, 6);
            let options = LossOptions::new().with_stats(true);
            let expected = expected(&p.head, &p.x, &targets, &options);
            let output = p.head.loss_output(p.x.clone(), &targets, &options);
            let output = output.unwrap();
            let what = format!("{backend} C={c}, 1000 rows");
            assert_stats(&what, &output, &expected, common::F32_AGREEMENT);
        }
    }
}

/// Labels of a narrow Int type: the statistics' Int tensors have the type `predict` gives
/// (the device's), and counts beyond the labels' range are right (u8 labels, 300 rows).
#[test]
fn narrow_labels_give_statistics_of_the_devices_int_type() {
    for (backend, device) in backends() {
        for c in [7, 40] {
            let p = problem([300, 5, c], true, DType::F32, &device, 12);
            let narrow: Vec<u8> = p.labels.iter().map(|&label| label as u8).collect();
            let labels =
                Tensor::<1, Int>::from_data(TensorData::new(narrow, [300]), (&device, DType::U8));
            let targets = Targets::from_tensor(labels, c, None).unwrap();
            let expected = expected(&p.head, &p.x, &targets, &LossOptions::new());
            let predicted = p.head.predict(p.x.clone()).unwrap();
            for path in LossPath::ALL {
                let options = with_stats(&LossOptions::new(), path);
                let output = p.head.loss_output(p.x.clone(), &targets, &options);
                let output = output.unwrap();
                let stats = output.stats.as_ref().expect("asked for");
                let what = format!("{backend} C={c} {path}, u8 labels");
                for (name, tensor) in [
                    ("predictions", &stats.predictions),
                    ("correct", &stats.correct),
                    ("counted", &stats.counted),
                ] {
                    assert_eq!(tensor.dtype(), predicted.dtype(), "{what}: {name}");
                }
                assert_stats(&what, &output, &expected, common::F32_AGREEMENT);
            }
        }
    }
}
