//! The fused op for each backend that has it: Flex and NdArray run the kernel that
//! [`choose`] picks, the CubeCL backends the chunk loop with the row pass that [`choose_cube`]
//! picks. Which kernel, and why, is `choice.rs`.

use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;

use super::backend::{
    FusedInputs, FusedOutput, FusedSpec, Optional, RowUpstream, TargetPrimitives, WantedGradients,
};
#[cfg(any(feature = "wgpu", feature = "cuda"))]
use super::choice::choose_cube;
use super::choice::{Kernel, TargetForm, choose};
use super::cpu::{self, RawBackend};
use super::tensor_kernel::{self, PlainBackend, RowPass};
use crate::loss::{LossStats, TargetKind, Targets, Teacher};

/// The CPU backends' implementation: the kernel [`choose`] picks.
pub(crate) fn plain_kernel<B: PlainBackend + RawBackend>(
    inputs: FusedInputs<B>,
    spec: FusedSpec,
    wanted: WantedGradients,
    upstream: RowUpstream<B>,
) -> FusedOutput<B> {
    let [_, n_classes] = inputs.weight.shape().dims::<2>();
    let form = target_form(&inputs.targets);
    match choose(inputs.x.dtype(), n_classes, form, &spec.options).kernel {
        Kernel::Raw | Kernel::FewClasses => {
            cpu::linear_cross_entropy::<B>(&inputs, &spec, wanted, &upstream)
        }
        Kernel::Tensor => tensor_kernel(inputs, spec, wanted, upstream, RowPass::Tensor),
        Kernel::Cube | Kernel::Autodiff => unreachable!("the CPU rule picks a CPU kernel"),
    }
}

/// The form of the targets, for the kernel choice.
fn target_form<B: burn::backend::Backend>(targets: &TargetPrimitives<B>) -> TargetForm {
    match targets {
        TargetPrimitives::Classes(_) => TargetForm::Classes,
        TargetPrimitives::Probabilities(_) => TargetForm::Probabilities,
        TargetPrimitives::Teacher { .. } => TargetForm::Teacher,
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
        row_weights,
    } = inputs;
    let n_classes = weight.shape().dims::<2>()[1];
    let kind = match targets {
        TargetPrimitives::Classes(labels) => TargetKind::Classes {
            indices: B::wrap_int(labels),
            ignore_index: spec.ignore_index,
        },
        TargetPrimitives::Probabilities(probabilities) => {
            TargetKind::Probabilities(B::wrap(probabilities))
        }
        TargetPrimitives::Teacher {
            hidden,
            weight,
            bias,
            labels,
        } => TargetKind::Teacher {
            teacher: Teacher {
                hidden: B::wrap(hidden),
                weight: B::wrap(weight),
                bias: bias.into_option().map(B::wrap),
            },
            labels: labels.into_option().map(B::wrap_int),
            ignore_index: spec.ignore_index,
        },
    };
    let targets = Targets::trusted(kind, n_classes, row_weights.into_option().map(B::wrap));
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
    // The statistics' reductions on the device, from the chunks' predictions and target
    // log-probabilities.
    let stats = output.stats.map(|rows| {
        LossStats::from_rows(
            rows.predictions,
            rows.target_log_probabilities,
            rows.entropies,
            &targets,
            &spec.options,
        )
    });
    let (predictions, target_log_probability, entropy, correct, counted) = match stats {
        Some(stats) => (
            Some(B::unwrap_int(stats.predictions)),
            Some(B::unwrap(stats.target_log_probability)),
            Some(B::unwrap(stats.entropy)),
            Some(B::unwrap_int(stats.correct)),
            Some(B::unwrap_int(stats.counted)),
        ),
        None => (None, None, None, None, None),
    };
    FusedOutput {
        loss: B::unwrap(output.loss),
        d_input: optional(output.d_input.map(B::unwrap)),
        d_weight: optional(output.d_weight.map(B::unwrap)),
        d_bias: optional(output.d_bias.map(B::unwrap)),
        log_sum_exp: B::unwrap(output.log_sum_exp),
        predictions: predictions.into(),
        target_log_probability: optional(target_log_probability),
        entropy: optional(entropy),
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
        let row_pass = match choose_cube(target_form(&inputs.targets), &spec.options).kernel {
            Kernel::Cube => RowPass::Cube,
            _ => RowPass::Tensor,
        };
        tensor_kernel::<Self>(inputs, spec, wanted, upstream, row_pass)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use burn::backend::Dispatch;
    use burn::prelude::*;

    use super::super::backend::FusedLinearCrossEntropyOps;
    use super::super::choice::kernel_for;
    use super::*;
    use crate::LinearSoftmax;
    use crate::head::LinearSoftmaxConfig;
    use crate::host::reads_on_this_thread;
    use crate::loss::LossOptions;
    use crate::loss::options::LossReduction;
    use burn::tensor::DType;

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
        let choice = kernel_for(&lm_head, &x, &classes, &plain).unwrap();
        assert_eq!(choice.kernel, Kernel::Raw, "{}", choice.reason);

        let (classifier, x) = head_and_input(10, &device);
        let classes = Targets::from_indices(&[3, 0], 10, &device).unwrap();
        let choice = kernel_for(&classifier, &x, &classes, &plain).unwrap();
        assert_eq!(choice.kernel, Kernel::FewClasses, "{}", choice.reason);

        let probabilities = Targets::from_probabilities(&[0.1; 20], [2, 10], &device).unwrap();
        let choice = kernel_for(&classifier, &x, &probabilities, &plain).unwrap();
        assert_eq!(choice.kernel, Kernel::Tensor);
        assert!(choice.reason.contains("probability"), "{}", choice.reason);

        let softcap = LossOptions::new().with_softcap(Some(30.0));
        let choice = kernel_for(&lm_head, &x, &classes, &softcap).unwrap();
        assert_eq!(choice.kernel, Kernel::Tensor);
        assert!(choice.reason.contains("softcap"), "{}", choice.reason);

        let choice = choose(DType::F16, 32768, TargetForm::Classes, &plain);
        assert_eq!(choice.kernel, Kernel::Tensor);
        assert_eq!(
            choose(DType::BF16, 32768, TargetForm::Classes, &plain).kernel,
            Kernel::Raw
        );
        assert_eq!(
            choose(DType::BF16, 10, TargetForm::Classes, &plain).kernel,
            Kernel::FewClasses
        );
    }

    #[test]
    fn the_kernel_computes_exactly_the_wanted_gradients() {
        let device = Device::flex();
        let (head, x) = head_and_input(20, &device);
        let classes = Targets::from_indices(&[3, 19], 20, &device).unwrap();
        let probabilities = Targets::from_probabilities(&[0.05; 40], [2, 20], &device).unwrap();
        let teacher = LinearSoftmaxConfig::new(5, 20).init(&device).unwrap();
        let hidden = Tensor::<2>::from_data([[1.0, -0.5, 0.0, 2.0, 0.5]; 2], &device);
        let teacher = Targets::from_teacher(&teacher, hidden).unwrap();
        // The raw kernel (class indices) and the tensor kernel (probabilities, a teacher).
        for targets in [&classes, &probabilities, &teacher] {
            let run = |wanted: WantedGradients, bias: bool| {
                let inputs = FusedInputs {
                    x: x.clone().into_dispatch(),
                    weight: head.weight().into_dispatch(),
                    bias: Optional::from(bias.then(|| head.bias().unwrap().into_dispatch())),
                    targets: super::super::target_primitives(targets, &device, DType::F32),
                    class_weights: Optional::Absent,
                    row_weights: Optional::Absent,
                };
                let output = Dispatch::linear_cross_entropy_with_gradients(
                    inputs,
                    FusedSpec {
                        options: LossOptions::new(),
                        ignore_index: None,
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
                for (reduction, stats) in [LossReduction::Mean, LossReduction::None]
                    .into_iter()
                    .flat_map(|reduction| [(reduction, false), (reduction, true)])
                {
                    // The statistics stay on the device too, until someone reads them.
                    let options = LossOptions::new()
                        .with_reduction(reduction)
                        .with_stats(stats);
                    let before = reads_on_this_thread();
                    let output = head.loss_output(x.clone(), targets, &options).unwrap();
                    assert_eq!(output.stats.is_some(), stats);
                    let loss = output.loss;
                    let loss = match reduction {
                        LossReduction::None => (loss * upstream.clone()).sum(),
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
        Targets::from_tensor(labels, 2, None).unwrap();
        assert_eq!(reads_on_this_thread(), before + 1);
    }
}
