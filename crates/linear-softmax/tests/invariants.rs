//! Properties every correct implementation has, checked on both paths.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::{F32_VS_F64, assert_close, backends, dtypes, host, problem, tensor};
use linear_softmax::{HeadGradients, LinearSoftmax, LossOptions, LossPath, Targets, math};

fn both_paths(
    head: &LinearSoftmax,
    x: &Tensor<2>,
    targets: &Targets,
) -> [(&'static str, HeadGradients); 2] {
    [LossPath::Manual, LossPath::Autodiff].map(|path| {
        let options = LossOptions::new().with_path(path);
        let gradients = head.gradients(x.clone(), targets, &options).unwrap();
        (path.name(), gradients)
    })
}

/// The autodiff path's mean cross-entropy of `logits` `[N, C]`: its loss for a head whose
/// weight is the identity (`S I` is `S` exactly) and which has no bias.
fn autodiff_cross_entropy(logits: Tensor<2>, targets: &Targets) -> Tensor<1> {
    let [_, c] = logits.dims();
    let identity = Tensor::<2>::eye(c, &logits.device()).cast(logits.dtype());
    let head = LinearSoftmax::from_tensors(identity, None).unwrap();
    let options = LossOptions::new().with_path(LossPath::Autodiff);
    head.loss(logits, targets, &options).unwrap()
}

/// `dL/dl_i = 1/N` for every row: the mean's upstream gradient.
fn mean_seed(logits: &Tensor<2>) -> Tensor<1> {
    let rows = logits.dims()[0];
    Tensor::full(
        [rows],
        1.0 / rows as f64,
        (&logits.device(), logits.dtype()),
    )
}

#[test]
fn zero_parameters_give_log_c() {
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            for c in [2, 10, 123] {
                let p = problem([7, 5, c], true, dtype, &device, c as u64);
                let head = LinearSoftmax::from_tensors(
                    Tensor::zeros([5, c], (&device, dtype)),
                    Some(Tensor::zeros([c], (&device, dtype))),
                )
                .unwrap();
                for (path, gradients) in both_paths(&head, &p.x, &p.targets) {
                    let expected = (c as f64).ln();
                    assert_close(
                        &format!("{path} {backend} {dtype:?} C={c}"),
                        &host(&gradients.loss),
                        &[expected],
                        tolerance,
                    );
                }
            }
        }
    }
}

#[test]
fn shifting_a_rows_logits_changes_nothing() {
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            let p = problem([7, 31, 10], true, dtype, &device, 11);
            let logits = p.head.forward(p.x.clone()).unwrap();
            // A different constant for every row.
            let shifts = tensor(
                (0..7).map(|i| 3.0 * i as f64 - 9.0).collect(),
                [7, 1],
                dtype,
                &device,
            );
            let shifted = logits.clone() + shifts;
            let (losses, cache) = math::softmax_cross_entropy_forward(
                logits.clone(),
                &p.targets,
                &LossOptions::new(),
            );
            let (shifted_losses, shifted_cache) = math::softmax_cross_entropy_forward(
                shifted.clone(),
                &p.targets,
                &LossOptions::new(),
            );
            let context = format!("{backend} {dtype:?}");
            assert_close(
                &format!("{context} manual row losses"),
                &host(&shifted_losses),
                &host(&losses),
                tolerance,
            );
            assert_close(
                &format!("{context} manual dS"),
                &host(&math::softmax_cross_entropy_backward(
                    shifted_cache,
                    mean_seed(&logits),
                )),
                &host(&math::softmax_cross_entropy_backward(
                    cache,
                    mean_seed(&logits),
                )),
                tolerance,
            );
            assert_close(
                &format!("{context} autodiff loss"),
                &host(&autodiff_cross_entropy(shifted, &p.targets)),
                &host(&autodiff_cross_entropy(logits, &p.targets)),
                tolerance,
            );

            // Through the head: the same constant added to every bias entry.
            let moved =
                LinearSoftmax::from_tensors(p.head.weight(), p.head.bias().map(|b| b + 5.0))
                    .unwrap();
            for ((path, original), (_, moved)) in both_paths(&p.head, &p.x, &p.targets)
                .into_iter()
                .zip(both_paths(&moved, &p.x, &p.targets))
            {
                let context = format!("{path} {backend} {dtype:?} bias + 5");
                assert_close(
                    &format!("{context} loss"),
                    &host(&moved.loss),
                    &host(&original.loss),
                    tolerance,
                );
                assert_close(
                    &format!("{context} dW"),
                    &host(&moved.d_weight),
                    &host(&original.d_weight),
                    tolerance,
                );
                assert_close(
                    &format!("{context} dX"),
                    &host(&moved.d_input),
                    &host(&original.d_input),
                    tolerance,
                );
            }
        }
    }
}

#[test]
fn rows_of_d_logits_sum_to_zero() {
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            let p = problem([47, 31, 123], true, dtype, &device, 5);
            let logits = p.head.forward(p.x.clone()).unwrap();
            let (_, cache) = math::softmax_cross_entropy_forward(
                logits.clone(),
                &p.targets,
                &LossOptions::new(),
            );
            let d_logits = math::softmax_cross_entropy_backward(cache, mean_seed(&logits));
            let row_sums = host(&d_logits.sum_dim(1));
            // Entries of dS are at most 1/N in size; the row sums must vanish to round-off.
            let scale = 1.0 / 47.0;
            assert!(
                row_sums.iter().all(|s| s.abs() <= tolerance * scale),
                "{backend} {dtype:?}: row sums {row_sums:?}"
            );
        }
    }
}

#[test]
fn huge_logits_stay_finite_and_match_f64() {
    // Logits of magnitude ~1e4: a naive exp overflows f32 (max ~3.4e38 = e^88.7).
    for (backend, device) in backends() {
        let [n, d, c] = [7, 3, 10];
        let f32_problem = problem([n, d, c], true, DType::F32, &device, 21);
        let f64_problem = problem([n, d, c], true, DType::F64, &device, 21);
        let scale = |head: LinearSoftmax| {
            LinearSoftmax::from_tensors(head.weight() * 4096.0, head.bias().map(|b| b * 4096.0))
                .unwrap()
        };
        let (head32, head64) = (scale(f32_problem.head), scale(f64_problem.head));
        let logits = host(&head64.forward(f64_problem.x.clone()).unwrap());
        let largest = logits.iter().map(|s| s.abs()).fold(0.0, f64::max);
        assert!(largest > 5e3, "logits reach {largest}");
        for ((path, single), (_, double)) in
            both_paths(&head32, &f32_problem.x, &f32_problem.targets)
                .into_iter()
                .zip(both_paths(&head64, &f64_problem.x, &f64_problem.targets))
        {
            let context = format!("{path} {backend} |S| ~ {largest:.0}");
            assert_close(
                &format!("{context} loss"),
                &host(&single.loss),
                &host(&double.loss),
                F32_VS_F64,
            );
            assert_close(
                &format!("{context} dW"),
                &host(&single.d_weight),
                &host(&double.d_weight),
                F32_VS_F64,
            );
            assert_close(
                &format!("{context} db"),
                &host(&single.d_bias.unwrap()),
                &host(&double.d_bias.unwrap()),
                F32_VS_F64,
            );
            assert_close(
                &format!("{context} dX"),
                &host(&single.d_input),
                &host(&double.d_input),
                F32_VS_F64,
            );
        }
    }
}
