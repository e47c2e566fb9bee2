//! Half-precision heads (bf16, f16) on every path and CPU backend that has the type (Flex; not
//! NdArray): every path's loss and gradients, as plain values and through `.backward()`, match
//! the f32 computation of the same values.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::cases::{Kind, targets};
use common::{
    BF16_VS_F32, F16_VS_F32, assert_close, assert_gradients_close,
    assert_half_precision_matches_f32, backends, host, problem, uniform,
};
use linear_softmax::diagnostics::{Kernel, kernel_for};
use linear_softmax::{
    Chunking, LinearSoftmax, LossOptions, LossPath, LossStats, Targets, check_dtype,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The raw kernels in bf16 sum in f32 and round `dS` once and each output once (2^-9 each, see
/// `tests/pytorch.rs`), against the f32 computation of the same values.
const BF16_ROUNDED_ONCE: f64 = 8e-3;

/// The statistics of `path` for `head`, `x` and `targets`, default options.
fn stats_of(head: &LinearSoftmax, x: Tensor<2>, targets: &Targets, path: LossPath) -> LossStats {
    let options = LossOptions::new().with_path(path).with_stats(true);
    let output = head.loss_output(x, targets, &options).unwrap();
    output.stats.expect("asked for")
}

/// `p` with its head and input cast to `dtype` (the same targets).
fn cast(p: &common::Problem, dtype: DType) -> common::Problem {
    common::Problem {
        head: p.head.clone().cast(dtype),
        x: p.x.clone().cast(dtype),
        targets: p.targets.clone(),
        labels: p.labels.clone(),
    }
}

#[test]
fn every_path_computes_in_half_precision() {
    let mut checked = Vec::new();
    for (backend, device) in backends() {
        for (dtype, tolerance) in [(DType::BF16, BF16_VS_F32), (DType::F16, F16_VS_F32)] {
            if check_dtype(&device, dtype).is_err() {
                // Burn itself refuses to make such a tensor (NdArray has no bf16/f16): nothing to
                // run; the head's own check is the `check_dtype` just asked.
                continue;
            }
            checked.push((backend, dtype));
            let [n, d, c] = [9, 7, 21];
            let plain = problem([n, d, c], true, DType::F32, &device, 4);
            let soft = targets(Kind::Probabilities, &plain, [n, c], &device, 5);
            let half = cast(&plain, dtype);
            let (head, x) = (&half.head, &half.x);
            // The f32 reference sees the same values: the half-precision ones, widened.
            let exact = cast(&half, DType::F32);
            let options = LossOptions::new().with_label_smoothing(0.1);
            for (kind, targets) in [("classes", &plain.targets), ("probabilities", &soft)] {
                for path in LossPath::ALL {
                    let context = format!("{backend} {dtype:?} {kind} {path}");
                    let options = options.clone().with_path(path);
                    let result = head.gradients(x.clone(), targets, &options);
                    let gradients = result.unwrap_or_else(|err| panic!("{context}: {err}"));
                    assert_eq!(gradients.d_weight.dtype(), dtype, "{context}");
                    let reference = exact
                        .head
                        .gradients(exact.x.clone(), targets, &options)
                        .unwrap();
                    assert_gradients_close(&context, &gradients, &reference, tolerance);
                }
            }
        }
    }
    // Flex computes in both: the loops above did not skip everything.
    assert!(checked.contains(&("flex", DType::BF16)), "{checked:?}");
    assert!(checked.contains(&("flex", DType::F16)), "{checked:?}");
}

/// The route users take in half precision: the model on the autodiff device, `head.loss(..)?`
/// then `.backward()`, with a random upstream for reduction none.
#[test]
fn loss_backward_in_half_precision_matches_f32() {
    let mut checked = 0;
    for (backend, plain_device) in backends() {
        let device = plain_device.clone().autodiff();
        for (dtype, tolerance) in [(DType::BF16, BF16_VS_F32), (DType::F16, F16_VS_F32)] {
            if check_dtype(&device, dtype).is_err() {
                continue;
            }
            checked += 1;
            let [n, d, c] = [6, 5, 17];
            let p = problem([n, d, c], true, DType::F32, &plain_device, 7);
            let mut rng = StdRng::seed_from_u64(3);
            let upstream = uniform(&mut rng, n, 2.0);
            assert_half_precision_matches_f32(&p, &device, dtype, &upstream, tolerance, backend);
        }
    }
    assert!(
        checked >= 2,
        "Flex computes in bf16 and f16: {checked} cases ran"
    );
}

/// The statistics in half precision (the tensor kernel of the fused path): each path's
/// predictions are `predict`'s on the same half-precision head, its counts the autodiff path's,
/// its target log-probabilities the f32 ones within the type's tolerance.
#[test]
fn statistics_in_half_precision() {
    for (backend, device) in backends() {
        for (dtype, tolerance) in [(DType::BF16, BF16_VS_F32), (DType::F16, F16_VS_F32)] {
            if check_dtype(&device, dtype).is_err() {
                continue;
            }
            let [n, d, c] = [9, 7, 21];
            let plain = problem([n, d, c], true, DType::F32, &device, 4);
            let (head, x) = (plain.head.clone().cast(dtype), plain.x.clone().cast(dtype));
            let int =
                |t: &Tensor<1, Int>| t.to_data().convert::<i64>().try_to_vec::<i64>().unwrap();
            let predicted = int(&head.predict(x.clone()).unwrap());
            let reference = stats_of(
                &head.clone().cast(DType::F32),
                x.clone().cast(DType::F32),
                &plain.targets,
                LossPath::Autodiff,
            );
            let autodiff = stats_of(&head, x.clone(), &plain.targets, LossPath::Autodiff);
            for path in LossPath::ALL {
                let stats = stats_of(&head, x.clone(), &plain.targets, path);
                let what = format!("{backend} {dtype:?} {path}");
                assert_eq!(int(&stats.predictions), predicted, "{what}: predictions");
                assert_eq!(
                    int(&stats.correct),
                    int(&autodiff.correct),
                    "{what}: correct"
                );
                assert_eq!(int(&stats.counted), [n as i64], "{what}: counted");
                let host = |t: &Tensor<1>| common::host(t);
                assert_close(
                    &format!("{what}: target log-probability"),
                    &host(&stats.target_log_probability),
                    &host(&reference.target_log_probability),
                    tolerance,
                );
            }
        }
    }
}

/// The bf16 raw kernels sum in f32: the mean over 2048 identical rows is the one row's loss
/// and gradient. A sum in bf16 (8 significant bits) stops growing once one more term of the
/// same value rounds away, at 256 terms: `dW` would be an eighth of its value. Chunks of 1024
/// rows put 1024 terms in each GEMM's sum; chunks of 4 rows, 512 chunks into `dW`'s
/// accumulation across chunks.
#[test]
fn bf16_raw_kernels_sum_in_f32() {
    let device = Device::flex();
    // One rounding of each output; the one row's own outputs are rounded once too.
    const TWO_ROUNDINGS: f64 = 2.0 / 256.0;
    for (c, chunk_rows) in [(10, None), (40, Some(1024)), (40, Some(4))] {
        let one = problem([1, 8, c], true, DType::F32, &device, 11);
        let head = one.head.cast(DType::BF16);
        let x = one.x.cast(DType::BF16);
        let n = 2048;
        let many = Targets::from_indices(&vec![one.labels[0]; n], c, &device).unwrap();
        let options = LossOptions::new().with_path(LossPath::Fused);
        let expected = head.gradients(x.clone(), &one.targets, &options).unwrap();
        let chunked = options.with_chunking(Chunking::new().with_rows(chunk_rows));
        let actual = head.gradients(x.repeat_dim(0, n), &many, &chunked).unwrap();
        let context = format!("C = {c}, chunks of {chunk_rows:?} rows");
        assert_eq!(actual.d_weight.dtype(), DType::BF16, "{context}");
        // Each row's dX is the one row's divided by N (the mean).
        let first_row = actual.d_input.clone().narrow(0, 0, 1) * n as f64;
        let pairs = [
            ("loss", host(&actual.loss), host(&expected.loss)),
            ("dW", host(&actual.d_weight), host(&expected.d_weight)),
            (
                "db",
                host(actual.d_bias.as_ref().unwrap()),
                host(expected.d_bias.as_ref().unwrap()),
            ),
            ("dX", host(&first_row), host(&expected.d_input)),
        ];
        for (what, actual, expected) in pairs {
            assert_close(
                &format!("{context} {what}"),
                &actual,
                &expected,
                TWO_ROUNDINGS,
            );
        }
    }
}

/// The fused path in bf16 on every option and target kind of `cases`: the raw kernels (class
/// indices; C = 10 takes the few-classes pass, C = 40 chunks of 3 rows) and the tensor kernel
/// (probability targets, softcap), as plain gradients and through `.backward()`, against the
/// f32 autodiff path on the same (bf16) values.
#[test]
fn bf16_fused_path_on_every_case() {
    // The tensor kernel rounds after every op (`BF16_VS_F32`), the raw ones once.
    let device = Device::flex();
    let [n, d] = [9, 7];
    let mut raw_cases = 0;
    for c in [10, 40] {
        let plain = problem([n, d, c], true, DType::F32, &device, 21);
        let in_bf16 = cast(&plain, DType::BF16);
        let exact = cast(&in_bf16, DType::F32);
        for (name, options, kind) in common::cases::cases(c) {
            let targets = targets(kind, &plain, [n, c], &device, 5);
            let fused = options
                .clone()
                .with_path(LossPath::Fused)
                .with_chunking(common::cases::small_chunks());
            let choice = kernel_for(&in_bf16.head, &in_bf16.x, &targets, &fused);
            let choice = choice.expect("the fused path");
            let tolerance = match choice.kernel {
                Kernel::Raw | Kernel::FewClasses => {
                    raw_cases += 1;
                    BF16_ROUNDED_ONCE
                }
                _ => BF16_VS_F32,
            };
            let reference = options.clone().with_path(LossPath::Autodiff);
            let expected = exact
                .head
                .gradients(exact.x.clone(), &targets, &reference)
                .unwrap();
            let plain_gradients = in_bf16
                .head
                .gradients(in_bf16.x.clone(), &targets, &fused)
                .unwrap();
            let graph = common::cases::fused_graph(&in_bf16, &targets, &options);
            for (what, got) in [("fused", plain_gradients), ("fused graph", graph)] {
                let context = format!("C = {c}, {name}, {what}, {:?}", choice.kernel);
                assert_eq!(got.d_weight.dtype(), DType::BF16, "{context}");
                assert_gradients_close(&context, &got, &expected, tolerance);
            }
        }
    }
    // Both raw kernels ran most of the table (every case with class indices and no softcap).
    assert!(raw_cases >= 20, "{raw_cases} cases on the raw kernels");
}

/// The bf16 raw kernel under every tracking, through `.backward()`: all of `x`, `W` and `b`,
/// each alone. Its row pass rounds each row of `dS` to bf16 only when a backward GEMM takes it
/// (`dW` or `dX` wanted; `b` alone sums the f32 rows), and the chunks of 7 rows over 47 end in
/// a partial one. Against the f32 autodiff path on the same (bf16) values.
#[test]
fn bf16_raw_kernel_under_every_tracking() {
    let device = Device::flex();
    let plain = problem([47, 31, 123], true, DType::F32, &device, 8);
    let in_bf16 = cast(&plain, DType::BF16);
    let exact = cast(&in_bf16, DType::F32);
    let options = LossOptions::new()
        .with_path(LossPath::Fused)
        .with_chunking(Chunking::new().with_rows(Some(7)));
    let targets = &in_bf16.targets;
    let choice = kernel_for(&in_bf16.head, &in_bf16.x, targets, &options);
    assert_eq!(choice.expect("the fused path").kernel, Kernel::Raw);
    let reference = options.clone().with_path(LossPath::Autodiff);
    let expected = exact
        .head
        .gradients(exact.x.clone(), targets, &reference)
        .unwrap();
    let trackings = [
        ("x, W and b", [true, true, true]),
        ("x alone", [true, false, false]),
        ("W alone", [false, true, false]),
        ("b alone", [false, false, true]),
    ];
    for (name, [x_tracked, weight_tracked, bias_tracked]) in trackings {
        let mut head = in_bf16.head.clone().train();
        head.linear.weight = head.linear.weight.set_require_grad(weight_tracked);
        head.linear.bias = head
            .linear
            .bias
            .map(|bias| bias.set_require_grad(bias_tracked));
        let x = in_bf16.x.clone().autodiff();
        let x = if x_tracked { x.require_grad() } else { x };
        let loss = head.loss(x.clone(), targets, &options).unwrap();
        assert_close(
            &format!("{name}: loss"),
            &host(&loss.clone().inner()),
            &host(&expected.loss),
            BF16_ROUNDED_ONCE,
        );
        let grads = loss.backward();
        // Each gradient as its dtype and values, when the graph has it.
        fn got<const D: usize>(gradient: Option<Tensor<D>>) -> Option<(DType, Vec<f64>)> {
            gradient.map(|gradient| (gradient.dtype(), host(&gradient)))
        }
        let gradients = [
            (
                "dX",
                got(x.grad(&grads)),
                x_tracked,
                host(&expected.d_input),
            ),
            (
                "dW",
                got(head.weight().grad(&grads)),
                weight_tracked,
                host(&expected.d_weight),
            ),
            (
                "db",
                got(head.bias().unwrap().grad(&grads)),
                bias_tracked,
                host(expected.d_bias.as_ref().unwrap()),
            ),
        ];
        for (what, gradient, tracked, expected) in gradients {
            let context = format!("{name}: {what}");
            match gradient {
                Some((dtype, gradient)) if tracked => {
                    assert_eq!(dtype, DType::BF16, "{context}");
                    assert_close(&context, &gradient, &expected, BF16_ROUNDED_ONCE);
                }
                None if !tracked => {}
                other => panic!("{context}: tracked {tracked}, got {other:?}"),
            }
        }
    }
}
