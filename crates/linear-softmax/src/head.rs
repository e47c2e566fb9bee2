//! The head itself: a [`Linear`] layer whose logits feed a softmax.

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::softmax;

use crate::error::{Error, Result};
use crate::host::to_host_f64;
use crate::loss_path::LossPath;
use crate::options::LossOptions;
use crate::stats::LossStats;
use crate::targets::Targets;

/// Configuration of a [`LinearSoftmax`] head, created with [`init`](LinearSoftmaxConfig::init).
#[derive(Config, Debug)]
pub struct LinearSoftmaxConfig {
    /// Number of input features `D`.
    pub d_input: usize,
    /// Number of classes `C`.
    pub n_classes: usize,
    /// Whether the scores get a bias `b`.
    #[config(default = true)]
    pub bias: bool,
    /// Initializer of the weight and bias; the default is PyTorch's and Burn's `Linear` default,
    /// `U(-1/sqrt(D), 1/sqrt(D))`.
    #[config(
        default = "Initializer::KaimingUniform{gain: 0.5773502691896258, fan_out_only: false}"
    )]
    pub initializer: Initializer,
}

impl LinearSoftmaxConfig {
    /// Creates the head on `device` (in the device's default float type).
    ///
    /// Returns [`Error::InvalidOption`] when `d_input` or `n_classes` is 0.
    pub fn init(&self, device: &Device) -> Result<LinearSoftmax> {
        for (name, value) in [("d_input", self.d_input), ("n_classes", self.n_classes)] {
            if value == 0 {
                return Err(Error::InvalidOption {
                    name,
                    value: value.to_string(),
                    expected: "at least 1",
                });
            }
        }
        let linear = LinearConfig::new(self.d_input, self.n_classes)
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
            .init(device);
        Ok(LinearSoftmax { linear })
    }
}

/// A linear layer followed by a softmax over classes: `S = X W + b`, `A = softmax(S)`.
///
/// The weight is `[D, C]` (Burn's row layout), so the scores are exactly `X W + b`. Training
/// goes through one of the three loss paths: [`crate::autodiff`], [`crate::manual`] and
/// [`crate::fused`] (see [`LossPath`] and [`LinearSoftmax::loss`]).
///
/// # Shapes
/// - input `x`: `[N, D]`
/// - logits, probabilities: `[N, C]`
/// - predictions, log-sum-exp: `[N]`
///
/// # Example
/// ```
/// use burn::prelude::*;
/// use linear_softmax::LinearSoftmaxConfig;
///
/// let device = Device::flex();
/// let head = LinearSoftmaxConfig::new(4, 3).init(&device).unwrap();
/// let x = Tensor::<2>::ones([2, 4], &device);
/// let probabilities = head.probabilities(x).unwrap();
/// let row_sums = probabilities.sum_dim(1).into_data().try_to_vec::<f32>().unwrap();
/// assert!(row_sums.iter().all(|s| (s - 1.0).abs() < 1e-6));
/// ```
#[derive(Module, Debug)]
pub struct LinearSoftmax {
    /// The linear layer holding `W [D, C]` and `b [C]`.
    pub linear: Linear,
}

impl LinearSoftmax {
    /// Builds a head from given parameters (`weight [D, C]`, `bias [C]`).
    pub fn from_tensors(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Result<Self> {
        let [d_input, n_classes] = weight.dims();
        if d_input == 0 || n_classes == 0 {
            return Err(Error::ShapeMismatch {
                what: "weight",
                expected: vec![d_input.max(1), n_classes.max(1)],
                got: vec![d_input, n_classes],
            });
        }
        if let Some(bias) = &bias
            && bias.dims() != [n_classes]
        {
            return Err(Error::ShapeMismatch {
                what: "bias",
                expected: vec![n_classes],
                got: bias.dims().to_vec(),
            });
        }
        Ok(Self {
            linear: Linear {
                weight: Param::from_tensor(weight),
                bias: bias.map(Param::from_tensor),
            },
        })
    }

    /// The weight `W`, `[D, C]`.
    pub fn weight(&self) -> Tensor<2> {
        self.linear.weight.val()
    }

    /// The bias `b`, `[C]`, if the head has one.
    pub fn bias(&self) -> Option<Tensor<1>> {
        self.linear.bias.as_ref().map(Param::val)
    }

    /// Number of input features `D`.
    pub fn d_input(&self) -> usize {
        self.linear.weight.shape()[0]
    }

    /// Number of classes `C`.
    pub fn n_classes(&self) -> usize {
        self.linear.weight.shape()[1]
    }

    /// The same head with its parameters cast to `dtype` (e.g. `DType::F64` for checks).
    pub fn cast(self, dtype: DType) -> Self {
        let Linear { weight, bias } = self.linear;
        Self {
            linear: Linear {
                weight: weight.map(|w| w.cast(dtype)),
                bias: bias.map(|b| b.map(|b| b.cast(dtype))),
            },
        }
    }

    /// Checks that `x` is a non-empty `[N, D]` batch for this head, on its device and in its
    /// float type, which the device computes in (metadata only: nothing is read from the
    /// device).
    pub(crate) fn check_input(&self, x: &Tensor<2>) -> Result<()> {
        check_input_dims(x.dims(), self.d_input())?;
        // Devices compare by hardware: a plain input for a head on the autodiff device of the
        // same backend is fine (it is a constant of the graph).
        let head_device = self.linear.weight.device();
        if x.device().inner() != head_device.clone().inner() {
            return Err(Error::DeviceMismatch {
                expected: format!("{head_device:?}"),
                got: format!("{:?}", x.device()),
            });
        }
        let expected = self.linear.weight.dtype();
        if x.dtype() != expected {
            return Err(Error::DTypeMismatch {
                expected,
                got: x.dtype(),
            });
        }
        check_dtype(&head_device, expected)
    }

    /// Checks that `x` and the head's parameters hold only finite values: the opt-in half of
    /// the crate's policy on NaN and infinity.
    ///
    /// Every loss path lets NaN and infinity propagate, as PyTorch does: a NaN in `x` or `W`
    /// gives `Ok` with a NaN loss and NaN gradients. Checking on every call would read values
    /// back to the host on every step (on a GPU, a synchronisation), so the check is this
    /// separate call: on a new data set, or once a loss came back non-finite, to name the
    /// culprit. It reads `x`, `W` and `b` back once.
    ///
    /// Returns [`Error::NonFiniteInput`] naming the first such entry of `x`, else
    /// [`Error::NonFiniteParameter`] naming the first of `W`, then `b`.
    ///
    /// ```
    /// use burn::prelude::*;
    /// use linear_softmax::{Error, LinearSoftmaxConfig, LossOptions, Targets};
    ///
    /// let device = Device::flex();
    /// let head = LinearSoftmaxConfig::new(2, 3).init(&device)?;
    /// let x = Tensor::<2>::from_data([[0.5, 1.0], [f32::NAN, 0.0]], &device);
    /// let targets = Targets::from_indices(&[2, 0], 3, &device)?;
    /// let loss = head.loss(x.clone(), &targets, &LossOptions::new())?;
    /// assert!(loss.into_scalar::<f32>().is_nan());
    /// assert_eq!(
    ///     head.check_finite(&x),
    ///     Err(Error::NonFiniteInput { row: 1, column: 0 })
    /// );
    /// # Ok::<(), linear_softmax::Error>(())
    /// ```
    pub fn check_finite(&self, x: &Tensor<2>) -> Result<()> {
        self.check_input(x)?;
        if let Some((row, column)) = first_non_finite(x)? {
            return Err(Error::NonFiniteInput { row, column });
        }
        if let Some((row, column)) = first_non_finite(&self.weight())? {
            let at = format!("weight[{row}, {column}]");
            return Err(Error::NonFiniteParameter { at });
        }
        if let Some(bias) = self.bias()
            && let Some((_, column)) = first_non_finite(&bias.unsqueeze_dim(0))?
        {
            let at = format!("bias[{column}]");
            return Err(Error::NonFiniteParameter { at });
        }
        Ok(())
    }

    /// Checks `x` and that `targets` has one label per row of `x` and this head's class count.
    pub(crate) fn check_batch(&self, x: &Tensor<2>, targets: &Targets) -> Result<()> {
        self.check_input(x)?;
        check_targets(x.dims()[0], targets, self.n_classes())
    }

    /// Everything every loss path checks before computing: the options (against this head's
    /// class count), the batch's shapes, and the targets' kind against the options.
    pub(crate) fn check_loss_inputs(
        &self,
        x: &Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<()> {
        options.validate_for(self.n_classes())?;
        self.check_batch(x, targets)?;
        targets.check_options(options)
    }

    /// Logits `S = X W + b`, `[N, C]`.
    pub fn forward(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        self.check_input(&x)?;
        Ok(self.linear.forward(x))
    }

    /// Class probabilities `softmax(S)` along the class dimension, `[N, C]`.
    pub fn probabilities(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        Ok(softmax(self.forward(x)?, 1))
    }

    /// The most probable class of each row, `[N]` (Int).
    pub fn predict(&self, x: Tensor<2>) -> Result<Tensor<1, Int>> {
        Ok(self.forward(x)?.argmax(1).squeeze_dim(1))
    }

    /// `lse_i = log sum_k exp(S_ik)`, computed stably (row maximum subtracted), `[N]`.
    pub fn log_sum_exp(&self, x: Tensor<2>) -> Result<Tensor<1>> {
        Ok(log_sum_exp(self.forward(x)?))
    }

    /// The training loss (`L = (1/N) sum_i (lse_i - S_{i, y_i})` without options; see
    /// [`LossOptions`] for the rest), through the fused op ([`LossPath::Fused`]).
    ///
    /// On an autodiff device (`head.train()`, or `x` produced by tracked layers),
    /// `loss.backward()` gives every tracked tensor its gradient.
    ///
    /// # Shapes
    /// - `x`: `[N, D]`, `targets`: `[N]` or `[N, C]`, result: `[1]` (`[N]` with reduction none)
    pub fn loss(
        &self,
        x: Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<Tensor<1>> {
        self.loss_with_path(x, targets, options, LossPath::default())
    }

    /// [`loss`](Self::loss) and the per-row log-sum-exp `lse_i` `[N]` of the (capped) logits
    /// from the same fused pass (no second forward, no `[N, C]` tensor), detached from the
    /// graph: e.g. to watch the quantity a z-loss pulls towards 0.
    ///
    /// # Shapes
    /// - results: `[1]` (`[N]` with reduction none) and `[N]`
    pub fn loss_and_log_sum_exp(
        &self,
        x: Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<(Tensor<1>, Tensor<1>)> {
        LossPath::default().loss_and_log_sum_exp(self, x, targets, options)
    }

    /// [`loss`](Self::loss) and the per-row [`LossStats`] from the same fused pass: each
    /// row's predicted class, the number of correct rows among those not ignored, the target
    /// log-probabilities and `lse`, with no second forward pass and (on a backend with the
    /// fused op) no `[N, C]` tensor (see [`crate::fused::loss_with_stats`]). The statistics are
    /// detached from the graph.
    ///
    /// # Shapes
    /// - `x`: `[N, D]`, `targets`: `[N]` or `[N, C]`, loss: `[1]` (`[N]` with reduction none)
    pub fn loss_with_stats(
        &self,
        x: Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<(Tensor<1>, LossStats)> {
        LossPath::default().loss_with_stats(self, x, targets, options)
    }

    /// [`sequence_loss`](Self::sequence_loss) and the per-token [`LossStats`] (token accuracy
    /// over the non-padding positions, token log-likelihoods), by the fused op.
    ///
    /// # Shapes
    /// - `x`: `[B, T, D]`, `targets`: `[B, T]` labels; the statistics' rows are the `B * T`
    ///   positions (`.reshape([B, T])` gives the grid)
    pub fn sequence_loss_with_stats(
        &self,
        x: Tensor<3>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<(Tensor<1>, LossStats)> {
        LossPath::default().sequence_loss_with_stats(self, x, targets, options)
    }

    /// The loss of a sequence batch `x` `[B, T, D]` (an LM head) by the fused op: the rows
    /// `x.reshape([B * T, D])`, see [`LossPath::sequence_loss`].
    ///
    /// # Shapes
    /// - `x`: `[B, T, D]`, `targets`: `[B, T]` labels ([`Targets::from_sequence_tensor`]),
    ///   result: `[1]` (`[B * T]` with reduction none)
    ///
    /// # Example
    /// ```
    /// use burn::prelude::*;
    /// use linear_softmax::{LinearSoftmaxConfig, LossOptions, Targets};
    ///
    /// let device = Device::flex().autodiff();
    /// let head = LinearSoftmaxConfig::new(8, 50).init(&device).unwrap();
    /// // Two sequences of 4 tokens; the second is padded after 2 tokens (label -100).
    /// let hidden = Tensor::<3>::random([2, 4, 8], burn::tensor::Distribution::Default, &device)
    ///     .require_grad();
    /// let labels = Tensor::<2, Int>::from_data([[3, 14, 15, 9], [2, 6, -100, -100]], &device);
    /// let targets = Targets::from_sequence_tensor(labels, 50, Some(-100)).unwrap();
    /// let options = LossOptions::new().with_ignore_index(Some(-100));
    /// let loss = head.sequence_loss(hidden.clone(), &targets, &options).unwrap();
    /// let grads = loss.backward();
    /// assert_eq!(hidden.grad(&grads).unwrap().dims(), [2, 4, 8]);
    /// ```
    pub fn sequence_loss(
        &self,
        x: Tensor<3>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<Tensor<1>> {
        LossPath::default().sequence_loss(self, x, targets, options)
    }

    /// The rows `[B * T, D]` of a sequence batch `x` `[B, T, D]`, checked first: Burn's
    /// `reshape` reads a 0 as "keep this dimension", so an empty batch or a 0-wide input would
    /// be a shape panic there instead of an error.
    pub(crate) fn sequence_rows(&self, x: Tensor<3>) -> Result<Tensor<2>> {
        let [batch, time, features] = x.dims();
        if batch * time == 0 {
            return Err(Error::EmptyBatch);
        }
        if features != self.d_input() {
            return Err(Error::InputWidthMismatch {
                got: features,
                expected: self.d_input(),
            });
        }
        Ok(x.reshape([batch * time, features]))
    }

    /// [`loss`](Self::loss) through a chosen [`LossPath`], to compare the paths.
    pub fn loss_with_path(
        &self,
        x: Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
        path: LossPath,
    ) -> Result<Tensor<1>> {
        path.loss(self, x, targets, options)
    }
}

/// Stable `log sum_k exp(S_ik)` of each row of `logits` `[N, C]`, as `[N]`.
pub fn log_sum_exp(logits: Tensor<2>) -> Tensor<1> {
    let row_max = logits.clone().max_dim(1).detach();
    let sum_exp = (logits - row_max.clone()).exp().sum_dim(1);
    (row_max + sum_exp.log()).squeeze_dim(1)
}

/// Whether the head can compute its loss on `device` in `dtype`: every loss call checks this,
/// and a caller that chooses a float type (e.g. an f64 check) can ask first. Metadata only.
///
/// Returns [`Error::UnsupportedDType`], with the reason, when the device cannot: its backend
/// does not support the type, or computes it wrongly (f64 on wgpu).
///
/// ```
/// use burn::prelude::*;
/// use burn::tensor::DType;
///
/// assert!(linear_softmax::check_dtype(&Device::flex(), DType::F64).is_ok());
/// ```
pub fn check_dtype(device: &Device, dtype: DType) -> Result<()> {
    match unsupported_dtype(device, dtype) {
        None => Ok(()),
        Some(reason) => Err(Error::UnsupportedDType {
            dtype,
            device: format!("{device:?}"),
            reason,
        }),
    }
}

/// Why `device` cannot compute the loss in `dtype`, or `None` when it can.
fn unsupported_dtype(device: &Device, dtype: DType) -> Option<&'static str> {
    if !device.supports_dtype(dtype) {
        return Some("its backend does not support this float type");
    }
    // wgpu reports f64 as supported, and its f64 matmul, sums and maxima are right, but its f64
    // exp and log return garbage (exp(-2) came back as 5.6e-315 on Vulkan, whose exp and log
    // instructions are defined for 16- and 32-bit floats only).
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if dtype == DType::F64 && is_wgpu(device.as_dispatch()) {
        return Some("wgpu's f64 exp and log are wrong (Vulkan's exp and log are 32-bit only)");
    }
    None
}

/// Whether `device` (plain or autodiff) is a device of CubeCL's wgpu runtime.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
#[allow(unreachable_patterns)]
fn is_wgpu(device: &burn::backend::DispatchDevice) -> bool {
    use burn::backend::{DispatchDevice, RuntimeId};
    match device {
        DispatchDevice::Autodiff(inner) => is_wgpu(inner),
        DispatchDevice::Cube(device) => device.runtime() == RuntimeId::Wgpu,
        _ => false,
    }
}

/// The `(row, column)` of the first NaN or infinite entry of `tensor`, read back once.
fn first_non_finite(tensor: &Tensor<2>) -> Result<Option<(usize, usize)>> {
    let columns = tensor.dims()[1].max(1);
    let values = to_host_f64(tensor)?;
    let first = values.iter().position(|value| !value.is_finite());
    Ok(first.map(|index| (index / columns, index % columns)))
}

pub(crate) fn check_input_dims([rows, features]: [usize; 2], d_input: usize) -> Result<()> {
    if rows == 0 {
        return Err(Error::EmptyBatch);
    }
    if features != d_input {
        return Err(Error::InputWidthMismatch {
            got: features,
            expected: d_input,
        });
    }
    Ok(())
}

pub(crate) fn check_targets(rows: usize, targets: &Targets, n_classes: usize) -> Result<()> {
    if targets.len() != rows {
        return Err(Error::TargetCountMismatch {
            targets: targets.len(),
            rows,
        });
    }
    if targets.n_classes() != n_classes {
        return Err(Error::ClassCountMismatch {
            targets: targets.n_classes(),
            head: n_classes,
        });
    }
    Ok(())
}
