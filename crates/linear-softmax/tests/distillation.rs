//! Distillation (targets that carry a frozen teacher): every path against PyTorch's values
//! (`scripts/pytorch_distillation_reference.py` wrote `tests/fixtures/distillation/`; the
//! tests never run Python), against finite differences in f64, and its bad inputs.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::distillation::{CASES, PYTORCH_F32, PYTORCH_F64, fixtures, load};
use common::{backends, host, tensor};
use linear_softmax::diagnostics::{Kernel, kernel_for};
use linear_softmax::gradcheck::{GradcheckOptions, gradcheck_module};
use linear_softmax::{
    Chunking, DistillationOptions, Error, LinearSoftmax, LinearSoftmaxConfig, LossOptions,
    LossPath, LossReduction, TargetKind, Targets,
};

/// The route users take: every path's `loss(..)?` on the model's autodiff device, then
/// `.backward()` (reduction none: of `sum_i g_i l_i` with the fixture's upstream `g`), chunks
/// of 4 rows for the fused path; and the teacher (its head and its hidden states, tracked
/// here) gets no gradient.
#[test]
fn every_path_matches_pytorch_through_backward() {
    let paths = fixtures();
    assert_eq!(paths.len(), CASES);
    for (backend, plain) in backends() {
        let device = plain.autodiff();
        for (dtype, tolerance) in [(DType::F64, PYTORCH_F64), (DType::F32, PYTORCH_F32)] {
            for path in &paths {
                let f = load(path, &device, dtype);
                for loss_path in LossPath::ALL {
                    let context = format!("{}: {loss_path} {backend} {dtype:?}", f.name);
                    let options = (f.options.clone().with_path(loss_path))
                        .with_chunking(Chunking::new().with_rows(Some(4)));
                    f.check_backward(&context, &options, tolerance);
                }
            }
        }
    }
}

/// `gradients(..)` on a plain device (the manual path's hand-derived backward, the fused op's
/// chunks) against PyTorch, for the cases whose upstream is `loss.backward()`'s.
#[test]
fn plain_gradients_match_pytorch() {
    for (backend, device) in backends() {
        for (dtype, tolerance) in [(DType::F64, PYTORCH_F64), (DType::F32, PYTORCH_F32)] {
            for path in fixtures() {
                let f = load(&path, &device, dtype);
                if f.upstream.is_some() {
                    continue;
                }
                let targets = f.targets(f.teacher_hidden.clone());
                for (loss_path, rows) in [
                    (LossPath::Manual, None),
                    (LossPath::Autodiff, None),
                    (LossPath::Fused, Some(3)),
                    (LossPath::Fused, None),
                ] {
                    let context = format!("{}: {loss_path} {rows:?} {backend} {dtype:?}", f.name);
                    let options = (f.options.clone().with_path(loss_path))
                        .with_chunking(Chunking::new().with_rows(rows));
                    let got = f
                        .student
                        .gradients(f.x.clone(), &targets, &options)
                        .unwrap();
                    let d_bias = got.d_bias.as_ref().map(host);
                    let got = [host(&got.loss), host(&got.d_weight), host(&got.d_input)];
                    f.check(&context, got, d_bias, tolerance);
                }
            }
        }
    }
}

/// The third witness: centred finite differences in f64 of every path's loss, for the
/// student's parameters and its input, on every fixture.
#[test]
fn every_path_passes_gradcheck() {
    let (_, plain) = backends().remove(0);
    let device = plain.autodiff();
    for path in fixtures() {
        let f = load(&path, &device, DType::F64);
        let targets = f.targets(f.teacher_hidden.clone());
        for loss_path in LossPath::ALL {
            let options = f.options.clone().with_path(loss_path);
            let loss = |head: &LinearSoftmax, x: Tensor<2>| head.loss(x, &targets, &options);
            let report = gradcheck_module(
                loss,
                &f.student.clone().train(),
                f.x.clone().require_grad(),
                &GradcheckOptions::new(),
            )
            .unwrap();
            assert!(report.passed(), "{} {loss_path}: {report}", f.name);
        }
    }
}

/// The fused path runs the tensor kernel for a teacher on the CPU backends, and forms no
/// `[N, C]` tensor: its loss is the same for any chunk size.
#[test]
fn a_teacher_takes_the_tensor_kernel() {
    for (_, device) in backends() {
        let f = load(&fixtures()[0], &device, DType::F32);
        let targets = f.targets(f.teacher_hidden.clone());
        let choice = kernel_for(&f.student, &f.x, &targets, &f.options).unwrap();
        assert_eq!(choice.kernel, Kernel::Tensor, "{}", choice.reason);
        assert!(choice.reason.contains("teacher"), "{}", choice.reason);
        assert!(matches!(
            targets.kind(),
            TargetKind::Teacher { labels: None, .. }
        ));
    }
}

/// Bad input gets a clear error: the teacher's width, its rows, its classes, the targets it
/// joins, the options it has no term for, the hard term without labels, a bad `beta`.
#[test]
fn bad_distillation_inputs_are_refused() {
    let device = Device::flex();
    let student = LinearSoftmaxConfig::new(3, 4).init(&device).unwrap();
    let teacher = LinearSoftmaxConfig::new(5, 4).init(&device).unwrap();
    let x = Tensor::<2>::zeros([2, 3], &device);
    let hidden = Tensor::<2>::zeros([2, 5], &device);

    let err = Targets::from_teacher(&teacher, Tensor::<2>::zeros([2, 4], &device)).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");

    let three_rows = Targets::from_teacher(&teacher, Tensor::<2>::zeros([3, 5], &device)).unwrap();
    let err = student
        .loss(x.clone(), &three_rows, &LossOptions::new())
        .unwrap_err();
    assert!(matches!(err, Error::TargetCountMismatch { .. }), "{err}");

    let labels = Targets::from_indices(&[0, 1], 4, &device).unwrap();
    let other_classes = LinearSoftmaxConfig::new(5, 6).init(&device).unwrap();
    let err = labels
        .clone()
        .with_teacher(&other_classes, hidden.clone())
        .unwrap_err();
    assert!(matches!(err, Error::ClassCountMismatch { .. }), "{err}");
    let err = labels
        .clone()
        .with_teacher(&teacher, Tensor::<2>::zeros([3, 5], &device))
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");

    let probabilities = Targets::from_probabilities(&[0.25; 8], [2, 4], &device).unwrap();
    let err = probabilities
        .with_teacher(&teacher, hidden.clone())
        .unwrap_err();
    assert!(matches!(err, Error::TargetKind { .. }), "{err}");

    let targets = Targets::from_teacher(&teacher, hidden.clone()).unwrap();
    for (options, option) in [
        (LossOptions::new().with_z_loss(1e-4), "z_loss"),
        (
            LossOptions::new().with_label_smoothing(0.1),
            "label_smoothing",
        ),
        (LossOptions::new().with_softcap(Some(30.0)), "softcap"),
        (LossOptions::new().with_stats(true), "stats"),
        (
            LossOptions::new().with_distillation(DistillationOptions::new().with_hard_weight(0.5)),
            "distillation hard_weight",
        ),
    ] {
        for path in LossPath::ALL {
            let err = student
                .loss(x.clone(), &targets, &options.clone().with_path(path))
                .unwrap_err();
            assert!(
                matches!(err, Error::TargetKind { option: o, .. } if o == option),
                "{option} {path}: {err}"
            );
        }
    }
    let beta = LossOptions::new().with_distillation(DistillationOptions::new().with_beta(1.5));
    let err = student.loss(x, &targets, &beta).unwrap_err();
    assert!(err.to_string().contains("beta"), "{err}");
}

/// The fixture with labels, an ignore index and row weights, reduction mean.
fn labelled_fixture(device: &Device, dtype: DType) -> common::distillation::Fixture {
    let path = fixtures()
        .into_iter()
        .find(|path| path.ends_with("jsd_row_weights_hard_mean.json"))
        .expect("the fixture");
    load(&path, device, dtype)
}

/// The options' other ways to leave rows out and to divide, with a teacher: a pad token counts
/// as the ignore index; `Targets::mean_denominator` is `sum_i rho_i v_i`, and a loss over
/// that denominator is the ordinary mean (every path).
#[test]
fn pad_tokens_and_the_mean_denominator_with_a_teacher() {
    let device = Device::flex();
    let f = labelled_fixture(&device, DType::F64);
    let targets = f.targets(f.teacher_hidden.clone());
    let labels = f.labels.clone().unwrap();
    let rho = f.row_weights.clone().unwrap();
    let counted: f64 = labels
        .iter()
        .zip(&rho)
        .filter(|(l, _)| **l != -100)
        .map(|(_, r)| r)
        .sum();
    let denominator = targets.mean_denominator(&f.options).unwrap();
    assert!(
        (denominator - counted).abs() < 1e-12,
        "{denominator} vs {counted}"
    );
    // Class `pad` as a pad token: its rows leave like ignored ones.
    let pad = labels.iter().copied().find(|&l| l >= 0).unwrap();
    let padded: Vec<i64> = labels
        .iter()
        .map(|&l| if l == pad { -100 } else { l })
        .collect();
    let c = f.student.n_classes();
    let ignored = Targets::from_indices_with_ignore(&padded, c, -100, &device)
        .unwrap()
        .with_teacher(&f.teacher, f.teacher_hidden.clone())
        .unwrap()
        .with_row_weights(tensor(rho.clone(), [rho.len()], DType::F64, &device))
        .unwrap();
    for path in LossPath::ALL {
        let options = f.options.clone().with_path(path);
        let with_pads = options.clone().with_pad_tokens(Some(vec![pad as usize]));
        let by_pad = f
            .student
            .gradients(f.x.clone(), &targets, &with_pads)
            .unwrap();
        let by_label = f
            .student
            .gradients(f.x.clone(), &ignored, &options)
            .unwrap();
        for (what, a, b) in [
            ("loss", host(&by_pad.loss), host(&by_label.loss)),
            ("dW", host(&by_pad.d_weight), host(&by_label.d_weight)),
            ("dX", host(&by_pad.d_input), host(&by_label.d_input)),
        ] {
            common::assert_close(&format!("{path} pad token {what}"), &a, &b, PYTORCH_F64);
        }
        let over = options.clone().with_mean_denominator(Some(denominator));
        let given = f.student.gradients(f.x.clone(), &targets, &over).unwrap();
        let own = f
            .student
            .gradients(f.x.clone(), &targets, &options)
            .unwrap();
        common::assert_close(
            &format!("{path} mean over d"),
            &host(&given.loss),
            &host(&own.loss),
            PYTORCH_F64,
        );
    }
}

/// A teacher in another float type than the student's is cast to the student's; in bf16
/// (Flex) every path stays within bf16's rounding of the f32 result.
#[test]
fn a_teacher_of_another_float_type_and_bf16_heads() {
    let device = Device::flex();
    let f32_case = labelled_fixture(&device, DType::F32);
    let f64_case = labelled_fixture(&device, DType::F64);
    // The f64 teacher with the f32 student: as the f32 teacher.
    let mixed = f32_case.targets(f32_case.teacher_hidden.clone());
    let f64_teacher = {
        let c = f64_case.student.n_classes();
        Targets::from_indices_with_ignore(f64_case.labels.as_ref().unwrap(), c, -100, &device)
            .unwrap()
            .with_teacher(&f64_case.teacher, f64_case.teacher_hidden.clone())
            .unwrap()
            .with_row_weights(mixed.row_weights().unwrap().clone())
            .unwrap()
    };
    for path in LossPath::ALL {
        let options = f32_case.options.clone().with_path(path);
        let same = f32_case
            .student
            .gradients(f32_case.x.clone(), &mixed, &options)
            .unwrap();
        let cast = f32_case
            .student
            .gradients(f32_case.x.clone(), &f64_teacher, &options)
            .unwrap();
        assert_eq!(cast.loss.dtype(), DType::F32);
        common::assert_close(
            &format!("{path} f64 teacher dW"),
            &host(&cast.d_weight),
            &host(&same.d_weight),
            1e-6,
        );
        // bf16: the student, its input and the teacher in bf16.
        let head = f32_case.student.clone().cast(DType::BF16);
        let targets = mixed.clone().cast(DType::BF16);
        let half = head
            .gradients(f32_case.x.clone().cast(DType::BF16), &targets, &options)
            .unwrap();
        assert_eq!(half.d_weight.dtype(), DType::BF16);
        for (what, a, b) in [
            ("loss", host(&half.loss), host(&same.loss)),
            ("dW", host(&half.d_weight), host(&same.d_weight)),
            ("dX", host(&half.d_input), host(&same.d_input)),
        ] {
            common::assert_close(&format!("{path} bf16 {what}"), &a, &b, common::BF16_VS_F32);
        }
    }
}

/// Paths that compute the same f64 distillation loss by different formulas (`log_softmax`
/// under autograd against the hand-derived pair, the fused op's chunks): a few ulps of the
/// largest term times the length of the longest sum (`C`, `D` at most 40), with room for the
/// `log M` of the JSD, formed around the larger of its terms in both.
const F64_PATHS: f64 = 1e-11;
/// The f32 paths against the f64 autodiff path on the same (f32-representable) values:
/// `2^-24` per rounding, over the sums and the exponentials of logits up to `|S / tau| ~ 40`.
const F32_VS_F64: f64 = 1e-4;

mod properties {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// A random distillation case: the shape, the scale of the values, the options; values from
    /// `seed`.
    #[derive(Clone, Debug)]
    struct Spec {
        n: usize,
        d: usize,
        d_teacher: usize,
        c: usize,
        scale: f64,
        beta: f64,
        temperature: f64,
        hard_weight: f64,
        labels: bool,
        ignored: f64,
        row_weights: bool,
        reduction: LossReduction,
        chunk: usize,
        seed: u64,
    }

    fn spec() -> impl Strategy<Value = Spec> {
        let shape = (1usize..=24, 1usize..=10, 1usize..=10, 1usize..=40);
        let beta = prop_oneof![Just(0.0), Just(1.0), 0.01f64..0.99];
        let options = (beta, 0.25f64..4.0, prop_oneof![Just(0.0), 0.0f64..2.0]);
        let reduction = prop_oneof![
            Just(LossReduction::Mean),
            Just(LossReduction::Sum),
            Just(LossReduction::None)
        ];
        let targets = (any::<bool>(), 0.0f64..0.6, any::<bool>(), reduction);
        let values = (0.05f64..3.0, 1usize..=30, any::<u64>());
        (shape, options, targets, values).prop_map(
            |(
                (n, d, d_teacher, c),
                (beta, temperature, hard_weight),
                (labels, ignored, row_weights, reduction),
                (scale, chunk, seed),
            )| Spec {
                n,
                d,
                d_teacher,
                c,
                scale,
                beta,
                temperature,
                // The hard term needs labels.
                hard_weight: if labels { hard_weight } else { 0.0 },
                labels,
                ignored,
                row_weights,
                reduction,
                chunk,
                seed,
            },
        )
    }

    /// The loss, `dW`, `db`, `dX` of every path (`gradients`, and the fused path's loss through
    /// `.backward()` with a random upstream for reduction none) on `device` in `dtype`.
    fn every_path(spec: &Spec, device: &Device, dtype: DType) -> Vec<(String, [Vec<f64>; 4])> {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut draw = |len: usize, scale: f64| -> Vec<f64> {
            // f32-representable, so the f32 and f64 cases hold the same numbers.
            (0..len)
                .map(|_| rng.random_range(-scale..scale) as f32 as f64)
                .collect()
        };
        let Spec {
            n,
            d,
            d_teacher: dt,
            c,
            scale,
            ..
        } = *spec;
        let student = LinearSoftmax::from_tensors(
            tensor(draw(d * c, scale), [d, c], dtype, device),
            Some(tensor(draw(c, scale), [c], dtype, device)),
        )
        .unwrap();
        let teacher = LinearSoftmax::from_tensors(
            tensor(draw(dt * c, scale), [dt, c], dtype, device),
            Some(tensor(draw(c, scale), [c], dtype, device)),
        )
        .unwrap();
        let x = tensor(draw(n * d, 2.0), [n, d], dtype, device);
        let hidden = tensor(draw(n * dt, 2.0), [n, dt], dtype, device);
        let coins = draw(n, 1.0);
        let targets = if spec.labels {
            let labels: Vec<i64> = (0..n)
                .map(|i| {
                    if (coins[i] + 1.0) / 2.0 < spec.ignored {
                        -100
                    } else {
                        (i * 7 % c) as i64
                    }
                })
                .collect();
            Targets::from_indices_with_ignore(&labels, c, -100, device)
                .unwrap()
                .with_teacher(&teacher, hidden)
                .unwrap()
        } else {
            Targets::from_teacher(&teacher, hidden).unwrap()
        };
        let targets = if spec.row_weights {
            let rho: Vec<f64> = draw(n, 1.0).into_iter().map(|r| r + 1.0).collect();
            targets
                .with_row_weights(tensor(rho, [n], dtype, device))
                .unwrap()
        } else {
            targets
        };
        let upstream = tensor(draw(n, 1.0), [n], dtype, device);
        let options = LossOptions::new()
            .with_reduction(spec.reduction)
            .with_temperature(spec.temperature)
            .with_distillation(
                DistillationOptions::new()
                    .with_beta(spec.beta)
                    .with_hard_weight(spec.hard_weight)
                    .with_soft_weight(1.0),
            )
            .with_chunking(Chunking::new().with_rows(Some(spec.chunk)));
        let mut results = Vec::new();
        for path in LossPath::ALL {
            // The gradients of sum_i l_i (reduction none), as `gradients` seeds them.
            let got = student
                .gradients(x.clone(), &targets, &options.clone().with_path(path))
                .unwrap();
            let d_bias = host(&got.d_bias.unwrap());
            let got = [
                host(&got.loss),
                host(&got.d_weight),
                d_bias,
                host(&got.d_input),
            ];
            results.push((format!("{path} gradients"), got));
        }
        // The route users take: the fused loss as a graph node, a random upstream for none.
        let autodiff = device.clone().autodiff();
        let head = student.clone().train();
        let tracked = x.clone().autodiff().require_grad();
        let teacher_targets = targets.clone();
        for path in [LossPath::Autodiff, LossPath::Fused] {
            let loss = head
                .loss(
                    tracked.clone(),
                    &teacher_targets,
                    &options.clone().with_path(path),
                )
                .unwrap();
            let seeded = match spec.reduction {
                LossReduction::None => (loss.clone() * upstream.clone().autodiff()).sum(),
                _ => loss.clone(),
            };
            let grads = seeded.backward();
            let got = [
                host(&loss),
                host(&head.weight().grad(&grads).unwrap()),
                host(&head.bias().unwrap().grad(&grads).unwrap()),
                host(&tracked.grad(&grads).unwrap()),
            ];
            results.push((format!("{path} backward on {autodiff:?}"), got));
        }
        results
    }

    /// Every result of `got` within `tolerance` of `reference`'s, relative to the larger of
    /// its largest entry and 1: the loss and its gradients are sums of terms of order 1 (the
    /// log-probabilities, `Q - P`), whose rounding is relative to them even where the sum
    /// cancels to 0 (e.g. one class: every distribution is 1, the loss 0).
    fn assert_agree(
        spec: &Spec,
        reference: &[(String, [Vec<f64>; 4])],
        got: &[(String, [Vec<f64>; 4])],
        tolerance: f64,
    ) {
        for ((name, got), (_, expected)) in got.iter().zip(reference) {
            for ((what, got), expected) in ["loss", "dW", "db", "dX"].iter().zip(got).zip(expected)
            {
                assert_eq!(got.len(), expected.len());
                let scale = expected.iter().fold(1.0_f64, |m, e| m.max(e.abs()));
                let worst = got
                    .iter()
                    .zip(expected)
                    .map(|(g, e)| (g - e).abs())
                    .fold(0.0_f64, f64::max);
                assert!(
                    worst <= tolerance * scale && got.iter().all(|g| g.is_finite()),
                    "{spec:?} {name} {what}: off by {worst:e} at scale {scale:e}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 96,
            failure_persistence: None,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0xd157_1111),
            ..ProptestConfig::default()
        })]
        /// Every path agrees with the autodiff path in f64 (each path with itself between its
        /// `gradients` and its `.backward()`), and the f32 paths with the f64 ones, on every
        /// backend: random shapes, `beta` (the two KL ends and the JSD), temperatures, hard
        /// mixes, ignored rows, row weights, reductions and chunk sizes.
        #[test]
        fn every_path_agrees_on_random_distillations(spec in spec()) {
            for (_, device) in backends() {
                let f64_results = every_path(&spec, &device, DType::F64);
                let autodiff = &f64_results[1].1;
                let reference: Vec<_> =
                    f64_results.iter().map(|(name, _)| (name.clone(), autodiff.clone())).collect();
                // Reduction none with the random upstream differs from `gradients`' seed of
                // ones: the graph routes are compared with each other there.
                let (seeded_ones, graphs) = f64_results.split_at(3);
                assert_agree(&spec, &reference[..3], seeded_ones, F64_PATHS);
                assert_agree(&spec, &[graphs[0].clone(), graphs[0].clone()], graphs, F64_PATHS);
                let f32_results = every_path(&spec, &device, DType::F32);
                assert_agree(&spec, &f64_results, &f32_results, F32_VS_F64);
            }
        }
    }
}
