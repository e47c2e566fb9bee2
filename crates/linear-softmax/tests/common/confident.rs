//! The confident-rows fixtures (`tests/fixtures/confident/`, written by
//! `scripts/pytorch_confident_reference.py`) and the check every backend's suite runs on them:
//! each path and kernel gives each row's loss and target log-probability within the bound
//! PyTorch's own `log_softmax` meets.

use std::collections::BTreeSet;

use burn::prelude::*;
use burn::tensor::DType;
use linear_softmax::diagnostics::kernel_for;
use linear_softmax::{
    Chunking, LinearSoftmax, LossOptions, LossPath, LossReduction, LossStats, Targets,
};
use serde_json::Value;

use super::{host, json_fixtures, tensor};

/// f32: a row loss `l` within `F32_ROW (1 + l)` of the exact value: a few roundings of an f32
/// sum near 1 (2^-24 each), and of `S_iy - m_i` (relative to itself) where the target is not
/// the maximum. The same bound as the fixture script holds PyTorch's f32 to.
pub const F32_ROW: f64 = 4.0 * 5.960_464_477_539_063e-8;
/// f64: the same roundings at 2^-53, with room for the libm's `exp` and `log` against
/// PyTorch's.
pub const F64_ROW: f64 = 16.0 * 1.110_223_024_625_156_5e-16;

pub struct Confident {
    pub name: String,
    pub n: usize,
    pub c: usize,
    pub logits: Vec<f64>,
    pub labels: Vec<i64>,
    /// PyTorch's float64 row losses.
    pub loss: Vec<f64>,
}

pub fn fixtures() -> Vec<Confident> {
    json_fixtures("tests/fixtures/confident")
        .iter()
        .map(|path| {
            let json: Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let floats = |key: &str| -> Vec<f64> {
                let values = json[key].as_array().unwrap();
                values.iter().map(|v| v.as_f64().unwrap()).collect()
            };
            let shape = json["shape"].as_array().unwrap();
            let labels = json["labels"].as_array().unwrap();
            Confident {
                name: json["name"].as_str().unwrap().to_string(),
                n: shape[0].as_u64().unwrap() as usize,
                c: shape[1].as_u64().unwrap() as usize,
                logits: floats("logits"),
                labels: labels.iter().map(|v| v.as_i64().unwrap()).collect(),
                loss: floats("loss"),
            }
        })
        .collect()
}

/// Asserts `|actual_i - exact_i| <= bound (1 + exact_i)` for every row.
fn assert_rows(context: &str, actual: &[f64], exact: &[f64], bound: f64) {
    assert_eq!(actual.len(), exact.len(), "{context}");
    for (row, (&a, &e)) in actual.iter().zip(exact).enumerate() {
        let allowed = bound * (1.0 + e.abs());
        assert!(
            (a - e).abs() <= allowed,
            "{context}: row {row}: {a:e} against PyTorch's {e:e} (error {:.2e} > {allowed:.2e}, \
             relative {:.2e})",
            (a - e).abs(),
            (a - e).abs() / e
        );
    }
}

/// The head `S = x I`: `x` holds the logits (`W` the identity, no bias), exact in any float
/// type.
fn identity_head(c: usize, dtype: DType, device: &Device) -> LinearSoftmax {
    let identity: Vec<f64> = (0..c * c)
        .map(|i| if i / c == i % c { 1.0 } else { 0.0 })
        .collect();
    LinearSoftmax::from_tensors(tensor(identity, [c, c], dtype, device), None).unwrap()
}

/// Checks every path and kernel on `device` (an autodiff device) in each of `dtypes` with its
/// bound, for class indices and the same rows as one-hot probabilities, through `loss_output`
/// (the loss and the statistics' target log-probability) and `gradients`; returns the fused
/// kernels that ran.
pub fn check_every_path(
    backend: &str,
    device: &Device,
    dtypes: &[(DType, f64)],
) -> BTreeSet<String> {
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 2,
        "confident fixtures: {}",
        fixtures.len()
    );
    let mut kernels = BTreeSet::new();
    for &(dtype, bound) in dtypes {
        for f in &fixtures {
            let head = identity_head(f.c, dtype, device);
            let x = tensor(f.logits.clone(), [f.n, f.c], dtype, device).require_grad();
            let classes = Targets::from_indices(&f.labels, f.c, device).unwrap();
            let one_hot: Vec<f64> = (0..f.n * f.c)
                .map(|i| f64::from(f.labels[i / f.c] == (i % f.c) as i64))
                .collect();
            let probabilities = Targets::from_probabilities(&one_hot, [f.n, f.c], device).unwrap();
            for (kind, targets) in [("classes", &classes), ("one-hot", &probabilities)] {
                for (path, rows) in [
                    (LossPath::Autodiff, None),
                    (LossPath::Manual, None),
                    (LossPath::Fused, None),
                    (LossPath::Fused, Some(5)),
                ] {
                    let options = LossOptions::new()
                        .with_reduction(LossReduction::None)
                        .with_stats(true)
                        .with_path(path)
                        .with_chunking(Chunking::new().with_rows(rows));
                    let context = format!("{}: {kind} {path} {rows:?} {backend} {dtype:?}", f.name);
                    if let Some(choice) = kernel_for(&head, &x, targets, &options) {
                        kernels.insert(format!("{:?}", choice.kernel));
                    }
                    let output = head.loss_output(x.clone(), targets, &options).unwrap();
                    assert_rows(
                        &format!("{context} loss"),
                        &host(&output.loss),
                        &f.loss,
                        bound,
                    );
                    let LossStats {
                        target_log_probability,
                        ..
                    } = output.stats.expect("asked for");
                    let negated: Vec<f64> =
                        host(&target_log_probability).iter().map(|v| -v).collect();
                    assert_rows(&format!("{context} -log p"), &negated, &f.loss, bound);
                    // The gradients route: the hand-derived backward gives the same loss.
                    let gradients = head.gradients(x.clone(), targets, &options).unwrap();
                    assert_rows(
                        &format!("{context} gradients' loss"),
                        &host(&gradients.loss),
                        &f.loss,
                        bound,
                    );
                }
            }
        }
    }
    kernels
}
