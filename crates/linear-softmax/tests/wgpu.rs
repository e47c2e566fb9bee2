//! Every path on a CubeCL backend, wgpu (on CI: Mesa's software Vulkan, lavapipe): the fused op
//! runs there, and the three paths agree with each other and with Flex, for every option and
//! target kind, as the last layer of an MLP, and with a random upstream for reduction none; in
//! f16 too, and bf16 refused with an error, as is f64 (to the paths and to `gradcheck`); a
//! confident row's loss as accurate as `log_softmax` makes it.
//!
//! Built with the `wgpu` feature only:
//! `cargo test --features linear-softmax/wgpu --test wgpu`.
#![cfg(feature = "wgpu")]

mod common;

use burn::prelude::*;
use burn::tensor::{DType, DeviceKind};
use common::cases::{Kind, all_paths, cases, targets};
use common::mlp::{Mlp, batch};
use common::{
    F16_VS_F32, F32_AGREEMENT, F32_NETWORK, F32_VS_F64, assert_close, assert_gradients_close,
    assert_half_precision_matches_f32, host, loss_backward, problem, uniform,
};
use linear_softmax::diagnostics::{Kernel, KernelChoice, kernel_for};
use linear_softmax::gradcheck::{GradcheckOptions, gradcheck_module};
use linear_softmax::{
    Chunking, Error, LinearSoftmax, LossOptions, LossPath, LossReduction, Targets,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// wgpu against Flex, both f32: the same values, summed in another order (the GPU's matmul
/// tiles and tree reductions against Flex's blocked GEMM), so the same few ulps per term as two
/// f32 paths on one backend.
const F32_ACROSS_BACKENDS: f64 = F32_AGREEMENT;

fn wgpu() -> Device {
    Device::wgpu(DeviceKind::DefaultDevice)
}

/// Waits for the device's queued work. Every test that queues work on wgpu ends with this:
/// lavapipe crashed at process exit (about 1 run in 15) while a shader of work nobody read back
/// was still compiling.
fn finish_wgpu() {
    wgpu().sync().expect("the device finishes its queued work");
}

/// The kernel the fused path (the options' default) takes for a call.
fn fused_kernel(
    head: &LinearSoftmax,
    x: &Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> KernelChoice {
    kernel_for(head, x, targets, options).expect("the fused path")
}

/// `options` on the autodiff path, the reference.
fn autodiff(options: &LossOptions) -> LossOptions {
    options.clone().with_path(LossPath::Autodiff)
}

/// Confident rows with large logits (`tests/common/confident.rs`): the Cube row pass, the
/// tensor kernel (one-hot probabilities) and the other paths give each row's loss and target
/// log-probability within the bound of PyTorch's own f32 `log_softmax`.
#[test]
fn confident_rows_are_as_accurate_as_log_softmax_on_wgpu() {
    let dtypes = [(DType::F32, common::confident::F32_ROW)];
    let kernels = common::confident::check_every_path("wgpu", &wgpu().autodiff(), &dtypes);
    for kernel in [Kernel::Cube, Kernel::Tensor] {
        assert!(
            kernels.contains(&format!("{kernel:?}")),
            "{kernel:?} in {kernels:?}"
        );
    }
    finish_wgpu();
}

#[test]
fn the_fused_op_has_a_kernel_on_wgpu() {
    let device = wgpu();
    for device in [device.clone(), device.autodiff()] {
        let p = problem([5, 3, 40], true, DType::F32, &device, 1);
        let options = LossOptions::new();
        let choice = fused_kernel(&p.head, &p.x, &p.targets, &options);
        assert_eq!(choice.kernel, Kernel::Cube, "{}", choice.reason);
        let probabilities = targets(Kind::Probabilities, &p, [5, 40], &device, 2);
        let choice = fused_kernel(&p.head, &p.x, &probabilities, &options);
        assert_eq!(choice.kernel, Kernel::Tensor, "{}", choice.reason);
        let softcap = options.with_softcap(Some(5.0));
        let choice = fused_kernel(&p.head, &p.x, &p.targets, &softcap);
        assert_eq!(choice.kernel, Kernel::Tensor, "{}", choice.reason);
        assert!(choice.reason.contains("CubeCL"), "{}", choice.reason);
    }
    finish_wgpu();
}

/// Every option and target kind of the option tests: manual, fused (plain values and through
/// `.backward()`, in chunks of 3 rows) and autodiff on wgpu agree with each other and with the
/// autodiff path on Flex.
#[test]
fn every_path_agrees_with_flex_for_every_option() {
    let (gpu, cpu) = (wgpu(), Device::flex());
    for shape in [[7, 31, 10], [6, 5, 2]] {
        let [n, _, c] = shape;
        for (seed, (name, options, kind)) in cases(c).into_iter().enumerate() {
            let seed = seed as u64;
            let on_cpu = problem(shape, true, DType::F32, &cpu, seed);
            let cpu_targets = targets(kind, &on_cpu, [n, c], &cpu, seed);
            let reference = autodiff(&options);
            let reference = on_cpu.head.gradients(on_cpu.x, &cpu_targets, &reference);
            let reference = reference.unwrap();
            let p = problem(shape, true, DType::F32, &gpu, seed);
            let gpu_targets = targets(kind, &p, [n, c], &gpu, seed);
            let paths = all_paths(&p, &gpu_targets, &options);
            let (_, gpu_autodiff) = paths.last().expect("the autodiff path comes last");
            for (path, gradients) in &paths {
                let context = format!("{name}, {shape:?}: {path} on wgpu");
                assert_gradients_close(&context, gradients, gpu_autodiff, F32_AGREEMENT);
                let context = format!("{context} vs flex");
                assert_gradients_close(&context, gradients, &reference, F32_ACROSS_BACKENDS);
            }
            if matches!(kind, Kind::AllIgnored) {
                assert!(host(&paths[1].1.d_weight).iter().all(|g| *g == 0.0));
            }
        }
    }
    finish_wgpu();
}

/// The route users take: head, input, targets and upstream gradient all on the model's
/// autodiff device, `head.loss(..)?` then `.backward()`; every target kind; mean, sum, and none
/// with a random upstream gradient.
#[test]
fn loss_backward_on_the_model_device_matches_autodiff() {
    let device = wgpu().autodiff();
    let [n, d, c] = [9, 6, 37];
    let p = problem([n, d, c], true, DType::F32, &device, 8);
    let mut rng = StdRng::seed_from_u64(2);
    let upstream = Tensor::<1>::from_data(uniform(&mut rng, n, 2.0).as_slice(), &device);
    let soft = targets(Kind::Probabilities, &p, [n, c], &device, 3);
    let multi_hot = targets(Kind::MultiHot, &p, [n, c], &device, 4);
    let kinds = [
        ("classes", &p.targets),
        ("probabilities", &soft),
        ("multi-hot", &multi_hot),
    ];
    for (kind, targets) in kinds {
        for reduction in [LossReduction::Mean, LossReduction::Sum, LossReduction::None] {
            let options = LossOptions::new()
                .with_reduction(reduction)
                .with_label_smoothing(0.05);
            let gradients = |path| loss_backward(&p, targets, &options, path, &upstream);
            let reference = gradients(LossPath::Autodiff);
            for path in [LossPath::Fused, LossPath::Manual] {
                let names = ["loss", "dW", "db", "dX"];
                for ((what, actual), expected) in names.iter().zip(gradients(path)).zip(&reference)
                {
                    let context = format!("{kind}, {reduction:?}: {path} {what}");
                    assert_close(&context, &actual, expected, F32_AGREEMENT);
                }
            }
        }
    }
    finish_wgpu();
}

/// Only the tracked inputs get gradients: a frozen head (plain parameters) under a tracked
/// input gives `dX` alone.
#[test]
fn a_frozen_head_on_wgpu_gives_only_the_input_gradient() {
    let device = wgpu();
    let p = problem([8, 4, 20], true, DType::F32, &device, 5);
    let x = p.x.clone().autodiff().require_grad();
    let options = LossOptions::new();
    let grads = p
        .head
        .loss(x.clone(), &p.targets, &options)
        .unwrap()
        .backward();
    assert!(p.head.weight().grad(&grads).is_none());
    let reference = p.head.gradients(p.x, &p.targets, &autodiff(&options));
    let reference = reference.unwrap();
    assert_close(
        "dX of a frozen head",
        &host(&x.grad(&grads).expect("dX")),
        &host(&reference.d_input),
        F32_AGREEMENT,
    );
    finish_wgpu();
}

/// The head as the last layer of an MLP on wgpu: every parameter of the network gets the same
/// gradient through `.backward()` with the fused head as with the autodiff head, and as on Flex.
#[test]
fn every_mlp_parameter_gets_the_same_gradient_on_wgpu() {
    let gradients = |device: &Device, path: LossPath| {
        let net = Mlp::new(DType::F32, device, 1).train();
        let (x, targets) = batch(DType::F32, device, 2);
        let loss = net.loss(x, &targets, path);
        let grads = loss.backward();
        (host(&loss.inner()), net.gradients(&grads))
    };
    let (cpu_loss, on_cpu) = gradients(&Device::flex(), LossPath::Autodiff);
    let (reference_loss, reference) = gradients(&wgpu(), LossPath::Autodiff);
    let (fused_loss, fused) = gradients(&wgpu(), LossPath::Fused);
    assert_close("loss", &fused_loss, &reference_loss, F32_NETWORK);
    assert_close("loss vs flex", &fused_loss, &cpu_loss, F32_NETWORK);
    for (((name, actual), (_, expected)), (_, flex)) in fused.iter().zip(&reference).zip(&on_cpu) {
        assert!(expected.iter().any(|g| g.abs() > 1e-6), "{name}: not zero");
        assert_close(name, actual, expected, F32_NETWORK);
        assert_close(&format!("{name} vs flex"), actual, flex, F32_NETWORK);
    }
    finish_wgpu();
}

#[test]
fn an_input_on_another_device_is_an_error() {
    let p = problem([3, 2, 5], false, DType::F32, &Device::flex(), 1);
    let x = Tensor::<2>::zeros([3, 2], &wgpu());
    for path in LossPath::ALL {
        let options = LossOptions::new().with_path(path);
        let result = p.head.loss(x.clone(), &p.targets, &options);
        assert!(
            matches!(result, Err(Error::DeviceMismatch { .. })),
            "{path}: {result:?}"
        );
    }
    let targets = Targets::from_indices(&[0, 4, 1], 5, &wgpu()).unwrap();
    let x = Tensor::<2>::zeros([3, 2], &Device::flex());
    let loss = p.head.loss(x, &targets, &LossOptions::new());
    assert!(loss.is_ok(), "targets move to the input's device: {loss:?}");
    finish_wgpu();
}

/// f64 on wgpu is refused with an error on every path: wgpu claims f64, but its f64 exp and log
/// are wrong (measured on lavapipe: every path's f64 loss was off by a factor of 5 or more).
#[test]
fn f64_on_wgpu_is_an_error() {
    let device = wgpu();
    for device in [device.clone(), device.autodiff()] {
        let p = problem([4, 3, 5], true, DType::F32, &device, 1);
        let (head, x) = (p.head.cast(DType::F64), p.x.cast(DType::F64));
        for path in LossPath::ALL {
            let options = LossOptions::new().with_path(path);
            let result = head.loss(x.clone(), &p.targets, &options);
            let message = match result {
                Err(
                    error @ Error::UnsupportedDType {
                        dtype: DType::F64, ..
                    },
                ) => error.to_string(),
                other => panic!("{path}: {other:?}"),
            };
            assert!(message.contains("exp and log"), "{message}");
        }
    }
    finish_wgpu();
}

/// `gradcheck` of an MLP with the head on wgpu is refused with an error that names wgpu's f64,
/// before the function runs: finite differences need f64, and wgpu's f64 `exp` and `log` are
/// wrong. (The same check passes on Flex and NdArray: `tests/gradcheck.rs`.)
#[test]
fn gradcheck_on_wgpu_refuses_f64() {
    let device = wgpu().autodiff();
    let net = Mlp::new(DType::F64, &device, 1);
    let (x, targets) = batch(DType::F64, &device, 2);
    for fast_mode in [false, true] {
        let options = GradcheckOptions::new().with_fast_mode(fast_mode);
        let f = |net: &Mlp, x| net.loss(x, &targets, LossPath::Fused);
        let message = match gradcheck_module(f, &net, x.clone(), &options) {
            Err(
                error @ Error::UnsupportedDType {
                    dtype: DType::F64, ..
                },
            ) => error.to_string(),
            other => panic!("fast_mode {fast_mode}: {other:?}"),
        };
        assert!(message.contains("wgpu"), "{message}");
    }
    finish_wgpu();
}

/// Half precision on wgpu, the route users take (the model on the autodiff device,
/// `head.loss(..)?` then `.backward()`, a random upstream for reduction none): every float
/// type the device computes in gives, on every path, the loss and gradients of the f32
/// computation of the same values; a type it cannot compute in is refused on every path with
/// `UnsupportedDType`, never a panic. The closing assertion is lavapipe's, the device CI pins
/// for this suite: f16 computes there (Vulkan's `shaderFloat16`), bf16 is refused (WGSL has no
/// bf16).
#[test]
fn half_precision_on_wgpu() {
    let plain_device = wgpu();
    let device = plain_device.clone().autodiff();
    let [n, d, c] = [6, 5, 17];
    let p = problem([n, d, c], true, DType::F32, &plain_device, 7);
    let mut rng = StdRng::seed_from_u64(3);
    let upstream = uniform(&mut rng, n, 2.0);
    let mut computed = Vec::new();
    for dtype in [DType::F16, DType::BF16] {
        if let Err(error) = linear_softmax::check_dtype(&device, dtype) {
            // Cast on the plain device (Burn makes the tensor), refused by every path, plain and
            // tracked.
            let (head, x) = (p.head.clone().cast(dtype), p.x.clone().cast(dtype));
            let tracked = (head.clone().train(), x.clone().autodiff().require_grad());
            for (head, x) in [(head, x), tracked] {
                for path in LossPath::ALL {
                    let options = LossOptions::new().with_path(path);
                    let result = head.loss(x.clone(), &p.targets, &options);
                    let refused = matches!(
                        result,
                        Err(Error::UnsupportedDType { dtype: refused, .. }) if refused == dtype
                    );
                    assert!(refused, "{dtype:?} {path}: {result:?}, not {error}");
                }
            }
            continue;
        }
        computed.push(dtype);
        assert_half_precision_matches_f32(&p, &device, dtype, &upstream, F16_VS_F32, "wgpu");
    }
    assert_eq!(
        computed,
        [DType::F16],
        "lavapipe computes in f16, not in bf16"
    );
    finish_wgpu();
}

/// On a GPU the chunk's logits may take as much memory as the input (Liger-Kernel's rule), on a
/// CPU the cache-sized budget holds.
#[test]
fn a_gpu_chunk_is_as_large_as_the_input() {
    let chunking = Chunking::new();
    let lm_head = |device: &Device| chunking.rows_on(device, [8192, 4096], 32768, DType::F32);
    assert_eq!(lm_head(&wgpu()).unwrap(), 1024);
    assert_eq!(lm_head(&wgpu().autodiff()).unwrap(), 1024);
    assert_eq!(lm_head(&Device::flex()).unwrap(), 240);
    // A small input: the budget is the floor.
    let small = chunking.rows_on(&wgpu(), [2048, 512], 32768, DType::F32);
    assert_eq!(small.unwrap(), 240);
    let fixed = Chunking::new().with_rows(Some(7));
    assert_eq!(
        fixed.rows_on(&wgpu(), [100, 4096], 10, DType::F32).unwrap(),
        7
    );
}

/// More rows in one chunk than a grid dimension holds (65535 cubes): the row-pass kernel's
/// second grid dimension takes the rest.
#[test]
fn a_chunk_of_more_rows_than_a_grid_dimension_holds() {
    let device = wgpu();
    let p = problem([65_600, 2, 3], true, DType::F32, &device, 9);
    let options = LossOptions::new().with_reduction(LossReduction::Sum);
    let choice = fused_kernel(&p.head, &p.x, &p.targets, &options);
    assert_eq!(choice.kernel, Kernel::Cube, "{}", choice.reason);
    let one_chunk = Chunking::new().with_rows(Some(65_600));
    let one_chunk = options.clone().with_chunking(one_chunk);
    let fused = p.head.gradients(p.x.clone(), &p.targets, &one_chunk);
    let fused = fused.unwrap();
    let reference = p.head.gradients(p.x, &p.targets, &autodiff(&options));
    let reference = reference.unwrap();
    assert_gradients_close("65600 rows", &fused, &reference, F32_AGREEMENT);
    finish_wgpu();
}

/// `loss_output` with `stats` on wgpu, on the model's autodiff device: the Cube kernel (class
/// indices, some ignored) and the tensor kernel (probabilities; softcap) give `predict`'s
/// predictions and the autodiff path's counts, target log-probabilities and `lse`; `.backward()`
/// works.
#[test]
fn statistics_on_wgpu_match_predict_and_the_autodiff_path() {
    let device = wgpu().autodiff();
    let [n, d, c] = [9, 6, 37];
    let p = problem([n, d, c], true, DType::F32, &device, 4);
    let head = p.head.clone().train();
    let ignored = targets(Kind::Ignored, &p, [n, c], &device, 1);
    let soft = targets(Kind::Probabilities, &p, [n, c], &device, 2);
    let plain = LossOptions::new();
    let softcap = LossOptions::new().with_softcap(Some(5.0));
    let int = |tensor: &Tensor<1, Int>| {
        tensor
            .to_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap()
    };
    let predicted = int(&head.predict(p.x.clone()).unwrap());
    let cases = [
        ("classes, ignored rows", &ignored, &plain, Kernel::Cube),
        ("probabilities", &soft, &plain, Kernel::Tensor),
        ("softcap", &p.targets, &softcap, Kernel::Tensor),
    ];
    for (name, targets, options, kernel) in cases {
        assert_eq!(fused_kernel(&head, &p.x, targets, options).kernel, kernel);
        let x = p.x.clone().require_grad();
        let with_stats = options.clone().with_stats(true);
        let output = head.loss_output(x.clone(), targets, &with_stats).unwrap();
        assert!(x.grad(&output.loss.backward()).is_some(), "{name}");
        let reference = head.loss_output(p.x.clone(), targets, &autodiff(&with_stats));
        let reference = reference.unwrap();
        let (stats, lse) = (output.stats.expect("asked for"), output.log_sum_exp);
        let reference_lse = reference.log_sum_exp;
        let reference = reference.stats.expect("asked for");
        assert_eq!(int(&stats.predictions), predicted, "{name}: predictions");
        assert_eq!(
            int(&stats.correct),
            int(&reference.correct),
            "{name}: correct"
        );
        assert_eq!(
            int(&stats.counted),
            int(&reference.counted),
            "{name}: counted"
        );
        for (what, actual, expected) in [
            (
                "target log-probability",
                &stats.target_log_probability,
                &reference.target_log_probability,
            ),
            ("lse", &lse, &reference_lse),
        ] {
            assert_close(
                &format!("{name}: {what}"),
                &host(actual),
                &host(expected),
                F32_AGREEMENT,
            );
        }
    }
    finish_wgpu();
}

/// Distillation on wgpu: the PyTorch fixtures (`tests/fixtures/distillation/`) through every
/// path's `loss(..)?.backward()` on the model's device, in f32 (chunks of 4 rows for the fused
/// path, which takes the tensor kernel there), and no gradient to the teacher.
#[test]
fn distillation_matches_pytorch_on_wgpu() {
    use common::distillation::{CASES, PYTORCH_F32, fixtures, load};
    let device = wgpu().autodiff();
    let paths = fixtures();
    assert_eq!(paths.len(), CASES);
    for path in &paths {
        let f = load(path, &device, DType::F32);
        let targets = f.targets(f.teacher_hidden.clone());
        let choice = fused_kernel(&f.student, &f.x, &targets, &f.options);
        assert_eq!(choice.kernel, Kernel::Tensor, "{}", choice.reason);
        for loss_path in LossPath::ALL {
            let context = format!("{}: {loss_path} wgpu", f.name);
            let options = (f.options.clone().with_path(loss_path))
                .with_chunking(Chunking::new().with_rows(Some(4)));
            f.check_backward(&context, &options, PYTORCH_F32);
        }
    }
    finish_wgpu();
}

/// Gradient filtering on wgpu (the tensor kernel with the Cube row pass; the softcap case on
/// tensor operations; the manual path's `gradients`): the filtered gradients of
/// `tests/common/gradient_filter.rs`'s definition, through `loss(..)?.backward()` and
/// `gradients`.
#[test]
fn gradient_filtering_on_wgpu_is_the_definition() {
    use common::gradient_filter::{SEED, as_host, backward, cases, fixture, gradients, reference};
    let fixture = fixture(SEED);
    let device = wgpu();
    for case in cases() {
        for path in [LossPath::Fused, LossPath::Manual] {
            let options = case.options.clone().with_path(path);
            let seeded = reference(&fixture, &case, false);
            let plain = as_host(&gradients(&fixture, &case, &options, DType::F32, &device));
            let mut routes = vec![("gradients", plain, seeded)];
            if path == LossPath::Fused {
                let graph = backward(&fixture, &case, &options, DType::F32, &device);
                routes.push(("backward", graph, reference(&fixture, &case, true)));
            }
            for (route, actual, expected) in routes {
                let what = |name| format!("{}, {path} {route} on wgpu: {name}", case.name);
                assert_close(&what("dW"), &actual[0], &expected.d_weight, F32_VS_F64);
                assert_close(&what("db"), &actual[1], &expected.d_bias, F32_VS_F64);
                assert_close(&what("dX"), &actual[2], &expected.d_input, F32_VS_F64);
            }
        }
    }
    finish_wgpu();
}
