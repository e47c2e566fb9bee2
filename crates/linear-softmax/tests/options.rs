//! Every loss option, and the combinations users hit, agree between the autodiff and manual
//! paths (Flex and NdArray, f32 and f64) and with f64 finite differences.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::{FINITE_DIFFERENCE, Problem, assert_close, backends, dtypes, host, problem};
use linear_softmax::gradcheck::{DEFAULT_STEP, HostGradients, compare, numerical_gradients};
use linear_softmax::{
    Chunking, HeadGradients, LossOptions, LossPath, Reduction, Targets, autodiff, fused, manual,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// PyTorch's default ignore label.
const IGNORE: i64 = -100;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Classes,
    /// Rows 1 and 4 carry the ignore label.
    Ignored,
    /// Every row carries the ignore label.
    AllIgnored,
    Probabilities,
    MultiHot,
}

fn targets(kind: Kind, p: &Problem, [n, c]: [usize; 2], device: &Device, seed: u64) -> Targets {
    let mut rng = StdRng::seed_from_u64(seed);
    match kind {
        Kind::Classes => p.targets.clone(),
        Kind::Ignored | Kind::AllIgnored => {
            let labels: Vec<i64> = p
                .labels
                .iter()
                .enumerate()
                .map(|(i, &l)| {
                    if matches!(kind, Kind::AllIgnored) || i == 1 || i == 4 {
                        IGNORE
                    } else {
                        l
                    }
                })
                .collect();
            Targets::from_indices_with_ignore(&labels, c, IGNORE, device).unwrap()
        }
        Kind::Probabilities => {
            let mut values: Vec<f64> = (0..n * c).map(|_| rng.random_range(0.0..1.0)).collect();
            for row in values.chunks_mut(c) {
                let sum: f64 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= sum);
            }
            Targets::from_probabilities(&values, [n, c], device).unwrap()
        }
        Kind::MultiHot => {
            let mut hot: Vec<bool> = (0..n * c).map(|_| rng.random_range(0..3) == 0).collect();
            for (row, label) in p.labels.iter().enumerate() {
                hot[row * c + *label as usize] = true;
            }
            Targets::from_multi_hot(&hot, [n, c], device).unwrap()
        }
    }
}

fn weights(c: usize) -> Vec<f64> {
    (0..c).map(|k| 0.25 + (k % 4) as f64 * 0.5).collect()
}

/// The options and target kinds checked, by name.
fn cases(c: usize) -> Vec<(&'static str, LossOptions, Kind)> {
    let base = LossOptions::new;
    vec![
        (
            "reduction sum",
            base().with_reduction(Reduction::Sum),
            Kind::Classes,
        ),
        (
            "reduction none",
            base().with_reduction(Reduction::None),
            Kind::Classes,
        ),
        (
            "ignore_index",
            base().with_ignore_index(Some(IGNORE)),
            Kind::Ignored,
        ),
        (
            "pad_tokens",
            base().with_pad_tokens(Some(vec![1])),
            Kind::Classes,
        ),
        (
            "class weights",
            base().with_weights(Some(weights(c))),
            Kind::Classes,
        ),
        (
            "label smoothing",
            base().with_label_smoothing(0.1),
            Kind::Classes,
        ),
        (
            "weights + ignore + smoothing",
            base()
                .with_weights(Some(weights(c)))
                .with_ignore_index(Some(IGNORE))
                .with_label_smoothing(0.2),
            Kind::Ignored,
        ),
        (
            "weights + ignore + smoothing, sum",
            base()
                .with_weights(Some(weights(c)))
                .with_ignore_index(Some(IGNORE))
                .with_label_smoothing(0.2)
                .with_reduction(Reduction::Sum),
            Kind::Ignored,
        ),
        ("probabilities", base(), Kind::Probabilities),
        (
            "probabilities + weights + smoothing",
            base()
                .with_weights(Some(weights(c)))
                .with_label_smoothing(0.3),
            Kind::Probabilities,
        ),
        ("multi-label", base(), Kind::MultiHot),
        (
            "reduction none + ignore",
            base()
                .with_reduction(Reduction::None)
                .with_ignore_index(Some(IGNORE)),
            Kind::Ignored,
        ),
        ("z-loss", base().with_z_loss(0.01), Kind::Classes),
        ("softcap", base().with_softcap(Some(1.5)), Kind::Classes),
        (
            "softcap + z-loss + ignore",
            base()
                .with_softcap(Some(1.5))
                .with_z_loss(0.05)
                .with_ignore_index(Some(IGNORE)),
            Kind::Ignored,
        ),
        (
            "probabilities + z-loss + softcap, none",
            base()
                .with_z_loss(0.05)
                .with_softcap(Some(2.0))
                .with_reduction(Reduction::None),
            Kind::Probabilities,
        ),
        (
            "l2 + sum",
            base().with_l2(0.05).with_reduction(Reduction::Sum),
            Kind::Classes,
        ),
        (
            "all rows ignored",
            base().with_ignore_index(Some(IGNORE)),
            Kind::AllIgnored,
        ),
    ]
}

/// Chunks of 3 rows: several chunks, the last one short, for every shape tested here.
fn small_chunks() -> Chunking {
    Chunking::new().with_rows(Some(3))
}

/// The gradients `.backward()` gives through the fused op (reduction none: recomputed in the
/// backward pass with the per-row upstream gradient).
fn fused_graph(p: &Problem, targets: &Targets, options: &LossOptions) -> HeadGradients {
    let head = p.head.clone().train();
    let x = p.x.clone().detach().autodiff().require_grad();
    let loss =
        fused::loss_with_chunking(&head, x.clone(), targets, options, &small_chunks()).unwrap();
    let grads = loss.clone().sum().backward();
    HeadGradients {
        d_weight: head.linear.weight.grad(&grads).unwrap(),
        d_bias: head.linear.bias.as_ref().map(|b| b.grad(&grads).unwrap()),
        d_input: x.grad(&grads).unwrap(),
        loss: loss.inner(),
    }
}

/// Every path's loss and gradients, the autodiff reference last.
fn all_paths(
    p: &Problem,
    targets: &Targets,
    options: &LossOptions,
) -> Vec<(&'static str, HeadGradients)> {
    let fused = fused::loss_and_gradients_with_chunking(
        &p.head,
        p.x.clone(),
        targets,
        options,
        &small_chunks(),
    );
    let [manual, autodiff] = both_paths(p, targets, options);
    vec![
        manual,
        ("fused", fused.unwrap()),
        ("fused graph", fused_graph(p, targets, options)),
        autodiff,
    ]
}

fn both_paths(
    p: &Problem,
    targets: &Targets,
    options: &LossOptions,
) -> [(&'static str, HeadGradients); 2] {
    [
        (
            "manual",
            manual::loss_and_gradients(&p.head, p.x.clone(), targets, options).unwrap(),
        ),
        (
            "autodiff",
            autodiff::loss_and_gradients(&p.head, p.x.clone(), targets, options).unwrap(),
        ),
    ]
}

#[test]
fn manual_matches_autodiff_for_every_option() {
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            for shape in [[7, 31, 10], [47, 1, 123], [6, 5, 2]] {
                let [n, _, c] = shape;
                for (seed, (name, options, kind)) in cases(c).into_iter().enumerate() {
                    let p = problem(shape, true, dtype, &device, seed as u64);
                    let targets = targets(kind, &p, [n, c], &device, seed as u64);
                    let [(_, by_hand), (_, by_autograd)] = both_paths(&p, &targets, &options);
                    let context = format!("{name}: {backend} {dtype:?} {shape:?}");
                    let expected_loss_len = if options.reduction == Reduction::None {
                        n
                    } else {
                        1
                    };
                    assert_eq!(host(&by_hand.loss).len(), expected_loss_len, "{context}");
                    assert_close(
                        &format!("{context} loss"),
                        &host(&by_hand.loss),
                        &host(&by_autograd.loss),
                        tolerance,
                    );
                    assert_close(
                        &format!("{context} dW"),
                        &host(&by_hand.d_weight),
                        &host(&by_autograd.d_weight),
                        tolerance,
                    );
                    assert_close(
                        &format!("{context} db"),
                        &host(&by_hand.d_bias.unwrap()),
                        &host(&by_autograd.d_bias.unwrap()),
                        tolerance,
                    );
                    assert_close(
                        &format!("{context} dX"),
                        &host(&by_hand.d_input),
                        &host(&by_autograd.d_input),
                        tolerance,
                    );
                }
            }
        }
    }
}

#[test]
fn finite_differences_confirm_every_option() {
    for (backend, device) in backends() {
        let shape = [7, 5, 6];
        for (seed, (name, options, kind)) in cases(6).into_iter().enumerate() {
            let p = problem(shape, true, DType::F64, &device, 50 + seed as u64);
            let targets = targets(kind, &p, [7, 6], &device, seed as u64);
            let numerical =
                numerical_gradients(&p.head, &p.x, &targets, &options, DEFAULT_STEP).unwrap();
            for (path, gradients) in all_paths(&p, &targets, &options) {
                let analytic = HostGradients::from_tensors(&gradients).unwrap();
                let report = compare(&analytic, &numerical);
                let context = format!("{name}: {path} {backend}");
                assert!(
                    (analytic.loss - numerical.loss).abs() <= 1e-12 * numerical.loss.abs().max(1.0),
                    "{context}: loss {} vs {}",
                    analytic.loss,
                    numerical.loss
                );
                if matches!(kind, Kind::AllIgnored) {
                    assert_eq!(analytic.loss, 0.0, "{context}");
                    assert!(
                        analytic
                            .d_weight
                            .iter()
                            .chain(&analytic.d_input)
                            .all(|g| *g == 0.0),
                        "{context}"
                    );
                } else {
                    assert!(
                        report.max_rel() <= FINITE_DIFFERENCE,
                        "{context}: {report:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn ignored_rows_contribute_nothing() {
    // Dropping the ignored rows gives the same loss and dW; their dX rows are 0.
    let device = Device::flex();
    let p = problem([7, 5, 6], true, DType::F64, &device, 9);
    let options = LossOptions::new().with_ignore_index(Some(IGNORE));
    let ignoring = targets(Kind::Ignored, &p, [7, 6], &device, 0);
    let kept: Vec<usize> = vec![0, 2, 3, 5, 6];
    let x_kept = p.x.clone().select(
        0,
        Tensor::<1, Int>::from_data(
            TensorData::new(kept.iter().map(|&i| i as i64).collect::<Vec<_>>(), [5]),
            &device,
        ),
    );
    let labels_kept: Vec<i64> = kept.iter().map(|&i| p.labels[i]).collect();
    let kept_targets = Targets::from_indices(&labels_kept, 6, &device).unwrap();
    let full = manual::loss_and_gradients(&p.head, p.x.clone(), &ignoring, &options).unwrap();
    let subset =
        manual::loss_and_gradients(&p.head, x_kept, &kept_targets, &LossOptions::new()).unwrap();
    assert_close(
        "loss",
        &host(&full.loss),
        &host(&subset.loss),
        common::F64_AGREEMENT,
    );
    assert_close(
        "dW",
        &host(&full.d_weight),
        &host(&subset.d_weight),
        common::F64_AGREEMENT,
    );
    let d_input = host(&full.d_input);
    assert!(
        d_input[5..10]
            .iter()
            .chain(&d_input[20..25])
            .all(|g| *g == 0.0)
    );
}

#[test]
fn log_sum_exp_comes_with_the_loss_on_every_path() {
    for (backend, device) in backends() {
        let p = problem([7, 31, 10], true, DType::F64, &device, 4);
        let options = LossOptions::new().with_softcap(Some(3.0));
        let capped = manual::softcap_forward(p.head.forward(p.x.clone()).unwrap(), 3.0);
        let expected = host(&linear_softmax::log_sum_exp(capped));
        let reference = autodiff::loss(&p.head, p.x.clone(), &p.targets, &options).unwrap();
        let fused = fused::loss_and_log_sum_exp_with_chunking(
            &p.head,
            p.x.clone(),
            &p.targets,
            &options,
            &small_chunks(),
        )
        .unwrap();
        let paths = LossPath::ALL.map(|path| {
            let results = path.loss_and_log_sum_exp(&p.head, p.x.clone(), &p.targets, &options);
            (path.name(), results.unwrap())
        });
        for (path, (loss, lse)) in paths.into_iter().chain([("fused R=3", fused)]) {
            assert_close(
                &format!("{path} {backend} lse"),
                &host(&lse),
                &expected,
                common::F64_AGREEMENT,
            );
            assert_close(
                &format!("{path} {backend} loss"),
                &host(&loss),
                &host(&reference),
                common::F64_AGREEMENT,
            );
        }
    }
}

#[test]
fn sequence_batches_are_rows() {
    // [B, T, D] with [B, T] labels is the same loss as [B * T, D] rows.
    let device = Device::flex();
    let p = problem([6, 5, 4], true, DType::F64, &device, 12);
    let x3 = p.x.clone().reshape([2, 3, 5]);
    let labels = Tensor::<2, Int>::from_data(TensorData::new(p.labels.clone(), [2, 3]), &device);
    let targets = Targets::from_sequence_tensor(labels, 4, None).unwrap();
    let options = LossOptions::new();
    let sequence = autodiff::sequence_loss(&p.head, x3, &targets, &options).unwrap();
    let rows = autodiff::loss(&p.head, p.x.clone(), &p.targets, &options).unwrap();
    assert_close(
        "sequence loss",
        &host(&sequence),
        &host(&rows),
        common::F64_AGREEMENT,
    );
}
