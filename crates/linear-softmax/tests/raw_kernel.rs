//! The raw-buffer kernel that the plain backends run for class-index targets (`fused/raw.rs`)
//! agrees with the autodiff path: chunk sizes 1, 7, N and more than N, f32 and f64, bias on
//! and off, every reduction, on both CPU backends; shapes large enough that a chunk's row pass
//! runs in parallel, and a chunk whose GEMMs are large enough for our packed f32 GEMM; inputs
//! that are strided views; and the options that fall back to the tensor-level kernel
//! (softcap, probability targets) still agree.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::{Problem, assert_close, assert_gradients_close, backends, dtypes, host, problem};
use linear_softmax::{Chunking, HeadGradients, LossOptions, LossPath, LossReduction, Targets};

/// Every reduction.
const REDUCTIONS: [LossReduction; 3] =
    [LossReduction::Mean, LossReduction::Sum, LossReduction::None];

/// `head.gradients` of `p`'s input, with `targets` and `options`.
fn gradients(p: &Problem, targets: &Targets, options: &LossOptions) -> HeadGradients {
    p.head.gradients(p.x.clone(), targets, options).unwrap()
}

/// `options` on the autodiff path, the reference.
fn autodiff(options: &LossOptions) -> LossOptions {
    options.clone().with_path(LossPath::Autodiff)
}

/// `options` on the fused path, in chunks of `rows` rows.
fn fused(options: &LossOptions, rows: usize) -> LossOptions {
    let chunking = Chunking::new().with_rows(Some(rows));
    options
        .clone()
        .with_path(LossPath::Fused)
        .with_chunking(chunking)
}

/// The gradients `.backward()` gives through the fused op (the precomputed path for mean and
/// sum, the recomputing path for reduction none).
fn through_graph(
    p: &Problem,
    targets: &Targets,
    options: &LossOptions,
    rows: usize,
) -> HeadGradients {
    let head = p.head.clone().train();
    let x = p.x.clone().detach().autodiff().require_grad();
    let output = head
        .loss_output(x.clone(), targets, &fused(options, rows))
        .unwrap();
    let loss = output.loss;
    let grads = loss.clone().sum().backward();
    HeadGradients {
        d_weight: head.linear.weight.grad(&grads).expect("W is tracked"),
        d_bias: head
            .linear
            .bias
            .as_ref()
            .map(|b| b.grad(&grads).expect("b is tracked")),
        d_input: x.grad(&grads).expect("x is tracked"),
        loss: loss.inner(),
        log_sum_exp: output.log_sum_exp.inner(),
        stats: None,
    }
}

/// The fused path with chunks of `rows` rows on `p`'s class indices, as explicit gradients (in
/// `p`'s dtype) and through `.backward()`, agrees with `expected` within `tolerance`.
fn assert_chunks_agree(
    p: &Problem,
    options: &LossOptions,
    rows: usize,
    expected: &HeadGradients,
    tolerance: f64,
    context: &str,
) {
    let explicit = gradients(p, &p.targets, &fused(options, rows));
    assert_eq!(
        explicit.d_weight.dtype(),
        p.head.weight().dtype(),
        "{context}: dtype"
    );
    assert_gradients_close(
        &format!("{context} explicit"),
        &explicit,
        expected,
        tolerance,
    );
    let graph = through_graph(p, &p.targets, options, rows);
    assert_gradients_close(&format!("{context} backward"), &graph, expected, tolerance);
}

#[test]
fn raw_kernel_matches_autodiff_over_chunk_sizes_dtypes_bias_and_reductions() {
    // 47 rows x 700 classes: a whole-batch chunk (47 x 700 > 2^15 elements) runs its row pass
    // on rayon, a chunk of 7 rows on the calling thread; chunks of 7 leave a last chunk of 5.
    const N: usize = 47;
    let mut cases = 0;
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            for bias in [true, false] {
                let p = problem([N, 19, 700], bias, dtype, &device, 40 + cases as u64);
                for reduction in REDUCTIONS {
                    let options = LossOptions::new().with_reduction(reduction);
                    let expected = gradients(&p, &p.targets, &autodiff(&options));
                    for rows in [1, 7, N, N + 5] {
                        let context =
                            format!("{backend} {dtype:?} bias={bias} {reduction:?} R={rows}");
                        assert_chunks_agree(&p, &options, rows, &expected, tolerance, &context);
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 2 * 2 * 2 * 3 * 4);
}

#[test]
fn gemms_of_a_large_chunk_agree_with_autodiff() {
    // 520 rows, features and classes in one chunk: each of the chunk's three GEMMs has
    // 520^3 > 2^27 multiply-adds, which f32 on an AVX-512 CPU runs on our packed GEMM (smaller
    // ones, and f64, on matrixmultiply): on 2 threads each splits by ranges of k (two), the
    // first over two blocks of k. Plain and through `.backward()`.
    const N: usize = 520;
    // Two f32 orders of a 520-term sum differ by up to ~520 eps of its terms' magnitude, and
    // dX's sums cancel (a row of dS sums to 0): the f32 agreement of the small shapes elsewhere
    // (1e-5) is below what a correct GEMM of this size can promise. Measured: 1.5e-5.
    const F32_AGREEMENT_AT_520: f64 = 520.0 * f32::EPSILON as f64;
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            let tolerance = if dtype == DType::F32 {
                F32_AGREEMENT_AT_520
            } else {
                tolerance
            };
            let p = problem([N, N, N], true, dtype, &device, 7);
            let options = LossOptions::new();
            let expected = gradients(&p, &p.targets, &autodiff(&options));
            let context = format!("{backend} {dtype:?}");
            assert_chunks_agree(&p, &options, N, &expected, tolerance, &context);
        }
    }
}

#[test]
fn raw_kernel_reads_strided_views() {
    // x as the transpose of a [D, N] tensor and W as the transpose of a [C, D] tensor: the
    // kernel copies non-contiguous inputs to row-major order once.
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            let p = problem([23, 11, 300], true, dtype, &device, 3);
            let x = p.x.clone().transpose().reshape([11, 23]).transpose();
            let weight = p.head.weight().transpose().reshape([300, 11]).transpose();
            let head = linear_softmax::LinearSoftmax::from_tensors(weight, p.head.bias()).unwrap();
            let options = LossOptions::new();
            let expected = gradients(&p, &p.targets, &autodiff(&options));
            let actual = head.gradients(x, &p.targets, &fused(&options, 7)).unwrap();
            assert_gradients_close(
                &format!("{backend} {dtype:?} strided"),
                &actual,
                &expected,
                tolerance,
            );
        }
    }
}

#[test]
fn options_that_fall_back_to_the_tensor_kernel_still_agree() {
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            let p = problem([23, 11, 37], true, dtype, &device, 4);
            // Softcap: the raw kernel declines, the tensor-level kernel runs.
            let options = LossOptions::new().with_softcap(Some(2.0));
            let expected = gradients(&p, &p.targets, &autodiff(&options));
            for rows in [1, 7, 23, 30] {
                let actual = gradients(&p, &p.targets, &fused(&options, rows));
                assert_gradients_close(
                    &format!("{backend} {dtype:?} softcap R={rows}"),
                    &actual,
                    &expected,
                    tolerance,
                );
            }
            // Probability targets: also the tensor-level kernel.
            let probabilities: Vec<f64> = (0..23 * 37)
                .map(|i| {
                    if i % 37 == (i / 37) % 37 {
                        0.75
                    } else {
                        0.25 / 36.0
                    }
                })
                .collect();
            let targets = Targets::from_probabilities(&probabilities, [23, 37], &device).unwrap();
            let options = LossOptions::new();
            let expected = gradients(&p, &targets, &autodiff(&options));
            let actual = gradients(&p, &targets, &fused(&options, 7));
            assert_gradients_close(
                &format!("{backend} {dtype:?} probabilities"),
                &actual,
                &expected,
                tolerance,
            );
        }
    }
}

#[test]
fn raw_kernel_handles_class_options_and_returns_log_sum_exp() {
    // An ignore index, class weights, label smoothing and z-loss at once, with a partly ignored
    // batch, chunked so that ignored rows fall in several chunks.
    const IGNORE: i64 = -100;
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            let p = problem([29, 13, 600], true, dtype, &device, 6);
            let labels: Vec<i64> = p
                .labels
                .iter()
                .enumerate()
                .map(|(i, &l)| if i % 4 == 1 { IGNORE } else { l })
                .collect();
            let targets = Targets::from_indices_with_ignore(&labels, 600, IGNORE, &device).unwrap();
            let weights: Vec<f64> = (0..600).map(|k| 0.5 + (k % 7) as f64 / 4.0).collect();
            for reduction in REDUCTIONS {
                let options = LossOptions::new()
                    .with_reduction(reduction)
                    .with_weights(Some(weights.clone()))
                    .with_label_smoothing(0.1)
                    .with_z_loss(0.01);
                let reference = autodiff(&options);
                let expected = gradients(&p, &targets, &reference);
                let expected_lse = p.head.loss_output(p.x.clone(), &targets, &reference);
                let expected_lse = expected_lse.unwrap().log_sum_exp;
                for rows in [1, 7, 29] {
                    let context = format!("{backend} {dtype:?} {reduction:?} R={rows}");
                    let chunked = fused(&options, rows);
                    let actual = gradients(&p, &targets, &chunked);
                    assert_gradients_close(&context, &actual, &expected, tolerance);
                    let actual_lse = p.head.loss_output(p.x.clone(), &targets, &chunked);
                    let actual_lse = actual_lse.unwrap().log_sum_exp;
                    assert_close(
                        &format!("{context} lse"),
                        &host(&actual_lse),
                        &host(&expected_lse),
                        tolerance,
                    );
                }
            }
        }
    }
}

#[test]
fn few_classes_stream_the_rows_and_agree_on_both_sides_of_the_threshold() {
    // C <= 16 takes the row-streaming pass (no GEMMs), C = 17 the chunked GEMMs. 300 rows x 40
    // features x 10 classes is enough work for the pass to split the rows over rayon; 9 rows
    // stay on the calling thread. Every option of the class-index kernel, a partly ignored
    // batch, each reduction, through `.backward()` too.
    const IGNORE: i64 = -100;
    let mut cases = 0;
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            for (shape, bias) in [
                ([300, 40, 10], true),
                ([9, 5, 2], false),
                ([31, 7, 16], true),
                ([31, 7, 17], true),
            ] {
                let [n, _, c] = shape;
                let p = problem(shape, bias, dtype, &device, 8 + cases as u64);
                let labels: Vec<i64> = p
                    .labels
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| if i % 5 == 2 { IGNORE } else { l })
                    .collect();
                let ignored =
                    Targets::from_indices_with_ignore(&labels, c, IGNORE, &device).unwrap();
                let weights: Vec<f64> = (0..c).map(|k| 0.5 + (k % 3) as f64 / 2.0).collect();
                let all_options = LossOptions::new()
                    .with_weights(Some(weights))
                    .with_label_smoothing(0.1)
                    .with_z_loss(0.01);
                for (targets, options) in
                    [(&p.targets, LossOptions::new()), (&ignored, all_options)]
                {
                    for reduction in REDUCTIONS {
                        let options = options.clone().with_reduction(reduction);
                        let context = format!(
                            "{backend} {dtype:?} N={n} C={c} bias={bias} {reduction:?} {}",
                            options.summary()
                        );
                        let on = |path: LossPath| options.clone().with_path(path);
                        let expected = gradients(&p, targets, &on(LossPath::Autodiff));
                        let actual = gradients(&p, targets, &on(LossPath::Fused));
                        assert_gradients_close(&context, &actual, &expected, tolerance);
                        let lse = |path: LossPath| {
                            let output = p.head.loss_output(p.x.clone(), targets, &on(path));
                            host(&output.unwrap().log_sum_exp)
                        };
                        assert_close(
                            &format!("{context} lse"),
                            &lse(LossPath::Fused),
                            &lse(LossPath::Autodiff),
                            tolerance,
                        );
                        let graph = through_graph(&p, targets, &options, n);
                        assert_gradients_close(
                            &format!("{context} backward"),
                            &graph,
                            &expected,
                            tolerance,
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 2 * 2 * 4 * 2 * 3);
}
