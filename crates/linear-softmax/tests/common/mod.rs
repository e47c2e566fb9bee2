//! Shared fixtures, tolerances and a verbose comparison for the integration tests.
#![allow(dead_code)]

pub mod cases;
pub mod confident;
pub mod distillation;
pub mod gradient_filter;
pub mod mlp;
pub mod reference;

use burn::prelude::*;
use burn::tensor::DType;
use linear_softmax::{HeadGradients, LinearSoftmax, LossOptions, LossPath, LossReduction, Targets};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Two f64 paths that differ only in the order of their sums: a few ulps of the largest entry,
/// times the length of the longest sum (at most 123 terms here).
pub const F64_AGREEMENT: f64 = 1e-12;
/// Two f32 paths: f32's epsilon is 1.2e-7; sums over up to 123 classes or 47 rows and a
/// differently ordered log-sum-exp leave about 1e-6 of the largest entry.
pub const F32_AGREEMENT: f64 = 1e-5;
/// Centred differences with h = 1e-5 in f64: truncation O(h^2) ~ 1e-10, round-off
/// O(eps / h) ~ 1e-11 of the loss, relative to the largest gradient entry.
pub const FINITE_DIFFERENCE: f64 = 1e-7;
/// An f32 computation against the f64 computation of the same (f32-representable) values.
pub const F32_VS_F64: f64 = 1e-5;
/// bf16 keeps 8 significant bits (epsilon 2^-8 = 3.9e-3): the inputs, parameters, logits and
/// every partial sum are rounded to it, a few roundings deep, against the f32 computation of
/// the same (bf16-representable) values.
pub const BF16_VS_F32: f64 = 4e-2;
/// f16 keeps 11 significant bits (epsilon 2^-11 = 4.9e-4), by the same argument.
pub const F16_VS_F32: f64 = 5e-3;

/// The CPU backends every property is checked on: every one this build enables.
#[allow(deprecated)]
pub fn backends() -> Vec<(&'static str, Device)> {
    vec![
        ("flex", Device::flex()),
        #[cfg(feature = "ndarray")]
        ("ndarray", Device::ndarray()),
    ]
}

/// The float types every property is checked in, with the agreement tolerance of each.
pub fn dtypes() -> [(DType, f64); 2] {
    [(DType::F32, F32_AGREEMENT), (DType::F64, F64_AGREEMENT)]
}

/// A batch and a head to compute a loss on.
pub struct Problem {
    pub head: LinearSoftmax,
    pub x: Tensor<2>,
    pub targets: Targets,
    pub labels: Vec<i64>,
}

/// Random values in `[-scale, scale)` from a seeded generator.
pub fn uniform(rng: &mut StdRng, len: usize, scale: f64) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// A tensor of `dtype` on `device` from host `f64` values.
pub fn tensor<const D: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    dtype: DType,
    device: &Device,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), (device, dtype))
}

/// A random problem of shape `N x D x C`: inputs in [-2, 2), weights in [-1, 1) (so softmax
/// rows are far from uniform), every value exactly representable in f32 so the f32 and f64
/// versions of a problem hold the same numbers.
pub fn problem(
    [n, d, c]: [usize; 3],
    bias: bool,
    dtype: DType,
    device: &Device,
    seed: u64,
) -> Problem {
    let mut rng = StdRng::seed_from_u64(seed);
    let f32_exact = |values: Vec<f64>| {
        values
            .into_iter()
            .map(|v| v as f32 as f64)
            .collect::<Vec<_>>()
    };
    let x = f32_exact(uniform(&mut rng, n * d, 2.0));
    let weight = f32_exact(uniform(&mut rng, d * c, 1.0));
    let bias_values = f32_exact(uniform(&mut rng, c, 0.5));
    let labels: Vec<i64> = (0..n).map(|_| rng.random_range(0..c as i64)).collect();
    let head = LinearSoftmax::from_tensors(
        tensor(weight, [d, c], dtype, device),
        bias.then(|| tensor(bias_values, [c], dtype, device)),
    )
    .expect("valid parameters");
    Problem {
        head,
        x: tensor(x, [n, d], dtype, device),
        targets: Targets::from_indices(&labels, c, device).expect("labels in range"),
        labels,
    }
}

/// The shapes of the agreement tests: odd sizes, one row, one feature, two classes.
pub fn shapes() -> Vec<[usize; 3]> {
    let mut shapes = Vec::new();
    for n in [1, 7, 47] {
        for d in [1, 31] {
            for c in [2, 10, 123] {
                shapes.push([n, d, c]);
            }
        }
    }
    shapes
}

/// Host f64 copy of a tensor (row-major), whatever its float type.
pub fn host<const D: usize>(tensor: &Tensor<D>) -> Vec<f64> {
    tensor
        .to_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .expect("readable tensor")
}

/// Asserts that `actual` matches `expected` within `tolerance`, norm-wise relative
/// (`max|a - e| / max|e|`), and reports the
/// largest differences and the first bad index when it does not.
#[track_caller]
pub fn assert_close(what: &str, actual: &[f64], expected: &[f64], tolerance: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let scale = expected
        .iter()
        .map(|e| e.abs())
        .fold(0.0_f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let (max_abs, worst) = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .enumerate()
        .fold((0.0_f64, 0), |(max, at), (i, diff)| {
            if diff > max || diff.is_nan() {
                (diff, i)
            } else {
                (max, at)
            }
        });
    let relative = max_abs / scale;
    assert!(
        relative <= tolerance && actual.iter().all(|a| a.is_finite()),
        "{what}: max abs diff {max_abs:.3e}, relative {relative:.3e} > {tolerance:.1e}; \
         first worst index {worst}: actual {} vs expected {}",
        actual[worst],
        expected[worst]
    );
}

/// A two-hidden-layer network in f32, fused head against autodiff head: the head's f32
/// differences (`F32_AGREEMENT`) pass back through two more layers of sums over up to 31
/// features and 47 rows. Measured: 3e-7.
pub const F32_NETWORK: f64 = 1e-5;
/// Five Adam steps in f64 from the same start. Adam divides by `sqrt(v) + 1e-5`, so a
/// gradient difference of a few ulps can move a near-zero entry's step by up to `lr / eps`
/// times as much; the parameters themselves are O(1). Measured: 3e-15.
pub const ADAM_TRAJECTORY_F64: f64 = 1e-11;
/// Five Adam steps in f32 from the same start, with the same amplification of the f32
/// gradient differences (`F32_NETWORK`). Measured: 2e-6.
pub const ADAM_TRAJECTORY_F32: f64 = 1e-5;

/// [`assert_close`] on the loss, `dW`, `dX` and (present on both or neither) `db` of two
/// gradient sets.
pub fn assert_gradients_close(
    context: &str,
    actual: &HeadGradients,
    expected: &HeadGradients,
    tolerance: f64,
) {
    let pairs = [
        ("loss", host(&actual.loss), host(&expected.loss)),
        ("dW", host(&actual.d_weight), host(&expected.d_weight)),
        ("dX", host(&actual.d_input), host(&expected.d_input)),
    ];
    for (what, actual, expected) in pairs {
        assert_close(&format!("{context} {what}"), &actual, &expected, tolerance);
    }
    assert_eq!(
        actual.d_bias.is_some(),
        expected.d_bias.is_some(),
        "{context}: db presence"
    );
    if let (Some(actual), Some(expected)) = (&actual.d_bias, &expected.d_bias) {
        assert_close(
            &format!("{context} db"),
            &host(actual),
            &host(expected),
            tolerance,
        );
    }
}

/// The route users take, on the model's autodiff device: `head.loss(x, ..)?` with `path` in
/// the options, then `.backward()` (reduction none: of `(loss * upstream).sum()`, so
/// `upstream` is the per-row upstream gradient). The loss, `dW`, `db` and `dX` as host
/// values; `p` has a bias.
pub fn loss_backward(
    p: &Problem,
    targets: &Targets,
    options: &LossOptions,
    path: LossPath,
    upstream: &Tensor<1>,
) -> [Vec<f64>; 4] {
    let x = p.x.clone().require_grad();
    let options = options.clone().with_path(path);
    let loss = p.head.loss(x.clone(), targets, &options);
    let loss = loss.expect("a valid batch");
    let scalar = match options.reduction {
        LossReduction::None => (loss.clone() * upstream.clone()).sum(),
        _ => loss.clone(),
    };
    let grads = scalar.backward();
    let bias = p.head.bias().expect("a head with a bias");
    [
        host(&loss),
        host(&p.head.weight().grad(&grads).expect("dW")),
        host(&bias.grad(&grads).expect("db")),
        host(&x.grad(&grads).expect("dX")),
    ]
}

/// The route users take in half precision: `p` (on a plain device) cast to `dtype` and
/// tracked on `device` (that device's autodiff one), the loss on every path (`loss(..)?` with
/// the path in the options) then `.backward()`, reductions mean and none (none with the random
/// `upstream`): the loss and gradients match the f32 computation of the same values within
/// `tolerance`.
pub fn assert_half_precision_matches_f32(
    p: &Problem,
    device: &Device,
    dtype: DType,
    upstream: &[f64],
    tolerance: f64,
    context: &str,
) {
    // Cast on the plain device, then tracked: the half-precision parameters are leaves.
    let (head, x) = (p.head.clone().cast(dtype), p.x.clone().cast(dtype));
    let half = Problem {
        head: head.clone().train(),
        x: x.clone().autodiff(),
        targets: p.targets.clone(),
        labels: p.labels.clone(),
    };
    let exact = Problem {
        head: head.cast(DType::F32).train(),
        x: x.cast(DType::F32).autodiff(),
        targets: p.targets.clone(),
        labels: p.labels.clone(),
    };
    let upstream = |dtype| Tensor::<1>::from_data(upstream, (device, dtype));
    for reduction in [LossReduction::Mean, LossReduction::None] {
        let options = LossOptions::new().with_reduction(reduction);
        for path in LossPath::ALL {
            let actual = loss_backward(&half, &half.targets, &options, path, &upstream(dtype));
            let expected = loss_backward(
                &exact,
                &exact.targets,
                &options,
                path,
                &upstream(DType::F32),
            );
            for ((what, actual), expected) in
                ["loss", "dW", "db", "dX"].iter().zip(actual).zip(expected)
            {
                let context = format!("{context} {dtype:?} {reduction:?} {path} {what}");
                assert_close(&context, &actual, &expected, tolerance);
            }
        }
    }
}

/// The `.json` fixtures in `dir` (relative to the crate), sorted by name.
pub fn json_fixtures(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
}
