//! The fused path agrees with the autodiff path: loss, dW, db and dX, through `.backward()` and
//! as explicit values, on both CPU backends, in f32 and f64, over odd shapes and chunk sizes,
//! with partial tracking and upstream gradients other than 1.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::{
    F64_AGREEMENT, Problem, assert_close, assert_gradients_close, backends, dtypes, host, problem,
    shapes, tensor,
};
use linear_softmax::{Chunking, Error, HeadGradients, LossOptions, LossPath};

/// `options` on the fused path, in chunks of `chunking`.
fn fused(options: &LossOptions, chunking: &Chunking) -> LossOptions {
    options
        .clone()
        .with_path(LossPath::Fused)
        .with_chunking(chunking.clone())
}

/// The reference: the autodiff path's loss and gradients as plain values.
fn autodiff_gradients(p: &Problem, options: &LossOptions) -> HeadGradients {
    let options = options.clone().with_path(LossPath::Autodiff);
    p.head.gradients(p.x.clone(), &p.targets, &options).unwrap()
}

/// The gradients that `.backward()` through the fused op gives to a tracked `x`, `W` and `b`.
fn fused_graph_gradients(p: &Problem, options: &LossOptions, chunking: &Chunking) -> HeadGradients {
    let head = p.head.clone().train();
    let x = p.x.clone().detach().autodiff().require_grad();
    let output = head
        .loss_output(x.clone(), &p.targets, &fused(options, chunking))
        .unwrap();
    let grads = output.loss.backward();
    HeadGradients {
        d_weight: head.linear.weight.grad(&grads).expect("W is tracked"),
        d_bias: head
            .linear
            .bias
            .as_ref()
            .map(|bias| bias.grad(&grads).expect("b is tracked")),
        d_input: x.grad(&grads).expect("x is tracked"),
        loss: output.loss.inner(),
        log_sum_exp: output.log_sum_exp.inner(),
        stats: output.stats,
    }
}

#[test]
fn fused_matches_autodiff_on_every_backend_dtype_and_shape() {
    let mut cases = 0;
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            for shape in shapes() {
                for bias in [true, false] {
                    for l2 in [0.0, 0.05] {
                        let p = problem(shape, bias, dtype, &device, cases as u64);
                        let options = LossOptions::new().with_l2(l2);
                        let expected = autodiff_gradients(&p, &options);
                        // A chunk size that splits every N > 3 unevenly.
                        let chunking = Chunking::new().with_rows(Some(3));
                        let context = format!("{backend} {dtype:?} {shape:?} bias={bias} l2={l2}");

                        let through_graph = fused_graph_gradients(&p, &options, &chunking);
                        assert_eq!(through_graph.d_weight.dtype(), dtype, "{context}: dtype");
                        assert_gradients_close(
                            &format!("{context} backward"),
                            &through_graph,
                            &expected,
                            tolerance,
                        );

                        let explicit = fused(&options, &chunking);
                        let explicit = p.head.gradients(p.x.clone(), &p.targets, &explicit);
                        let explicit = explicit.unwrap();
                        assert_gradients_close(
                            &format!("{context} explicit"),
                            &explicit,
                            &expected,
                            tolerance,
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 2 * 2 * 18 * 2 * 2);
}

#[test]
fn chunk_sizes_one_seven_n_and_more_than_n_agree() {
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            // 47 rows: chunks of 7 leave a last chunk of 5.
            let p = problem([47, 31, 123], true, dtype, &device, 5);
            let options = LossOptions::new();
            let expected = autodiff_gradients(&p, &options);
            for rows in [1, 7, 47, 48, 1000] {
                let chunking = Chunking::new().with_rows(Some(rows));
                let context = format!("{backend} {dtype:?} R={rows}");
                assert_gradients_close(
                    &context,
                    &fused_graph_gradients(&p, &options, &chunking),
                    &expected,
                    tolerance,
                );
            }
        }
    }
}

#[test]
fn the_default_chunk_size_follows_the_memory_budget() {
    let chunking = Chunking::new();
    // 30 MiB / (32768 classes * 4 bytes) = 240 rows: a 30 MiB logits buffer.
    assert_eq!(chunking.rows_for(2048, 32768, DType::F32).unwrap(), 240);
    // f64 halves the budget's rows (120), below the 192-row minimum.
    assert_eq!(chunking.rows_for(2048, 32768, DType::F64).unwrap(), 192);
    // Large C: the budget alone would give 60 rows; the minimum keeps the GEMMs efficient.
    assert_eq!(chunking.rows_for(2048, 131072, DType::F32).unwrap(), 192);
    // Small C: the whole batch is one chunk.
    assert_eq!(chunking.rows_for(47, 10, DType::F32).unwrap(), 47);
    // The minimum never exceeds the batch.
    assert_eq!(chunking.rows_for(100, 131072, DType::F32).unwrap(), 100);
    // A budget below one row with no minimum still makes progress, one row at a time.
    let tiny = Chunking::new().with_memory_budget(1).with_min_rows(0);
    assert_eq!(tiny.rows_for(47, 123, DType::F32).unwrap(), 1);
    // A hard budget: min_rows = 1 lets the budget alone decide.
    let hard = Chunking::new().with_min_rows(1);
    assert_eq!(hard.rows_for(2048, 131072, DType::F32).unwrap(), 60);
    // An explicit R larger than N is clamped to N.
    let large = Chunking::new().with_rows(Some(1000));
    assert_eq!(large.rows_for(47, 123, DType::F32).unwrap(), 47);
    let zero = Chunking::new().with_rows(Some(0));
    assert!(matches!(
        zero.rows_for(47, 123, DType::F32),
        Err(Error::InvalidOption {
            name: "chunk rows",
            ..
        })
    ));
}

#[test]
fn only_x_tracked_gives_dx_and_nothing_else() {
    for (backend, device) in backends() {
        let p = problem([47, 31, 123], true, DType::F64, &device, 8);
        let options = LossOptions::new();
        let expected = autodiff_gradients(&p, &options);
        // A frozen head: the parameters live on the autodiff device but are not tracked.
        let head = p.head.clone().train().no_grad();
        let x = p.x.clone().autodiff().require_grad();
        let options = fused(&options, &Chunking::new().with_rows(Some(7)));
        let loss = head.loss(x.clone(), &p.targets, &options).unwrap();
        let grads = loss.backward();
        assert_close(
            &format!("{backend} dX"),
            &host(&x.grad(&grads).expect("x is tracked")),
            &host(&expected.d_input),
            F64_AGREEMENT,
        );
        assert!(head.weight().grad(&grads).is_none(), "{backend}: no dW");
        assert!(
            head.bias().unwrap().grad(&grads).is_none(),
            "{backend}: no db"
        );
    }
}

#[test]
fn only_the_weight_tracked_gives_dw_and_nothing_else() {
    for (backend, device) in backends() {
        let p = problem([47, 31, 123], true, DType::F64, &device, 9);
        let options = LossOptions::new().with_l2(0.05);
        let expected = autodiff_gradients(&p, &options);
        let options = options.with_path(LossPath::Fused);
        let mut head = p.head.clone().train();
        head.linear.bias = head.linear.bias.map(|bias| bias.set_require_grad(false));
        let (weight, bias) = (head.weight(), head.bias());
        let x = p.x.clone().autodiff();
        let loss = head.loss(x.clone(), &p.targets, &options).unwrap();
        let grads = loss.backward();
        assert_close(
            &format!("{backend} dW"),
            &host(&weight.grad(&grads).expect("W is tracked")),
            &host(&expected.d_weight),
            F64_AGREEMENT,
        );
        assert!(x.grad(&grads).is_none(), "{backend}: no dX");
        assert!(bias.unwrap().grad(&grads).is_none(), "{backend}: no db");
    }
}

#[test]
fn nothing_tracked_gives_the_loss_alone() {
    for (backend, device) in backends() {
        let p = problem([47, 31, 123], true, DType::F64, &device, 10);
        let options = LossOptions::new();
        let expected = autodiff_gradients(&p, &options);
        let options = options.with_path(LossPath::Fused);
        // On the autodiff device, untracked: the op takes its untracked branch.
        let head = p.head.clone().train().no_grad();
        let loss = head
            .loss(p.x.clone().autodiff(), &p.targets, &options)
            .unwrap();
        assert!(!loss.is_tracked(), "{backend}: untracked loss");
        assert_close(
            &format!("{backend} autodiff-device loss"),
            &host(&loss.inner()),
            &host(&expected.loss),
            F64_AGREEMENT,
        );
        // On the plain device.
        let loss = p.head.loss(p.x.clone(), &p.targets, &options).unwrap();
        assert_close(
            &format!("{backend} plain loss"),
            &host(&loss),
            &host(&expected.loss),
            F64_AGREEMENT,
        );
    }
}

#[test]
fn an_upstream_gradient_other_than_one_scales_every_gradient() {
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            let p = problem([47, 31, 123], true, dtype, &device, 13);
            let options = LossOptions::new();
            let expected = autodiff_gradients(&p, &options);
            let options = options.with_path(LossPath::Fused);
            for factor in [2.5, -0.5, 0.0] {
                let head = p.head.clone().train();
                let x = p.x.clone().autodiff().require_grad();
                let loss = head.loss(x.clone(), &p.targets, &options).unwrap();
                let grads = (loss * factor).backward();
                let scaled = |tensor: &Tensor<2>| {
                    host(tensor).iter().map(|v| v * factor).collect::<Vec<_>>()
                };
                let context = format!("{backend} {dtype:?} x{factor}");
                assert_close(
                    &format!("{context} dW"),
                    &host(&head.linear.weight.grad(&grads).unwrap()),
                    &scaled(&expected.d_weight),
                    tolerance,
                );
                assert_close(
                    &format!("{context} dX"),
                    &host(&x.grad(&grads).unwrap()),
                    &scaled(&expected.d_input),
                    tolerance,
                );
                let d_bias = head.linear.bias.as_ref().unwrap().grad(&grads).unwrap();
                let expected_d_bias: Vec<f64> = host(expected.d_bias.as_ref().unwrap())
                    .iter()
                    .map(|v| v * factor)
                    .collect();
                assert_close(
                    &format!("{context} db"),
                    &host(&d_bias),
                    &expected_d_bias,
                    tolerance,
                );
            }
        }
    }
}

#[test]
fn the_loss_summed_with_another_term_gets_both_gradients() {
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            let p = problem([7, 31, 10], true, dtype, &device, 14);
            let options = LossOptions::new();
            // L_total = 3 L_fused + 0.5 sum(x^2): dX = 3 dX_L + x, dW = 3 dW_L.
            let build = |path: LossPath| {
                let head = p.head.clone().train();
                let x = p.x.clone().autodiff().require_grad();
                let options = options.clone().with_path(path);
                let loss = head.loss(x.clone(), &p.targets, &options).unwrap();
                let total = loss * 3.0 + x.clone().square().sum() * 0.5;
                let grads = total.backward();
                (
                    host(&head.linear.weight.grad(&grads).unwrap()),
                    host(&x.grad(&grads).unwrap()),
                )
            };
            let (fused_d_weight, fused_d_input) = build(LossPath::Fused);
            let (reference_d_weight, reference_d_input) = build(LossPath::Autodiff);
            let context = format!("{backend} {dtype:?}");
            assert_close(
                &format!("{context} dW"),
                &fused_d_weight,
                &reference_d_weight,
                tolerance,
            );
            assert_close(
                &format!("{context} dX"),
                &fused_d_input,
                &reference_d_input,
                tolerance,
            );
            // The reference itself is not trivially zero-extra: the x term contributes.
            let x_term_only: Vec<f64> = host(&p.x);
            assert!(
                reference_d_input
                    .iter()
                    .zip(&x_term_only)
                    .any(|(total, x)| (total - x).abs() > 1e-3),
                "{context}: the loss contributes to dX"
            );
        }
    }
}

#[test]
fn every_path_of_the_head_gives_the_same_loss_and_gradients() {
    for (backend, device) in backends() {
        let p = problem([47, 31, 123], true, DType::F64, &device, 15);
        let options = LossOptions::new().with_l2(0.01);
        let run = |path: LossPath| {
            let head = p.head.clone().train();
            let x = p.x.clone().autodiff().require_grad();
            let options = options.clone().with_path(path);
            let loss = head.loss(x.clone(), &p.targets, &options).unwrap();
            let grads = loss.backward();
            [
                host(&loss.inner()),
                host(&head.linear.weight.grad(&grads).unwrap()),
                host(&head.linear.bias.as_ref().unwrap().grad(&grads).unwrap()),
                host(&x.grad(&grads).unwrap()),
            ]
        };
        let reference = run(LossPath::Autodiff);
        for path in [LossPath::Manual, LossPath::Fused] {
            for (what, (actual, expected)) in ["loss", "dW", "db", "dX"]
                .iter()
                .zip(run(path).iter().zip(&reference))
            {
                assert_close(
                    &format!("{backend} {path:?} {what}"),
                    actual,
                    expected,
                    F64_AGREEMENT,
                );
            }
        }
        // The default path is the fused one.
        let default = p.head.loss(p.x.clone(), &p.targets, &options).unwrap();
        assert_close(
            &format!("{backend} default loss"),
            &host(&default),
            &reference[0],
            F64_AGREEMENT,
        );
    }
}

#[test]
fn the_fused_path_rejects_what_the_other_paths_reject() {
    let device = Device::flex();
    let p = problem([7, 5, 10], true, DType::F32, &device, 16);
    let options = LossOptions::new();
    let wide = tensor(vec![0.0; 7 * 6], [7, 6], DType::F32, &device);
    for path in LossPath::ALL {
        let options = options.clone().with_path(path);
        let expected = Error::InputWidthMismatch {
            got: 6,
            expected: 5,
        };
        assert_eq!(
            p.head.loss(wide.clone(), &p.targets, &options).unwrap_err(),
            expected,
            "{path:?}"
        );
        let short = p.x.clone().slice(s![0..3]);
        assert_eq!(
            p.head.loss(short, &p.targets, &options).unwrap_err(),
            Error::TargetCountMismatch {
                targets: 7,
                rows: 3
            },
            "{path:?}"
        );
        let bad_l2 = options.with_l2(-1.0);
        assert!(
            matches!(
                p.head.loss(p.x.clone(), &p.targets, &bad_l2),
                Err(Error::InvalidOption { name: "l2", .. })
            ),
            "{path:?}"
        );
    }
    let zero_rows = fused(&options, &Chunking::new().with_rows(Some(0)));
    assert!(matches!(
        p.head.loss(p.x.clone(), &p.targets, &zero_rows),
        Err(Error::InvalidOption {
            name: "chunk rows",
            ..
        })
    ));
}
