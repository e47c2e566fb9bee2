//! Which kernel runs the fused op, and why; the backends' implementation.
//!
//! The choice is made once per call, from metadata alone (the device's backend, the float
//! type, the targets, the options), before anything runs: a kernel never gives up halfway and
//! hands the work to another. [`kernel_for`] tells a caller (a test, a benchmark) which kernel
//! a call will take.

use burn::backend::tensor::FloatTensor;
use burn::backend::{DispatchDevice, TensorMetadata};
use burn::prelude::*;
use burn::tensor::DType;

use super::backend::{
    FusedInputs, FusedOutput, FusedSpec, Optional, RowUpstream, TargetPrimitives, WantedGradients,
};
use super::cpu::{self, RawBackend, few_classes};
use super::tensor_kernel::{self, PlainBackend, RowPass};
use crate::head::LinearSoftmax;
use crate::options::LossOptions;
use crate::stats::LossStats;
use crate::targets::{TargetKind, Targets};

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
    /// the CubeCL backends: probability targets and softcap).
    Tensor,
    /// The chunk loop on a CubeCL backend (wgpu, CUDA) with each chunk's row pass as one
    /// kernel launch (`cube.rs`) and the GEMMs through the backend's matmul: class indices
    /// without softcap.
    Cube,
    /// No fused kernel: the device's backend has no implementation of the fused op, so the call
    /// runs the [`crate::autodiff`] path (the same loss and gradients, with its `[N, C]`
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

/// The kernel [`crate::fused::loss`] runs for `x`, `targets` and `options` on the device of `x`.
///
/// ```
/// use burn::prelude::*;
/// use linear_softmax::fused::{Kernel, kernel_for};
/// use linear_softmax::{LinearSoftmaxConfig, LossOptions, Targets};
///
/// let device = Device::flex();
/// let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
/// let x = Tensor::<2>::zeros([2, 3], &device);
/// let targets = Targets::from_indices(&[3, 0], 4, &device)?;
/// let choice = kernel_for(&head, &x, &targets, &LossOptions::new());
/// assert_eq!(choice.kernel, Kernel::FewClasses);
/// # Ok::<(), linear_softmax::Error>(())
/// ```
pub fn kernel_for(
    head: &LinearSoftmax,
    x: &Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> KernelChoice {
    match FusedBackend::of(&x.device()) {
        FusedBackend::Cpu => {
            let classes = matches!(targets.kind(), TargetKind::Classes { .. });
            choose(x.dtype(), head.n_classes(), classes, options)
        }
        FusedBackend::Cube => {
            let classes = matches!(targets.kind(), TargetKind::Classes { .. });
            choose_cube(classes, options)
        }
        FusedBackend::Unsupported => KernelChoice {
            kernel: Kernel::Autodiff,
            reason: "this device's backend has no fused implementation: the autodiff path runs",
        },
    }
}

/// The rule of the CubeCL backends: the row-pass kernel where it applies.
pub(crate) fn choose_cube(class_targets: bool, options: &LossOptions) -> KernelChoice {
    let tensor = |reason| KernelChoice {
        kernel: Kernel::Tensor,
        reason,
    };
    if !class_targets {
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
    /// A CubeCL runtime (wgpu, CUDA): the tensor kernel.
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
    class_targets: bool,
    options: &LossOptions,
) -> KernelChoice {
    let tensor = |reason| KernelChoice {
        kernel: Kernel::Tensor,
        reason,
    };
    if !matches!(dtype, DType::F32 | DType::F64 | DType::BF16) {
        return tensor("the raw kernels run f32, f64 and bf16 only");
    }
    if !class_targets {
        return tensor("probability targets: the raw kernels take class indices only");
    }
    if options.softcap.is_some() {
        return tensor("softcap: the raw kernels' row pass has no tanh");
    }
    if n_classes <= few_classes::MAX_CLASSES {
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

/// The CPU backends' implementation: the kernel [`choose`] picks.
pub(crate) fn plain_kernel<B: PlainBackend + RawBackend>(
    inputs: FusedInputs<B>,
    spec: FusedSpec,
    wanted: WantedGradients,
    upstream: RowUpstream<B>,
) -> FusedOutput<B> {
    let [_, n_classes] = inputs.weight.shape().dims::<2>();
    let class_targets = matches!(inputs.targets, TargetPrimitives::Classes(_));
    match choose(inputs.x.dtype(), n_classes, class_targets, &spec.options).kernel {
        Kernel::Raw | Kernel::FewClasses => {
            cpu::linear_cross_entropy::<B>(&inputs, &spec, wanted, &upstream)
        }
        Kernel::Tensor => tensor_kernel(inputs, spec, wanted, upstream, RowPass::Tensor),
        Kernel::Cube | Kernel::Autodiff => unreachable!("the CPU rule picks a CPU kernel"),
    }
}

/// The chunk loop on tensors wrapping the primitives, with `row_pass` running each chunk's
/// row pass.
fn tensor_kernel<B: PlainBackend>(
    inputs: FusedInputs<B>,
    spec: FusedSpec,
    wanted: WantedGradients,
    upstream: RowUpstream<B>,
    row_pass: RowPass,
) -> FusedOutput<B> {
    let FusedInputs {
        x,
        weight,
        bias,
        targets,
        class_weights,
    } = inputs;
    let n_classes = weight.shape().dims::<2>()[1];
    let kind = match targets {
        TargetPrimitives::Classes(labels) => TargetKind::Classes {
            indices: B::wrap_int(labels),
            ignore_index: spec.options.ignore_index,
        },
        TargetPrimitives::Probabilities(probabilities) => {
            TargetKind::Probabilities(B::wrap(probabilities))
        }
    };
    let targets = Targets::trusted(kind, n_classes);
    let output = tensor_kernel::linear_cross_entropy(
        B::wrap(x),
        B::wrap(weight),
        bias.into_option().map(B::wrap),
        &targets,
        class_weights.into_option().map(B::wrap),
        &spec.options,
        spec.chunk_rows,
        wanted,
        spec.stats,
        match upstream {
            RowUpstream::Ones => None,
            RowUpstream::Rows(rows) => Some(B::wrap(rows)),
        },
        B::WEIGHT_TRANSPOSE,
        row_pass,
    );
    let optional = |tensor: Option<FloatTensor<B>>| Optional::from(tensor);
    // The statistics' reductions on the device, from the chunks' predictions and target logits.
    let stats = output
        .predictions
        .zip(output.target_logits)
        .map(|(predictions, target_logits)| {
            let log_sum_exp = output.log_sum_exp.clone();
            LossStats::from_rows(
                predictions,
                target_logits,
                log_sum_exp,
                &targets,
                &spec.options,
            )
        });
    let (predictions, target_log_probability, correct, counted) = match stats {
        Some(stats) => (
            Some(B::unwrap_int(stats.predictions)),
            Some(B::unwrap(stats.target_log_probability)),
            Some(B::unwrap_int(stats.correct)),
            Some(B::unwrap_int(stats.counted)),
        ),
        None => (None, None, None, None),
    };
    FusedOutput {
        loss: B::unwrap(output.loss),
        d_input: optional(output.d_input.map(B::unwrap)),
        d_weight: optional(output.d_weight.map(B::unwrap)),
        d_bias: optional(output.d_bias.map(B::unwrap)),
        log_sum_exp: B::unwrap(output.log_sum_exp),
        predictions: predictions.into(),
        target_log_probability: optional(target_log_probability),
        correct: correct.into(),
        counted: counted.into(),
    }
}

/// `FusedLinearCrossEntropyOps` for a plain CPU backend: [`plain_kernel`], and the upstream
/// gradient read from the backend's own buffer.
macro_rules! plain_fused_ops {
    ($backend:ident) => {
        // NdArray is deprecated upstream in favour of Flex; this crate still serves both.
        #[allow(deprecated)]
        impl super::backend::FusedLinearCrossEntropyOps for burn::backend::$backend {
            fn linear_cross_entropy_with_gradients(
                inputs: FusedInputs<Self>,
                spec: FusedSpec,
                wanted: WantedGradients,
                upstream: RowUpstream<Self>,
            ) -> FusedOutput<Self> {
                plain_kernel::<Self>(inputs, spec, wanted, upstream)
            }

            fn scale_by_upstream(
                gradient: FloatTensor<Self>,
                upstream: FloatTensor<Self>,
            ) -> FloatTensor<Self> {
                cpu::scale_by_scalar::<Self>(gradient, &upstream)
            }
        }
    };
}
#[cfg(feature = "flex")]
plain_fused_ops!(Flex);
#[cfg(feature = "ndarray")]
plain_fused_ops!(NdArray);

/// The CubeCL backends (every runtime, with Burn's fusion): the chunk loop on the backend's own
/// operations, with the row pass as one kernel launch where [`choose_cube`] says so; the
/// upstream gradient stays on the device (the trait's default broadcast multiply).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl super::backend::FusedLinearCrossEntropyOps for burn::backend::Cube {
    fn linear_cross_entropy_with_gradients(
        inputs: FusedInputs<Self>,
        spec: FusedSpec,
        wanted: WantedGradients,
        upstream: RowUpstream<Self>,
    ) -> FusedOutput<Self> {
        let class_targets = matches!(inputs.targets, TargetPrimitives::Classes(_));
        let row_pass = match choose_cube(class_targets, &spec.options).kernel {
            Kernel::Cube => RowPass::Cube,
            _ => RowPass::Tensor,
        };
        tensor_kernel::<Self>(inputs, spec, wanted, upstream, row_pass)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::Dispatch;

    use super::super::backend::FusedLinearCrossEntropyOps;
    use super::*;
    use crate::head::LinearSoftmaxConfig;
    use crate::host::reads_on_this_thread;
    use crate::options::Reduction;

    fn head_and_input(n_classes: usize, device: &Device) -> (LinearSoftmax, Tensor<2>) {
        let head = LinearSoftmaxConfig::new(3, n_classes)
            .init(device)
            .expect("a valid config");
        let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], device);
        (head, x)
    }

    #[test]
    fn the_choice_follows_the_targets_options_and_class_count() {
        let device = Device::flex();
        let (lm_head, x) = head_and_input(32768, &device);
        let classes = Targets::from_indices(&[3, 30000], 32768, &device).unwrap();
        let plain = LossOptions::new();
        let choice = kernel_for(&lm_head, &x, &classes, &plain);
        assert_eq!(choice.kernel, Kernel::Raw, "{}", choice.reason);

        let (classifier, x) = head_and_input(10, &device);
        let classes = Targets::from_indices(&[3, 0], 10, &device).unwrap();
        let choice = kernel_for(&classifier, &x, &classes, &plain);
        assert_eq!(choice.kernel, Kernel::FewClasses, "{}", choice.reason);

        let probabilities = Targets::from_probabilities(&[0.1; 20], [2, 10], &device).unwrap();
        let choice = kernel_for(&classifier, &x, &probabilities, &plain);
        assert_eq!(choice.kernel, Kernel::Tensor);
        assert!(choice.reason.contains("probability"), "{}", choice.reason);

        let softcap = LossOptions::new().with_softcap(Some(30.0));
        let choice = kernel_for(&lm_head, &x, &classes, &softcap);
        assert_eq!(choice.kernel, Kernel::Tensor);
        assert!(choice.reason.contains("softcap"), "{}", choice.reason);

        let choice = choose(DType::F16, 32768, true, &plain);
        assert_eq!(choice.kernel, Kernel::Tensor);
        assert_eq!(choose(DType::BF16, 32768, true, &plain).kernel, Kernel::Raw);
        assert_eq!(
            choose(DType::BF16, 10, true, &plain).kernel,
            Kernel::FewClasses
        );
    }

    #[test]
    fn the_kernel_computes_exactly_the_wanted_gradients() {
        let device = Device::flex();
        let (head, x) = head_and_input(20, &device);
        let classes = Targets::from_indices(&[3, 19], 20, &device).unwrap();
        let probabilities = Targets::from_probabilities(&[0.05; 40], [2, 20], &device).unwrap();
        // One target kind per kernel: the raw kernel and the tensor kernel.
        for targets in [&classes, &probabilities] {
            let run = |wanted: WantedGradients, bias: bool| {
                let inputs = FusedInputs {
                    x: x.clone().into_dispatch(),
                    weight: head.weight().into_dispatch(),
                    bias: Optional::from(bias.then(|| head.bias().unwrap().into_dispatch())),
                    targets: super::super::target_primitives(targets, &device),
                    class_weights: Optional::Absent,
                };
                let output = Dispatch::linear_cross_entropy_with_gradients(
                    inputs,
                    FusedSpec {
                        options: LossOptions::new(),
                        chunk_rows: 1,
                        stats: false,
                    },
                    wanted,
                    RowUpstream::Ones,
                );
                [output.d_input, output.d_weight, output.d_bias]
                    .map(|gradient| gradient.as_option().is_some())
            };
            let only = |input, weight, bias| WantedGradients {
                input,
                weight,
                bias,
            };
            let cases = [
                (WantedGradients::NONE, true, [false, false, false]),
                (WantedGradients::ALL, true, [true, true, true]),
                (WantedGradients::ALL, false, [true, true, false]),
                (only(true, false, false), true, [true, false, false]),
                (only(false, true, false), true, [false, true, false]),
                (only(false, false, true), true, [false, false, true]),
            ];
            for (wanted, bias, expected) in cases {
                assert_eq!(run(wanted, bias), expected, "{wanted:?} bias={bias}");
            }
        }
    }

    /// The route a user takes, on the model's autodiff device, reads nothing back to the host:
    /// the labels, probabilities and upstream gradients stay device tensors across the op (on
    /// a GPU, a read would be a synchronisation point per step).
    #[test]
    fn a_fused_forward_and_backward_reads_nothing_back() {
        let devices = [
            Device::flex(),
            #[cfg(feature = "wgpu")]
            Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        ];
        for (device, n_classes) in devices.iter().flat_map(|d| [(d, 10), (d, 40)]) {
            let device = device.clone().autodiff();
            let (head, x) = head_and_input(n_classes, &device);
            let x = x.require_grad();
            let classes = Targets::from_indices(&[3, 1], n_classes, &device).unwrap();
            let uniform = vec![1.0 / n_classes as f64; 2 * n_classes];
            let probabilities =
                Targets::from_probabilities(&uniform, [2, n_classes], &device).unwrap();
            let upstream = Tensor::<1>::from_data([0.5, -2.0], &device);
            for targets in [&classes, &probabilities] {
                for (reduction, stats) in [Reduction::Mean, Reduction::None]
                    .into_iter()
                    .flat_map(|reduction| [(reduction, false), (reduction, true)])
                {
                    let options = LossOptions::new().with_reduction(reduction);
                    let before = reads_on_this_thread();
                    let loss = match stats {
                        false => head.loss(x.clone(), targets, &options).unwrap(),
                        // The statistics stay on the device too, until someone reads them.
                        true => {
                            head.loss_with_stats(x.clone(), targets, &options)
                                .unwrap()
                                .0
                        }
                    };
                    let loss = match reduction {
                        Reduction::None => (loss * upstream.clone()).sum(),
                        _ => loss * 2.5,
                    };
                    let grads = loss.backward();
                    assert_eq!(
                        reads_on_this_thread(),
                        before,
                        "{device:?}, C = {n_classes}, {reduction:?}, stats: {stats}"
                    );
                    assert!(x.grad(&grads).is_some());
                    assert!(head.linear.weight.grad(&grads).is_some());
                }
            }
        }
        for device in devices {
            // Nothing above read the gradients back: let the device finish before the process
            // exits (lavapipe crashed at exit while still compiling a shader).
            device.sync().expect("the device finishes its queued work");
        }
    }

    #[test]
    fn the_host_read_counter_counts() {
        let device = Device::flex();
        let before = reads_on_this_thread();
        let labels = Tensor::<1, Int>::from_data([1, 0], &device);
        Targets::from_tensor(labels, 2).unwrap();
        assert_eq!(reads_on_this_thread(), before + 1);
    }
}
