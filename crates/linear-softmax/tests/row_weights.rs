//! Per-row (per-token) loss weights given with the targets: all-ones weights are the
//! unweighted loss exactly, a row of weight 0 is as if it were not there, the `[B, T]` route of
//! a sequence batch is the flat one, and bad weights are refused where they enter. Their values
//! against PyTorch are in `tests/pytorch.rs` (the `row_weights*` fixtures), the paths' agreement
//! and finite differences in the option suites (`tests/common/cases.rs`).

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::cases::IGNORE;
use common::{F64_AGREEMENT, assert_close, backends, host, problem, tensor};
use linear_softmax::{
    Chunking, Error, LinearSoftmax, LossOptions, LossPath, LossReduction, Targets,
};

/// The loss and the gradients `dW`, `db`, `dX` through `loss(..)?.backward()`.
fn backward(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> [Vec<f64>; 4] {
    let x = x.require_grad();
    let loss = head.loss(x.clone(), targets, options).unwrap();
    let grads = loss.clone().sum().backward();
    [
        host(&loss),
        host(&head.weight().grad(&grads).unwrap()),
        host(&head.bias().unwrap().grad(&grads).unwrap()),
        host(&x.grad(&grads).unwrap()),
    ]
}

fn options() -> Vec<(&'static str, LossOptions)> {
    vec![
        ("mean", LossOptions::new()),
        (
            "class weights + smoothing + z-loss, sum",
            LossOptions::new()
                .with_weights(Some(vec![0.5, 2.0, 1.0, 1.5, 0.25]))
                .with_label_smoothing(0.1)
                .with_z_loss(0.01)
                .with_reduction(LossReduction::Sum),
        ),
        (
            "none",
            LossOptions::new().with_reduction(LossReduction::None),
        ),
        ("softcap", LossOptions::new().with_softcap(Some(1.5))),
    ]
}

fn paths() -> [(LossPath, Option<usize>); 4] {
    [
        (LossPath::Autodiff, None),
        (LossPath::Manual, None),
        (LossPath::Fused, None),
        (LossPath::Fused, Some(3)),
    ]
}

#[test]
fn all_ones_weights_are_the_unweighted_loss_exactly() {
    let [n, d, c] = [9, 4, 5];
    for (backend, plain) in backends() {
        let device = plain.autodiff();
        for dtype in [DType::F32, DType::F64] {
            let p = problem([n, d, c], true, dtype, &device, 3);
            let labels: Vec<i64> = (p.labels.iter().enumerate())
                .map(|(i, &l)| if i == 4 { IGNORE } else { l })
                .collect();
            let plain_targets = Targets::from_indices_with_ignore(&labels, c, IGNORE, &device);
            let plain_targets = plain_targets.unwrap();
            let ones = tensor(vec![1.0; n], [n], dtype, &device);
            let weighted = plain_targets.clone().with_row_weights(ones).unwrap();
            for (name, options) in options() {
                for (path, rows) in paths() {
                    let options = (options.clone().with_path(path))
                        .with_chunking(Chunking::new().with_rows(rows));
                    let context = format!("{name}: {path} {rows:?} {backend} {dtype:?}");
                    let unweighted = backward(&p.head, p.x.clone(), &plain_targets, &options);
                    let ones = backward(&p.head, p.x.clone(), &weighted, &options);
                    // Multiplying by 1 and summing the same terms in the same order: no
                    // rounding differs.
                    assert_eq!(ones, unweighted, "{context}");
                }
            }
        }
    }
}

#[test]
fn a_row_of_weight_zero_is_as_if_it_were_not_there() {
    let [n, d, c] = [9, 4, 5];
    let kept: Vec<usize> = (0..n).filter(|i| i % 3 != 1).collect();
    let rho: Vec<f64> = (0..n)
        .map(|i| {
            if i % 3 == 1 {
                0.0
            } else {
                0.5 + i as f64 / 4.0
            }
        })
        .collect();
    for (backend, plain) in backends() {
        let device = plain.autodiff();
        let p = problem([n, d, c], true, DType::F64, &device, 5);
        let all = Targets::from_indices(&p.labels, c, &device).unwrap();
        let all = all.with_row_weights(tensor(rho.clone(), [n], DType::F64, &device));
        let all = all.unwrap();
        let x_kept = p.x.clone().select(
            0,
            Tensor::from_data(
                TensorData::new(
                    kept.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                    [kept.len()],
                ),
                &device,
            ),
        );
        let labels_kept: Vec<i64> = kept.iter().map(|&i| p.labels[i]).collect();
        let rho_kept: Vec<f64> = kept.iter().map(|&i| rho[i]).collect();
        let some = Targets::from_indices(&labels_kept, c, &device).unwrap();
        let some = some.with_row_weights(tensor(rho_kept, [kept.len()], DType::F64, &device));
        let some = some.unwrap();
        for (name, options) in options() {
            if options.reduction == LossReduction::None {
                continue;
            }
            for (path, rows) in paths() {
                let options = (options.clone().with_path(path))
                    .with_chunking(Chunking::new().with_rows(rows));
                let context = format!("{name}: {path} {rows:?} {backend}");
                let [loss, d_w, d_b, d_x] = backward(&p.head, p.x.clone(), &all, &options);
                let [loss_kept, d_w_kept, d_b_kept, d_x_kept] =
                    backward(&p.head, x_kept.clone(), &some, &options);
                assert_close(&format!("{context} loss"), &loss, &loss_kept, F64_AGREEMENT);
                assert_close(&format!("{context} dW"), &d_w, &d_w_kept, F64_AGREEMENT);
                assert_close(&format!("{context} db"), &d_b, &d_b_kept, F64_AGREEMENT);
                for (row, dx) in d_x.chunks(d).enumerate() {
                    match kept.iter().position(|&k| k == row) {
                        Some(at) => assert_close(
                            &format!("{context} dX row {row}"),
                            dx,
                            &d_x_kept[at * d..(at + 1) * d],
                            F64_AGREEMENT,
                        ),
                        None => assert_eq!(dx, vec![0.0; d], "{context}: dX of row {row}"),
                    }
                }
            }
        }
    }
}

/// Per-token weights `[B, T]` with `[B, T]` labels through `x` `[B, T, D]` are the flat `[N]`
/// weights with `[N]` labels through `x` `[N, D]`.
#[test]
fn per_token_weights_of_a_sequence_batch_are_the_flat_ones() {
    let [batch, time, d, c] = [2, 4, 3, 5];
    let n = batch * time;
    let rho: Vec<f64> = (0..n).map(|i| (i % 3) as f64 * 0.75).collect();
    for (backend, plain) in backends() {
        let device = plain.autodiff();
        let p = problem([n, d, c], true, DType::F64, &device, 8);
        let flat = Targets::from_indices(&p.labels, c, &device).unwrap();
        let flat = flat.with_row_weights(tensor(rho.clone(), [n], DType::F64, &device));
        let flat = flat.unwrap();
        let labels =
            Tensor::<2, Int>::from_data(TensorData::new(p.labels.clone(), [batch, time]), &device);
        let sequence = Targets::from_tensor(labels, c, None).unwrap();
        let weights = tensor(rho.clone(), [batch, time], DType::F64, &device);
        let sequence = sequence.with_row_weights(weights).unwrap();
        for (name, options) in options() {
            for (path, rows) in paths() {
                let options = (options.clone().with_path(path))
                    .with_chunking(Chunking::new().with_rows(rows));
                let context = format!("{name}: {path} {rows:?} {backend}");
                let expected = backward(&p.head, p.x.clone(), &flat, &options);
                let x = p.x.clone().reshape([batch, time, d]).require_grad();
                let loss = p.head.loss(x.clone(), &sequence, &options).unwrap();
                let grads = loss.clone().sum().backward();
                let got = [
                    host(&loss),
                    host(&p.head.weight().grad(&grads).unwrap()),
                    host(&p.head.bias().unwrap().grad(&grads).unwrap()),
                    host(&x.grad(&grads).unwrap()),
                ];
                for (what, (got, expected)) in ["loss", "dW", "db", "dX"]
                    .iter()
                    .zip(got.iter().zip(&expected))
                {
                    assert_close(&format!("{context} {what}"), got, expected, F64_AGREEMENT);
                }
            }
        }
    }
}

#[test]
fn bad_row_weights_are_refused_where_they_enter() {
    let device = Device::flex();
    let targets = || Targets::from_indices(&[0, 1, 2], 3, &device).unwrap();
    for (value, row) in [(-1.0, 1), (f64::NAN, 2), (f64::INFINITY, 0)] {
        let mut rho = vec![1.0; 3];
        rho[row] = value;
        let error = targets()
            .with_row_weights(tensor(rho, [3], DType::F32, &device))
            .unwrap_err();
        assert!(
            matches!(error, Error::InvalidTarget { row: r, .. } if r == row),
            "{value}: {error:?}"
        );
        assert!(error.to_string().contains("row weight"), "{error}");
    }
    let error = targets()
        .with_row_weights(tensor(vec![1.0; 4], [4], DType::F32, &device))
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::ShapeMismatch {
                what: "row weights",
                ..
            }
        ),
        "{error:?}"
    );
    let error = targets()
        .with_row_weights(tensor(vec![1.0; 3], [1, 3], DType::F32, &device))
        .unwrap_err();
    assert!(matches!(error, Error::ShapeMismatch { .. }), "{error:?}");
}
