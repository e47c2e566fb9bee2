//! The head itself: a [`Linear`] layer whose logits feed a softmax. Its losses live with the
//! paths that compute them (`paths/mod.rs`): this module imports none of them.

mod teacher_targets;

use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::softmax;

use crate::error::{Error, Result};
use crate::host::to_host_f64;
use crate::loss::{LossOptions, Targets};
use crate::math::log_sum_exp;

/// The largest finite f16 value.
const F16_MAX: f64 = 65504.0;

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
/// goes through [`loss`](Self::loss) (the loss as a graph node),
/// [`loss_output`](Self::loss_output) (the loss and what the same pass knows) or
/// [`gradients`](Self::gradients) (the gradients as plain values), by the path that
/// [`LossOptions::path`](crate::LossOptions::path) chooses.
///
/// # Shapes
/// - input `x`: `[.., D]` (`[N, D]`, `[B, T, D]`, ...) for `forward`, `probabilities` and the
///   losses; `[N, D]` for `predict` and `log_sum_exp`
/// - logits, probabilities: `[.., C]`
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

    /// Number of input features `D` (the config's `d_input`, Burn's `LinearConfig` name).
    pub fn n_features(&self) -> usize {
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

    /// Checks that `x` is a non-empty `[.., D]` batch for this head, on its device and in its
    /// float type, which the device computes in (metadata only: nothing is read from the
    /// device).
    pub(crate) fn check_input<const K: usize>(&self, x: &Tensor<K>) -> Result<()> {
        check_input_dims(&x.dims(), self.n_features())?;
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

    /// Checks `x` and that `targets` has the leading shape of `x` and this head's class count.
    pub(crate) fn check_batch<const K: usize>(
        &self,
        x: &Tensor<K>,
        targets: &Targets,
    ) -> Result<()> {
        self.check_input(x)?;
        check_targets(&x.dims()[..K - 1], targets, self.n_classes())
    }

    /// Everything every loss path checks before computing: the options (against this head's
    /// class count), the batch's shapes, and the targets' kind against the options.
    pub(crate) fn check_loss_inputs<const K: usize>(
        &self,
        x: &Tensor<K>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<()> {
        options.validate_for(self.n_classes())?;
        self.check_batch(x, targets)?;
        targets.check_options(options)?;
        // The tensor paths hold a given denominator in the input's float type: f16 would turn
        // a step's token count above its largest value into infinity (and the loss into 0).
        if let Some(denominator) = options.mean_denominator
            && x.dtype() == DType::F16
            && denominator > F16_MAX
        {
            return Err(Error::InvalidOption {
                name: "mean_denominator",
                value: denominator.to_string(),
                expected: "at most 65504 with f16 inputs (held in the input's float type): \
                           compute the loss in f32 or bf16",
            });
        }
        Ok(())
    }

    /// Logits `S = X W + b`, `[.., C]` for `x` `[.., D]`.
    pub fn forward<const K: usize>(&self, x: Tensor<K>) -> Result<Tensor<K>> {
        self.check_input(&x)?;
        Ok(self.linear.forward(x))
    }

    /// Class probabilities `softmax(S)` along the class (last) dimension, `[.., C]`.
    pub fn probabilities<const K: usize>(&self, x: Tensor<K>) -> Result<Tensor<K>> {
        Ok(softmax(self.forward(x)?, K - 1))
    }

    /// The most probable class of each row, `[N]` (Int).
    pub fn predict(&self, x: Tensor<2>) -> Result<Tensor<1, Int>> {
        Ok(self.forward(x)?.argmax(1).squeeze_dim(1))
    }

    /// `lse_i = log sum_k exp(S_ik)`, computed stably (row maximum subtracted), `[N]`.
    pub fn log_sum_exp(&self, x: Tensor<2>) -> Result<Tensor<1>> {
        Ok(log_sum_exp(self.forward(x)?))
    }
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

/// Checks the dims of an input `[.., D]`: at least one row, width `n_features`. Burn's
/// `reshape` reads a 0 as "keep this dimension", so an empty batch must be refused before
/// the rows are flattened.
pub(crate) fn check_input_dims(dims: &[usize], n_features: usize) -> Result<()> {
    let (&features, leading) = dims
        .split_last()
        .expect("a tensor has at least one dimension");
    if leading.is_empty() {
        return Err(Error::ShapeMismatch {
            what: "input",
            expected: vec![1, n_features],
            got: dims.to_vec(),
        });
    }
    if leading.iter().product::<usize>() == 0 {
        return Err(Error::EmptyBatch);
    }
    if features != n_features {
        return Err(Error::InputWidthMismatch {
            got: features,
            expected: n_features,
        });
    }
    Ok(())
}

/// Checks that `targets` has one target per row of an input of leading shape `leading`, in that
/// shape, and `n_classes` classes.
pub(crate) fn check_targets(leading: &[usize], targets: &Targets, n_classes: usize) -> Result<()> {
    let rows = leading.iter().product::<usize>();
    if targets.len() != rows {
        return Err(Error::TargetCountMismatch {
            targets: targets.len(),
            rows,
        });
    }
    if targets.shape() != leading {
        return Err(Error::ShapeMismatch {
            what: "targets (the leading shape of the input)",
            expected: leading.to_vec(),
            got: targets.shape().to_vec(),
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
