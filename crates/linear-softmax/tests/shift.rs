//! The next-token shift (`LossOptions::shift`): a `[B, T, D]` batch with its own tokens as
//! `[B, T]` labels and shift `s` gives, on every path and CPU backend, the loss and gradients of
//! the explicitly shifted batch, `x[:, :T - s]` against `labels[:, s:]` (what a PyTorch causal LM
//! writes), through `loss(..)?.backward()` on the model's device; the last `s` positions of
//! each sequence get no loss and no gradient. PyTorch's own values are pinned in
//! `tests/pytorch.rs` (`shift*.json`).

mod common;

use burn::prelude::*;
use common::cases::IGNORE;
use common::{assert_close, backends, dtypes, host, tensor, uniform};
use linear_softmax::{
    Error, LinearSoftmax, LossOptions, LossPath, LossReduction, LossStats, Targets,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

const BATCH: usize = 3;
const TIME: usize = 6;
const D: usize = 5;
const C: usize = 11;

/// `[B, T]` tokens in `0..C`, sequence `b` padded with the ignore label after `lengths[b]`.
fn tokens(lengths: [usize; BATCH]) -> Vec<i64> {
    let mut tokens = Vec::new();
    for (b, length) in lengths.into_iter().enumerate() {
        for t in 0..TIME {
            let token = ((b * 5 + t * 7 + 1) % C) as i64;
            tokens.push(if t < length { token } else { IGNORE });
        }
    }
    tokens
}

/// The `[B, T - s]` part of `values` `[B, T]` (row-major) from column `from`.
fn columns<T: Copy>(values: &[T], from: usize, width: usize) -> Vec<T> {
    values
        .chunks(TIME)
        .flat_map(|row| row[from..from + width].to_vec())
        .collect()
}

struct Run {
    loss: Vec<f64>,
    d_weight: Vec<f64>,
    d_bias: Vec<f64>,
    d_input: Vec<f64>,
    stats: LossStats,
}

/// `loss_output(..)` with statistics and `.backward()` (reduction none: of the losses times
/// `upstream`) on `x` `[B, time, D]`.
fn run(
    head: &LinearSoftmax,
    x: Vec<f64>,
    time: usize,
    targets: &Targets,
    options: &LossOptions,
    upstream: &[f64],
) -> Run {
    let device = head.weight().device();
    let dtype = head.weight().dtype();
    let x = tensor(x, [BATCH, time, D], dtype, &device).require_grad();
    let output = head
        .loss_output(x.clone(), targets, &options.clone().with_stats(true))
        .unwrap();
    let grads = match options.reduction {
        LossReduction::None => {
            let upstream = tensor(upstream.to_vec(), [upstream.len()], dtype, &device);
            (output.loss.clone() * upstream).sum().backward()
        }
        _ => output.loss.clone().backward(),
    };
    Run {
        loss: host(&output.loss),
        d_weight: host(&head.weight().grad(&grads).unwrap()),
        d_bias: host(&head.bias().unwrap().grad(&grads).unwrap()),
        d_input: host(&x.grad(&grads).unwrap()),
        stats: output.stats.unwrap(),
    }
}

#[test]
fn a_shifted_batch_is_the_explicitly_shifted_batch_on_every_path() {
    let labels = tokens([6, 3, 5]);
    for (backend, plain) in backends() {
        let device = plain.autodiff();
        for (dtype, tolerance) in dtypes() {
            for shift in [1, 2] {
                let kept = TIME - shift;
                let mut rng = StdRng::seed_from_u64(shift as u64);
                let weight = tensor(uniform(&mut rng, D * C, 1.0), [D, C], dtype, &device);
                let bias = tensor(uniform(&mut rng, C, 0.5), [C], dtype, &device);
                let head = LinearSoftmax::from_tensors(weight, Some(bias)).unwrap();
                let x = uniform(&mut rng, BATCH * TIME * D, 2.0);
                let rho = uniform(&mut rng, BATCH * TIME, 1.0)
                    .into_iter()
                    .map(f64::abs)
                    .collect::<Vec<_>>();
                let upstream = uniform(&mut rng, BATCH * TIME, 1.0);
                // The caller's shift: x[:, :T - s], labels[:, s:], row weights with the labels.
                let cut_labels = columns(&labels, shift, kept);
                let cut_x: Vec<f64> = x
                    .chunks(TIME * D)
                    .flat_map(|sequence| sequence[..kept * D].to_vec())
                    .collect();
                let targets_of = |labels: Vec<i64>, rho: Vec<f64>, time| {
                    let labels = Tensor::<2, Int>::from_data(
                        TensorData::new(labels, [BATCH, time]),
                        &device,
                    );
                    let rho = tensor(rho, [BATCH, time], dtype, &device);
                    Targets::from_tensor(labels, C, Some(IGNORE))
                        .unwrap()
                        .with_row_weights(rho)
                        .unwrap()
                };
                let whole = targets_of(labels.clone(), rho.clone(), TIME);
                let cut = targets_of(cut_labels.clone(), columns(&rho, shift, kept), kept);
                for reduction in [LossReduction::Mean, LossReduction::None] {
                    for path in LossPath::ALL {
                        let context =
                            format!("shift {shift} {reduction:?} {path} {backend} {dtype:?}");
                        let options = LossOptions::new()
                            .with_reduction(reduction)
                            .with_label_smoothing(0.1)
                            .with_path(path);
                        let shifted = options.clone().with_shift(shift);
                        let got = run(&head, x.clone(), TIME, &whole, &shifted, &upstream);
                        let cut_upstream = columns(&upstream, 0, kept);
                        let expected =
                            run(&head, cut_x.clone(), kept, &cut, &options, &cut_upstream);
                        // The kept positions are the cut batch's; the last s of each sequence
                        // have loss 0 and dX 0.
                        let (loss, d_input) = match reduction {
                            LossReduction::None => {
                                let tail = columns(&got.loss, kept, shift);
                                assert!(tail.iter().all(|l| *l == 0.0), "{context}: {tail:?}");
                                (columns(&got.loss, 0, kept), &got.d_input)
                            }
                            _ => (got.loss.clone(), &got.d_input),
                        };
                        assert_close(&format!("{context} loss"), &loss, &expected.loss, tolerance);
                        let tail: Vec<f64> = d_input
                            .chunks(TIME * D)
                            .flat_map(|sequence| sequence[kept * D..].to_vec())
                            .collect();
                        assert!(tail.iter().all(|g| *g == 0.0), "{context}: dX of the tail");
                        let kept_d_input: Vec<f64> = d_input
                            .chunks(TIME * D)
                            .flat_map(|sequence| sequence[..kept * D].to_vec())
                            .collect();
                        for (what, got, expected) in [
                            ("dW", &got.d_weight, &expected.d_weight),
                            ("db", &got.d_bias, &expected.d_bias),
                            ("dX", &kept_d_input, &expected.d_input),
                        ] {
                            assert_close(&format!("{context} {what}"), got, expected, tolerance);
                        }
                        // The statistics count the shifted labels, never the tail.
                        let counted = cut_labels.iter().filter(|&&l| l != IGNORE).count();
                        let got_counted = got.stats.counted.into_scalar::<i64>();
                        assert_eq!(got_counted, counted as i64, "{context}");
                        assert_eq!(
                            got.stats.correct.into_scalar::<i64>(),
                            expected.stats.correct.into_scalar::<i64>(),
                            "{context}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_mean_denominator_of_a_shifted_batch_counts_the_shifted_labels() {
    let device = Device::flex();
    let labels = tokens([6, 3, 5]);
    let targets = Targets::from_tensor(
        Tensor::<2, Int>::from_data(TensorData::new(labels.clone(), [BATCH, TIME]), &device),
        C,
        Some(IGNORE),
    )
    .unwrap();
    for shift in 0..TIME {
        let options = LossOptions::new().with_shift(shift);
        let expected = columns(&labels, shift, TIME - shift)
            .iter()
            .filter(|&&l| l != IGNORE)
            .count();
        assert_eq!(
            targets.mean_denominator(&options).unwrap(),
            expected as f64,
            "shift {shift}"
        );
    }
}

#[test]
fn a_shift_without_a_position_left_or_on_probabilities_is_refused() {
    let device = Device::flex();
    let head = LinearSoftmax::from_tensors(
        Tensor::<2>::zeros([D, C], &device),
        Some(Tensor::<1>::zeros([C], &device)),
    )
    .unwrap();
    let x = Tensor::<3>::zeros([BATCH, TIME, D], &device);
    let labels =
        Tensor::<2, Int>::from_data(TensorData::new(tokens([6, 6, 6]), [BATCH, TIME]), &device);
    let targets = Targets::from_tensor(labels, C, None).unwrap();
    for path in LossPath::ALL {
        let options = LossOptions::new().with_shift(TIME).with_path(path);
        let err = head.loss(x.clone(), &targets, &options).unwrap_err();
        assert!(
            matches!(err, Error::InvalidOption { name: "shift", .. }),
            "{path}: {err}"
        );
        assert!(err.to_string().contains("shift = 6"), "{err}");
        assert_eq!(targets.mean_denominator(&options).unwrap_err(), err);
    }
    let uniform = Tensor::<3>::ones([BATCH, TIME, C], &device) / C as f64;
    let probabilities = Targets::from_probability_tensor(uniform).unwrap();
    let options = LossOptions::new().with_shift(1);
    let err = head.loss(x, &probabilities, &options).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TargetKind {
                option: "shift",
                ..
            }
        ),
        "{err}"
    );
}
