//! What a gradient check found: per input, a [`Verdict`] and the worst entry, read like the
//! command-line tool's report.

use std::fmt;

use super::GradcheckOptions;

/// The result of [`gradcheck`](super::gradcheck) or
/// [`gradcheck_module`](super::gradcheck_module): one [`InputCheck`] per checked tensor, in the
/// order of the inputs (a module's parameters first).
///
/// A failed check is a report, not an error: `Err` is kept for inputs that cannot be checked
/// (not `f64`, not on an autodiff device) and for a function that fails. Its `Display` names
/// each input, its verdict and its worst entry.
#[derive(Clone, Debug, PartialEq)]
pub struct GradcheckReport {
    /// The options the check ran with.
    pub options: GradcheckOptions,
    /// The number of entries of the function's output (`1` for a scalar loss; more: the
    /// output was checked through a random projection `v`).
    pub output_len: usize,
    /// One per checked tensor.
    pub inputs: Vec<InputCheck>,
}

impl GradcheckReport {
    /// Whether every input passed.
    pub fn passed(&self) -> bool {
        self.inputs
            .iter()
            .all(|input| input.verdict == Verdict::Passed)
    }

    /// The inputs that did not pass.
    pub fn failures(&self) -> impl Iterator<Item = &InputCheck> {
        self.inputs
            .iter()
            .filter(|input| input.verdict != Verdict::Passed)
    }

    /// The check of the input named `name` (`"input 0"`, or a parameter's path such as
    /// `"head.weight"`).
    pub fn input(&self, name: &str) -> Option<&InputCheck> {
        self.inputs.iter().find(|input| input.name == name)
    }
}

/// How one input's gradient compared with its finite differences.
#[derive(Clone, Debug, PartialEq)]
pub struct InputCheck {
    /// `"input k"` for the `k`-th positional tensor, the parameter's path in its module
    /// (`"layers.0.weight"`) for a module's parameter.
    pub name: String,
    /// The input's shape.
    pub shape: Vec<usize>,
    /// Whether it passed, and if not, how it failed.
    pub verdict: Verdict,
    /// The compared quantity of every entry (element-wise) or direction (fast mode): the
    /// analytic `v^T J` (or `v^T J u`), from `.backward()`; 0 where no gradient arrived.
    pub analytic: Vec<f64>,
    /// The same quantities by centred finite differences.
    pub numerical: Vec<f64>,
    /// The entry or direction closest to failing (or failing worst), when there is one.
    pub worst: Option<Comparison>,
}

/// Whether an input's gradient passed, and how it failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry within `atol + rtol * |numerical|`.
    Passed,
    /// The gradient and the finite differences disagree.
    Mismatch,
    /// `.backward()` gave the input no gradient, but the function depends on it (its finite
    /// differences are not all 0): a backward that forgets an input, or an input the graph
    /// does not track.
    NoGradient,
    /// The function does not depend on the input (its finite differences are all within `atol`
    /// of 0), but `.backward()` gives it a gradient: a backward that writes to the wrong input.
    UnexpectedGradient,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Self::Passed => "ok",
            Self::Mismatch => "MISMATCH",
            Self::NoGradient => "NO GRADIENT",
            Self::UnexpectedGradient => "UNEXPECTED GRADIENT",
        }
    }
}

/// Where a compared quantity sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// An entry of the input, by its index in each dimension (element-wise mode).
    Element(Vec<usize>),
    /// The `k`-th random direction `u` (fast mode), counted from 0.
    Direction(usize),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Element(index) => write!(f, "{index:?}"),
            Self::Direction(k) => write!(f, "direction {k}"),
        }
    }
}

/// One compared quantity: the analytic and numerical values and their errors.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Which entry or direction.
    pub at: Position,
    /// From `.backward()`.
    pub analytic: f64,
    /// From centred finite differences.
    pub numerical: f64,
    /// `|analytic - numerical|`.
    pub abs_error: f64,
    /// `|analytic - numerical| / |numerical|` (infinite where `numerical` is 0 and they
    /// differ).
    pub rel_error: f64,
    /// The largest `abs_error` that passes: `atol + rtol * |numerical|` (in fast mode `atol`
    /// scaled by `sum(u) sum(v)`, as PyTorch does).
    pub allowed: f64,
}

impl Comparison {
    pub(super) fn new(at: Position, analytic: f64, numerical: f64, atol: f64, rtol: f64) -> Self {
        let abs_error = (analytic - numerical).abs();
        let rel_error = if abs_error == 0.0 {
            0.0
        } else {
            abs_error / numerical.abs()
        };
        Self {
            at,
            analytic,
            numerical,
            abs_error,
            rel_error,
            allowed: atol + rtol * numerical.abs(),
        }
    }

    /// Whether the error is within the allowed one (false for NaN).
    pub fn passed(&self) -> bool {
        self.abs_error <= self.allowed
    }

    /// How far into its allowance the error is (above 1: failed; NaN counts as infinite).
    fn severity(&self) -> f64 {
        match self.abs_error / self.allowed {
            ratio if ratio.is_nan() && self.abs_error == 0.0 => 0.0,
            ratio if ratio.is_nan() => f64::INFINITY,
            ratio => ratio,
        }
    }

    /// The comparison that fails worst (or comes closest to failing).
    pub(super) fn worst(comparisons: Vec<Self>) -> Option<Self> {
        comparisons
            .into_iter()
            .max_by(|a, b| a.severity().total_cmp(&b.severity()))
    }
}

impl fmt::Display for GradcheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options = &self.options;
        let mode = if options.fast_mode {
            format!("fast mode, {} random directions", options.directions)
        } else {
            "element-wise".to_string()
        };
        let failed = self.failures().count();
        let outcome = if failed == 0 {
            "passed".to_string()
        } else {
            format!("FAILED ({failed} of {} inputs)", self.inputs.len())
        };
        writeln!(
            f,
            "gradcheck ({mode}; eps {:e}, atol {:e}, rtol {:e}; output of {} entries{}): {outcome}",
            options.eps,
            options.atol,
            options.rtol,
            self.output_len,
            if self.output_len > 1 {
                ", projected on a random v"
            } else {
                ""
            },
        )?;
        for input in &self.inputs {
            write!(
                f,
                "  {:<11} {} {:?}",
                input.verdict.label(),
                input.name,
                input.shape
            )?;
            match &input.worst {
                Some(worst) => writeln!(
                    f,
                    ": worst at {}: analytic {:.12e}, numerical {:.12e}, |a - n| {:.2e} {} {:.2e} (rel {:.2e})",
                    worst.at,
                    worst.analytic,
                    worst.numerical,
                    worst.abs_error,
                    if worst.passed() { "<=" } else { ">" },
                    worst.allowed,
                    worst.rel_error,
                )?,
                None => writeln!(f, ": no entries")?,
            }
        }
        Ok(())
    }
}
