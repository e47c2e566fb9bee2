//! Which kernel runs the fused op, and why (the backends' implementation of the op, which runs
//! the chosen kernel, is `backend_impls.rs`).
//!
//! The choice is made once per call, from metadata alone (the device's backend, the float
//! type, the targets, the options), before anything runs: a kernel never gives up halfway and
//! hands the work to another. [`kernel_for`] tells a caller (a test, a benchmark) which kernel
//! a call will take.

use burn::backend::DispatchDevice;
use burn::prelude::*;
use burn::tensor::DType;

use super::cpu::few_classes;
use crate::head::LinearSoftmax;
use crate::loss::{LossOptions, LossPath, TargetKind, Targets};

/// The kernels of the fused op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Chunks of `R` rows on raw CPU buffers: three GEMMs per chunk around a vectorised row
    /// pass, one reused `[R, C]` buffer (Flex, NdArray; class indices; f32, f64, and bf16 with
    /// bf16 GEMMs summing in f32, AVX512-BF16 where the CPU has it).
    Raw,
    /// One streaming pass over the rows for a classifier with few classes (`C <= 16`), the
    /// raw kernel's row code without GEMMs (bf16 inputs widened to f32).
    FewClasses,
    /// The chunk loop on tensor operations: every option and target kind, any float type (on
    /// the CubeCL backends: probability targets and softcap; everywhere: a teacher's targets,
    /// whose logits it forms chunk by chunk beside the student's).
    Tensor,
    /// The chunk loop on a CubeCL backend (wgpu, CUDA) with each chunk's row pass as one
    /// kernel launch (`fused/cube/`) and the GEMMs through the backend's matmul: class indices
    /// without softcap.
    Cube,
    /// No fused kernel: the device's backend has no implementation of the fused op, so the call
    /// runs the autodiff path (the same loss and gradients, with its `[N, C]`
    /// intermediates).
    Autodiff,
}

/// The kernel a fused call takes, and the reason, as a sentence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelChoice {
    /// The kernel.
    pub kernel: Kernel,
    /// Why this one: what about the call ruled the faster ones out, or let them in.
    pub reason: &'static str,
}

/// The kernel the fused path ([`LossPath::Fused`]) runs for `x`, `targets` and `options` on
/// the device of `x`; `None` when `options.path` is another path.
///
/// ```
/// use burn::prelude::*;
/// use linear_softmax::diagnostics::{Kernel, kernel_for};
/// use linear_softmax::{LinearSoftmaxConfig, LossOptions, Targets};
///
/// let device = Device::flex();
/// let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
/// let x = Tensor::<2>::zeros([2, 3], &device);
/// let targets = Targets::from_indices(&[3, 0], 4, &device)?;
/// let choice = kernel_for(&head, &x, &targets, &LossOptions::new()).expect("the fused path");
/// assert_eq!(choice.kernel, Kernel::FewClasses);
/// # Ok::<(), linear_softmax::Error>(())
/// ```
pub fn kernel_for<const K: usize>(
    head: &LinearSoftmax,
    x: &Tensor<K>,
    targets: &Targets,
    options: &LossOptions,
) -> Option<KernelChoice> {
    if options.path != LossPath::Fused {
        return None;
    }
    let form = TargetForm::of(targets.kind());
    Some(match FusedBackend::of(&x.device()) {
        FusedBackend::Cpu => choose(x.dtype(), head.n_classes(), form, options),
        FusedBackend::Cube => choose_cube(form, options),
        FusedBackend::Unsupported => KernelChoice {
            kernel: Kernel::Autodiff,
            reason: "this device's backend has no fused implementation: the autodiff path runs",
        },
    })
}

/// What the kernel choice needs to know of the targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TargetForm {
    /// Class indices.
    Classes,
    /// Class probabilities.
    Probabilities,
    /// A teacher (distillation).
    Teacher,
}

impl TargetForm {
    /// The form of `kind`.
    pub(crate) fn of(kind: &TargetKind) -> Self {
        match kind {
            TargetKind::Classes { .. } => Self::Classes,
            TargetKind::Probabilities(_) => Self::Probabilities,
            TargetKind::Teacher { .. } => Self::Teacher,
        }
    }
}

/// The reason the tensor kernel runs a teacher's targets, on every backend.
const TEACHER: &str = "a teacher (distillation): both heads' chunks on tensor operations";

/// The rule of the CubeCL backends: the row-pass kernel where it applies.
pub(crate) fn choose_cube(form: TargetForm, options: &LossOptions) -> KernelChoice {
    let tensor = |reason| KernelChoice {
        kernel: Kernel::Tensor,
        reason,
    };
    if form == TargetForm::Teacher {
        tensor(TEACHER)
    } else if form == TargetForm::Probabilities {
        tensor("a CubeCL device with probability targets: the row pass on tensor operations")
    } else if options.softcap.is_some() {
        tensor("a CubeCL device with softcap: the row pass on tensor operations")
    } else {
        KernelChoice {
            kernel: Kernel::Cube,
            reason: "a CubeCL device with class indices: one row-pass launch per chunk",
        }
    }
}

/// Which implementation of the fused op a device's backend has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FusedBackend {
    /// Flex or NdArray: the raw CPU kernels, or the tensor kernel.
    Cpu,
    /// A CubeCL runtime (wgpu, CUDA): the chunk loop, with the Cube row pass or the tensor
    /// kernel's ([`choose_cube`]).
    #[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
    Cube,
    /// None (e.g. LibTorch, Remote, or a backend this crate was built without): dispatching the
    /// op there would panic, so the callers run the autodiff path instead.
    Unsupported,
}

impl FusedBackend {
    /// The implementation for `device` (plain or autodiff), from the device alone.
    pub(crate) fn of(device: &Device) -> Self {
        Self::of_dispatch(device.as_dispatch())
    }

    // Which variants exist depends on burn's features, so `_` may be unreachable in a build
    // where every backend burn has is one of ours.
    #[allow(unreachable_patterns)]
    fn of_dispatch(device: &DispatchDevice) -> Self {
        match device {
            DispatchDevice::Autodiff(inner) => Self::of_dispatch(inner),
            #[cfg(feature = "flex")]
            DispatchDevice::Flex(_) => Self::Cpu,
            #[cfg(feature = "ndarray")]
            DispatchDevice::NdArray(_) => Self::Cpu,
            #[cfg(any(feature = "wgpu", feature = "cuda"))]
            DispatchDevice::Cube(_) => Self::Cube,
            _ => Self::Unsupported,
        }
    }
}

/// The one rule behind [`kernel_for`] and the backends' implementation.
pub(crate) fn choose(
    dtype: DType,
    n_classes: usize,
    form: TargetForm,
    options: &LossOptions,
) -> KernelChoice {
    let tensor = |reason| KernelChoice {
        kernel: Kernel::Tensor,
        reason,
    };
    if form == TargetForm::Teacher {
        return tensor(TEACHER);
    }
    if !matches!(dtype, DType::F32 | DType::F64 | DType::BF16) {
        return tensor("the raw kernels run f32, f64 and bf16 only");
    }
    if form == TargetForm::Probabilities {
        return tensor("probability targets: the raw kernels take class indices only");
    }
    if options.softcap.is_some() {
        return tensor("softcap: the raw kernels' row pass has no tanh");
    }
    if n_classes <= few_classes::MAX_CLASSES && options.gradient_filter.is_on() {
        KernelChoice {
            kernel: Kernel::Raw,
            reason: "a gradient filter: the chunk loop (the few-classes pass forms no dS to filter)",
        }
    } else if n_classes <= few_classes::MAX_CLASSES {
        KernelChoice {
            kernel: Kernel::FewClasses,
            reason: "at most 16 classes: one streaming pass beats three narrow GEMMs",
        }
    } else {
        KernelChoice {
            kernel: Kernel::Raw,
            reason: "class indices in f32, f64 or bf16: chunked GEMMs on raw buffers",
        }
    }
}
