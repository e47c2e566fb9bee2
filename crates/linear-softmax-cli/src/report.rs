//! The side-by-side gradient comparisons: manual vs autodiff vs finite differences.
//!
//! [`PathComparison`] runs every [`LossPath`] in `f32` and `f64` against each other and
//! against finite differences, with a tolerance per comparison: the `compare` command and the
//! report `train` prints before its first step.

use std::fmt;

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::Result;
use linear_softmax::HeadGradients;
use linear_softmax::LinearSoftmax;
use linear_softmax::LossOptions;
use linear_softmax::LossPath;
use linear_softmax::Targets;
use linear_softmax::gradcheck::{GradcheckOptions, gradcheck_module};
use linear_softmax::host::to_host_f64;

/// Agreement of two `f32` paths: they differ only in the order of their sums; f32's epsilon
/// (1.2e-7) times a few hundred terms, relative to the largest entry.
pub const F32_PATHS_TOLERANCE: f64 = 1e-5;
/// Agreement of two `f64` paths: the same argument with epsilon 2.2e-16, with a wide margin.
pub const F64_PATHS_TOLERANCE: f64 = 1e-10;
/// An `f32` path against `f64` finite differences of the same (f32-representable) values:
/// dominated by the f32 round-off of the path (~1e-6 of the largest entry).
pub const F32_FINITE_DIFFERENCE_TOLERANCE: f64 = 1e-4;
/// An `f64` path against centred differences with `h = 1e-5`: truncation `O(h^2)` ~ 1e-10 and
/// round-off `O(eps / h)` ~ 1e-11 of the loss, relative to the largest entry.
pub const F64_FINITE_DIFFERENCE_TOLERANCE: f64 = 1e-6;
/// The step `h` of the centred differences (the tolerances above assume it).
const FINITE_DIFFERENCE_STEP: f64 = 1e-5;

/// Name of the finite-difference witness in a [`PathComparison`].
pub const FINITE_DIFFERENCES: &str = "finite differences";

/// One compared quantity of two witnesses.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Difference {
    /// `"f32"` or `"f64"`: the float type the paths ran in.
    pub dtype: &'static str,
    /// The first witness (a path).
    pub left: &'static str,
    /// The second witness (a path, or [`FINITE_DIFFERENCES`]).
    pub right: &'static str,
    /// `"loss"`, `"dW"`, `"db"` or `"dX"`.
    pub quantity: &'static str,
    /// `max |left - right|`.
    pub max_abs: f64,
    /// `max |left - right| / max |right|`.
    pub max_rel: f64,
    /// The largest `max_rel` that counts as agreement.
    pub tolerance: f64,
    /// Whether `max_rel <= tolerance` (false for NaN).
    pub within_tolerance: bool,
}

/// The loss one path computed.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PathLoss {
    /// `"f32"` or `"f64"`.
    pub dtype: &'static str,
    /// The path.
    pub path: &'static str,
    /// The loss.
    pub loss: f64,
}

/// Every gradient path against every other and against finite differences, in `f32` and `f64`:
/// what the `compare` command prints.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PathComparison {
    /// Rows of the batch `N`.
    pub rows: usize,
    /// Input features of the head `D`.
    pub d_input: usize,
    /// Classes `C`.
    pub n_classes: usize,
    /// The losses.
    pub losses: Vec<PathLoss>,
    /// Every compared quantity.
    pub differences: Vec<Difference>,
    /// Where the `f64` half ran, and why, when the input's device cannot compute in `f64`
    /// (wgpu): on Flex. `None` when it ran on the input's device.
    pub f64_elsewhere: Option<String>,
}

impl PathComparison {
    /// Runs `paths` on `(x, targets)` in `f32` and in `f64` and compares them pairwise and with
    /// centred finite differences (computed once, in `f64`, on the f32-rounded values so that
    /// both float types see the same numbers).
    pub fn run(
        head: &LinearSoftmax,
        x: &Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
        paths: &[LossPath],
    ) -> Result<Self> {
        let head32 = head.clone().cast(DType::F32);
        let x32 = x.clone().cast(DType::F32);
        // The f64 half checks the derivation to f64 round-off, which needs f64 arithmetic: on a
        // device without it (wgpu), it runs on Flex, and the report says why.
        let f64_refused = linear_softmax::check_dtype(&x.device(), DType::F64).err();
        let f64_device = f64_refused.as_ref().map(|_| Device::flex());
        let (head64, x64, targets64) = match &f64_device {
            Some(device) => (
                head32.clone().to_device(device),
                x32.clone().to_device(device),
                targets.clone().to_device(device),
            ),
            None => (head32.clone(), x32.clone(), targets.clone()),
        };
        let (head64, x64) = (head64.cast(DType::F64), x64.cast(DType::F64));
        let numerical = finite_differences(&head64, &x64, &targets64, options)?;
        let [rows, d_input] = x.dims();
        let mut comparison = Self {
            rows,
            d_input,
            n_classes: head.n_classes(),
            losses: Vec::new(),
            differences: Vec::new(),
            f64_elsewhere: f64_refused.map(|refusal| format!("f64 on Flex: {refusal}")),
        };
        let precisions = [
            (
                "f32",
                &head32,
                &x32,
                targets,
                F32_PATHS_TOLERANCE,
                F32_FINITE_DIFFERENCE_TOLERANCE,
            ),
            (
                "f64",
                &head64,
                &x64,
                &targets64,
                F64_PATHS_TOLERANCE,
                F64_FINITE_DIFFERENCE_TOLERANCE,
            ),
        ];
        for (dtype, head, x, targets, paths_tolerance, numerical_tolerance) in precisions {
            let mut results = Vec::with_capacity(paths.len());
            for &path in paths {
                let on_path = options.clone().with_path(path);
                let gradients = head.gradients(x.clone(), targets, &on_path)?;
                let gradients = HostGradients::read(&gradients)?;
                comparison.losses.push(PathLoss {
                    dtype,
                    path: path.name(),
                    loss: gradients.loss.expect("a path computes its loss"),
                });
                results.push((path.name(), gradients));
            }
            for (i, (left, left_gradients)) in results.iter().enumerate() {
                for (right, right_gradients) in &results[i + 1..] {
                    comparison.push(
                        dtype,
                        left,
                        right,
                        left_gradients,
                        right_gradients,
                        paths_tolerance,
                    );
                }
            }
            for (path, gradients) in &results {
                comparison.push(
                    dtype,
                    path,
                    FINITE_DIFFERENCES,
                    gradients,
                    &numerical,
                    numerical_tolerance,
                );
            }
        }
        Ok(comparison)
    }

    fn push(
        &mut self,
        dtype: &'static str,
        left: &'static str,
        right: &'static str,
        actual: &HostGradients,
        reference: &HostGradients,
        tolerance: f64,
    ) {
        let between = |a: &Option<Vec<f64>>, r: &Option<Vec<f64>>| {
            a.as_ref()
                .zip(r.as_ref())
                .map(|(a, r)| ErrorStats::between(a, r))
        };
        let quantities = [
            (
                "loss",
                between(
                    &actual.loss.map(|l| vec![l]),
                    &reference.loss.map(|l| vec![l]),
                ),
            ),
            (
                "dW",
                Some(ErrorStats::between(&actual.d_weight, &reference.d_weight)),
            ),
            ("db", between(&actual.d_bias, &reference.d_bias)),
            (
                "dX",
                Some(ErrorStats::between(&actual.d_input, &reference.d_input)),
            ),
        ];
        for (quantity, stats) in quantities {
            if let Some(ErrorStats { max_abs, max_rel }) = stats {
                self.differences.push(Difference {
                    dtype,
                    left,
                    right,
                    quantity,
                    max_abs,
                    max_rel,
                    tolerance,
                    within_tolerance: max_rel <= tolerance,
                });
            }
        }
    }

    /// Whether every difference is within its tolerance.
    pub fn passed(&self) -> bool {
        self.differences.iter().all(|d| d.within_tolerance)
    }
}

impl fmt::Display for PathComparison {
    /// The losses, then one aligned row per compared quantity.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "head gradients on a batch of N = {} rows, D = {} features, C = {} classes",
            self.rows, self.d_input, self.n_classes
        )?;
        if let Some(note) = &self.f64_elsewhere {
            writeln!(f, "  ({note})")?;
        }
        for loss in &self.losses {
            writeln!(
                f,
                "  loss {} {:<20} {:.12}",
                loss.dtype, loss.path, loss.loss
            )?;
        }
        writeln!(
            f,
            "\n{:<5} {:<34} {:<5} {:>10} {:>10} {:>10}  verdict",
            "dtype", "comparison", "value", "max abs", "max rel", "tolerance"
        )?;
        for d in &self.differences {
            writeln!(
                f,
                "{:<5} {:<34} {:<5} {:>10.2e} {:>10.2e} {:>10.0e}  {}",
                d.dtype,
                format!("{} vs {}", d.left, d.right),
                d.quantity,
                d.max_abs,
                d.max_rel,
                d.tolerance,
                if d.within_tolerance { "ok" } else { "EXCEEDS" }
            )?;
        }
        Ok(())
    }
}

/// A path's loss and gradients on the host, row-major; `loss` is `None` for the finite
/// differences, which have gradients only.
struct HostGradients {
    loss: Option<f64>,
    d_weight: Vec<f64>,
    d_bias: Option<Vec<f64>>,
    d_input: Vec<f64>,
}

impl HostGradients {
    fn read(gradients: &HeadGradients) -> Result<Self> {
        Ok(Self {
            // Reduction none: the per-row losses, summed as `loss.backward()` seeds them.
            loss: Some(to_host_f64(&gradients.loss)?.iter().sum()),
            d_weight: to_host_f64(&gradients.d_weight)?,
            d_bias: gradients.d_bias.as_ref().map(to_host_f64).transpose()?,
            d_input: to_host_f64(&gradients.d_input)?,
        })
    }
}

/// The gradients of the loss (summed, as `loss.backward()` seeds a reduction-none loss) by
/// centred differences in `f64`, through the library's `gradcheck` on the autodiff path's
/// forward, the reference.
fn finite_differences(
    head: &LinearSoftmax,
    x: &Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Result<HostGradients> {
    let options = options.clone().with_path(LossPath::Autodiff);
    let loss = |head: &LinearSoftmax, x| head.loss(x, targets, &options).map(|loss| loss.sum());
    let step = GradcheckOptions::new().with_eps(FINITE_DIFFERENCE_STEP);
    let report = gradcheck_module(loss, &head.clone().train(), x.clone().autodiff(), &step)?;
    let numerical = |name: &str| report.input(name).map(|input| input.numerical.clone());
    Ok(HostGradients {
        loss: None,
        d_weight: numerical("linear.weight").expect("the head has a weight"),
        d_bias: numerical("linear.bias"),
        d_input: numerical("input 0").expect("x is the one input"),
    })
}

/// How far one host vector is from its reference.
struct ErrorStats {
    /// `max_k |a_k - r_k|`.
    max_abs: f64,
    /// Norm-wise: `max_k |a_k - r_k| / max_k |r_k|` (an entry-wise ratio explodes on entries
    /// that are nearly 0).
    max_rel: f64,
}

impl ErrorStats {
    fn between(actual: &[f64], reference: &[f64]) -> Self {
        let max_abs = actual
            .iter()
            .zip(reference)
            .map(|(a, r)| (a - r).abs())
            .fold(0.0, f64::max);
        let scale = reference.iter().map(|r| r.abs()).fold(0.0, f64::max);
        let max_rel = if scale > 0.0 {
            max_abs / scale
        } else {
            max_abs
        };
        Self { max_abs, max_rel }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_difference_beyond_its_tolerance_fails_the_comparison() {
        let device = Device::flex();
        let head = linear_softmax::LinearSoftmaxConfig::new(3, 4)
            .init(&device)
            .unwrap();
        let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], &device);
        let targets = Targets::from_indices(&[3, 0], 4, &device).unwrap();
        let mut comparison =
            PathComparison::run(&head, &x, &targets, &LossOptions::new(), &LossPath::ALL).unwrap();
        // Per dtype: three pairs of paths (loss, dW, db, dX) and three path-vs-witness
        // comparisons (dW, db, dX).
        assert_eq!(comparison.differences.len(), 2 * (3 * 4 + 3 * 3));
        assert!(comparison.passed(), "{comparison}");

        comparison.differences[5].max_rel = f64::NAN;
        comparison.differences[5].within_tolerance = comparison.differences[5].max_rel <= 1.0;
        assert!(!comparison.passed());
        assert!(comparison.to_string().contains("EXCEEDS"));
    }
}
