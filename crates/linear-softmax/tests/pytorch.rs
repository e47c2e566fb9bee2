//! Values pinned from PyTorch: all three paths reproduce `F.cross_entropy`'s loss and gradients
//! (and the torch expressions of z-loss, softcap, temperature, the entropy bonus, L2 and row
//! weights) for every option.
//!
//! The fixtures in `tests/fixtures/` were written by `scripts/pytorch_reference.py` (torch
//! version recorded in each file); the tests never run Python.

mod common;

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use common::{assert_close, backends, host, tensor};
use linear_softmax::diagnostics::{Kernel, kernel_for};
use linear_softmax::{
    Chunking, LinearSoftmax, LossOptions, LossPath, LossReduction, Targets, check_dtype,
};
use serde_json::Value;

/// f64 against PyTorch's f64: different summation orders and `log_softmax` formulations.
const PYTORCH_F64: f64 = 1e-10;
/// f32 computation against PyTorch's f64 result on the same (f32-representable) inputs.
const PYTORCH_F32: f64 = 1e-5;
/// The script writes at least this many cases.
const MIN_CASES: usize = 20;
/// The fused path in bf16 against PyTorch's float64 on the same (bf16) values. The raw kernels
/// sum in f32 and round twice: `dS` once before the two backward GEMMs and each output once,
/// each a relative error of at most 2^-9 = 2e-3 (norm-wise, the two add up to about 2^-8).
const BF16_ROUNDED_ONCE: f64 = 8e-3;
/// Any path in bf16 against PyTorch's own bf16 computation: both round to bf16, but PyTorch
/// (and Burn's bf16 tensor ops on the autodiff and manual paths) rounds after every op: the
/// logits (an absolute error of up to `|S| 2^-9`, which the softmax turns into a relative
/// error of `dS`), the log-softmax, each product and each gradient.
const BF16_VS_PYTORCH_BF16: f64 = 2e-2;

fn floats(value: &Value) -> Option<Vec<f64>> {
    value
        .as_array()
        .map(|a| a.iter().map(|v| v.as_f64().expect("a number")).collect())
}

struct Fixture {
    name: String,
    head: LinearSoftmax,
    x: Tensor<2>,
    targets: Targets,
    options: LossOptions,
    loss: Vec<f64>,
    d_weight: Vec<f64>,
    d_bias: Option<Vec<f64>>,
    d_input: Vec<f64>,
    /// `[B, T]` of a sequence case (rows `b * T + t`), written from PyTorch's `[B, C, T]` form.
    sequence: Option<[usize; 2]>,
    labels: Option<Vec<i64>>,
}

fn load(path: &Path, device: &Device, dtype: DType) -> Fixture {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        json["torch_version"].as_str().unwrap().starts_with("2."),
        "{path:?}"
    );
    let shape: Vec<usize> = json["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let [n, d, c] = [shape[0], shape[1], shape[2]];
    let o = &json["options"];
    let options = LossOptions::new()
        .with_reduction(match o["reduction"].as_str().unwrap() {
            "mean" => LossReduction::Mean,
            "sum" => LossReduction::Sum,
            _ => LossReduction::None,
        })
        .with_pad_tokens(
            o["pad_tokens"]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_u64().unwrap() as usize).collect()),
        )
        .with_weights(floats(&o["weights"]))
        .with_label_smoothing(o["label_smoothing"].as_f64().unwrap())
        .with_z_loss(o["z_loss"].as_f64().unwrap())
        .with_softcap(o["softcap"].as_f64())
        // Written only by the cases that have one.
        .with_temperature(o["temperature"].as_f64().unwrap_or(1.0))
        .with_shift(o["shift"].as_u64().unwrap_or(0) as usize)
        .with_entropy_bonus(o["entropy_bonus"].as_f64().unwrap_or(0.0))
        .with_l2(o["l2"].as_f64().unwrap());
    let labels: Option<Vec<i64>> = json["labels"]
        .as_array()
        .map(|labels| labels.iter().map(|v| v.as_i64().unwrap()).collect());
    let targets = if let Some(labels) = labels.clone() {
        match o["ignore_index"].as_i64() {
            Some(ignore) => Targets::from_indices_with_ignore(&labels, c, ignore, device),
            None => Targets::from_indices(&labels, c, device),
        }
    } else if let Some(probabilities) = floats(&json["probabilities"]) {
        Targets::from_probabilities(&probabilities, [n, c], device)
    } else {
        let hot: Vec<bool> = json["multi_hot"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_bool().unwrap())
            .collect();
        Targets::from_multi_hot(&hot, [n, c], device)
    }
    .unwrap();
    // Per-row loss weights, where the case has them (row weights stay f64: data, not
    // parameters; the loss casts them).
    let targets = match floats(&json["row_weights"]) {
        Some(rho) => targets
            .with_row_weights(tensor(rho, [n], DType::F64, device))
            .unwrap(),
        None => targets,
    };
    Fixture {
        name: json["name"].as_str().unwrap().to_string(),
        head: LinearSoftmax::from_tensors(
            tensor(floats(&json["weight"]).unwrap(), [d, c], dtype, device),
            floats(&json["bias"]).map(|b| tensor(b, [c], dtype, device)),
        )
        .unwrap(),
        x: tensor(floats(&json["x"]).unwrap(), [n, d], dtype, device),
        targets,
        options,
        loss: floats(&json["loss"]).unwrap(),
        d_weight: floats(&json["d_weight"]).unwrap(),
        d_bias: floats(&json["d_bias"]),
        d_input: floats(&json["d_input"]).unwrap(),
        sequence: json["sequence"].as_array().map(|bt| {
            let bt: Vec<usize> = bt.iter().map(|v| v.as_u64().unwrap() as usize).collect();
            [bt[0], bt[1]]
        }),
        labels,
    }
}

/// The f32/f64 cases (the bf16 ones are in `tests/fixtures/bf16`).
fn fixtures() -> Vec<std::path::PathBuf> {
    common::json_fixtures("tests/fixtures")
}

#[test]
fn every_path_matches_pytorch() {
    let paths = fixtures();
    assert!(paths.len() >= MIN_CASES, "only {} fixtures", paths.len());
    for (backend, device) in backends() {
        for (dtype, tolerance) in [(DType::F64, PYTORCH_F64), (DType::F32, PYTORCH_F32)] {
            for path in &paths {
                let f = load(path, &device, dtype);
                if f.options.shift > 0 {
                    // Shifted within each sequence: the sequence test below takes them.
                    continue;
                }
                // Chunks of 4 rows: several chunks per case for the fused path.
                let chunking = Chunking::new().with_rows(Some(4));
                for loss_path in LossPath::ALL {
                    let options = f.options.clone().with_path(loss_path);
                    let options = options.with_chunking(chunking.clone());
                    let got = f.head.gradients(f.x.clone(), &f.targets, &options);
                    let got = got.unwrap();
                    let context = format!("{}: {loss_path} {backend} {dtype:?}", f.name);
                    assert_close(
                        &format!("{context} loss"),
                        &host(&got.loss),
                        &f.loss,
                        tolerance,
                    );
                    assert_close(
                        &format!("{context} dW"),
                        &host(&got.d_weight),
                        &f.d_weight,
                        tolerance,
                    );
                    assert_close(
                        &format!("{context} dX"),
                        &host(&got.d_input),
                        &f.d_input,
                        tolerance,
                    );
                    assert_eq!(got.d_bias.is_some(), f.d_bias.is_some(), "{context}");
                    if let (Some(got), Some(expected)) = (&got.d_bias, &f.d_bias) {
                        assert_close(&format!("{context} db"), &host(got), expected, tolerance);
                    }
                }
            }
        }
    }
}

/// The sequence cases (PyTorch's `F.cross_entropy(logits [B, C, T], labels [B, T])` with
/// padding; with a next-token shift, `logits[:, :-s]` against `labels[:, s:]`) through every path's `loss` on `x` `[B, T, D]` and `.backward()`, with the `[B, T]`
/// targets from `Targets::from_tensor` on the model's device.
#[test]
fn sequence_batches_match_pytorch_on_every_path() {
    let mut names = std::collections::BTreeSet::new();
    for (backend, plain) in backends() {
        let device = plain.autodiff();
        for (dtype, tolerance) in [(DType::F64, PYTORCH_F64), (DType::F32, PYTORCH_F32)] {
            for path in fixtures() {
                let f = load(&path, &device, dtype);
                let Some([batch, time]) = f.sequence else {
                    continue;
                };
                names.insert(f.name.clone());
                let c = f.head.n_classes();
                let labels = Tensor::<2, Int>::from_data(
                    TensorData::new(f.labels.clone().unwrap(), [batch, time]),
                    &device,
                );
                let targets = Targets::from_tensor(labels, c, f.targets.ignore_index()).unwrap();
                for loss_path in LossPath::ALL {
                    let context = format!("{}: {loss_path} {backend} {dtype:?}", f.name);
                    let d = f.head.n_features();
                    let x = f.x.clone().reshape([batch, time, d]).require_grad();
                    let options = f.options.clone().with_path(loss_path);
                    let loss = f.head.loss(x.clone(), &targets, &options).unwrap();
                    let grads = loss.clone().sum().backward();
                    let pairs = [
                        ("loss", host(&loss), &f.loss),
                        (
                            "dW",
                            host(&f.head.weight().grad(&grads).unwrap()),
                            &f.d_weight,
                        ),
                        ("dX", host(&x.grad(&grads).unwrap()), &f.d_input),
                        (
                            "db",
                            host(&f.head.bias().unwrap().grad(&grads).unwrap()),
                            f.d_bias.as_ref().unwrap(),
                        ),
                    ];
                    for (what, got, expected) in pairs {
                        assert_close(&format!("{context} {what}"), &got, expected, tolerance);
                    }
                }
            }
        }
    }
    assert!(names.len() >= 5, "sequence fixtures: {names:?}");
    assert!(
        names.iter().any(|name| name.starts_with("shift")),
        "{names:?}"
    );
}

/// The root-mean-square error relative to the root mean square of `expected`: the typical
/// error of an element (the largest error of both bf16 results is the last rounding of the
/// largest element, the same for both).
fn relative_error(actual: &[f64], expected: &[f64]) -> f64 {
    let square = |values: &mut dyn Iterator<Item = f64>| values.map(|v| v * v).sum::<f64>();
    let error = square(&mut actual.iter().zip(expected).map(|(a, e)| a - e));
    let scale = square(&mut expected.iter().copied());
    (error / scale.max(f64::MIN_POSITIVE)).sqrt()
}

/// bf16 heads (Flex: the CPU backend with bf16), against `scripts/pytorch_bf16_reference.py`'s
/// float64 and bf16 results on the same values, every path, through `.backward()`.
///
/// The fused path's raw kernels (bf16 GEMMs summing in f32, the row pass in f32, each output
/// rounded once) are within [`BF16_ROUNDED_ONCE`] of the float64 result, and never further from
/// it than PyTorch's own bf16 computation (root-mean-square; measured 0.3x to 1x of PyTorch's
/// error, 1x where both hold the correctly rounded loss); every path is within
/// [`BF16_VS_PYTORCH_BF16`] of PyTorch's bf16 result.
#[test]
fn bf16_heads_match_pytorch() {
    let paths = common::json_fixtures("tests/fixtures/bf16");
    assert!(paths.len() >= 5, "only {} bf16 fixtures", paths.len());
    let mut checked = 0;
    for (backend, plain) in backends() {
        if check_dtype(&plain, DType::BF16).is_err() {
            continue;
        }
        let device = plain.autodiff();
        for path in &paths {
            let f = load(path, &device, DType::BF16);
            let json: Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let torch_bf16 = |key: &str| floats(&json["bf16"][key]).unwrap();
            let expected_kernel = if f.head.n_classes() <= 16 {
                Kernel::FewClasses
            } else {
                Kernel::Raw
            };
            let choice = kernel_for(&f.head, &f.x, &f.targets, &f.options);
            let choice = choice.expect("the fused path");
            assert_eq!(
                choice.kernel, expected_kernel,
                "{}: {}",
                f.name, choice.reason
            );
            for (loss_path, chunk_rows) in [
                (LossPath::Fused, Some(16)),
                (LossPath::Fused, None),
                (LossPath::Manual, None),
                (LossPath::Autodiff, None),
            ] {
                let context = format!("{}: {loss_path} {chunk_rows:?} {backend}", f.name);
                let (head, x) = (&f.head, f.x.clone().require_grad());
                let chunking = Chunking::new().with_rows(chunk_rows);
                let options = f.options.clone().with_path(loss_path);
                let options = options.with_chunking(chunking);
                let loss = head.loss(x.clone(), &f.targets, &options).unwrap();
                assert_eq!(loss.dtype(), DType::BF16, "{context}");
                let grads = loss.clone().sum().backward();
                let results = [
                    ("loss", host(&loss), &f.loss, "loss"),
                    (
                        "dW",
                        host(&head.weight().grad(&grads).unwrap()),
                        &f.d_weight,
                        "d_weight",
                    ),
                    ("dX", host(&x.grad(&grads).unwrap()), &f.d_input, "d_input"),
                    (
                        "db",
                        host(&head.bias().unwrap().grad(&grads).unwrap()),
                        f.d_bias.as_ref().unwrap(),
                        "d_bias",
                    ),
                ];
                for (what, got, exact, key) in results {
                    let context = format!("{context} {what}");
                    let in_bf16 = torch_bf16(key);
                    assert_close(&context, &got, &in_bf16, BF16_VS_PYTORCH_BF16);
                    if loss_path == LossPath::Fused {
                        assert_close(&context, &got, exact, BF16_ROUNDED_ONCE);
                        let ours = relative_error(&got, exact);
                        let torch = relative_error(&in_bf16, exact);
                        assert!(
                            ours <= torch,
                            "{context}: {ours:e} from float64, PyTorch's bf16 {torch:e}"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "Flex computes in bf16: {checked} cases ran");
}
