//! Every loss option, and the combinations users hit, agree between the autodiff and manual
//! paths (Flex and NdArray, f32 and f64) and with f64 finite differences.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::cases::{Kind, all_paths, both_paths, cases, small_chunks, targets};
use common::reference::reference_loss;
use common::{FINITE_DIFFERENCE, assert_close, backends, dtypes, host, problem};
use linear_softmax::LinearSoftmax;
use linear_softmax::gradcheck::{GradcheckOptions, gradcheck_module};
use linear_softmax::{LossOptions, LossPath, LossReduction, Targets, math};

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
                    let expected_loss_len = if options.reduction == LossReduction::None {
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
    // Steps of 1e-5 in f64: truncation ~1e-10, round-off ~1e-11 of the loss (see
    // tests/gradcheck.rs), far inside atol 1e-8.
    let strict = GradcheckOptions::new()
        .with_eps(1e-5)
        .with_atol(1e-8)
        .with_rtol(1e-6);
    for (backend, device) in backends() {
        let shape = [7, 5, 6];
        for (seed, (name, options, kind)) in cases(6).into_iter().enumerate() {
            let p = problem(shape, true, DType::F64, &device, 50 + seed as u64);
            let targets = targets(kind, &p, [7, 6], &device, seed as u64);
            let (head, x) = (p.head.clone().train(), p.x.clone().autodiff());
            // The fused op as a graph node; reduction none through a random projection of the
            // per-row losses (a random upstream gradient).
            let fused = LossOptions {
                chunking: small_chunks(),
                ..options.clone()
            };
            let f = |head: &LinearSoftmax, x| head.loss(x, &targets, &fused);
            let report = gradcheck_module(f, &head, x.clone(), &strict).unwrap();
            assert!(report.passed(), "{name}: fused {backend}:\n{report}");
            // Every path's plain-value gradients (upstream 1 for every entry) against the
            // differences of the summed loss.
            let sum = |head: &LinearSoftmax, x| head.loss(x, &targets, &options).map(|l| l.sum());
            let report = gradcheck_module(sum, &head, x, &strict).unwrap();
            let numerical = |name: &str| report.input(name).unwrap().numerical.clone();
            let reference = reference_loss(&p.head, &p.x, &targets, &options);
            for (path, gradients) in all_paths(&p, &targets, &options) {
                let context = format!("{name}: {path} {backend}");
                let loss: f64 = host(&gradients.loss).iter().sum();
                assert!(
                    (loss - reference).abs() <= 1e-12 * reference.abs().max(1.0),
                    "{context}: loss {loss} vs the f64 definition {reference}"
                );
                if matches!(kind, Kind::AllIgnored) {
                    assert_eq!(loss, 0.0, "{context}");
                    let d_weight = host(&gradients.d_weight);
                    let d_input = host(&gradients.d_input);
                    assert!(
                        d_weight.iter().chain(&d_input).all(|g| *g == 0.0),
                        "{context}"
                    );
                    continue;
                }
                for (quantity, analytic, parameter) in [
                    ("dW", host(&gradients.d_weight), "linear.weight"),
                    ("db", host(&gradients.d_bias.unwrap()), "linear.bias"),
                    ("dX", host(&gradients.d_input), "input 0"),
                ] {
                    assert_close(
                        &format!("{context} {quantity}"),
                        &analytic,
                        &numerical(parameter),
                        FINITE_DIFFERENCE,
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
    let options = LossOptions::new().with_path(LossPath::Manual);
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
    let full = p.head.gradients(p.x.clone(), &ignoring, &options).unwrap();
    let subset = p.head.gradients(x_kept, &kept_targets, &options).unwrap();
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

/// `lse_i = m_i + log sum_k exp(S_ik - m_i)`, `m_i = max_k S_ik`, of logits `[N, C]`: `[N]`.
fn log_sum_exp(logits: Tensor<2>) -> Tensor<1> {
    let row_max = logits.clone().max_dim(1);
    let sum_exp = (logits - row_max.clone()).exp().sum_dim(1);
    (row_max + sum_exp.log()).squeeze_dim(1)
}

#[test]
fn log_sum_exp_comes_with_the_loss_on_every_path() {
    for (backend, device) in backends() {
        let p = problem([7, 31, 10], true, DType::F64, &device, 4);
        let options = LossOptions::new().with_softcap(Some(3.0));
        let capped = math::softcap_forward(p.head.forward(p.x.clone()).unwrap(), 3.0);
        let expected = host(&log_sum_exp(capped));
        let autodiff = options.clone().with_path(LossPath::Autodiff);
        let reference = p.head.loss(p.x.clone(), &p.targets, &autodiff).unwrap();
        // Every path, and the fused one in chunks of 3 rows.
        let chunked = options.clone().with_chunking(small_chunks());
        let runs = LossPath::ALL
            .map(|path| (path.name(), options.clone().with_path(path)))
            .into_iter()
            .chain([("fused R=3", chunked)]);
        for (path, options) in runs {
            let output = p.head.loss_output(p.x.clone(), &p.targets, &options);
            let output = output.unwrap();
            assert_close(
                &format!("{path} {backend} lse"),
                &host(&output.log_sum_exp),
                &expected,
                common::F64_AGREEMENT,
            );
            assert_close(
                &format!("{path} {backend} loss"),
                &host(&output.loss),
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
    let targets = Targets::from_tensor(labels, 4, None).unwrap();
    let options = LossOptions::new().with_path(LossPath::Autodiff);
    let sequence = p.head.loss(x3, &targets, &options).unwrap();
    let rows = p.head.loss(p.x.clone(), &p.targets, &options).unwrap();
    assert_close(
        "sequence loss",
        &host(&sequence),
        &host(&rows),
        common::F64_AGREEMENT,
    );
}
