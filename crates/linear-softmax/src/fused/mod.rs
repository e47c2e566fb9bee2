//! Path 3, the fused head: linear layer + softmax cross-entropy as one custom autodiff op whose
//! gradients are computed in the forward pass, `R` rows at a time.
//!
//! ```text
//! for each chunk of R rows:   S_r = X_r W + b            (the only [R, C] buffer)
//!                             L  += sum_i (lse_i - S_{i, y_i})
//!                             S_r <- dS_r = (softmax(S_r) - Y_r) / N      (in place)
//!                             dW += X_r^T dS_r,  db += colsum(dS_r),  dX_r = dS_r W^T
//! backward:                   dW, db, dX  <-  g * (dW, db, dX)           (g: upstream gradient)
//! ```
//!
//! Burn's autograd over the composed ops (the autodiff path, or `Linear` + `CrossEntropyLoss`)
//! keeps several `[N, C]` tensors alive between the forward and the backward pass; for a
//! language-model head (`C` = 32k..256k) they dominate memory and time. The fused op never
//! holds more than one chunk's `[R, C]` logits, which is the trick of Liger-Kernel's
//! `FusedLinearCrossEntropy` and Apple's Cut Cross-Entropy.
//!
//! Only the gradients of tracked inputs are computed: a frozen head (`W`, `b` untracked) gets
//! no `dW`; an untracked `x` gets no `dX`; with nothing tracked the op is a forward pass.
//!
//! Every [`LossOptions`] option is supported by every kernel: the raw CPU kernels and the Cube
//! row pass apply the formulas of [`crate::math`] row by row, the tensor kernel runs
//! [`crate::math`]'s own forward/backward pair on each chunk. The temperature never reaches a
//! kernel: it is folded into the op's inputs (`X / tau`, `b / tau`, softcap `c / tau`). `reduction = none` is the one
//! case whose gradients cannot be finished in the forward pass: its upstream gradient is a
//! vector `g_i`, which must scale row `i` of `dS` before `dW = X^T dS` is summed. As in
//! Liger-Kernel, the forward pass then only computes the losses and keeps `X`, `W`, `b` (no
//! `[N, C]` tensor); the backward pass recomputes each chunk with `g` (one more pass of GEMMs,
//! still `O(R C)` memory).
//!
//! # Files
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the entry points the paths call, and [`Chunking::rows_on`] |
//! | `backend.rs` | the op as a Burn backend extension: device tensors in, one output struct out |
//! | `backward.rs` | the op on `Autodiff<B>`: its `Backward` impl, which scales the gradients |
//! | `choice.rs` | which kernel a call takes, from metadata alone ([`crate::diagnostics::kernel_for`]) |
//! | `backend_impls.rs` | the op for Flex, NdArray and the CubeCL backends: runs the chosen kernel |
//! | `tensor_kernel.rs` | the chunk loop on tensor operations |
//! | `cpu/` | the raw CPU kernels: chunked GEMMs on raw buffers, and `few_classes` for `C <= 16` |
//! | `cube/` | on CubeCL (wgpu, CUDA), each chunk's row pass as one kernel launch |
//!
//! # Backends without the op
//!
//! On a device whose backend has no implementation of the op (LibTorch, Remote, or a backend
//! this crate was built without, such as NdArray without the `ndarray` feature),
//! [`LossPath::Fused`](crate::LossPath::Fused) runs the autodiff path instead: the same loss
//! and gradients, with that path's `[N, C]` memory. The choice is made before anything is
//! dispatched, and [`crate::diagnostics::kernel_for`] reports it as
//! [`Kernel::Autodiff`](crate::diagnostics::Kernel::Autodiff).

// NdArray is deprecated upstream in favour of Flex; this crate still serves both.
#[allow(deprecated)]
mod backend;
mod backend_impls;
mod backward;
pub(crate) mod choice;
pub(crate) mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
mod tensor_kernel;

use burn::backend::Dispatch;
use burn::prelude::*;
use burn::tensor::DType;

use backend::{
    FusedInputs, FusedLinearCrossEntropyOps, FusedSpec, Optional, OptionalInt, RowUpstream,
    TargetPrimitives, WantedGradients,
};
use choice::FusedBackend;
use cpu::cpu_isa;

use crate::error::Result;
use crate::head::LinearSoftmax;
use crate::loss::resolved;
use crate::loss::{
    Chunking, HeadGradients, LossOptions, LossOutput, LossStats, TargetKind, Targets,
};
use crate::math;

/// The device-dependent half of [`Chunking`]: its pure rule is [`Chunking::rows_for`]; this
/// one needs to know which fused implementation a device has.
impl Chunking {
    /// The chunk size `R` a fused call on `device` takes for an input of `[n_rows, n_features]`,
    /// `n_classes` classes, in `dtype`: [`rows_for`](Self::rows_for) on a CPU, with the budget
    /// raised to the size of the input on a GPU. With a gradient filter on
    /// ([`LossOptions::gradient_filter`]) and more than one chunk, the call rounds it down to a
    /// multiple of the filter's `block_rows` (at least one block, which may exceed the budget).
    ///
    /// Returns [`Error::InvalidOption`](crate::Error::InvalidOption) when `rows` is `Some(0)`.
    pub fn rows_on(
        &self,
        device: &Device,
        [n_rows, n_features]: [usize; 2],
        n_classes: usize,
        dtype: DType,
    ) -> Result<usize> {
        match FusedBackend::of(device) {
            FusedBackend::Cube => {
                let input_bytes = n_rows * n_features * dtype.size();
                let on_gpu = Self {
                    memory_budget: self.memory_budget.max(input_bytes),
                    ..self.clone()
                };
                on_gpu.rows_for(n_rows, n_classes, dtype)
            }
            // The raw CPU kernels hold a bf16 batch's logits in f32, their compute type. (The
            // tensor kernel's bf16 logits, and the autodiff path's, then get half the budget.)
            FusedBackend::Cpu | FusedBackend::Unsupported => {
                let buffer = if dtype == DType::BF16 {
                    DType::F32
                } else {
                    dtype
                };
                self.rows_for(n_rows, n_classes, buffer)
            }
        }
    }
}

/// Whether `device`'s backend has the fused op; where it has none (LibTorch, Remote, or a
/// backend this crate was built without), the entry points run the autodiff path instead.
pub(crate) fn is_available(device: &Device) -> bool {
    FusedBackend::of(device) != FusedBackend::Unsupported
}

/// The fused loss as a graph node, its `lse` and (when `options.stats`) its statistics from
/// the same chunked pass.
///
/// The raw CPU kernels find each row's prediction in the row pass, where the row maximum
/// already is; the tensor kernels take an `argmax` of each chunk's logits; no `[N, C]` tensor
/// is formed either way. `lse` and the statistics are constants, outside the graph.
///
/// The caller checked the inputs and that the device has the op ([`is_available`]).
pub(crate) fn loss_output(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Result<LossOutput> {
    let (inputs, spec) = prepare(head, &x, targets, options, Graph::Keep)?;
    let device = x.device();
    let output = Dispatch::linear_cross_entropy(inputs, spec);
    let stats = options.stats.then(|| {
        loss_stats(
            output.predictions,
            output.correct,
            output.counted,
            output.target_log_probability,
            output.entropy,
            &device,
        )
    });
    Ok(LossOutput {
        loss: math::with_l2(Tensor::from_dispatch(output.loss), head.weight(), options),
        log_sum_exp: Tensor::from_dispatch(output.log_sum_exp),
        stats,
    })
}

const STATS_ASKED: &str = "the kernel returns the statistics it was asked for";

/// The statistics fields of a [`FusedOutput`](backend::FusedOutput) that was asked for them,
/// as [`LossStats`].
fn loss_stats(
    predictions: OptionalInt<Dispatch>,
    correct: OptionalInt<Dispatch>,
    counted: OptionalInt<Dispatch>,
    target_log_probability: Optional<Dispatch>,
    entropy: Optional<Dispatch>,
    device: &Device,
) -> LossStats {
    LossStats {
        predictions: stats_int(predictions, device),
        correct: stats_int(correct, device),
        counted: stats_int(counted, device),
        target_log_probability: Tensor::from_dispatch(
            target_log_probability.into_option().expect(STATS_ASKED),
        ),
        entropy: Tensor::from_dispatch(entropy.into_option().expect(STATS_ASKED)),
    }
}

/// One of the kernel's Int statistics, in the Int type `argmax` (and `predict`) gives on
/// `device`, whatever the kernel used.
fn stats_int(tensor: OptionalInt<Dispatch>, device: &Device) -> Tensor<1, Int> {
    let int_dtype = device.settings().int_dtype;
    Tensor::<1, Int>::from_dispatch(tensor.into_option().expect(STATS_ASKED)).cast(int_dtype)
}

/// Whether the op's tensors keep their place in the caller's graph.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Graph {
    /// The loss is a graph node: `x`, `W` and `b` stay tracked.
    Keep,
    /// Plain values: the tensors are detached first.
    Detach,
}

/// Picks the chunk size (refusing a bad chunking) and assembles the op's arguments: every
/// tensor on the device of `x` (the class weights uploaded here, once; the row weights in the
/// float type of `x`).
fn prepare(
    head: &LinearSoftmax,
    x: &Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    graph: Graph,
) -> Result<(FusedInputs<Dispatch>, FusedSpec)> {
    let chunk_rows =
        (options.chunking).rows_on(&x.device(), x.dims(), head.n_classes(), x.dtype())?;
    // Every chunk starts a block of the gradient filter.
    let chunk_rows = options.gradient_filter.chunk_rows(chunk_rows, x.dims()[0]);
    if FusedBackend::of(&x.device()) == FusedBackend::Cpu {
        // The CPU kernels' instruction-set cap, refused here if it names no level: the kernels
        // below read it, and cannot return an error. Other devices never read it.
        cpu_isa()?;
    }
    let detach = |tensor: Tensor<2>| match graph {
        Graph::Keep => tensor,
        Graph::Detach => tensor.detach(),
    };
    let bias = head.bias().map(|bias| match graph {
        Graph::Keep => bias,
        Graph::Detach => bias.detach(),
    });
    let (x, bias, options) = match targets.kind() {
        // The distillation tempers both distributions, not its hard term: the kernel takes
        // the temperature as it is.
        TargetKind::Teacher { .. } => (detach(x.clone()), bias, options.clone()),
        _ => fold_temperature(detach(x.clone()), bias, options),
    };
    let (device, dtype) = (x.device(), x.dtype());
    let class_weights = resolved::class_weights(&options, &device, dtype);
    let row_weights = targets.row_weights().map(|rho| {
        let rho = rho.clone().to_device(&device);
        if rho.dtype() == dtype {
            rho
        } else {
            rho.cast(dtype)
        }
    });
    let inputs = FusedInputs {
        x: x.into_dispatch(),
        weight: detach(head.weight()).into_dispatch(),
        bias: Optional::from(bias.map(Tensor::into_dispatch)),
        targets: target_primitives(targets, &device, dtype),
        class_weights: Optional::from(class_weights.map(Tensor::into_dispatch)),
        row_weights: Optional::from(row_weights.map(Tensor::into_dispatch)),
    };
    let spec = FusedSpec {
        stats: options.stats,
        options,
        ignore_index: targets.ignore_index(),
        chunk_rows,
    };
    Ok((inputs, spec))
}

/// The temperature folded into the op's inputs, so that no kernel needs to know it (but the
/// tensor kernel for a teacher's targets, whose hard term does not see it: `prepare` passes
/// the temperature through for those): the logits the softmax sees are
///
/// ```text
/// S / tau = (X / tau) W + b / tau,   (c / tau) tanh(S / c) = c' tanh((S / tau) / c'),  c' = c / tau
/// ```
///
/// so the op gets `X / tau`, `b / tau`, the softcap `c / tau` and the gradient filter's
/// threshold times `tau`, and the temperature 1. The
/// two scalings are ordinary tensor ops (`[N, D]` and `[C]`, no `[N, C]` tensor): on an
/// autodiff device Burn's autograd carries `dX` and `db` through them; `dW = (X / tau)^T dS`
/// is already right. Nothing changes at temperature 1.
fn fold_temperature(
    x: Tensor<2>,
    bias: Option<Tensor<1>>,
    options: &LossOptions,
) -> (Tensor<2>, Option<Tensor<1>>, LossOptions) {
    let tau = options.temperature;
    if tau == 1.0 {
        return (x, bias, options.clone());
    }
    // `* (1 / tau)`, not `/ tau`: see `math::softcap_forward`. The kernels' `dS` is then
    // the gradient with respect to `S / tau`, `tau` times the one the gradient filter's
    // threshold is stated for.
    let filter = &options.gradient_filter;
    let folded = options
        .clone()
        .with_softcap(options.softcap.map(|cap| cap / tau))
        .with_temperature(1.0)
        .with_gradient_filter(filter.clone().with_threshold(filter.threshold * tau));
    (x * (1.0 / tau), bias.map(|b| b * (1.0 / tau)), folded)
}

/// The fused loss and its gradients `dW, db, dX` as plain values (no graph), and the
/// statistics when `options.stats`. The caller checked the inputs and that the device has
/// the op ([`is_available`]).
pub(crate) fn gradients(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Result<HeadGradients> {
    let (inputs, spec) = prepare(head, &x, targets, options, Graph::Detach)?;
    let device = x.device();
    let weight = head.weight().detach();
    let output = Dispatch::linear_cross_entropy_with_gradients(
        inputs,
        spec,
        WantedGradients::ALL,
        RowUpstream::Ones,
    );
    let computed = "the kernel computes every wanted gradient";
    // The temperature `prepare` folded into X and b (not for a teacher's targets, whose
    // kernel takes it as it is).
    let folded = match targets.kind() {
        TargetKind::Teacher { .. } => 1.0,
        _ => options.temperature,
    };
    let stats = options.stats.then(|| {
        loss_stats(
            output.predictions,
            output.correct,
            output.counted,
            output.target_log_probability,
            output.entropy,
            &device,
        )
    });
    let loss = Tensor::<1>::from_dispatch(output.loss);
    let d_weight = Tensor::<2>::from_dispatch(output.d_weight.into_option().expect(computed));
    Ok(HeadGradients {
        // The penalty does not touch the [N, C] logits: ordinary ops, outside the op.
        loss: math::with_l2(loss, weight.clone(), options),
        d_weight: math::with_l2_gradient(d_weight, weight, options),
        // The op saw X / tau and b / tau (`fold_temperature`): their gradients take 1 / tau.
        d_bias: output
            .d_bias
            .into_option()
            .map(|d_bias| untemper(Tensor::from_dispatch(d_bias), folded)),
        d_input: untemper(
            Tensor::from_dispatch(output.d_input.into_option().expect(computed)),
            folded,
        ),
        log_sum_exp: Tensor::from_dispatch(output.log_sum_exp),
        stats,
    })
}

/// The gradient of `X` or `b` from that of `X / tau` or `b / tau`: `d / tau`.
fn untemper<const K: usize>(gradient: Tensor<K>, folded: f64) -> Tensor<K> {
    match folded {
        1.0 => gradient,
        tau => gradient * (1.0 / tau),
    }
}

/// The targets as dispatch primitives on the device of `x` (a no-op when they are there
/// already, as when built on the model's device); a teacher in the float type of `x`.
fn target_primitives(
    targets: &Targets,
    device: &Device,
    dtype: DType,
) -> TargetPrimitives<Dispatch> {
    match targets.kind() {
        TargetKind::Classes { indices, .. } => {
            TargetPrimitives::Classes(indices.clone().to_device(device).into_dispatch())
        }
        TargetKind::Probabilities(probabilities) => {
            TargetPrimitives::Probabilities(probabilities.clone().to_device(device).into_dispatch())
        }
        TargetKind::Teacher {
            teacher, labels, ..
        } => {
            let teacher = teacher.to(device, dtype);
            TargetPrimitives::Teacher {
                hidden: teacher.hidden.into_dispatch(),
                weight: teacher.weight.into_dispatch(),
                bias: Optional::from(teacher.bias.map(Tensor::into_dispatch)),
                labels: OptionalInt::from(
                    labels
                        .clone()
                        .map(|labels| labels.to_device(device).into_dispatch()),
                ),
            }
        }
    }
}
