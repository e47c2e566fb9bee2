//! Gradient checking for any Burn function or module: the gradients `.backward()` gives,
//! against centred finite differences in `f64` (PyTorch's `torch.autograd.gradcheck`).
//!
//! For a function `f` of tensors `x_1 .. x_m` with an output of `n` entries, a projection `v`
//! of the output (`v = [1]` for a scalar; otherwise a random unit vector with entries in
//! `[0, 1)`, drawn from [`GradcheckOptions::seed`]) turns `f` into the scalar `g = v^T f`.
//! Then, for every entry `k` of every input `x_j`:
//!
//! ```text
//! analytic:   a_k = d g / d x_jk                   one .backward() of g
//! numerical:  n_k = (g(x_jk + eps) - g(x_jk - eps)) / (2 eps)
//! passes:     |a_k - n_k| <= atol + rtol |n_k|     (torch.allclose; NaN fails)
//! ```
//!
//! The centred difference has error `O(eps^2)` from truncation and `O(u / eps)` from
//! round-off (`u` the float's epsilon), which is why the inputs must be `f64`: with `eps = 1e-6`
//! the round-off is ~1e-10 of the function's scale in `f64` and ~0.1 in `f32`. A projection
//! checks `v^T J` (the Jacobian `J` seen through one random `v`), where PyTorch builds `J` in
//! full; a backward that ignores or misplaces part of its upstream gradient still shows, as
//! `v` is not constant. Pass `f(x).sum()` to check the gradient `loss.backward()` gives a
//! reduction-none loss.
//!
//! # Defaults (PyTorch's)
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `eps` | `1e-6` | the step of the centred differences |
//! | `atol` | `1e-5` | absolute tolerance |
//! | `rtol` | `1e-3` | tolerance relative to `|numerical|` |
//! | `fast_mode` | `false` | compare `v^T J u` along random `u` instead of every entry |
//!
//! # Fast mode
//!
//! With [`GradcheckOptions::fast_mode`], each input is checked along
//! [`directions`](GradcheckOptions::directions) random unit vectors `u` (entries in `[0, 1)`,
//! normalised, PyTorch's): the analytic `v^T J u` is the gradient dotted with `u`, the
//! numerical one is a single centred difference along `u`, so each input costs two
//! evaluations per direction instead of two per entry, and a module of millions of
//! parameters checks in seconds. `atol` is scaled by `sum(u) sum(v)`, as PyTorch does, so it
//! keeps its per-entry meaning.
//!
//! It catches any error that changes the gradient's projection on `u`, which a random `u`
//! almost surely does: a sign flip, a factor, a missing term, a gradient written to the
//! wrong input. It can miss errors that cancel in the sum: a gradient that is wrong in two
//! entries by opposite amounts weighted alike by `u`, or an error too small against the
//! sum of the whole gradient's entries to exceed `rtol |v^T J u|` (a wrong entry among a
//! million is diluted a thousandfold); and it names a direction, not the wrong entry. When a
//! fast check fails, run the element-wise one on a smaller instance to find the entry.
//!
//! # What is reported
//!
//! Every input gets a [`Verdict`]: it passed, its gradient disagrees, `.backward()` gave it
//! no gradient although the function depends on it ([`Verdict::NoGradient`]), or it got a
//! gradient although the function does not depend on it ([`Verdict::UnexpectedGradient`]).
//! The report keeps the analytic and numerical values and names the worst entry.
//!
//! Inputs that are not `f64`, or not on an autodiff device, are refused with an error, as is
//! a device whose `f64` is unreliable (wgpu: Vulkan's `exp` and `log` are 32-bit only).
//!
//! # Non-differentiable points
//!
//! At a kink (ReLU at 0, `abs` at 0, `max` with a tie), the centred difference averages the
//! two one-sided slopes (ReLU at 0: `1/2`) while the backward picks one (Burn's ReLU: 0), and
//! within `eps` of a kink the difference mixes both: such a point fails for a correct
//! backward. Choose inputs at least `eps` away from kinks, as with PyTorch.
//!
//! # Example
//!
//! ```
//! use burn::prelude::*;
//! use burn::tensor::DType;
//! use linear_softmax::gradcheck::{GradcheckOptions, gradcheck};
//!
//! let device = Device::flex().autodiff();
//! let x = Tensor::<2>::from_data([[0.5, -1.0], [2.0, 0.25]], (&device, DType::F64));
//! let w = Tensor::<1>::from_data([0.3, -0.7], (&device, DType::F64));
//!
//! // f(x, w) = tanh(x w): an output of 2 entries, checked through a random projection.
//! let f = |(x, w): (Tensor<2>, Tensor<1>)| x.matmul(w.unsqueeze_dim(1)).tanh();
//! let report = gradcheck(f, (x, w), &GradcheckOptions::new())?;
//! assert!(report.passed(), "{report}");
//! # Ok::<(), linear_softmax::Error>(())
//! ```

mod check;
mod inputs;
mod report;

use burn::module::Module;
use burn::prelude::*;

pub use inputs::{GradcheckInputs, GradcheckOutput, TensorMapper};
pub use report::{Comparison, GradcheckReport, InputCheck, Position, Verdict};

use crate::error::{Error, Result};
use inputs::{CastToF64, Parameters};

/// The options of a gradient check, with PyTorch's defaults (see the [module](self) docs).
#[derive(Config, Debug, PartialEq)]
pub struct GradcheckOptions {
    /// The step of the centred differences, `> 0` (PyTorch's `eps`).
    #[config(default = 1e-6)]
    pub eps: f64,
    /// Absolute tolerance, `>= 0` (PyTorch's `atol`).
    #[config(default = 1e-5)]
    pub atol: f64,
    /// Relative tolerance, `>= 0` (PyTorch's `rtol`).
    #[config(default = 1e-3)]
    pub rtol: f64,
    /// Check along random directions instead of every entry (PyTorch's `fast_mode`).
    #[config(default = false)]
    pub fast_mode: bool,
    /// Fast mode: random directions per input, `>= 1` (PyTorch takes 1).
    #[config(default = 3)]
    pub directions: usize,
    /// Seed of the random projection `v` and directions `u`.
    #[config(default = 0)]
    pub seed: u64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl GradcheckOptions {
    /// Checks every option's range.
    pub fn validate(&self) -> Result<()> {
        let invalid = |name, value: f64, expected| Error::InvalidOption {
            name,
            value: value.to_string(),
            expected,
        };
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(invalid("gradcheck eps", self.eps, "a finite step > 0"));
        }
        if !(self.atol.is_finite() && self.atol >= 0.0) {
            return Err(invalid(
                "gradcheck atol",
                self.atol,
                "a finite tolerance >= 0",
            ));
        }
        if !(self.rtol.is_finite() && self.rtol >= 0.0) {
            return Err(invalid(
                "gradcheck rtol",
                self.rtol,
                "a finite tolerance >= 0",
            ));
        }
        if self.directions == 0 {
            return Err(invalid("gradcheck directions", 0.0, "at least 1 direction"));
        }
        Ok(())
    }
}

/// Checks the gradients `.backward()` gives `inputs` through `f` against centred finite
/// differences in `f64`.
///
/// `inputs`: a float [`Tensor`] of any rank, `()`, a tuple of up to four, or a `Vec` (see
/// [`GradcheckInputs`]), every tensor `f64` on an autodiff device. `f` returns a float tensor
/// of any rank, or a `Result` of one; it is called once tracked and two times per entry
/// (fast mode: per direction) with untracked, perturbed copies of the inputs.
///
/// Returns the [`GradcheckReport`] (see [`GradcheckReport::passed`]), or an [`Error`] when an
/// input cannot be checked, `f` fails, or an option is out of range.
///
/// # Example
///
/// ```
/// use burn::prelude::*;
/// use burn::tensor::DType;
/// use linear_softmax::gradcheck::{GradcheckOptions, Verdict, gradcheck};
///
/// let device = Device::flex().autodiff();
/// let x = Tensor::<1>::from_data([0.5, -1.5, 2.0], (&device, DType::F64));
///
/// // The value of x^2, with the gradient of x^3 (a deliberately wrong backward).
/// let wrong = |x: Tensor<1>| {
///     let cube = x.clone().powi_scalar(3);
///     (x.powi_scalar(2).detach() + cube.clone() - cube.detach()).sum()
/// };
/// let report = gradcheck(wrong, x, &GradcheckOptions::new())?;
/// assert_eq!(report.inputs[0].verdict, Verdict::Mismatch);
/// # Ok::<(), linear_softmax::Error>(())
/// ```
pub fn gradcheck<I, O>(
    f: impl Fn(I) -> O,
    inputs: I,
    options: &GradcheckOptions,
) -> Result<GradcheckReport>
where
    I: GradcheckInputs,
    O: GradcheckOutput,
{
    check::run(&f, inputs, options)
}

/// Checks the gradients of every float parameter of `module` (found through Burn's module
/// mapper, so any `#[derive(Module)]` works, nested ones included) and of `inputs`, through
/// `f(&module, inputs)`, against centred finite differences in `f64`.
///
/// The parameters come first in the report, named by their path in the module
/// (`"layers.0.weight"`), then the inputs (`"input 0"`, ...); pass `()` to check the
/// parameters alone. The module's parameters must be `f64` on an autodiff device: [`to_f64`]
/// casts a module's. See [`gradcheck`] for the rest.
///
/// # Example
///
/// ```
/// use burn::nn::LinearConfig;
/// use burn::prelude::*;
/// use burn::tensor::DType;
/// use linear_softmax::gradcheck::{GradcheckOptions, gradcheck_module, to_f64};
///
/// let device = Device::flex().autodiff();
/// let layer = to_f64(LinearConfig::new(3, 2).init(&device));
/// let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0]], (&device, DType::F64));
///
/// let f = |layer: &burn::nn::Linear, x: Tensor<2>| layer.forward(x).tanh().sum();
/// let report = gradcheck_module(f, &layer, x, &GradcheckOptions::new())?;
/// assert!(report.passed(), "{report}");
/// let names: Vec<&str> = report.inputs.iter().map(|input| input.name.as_str()).collect();
/// assert_eq!(names, ["weight", "bias", "input 0"]);
/// # Ok::<(), linear_softmax::Error>(())
/// ```
pub fn gradcheck_module<M, I, O>(
    f: impl Fn(&M, I) -> O,
    module: &M,
    inputs: I,
    options: &GradcheckOptions,
) -> Result<GradcheckReport>
where
    M: Module + Clone,
    I: GradcheckInputs,
    O: GradcheckOutput,
{
    let function = |(parameters, inputs): (Parameters<M>, I)| f(&parameters.0, inputs);
    check::run(&function, (Parameters(module.clone()), inputs), options)
}

/// `module` with every float parameter cast to `f64` (PyTorch's `module.double()`), each
/// still requiring a gradient if it did: a module to check with [`gradcheck_module`].
pub fn to_f64<M: Module>(module: M) -> M {
    module.map(&mut CastToF64)
}
