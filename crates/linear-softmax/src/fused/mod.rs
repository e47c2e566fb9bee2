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
//! Burn's autograd over the composed ops (the [`crate::autodiff`] path, or `Linear` +
//! `CrossEntropyLoss`) keeps several `[N, C]` tensors alive between the forward and the
//! backward pass; for a language-model head (`C` = 32k..256k) they dominate memory and time.
//! The fused op never holds more than one chunk's `[R, C]` logits, which is the trick of
//! Liger-Kernel's `FusedLinearCrossEntropy` and Apple's Cut Cross-Entropy.
//!
//! Only the gradients of tracked inputs are computed: a frozen head (`W`, `b` untracked) gets
//! no `dW`; an untracked `x` gets no `dX`; with nothing tracked the op is a forward pass.
//!
//! Every [`LossOptions`] option is supported: each chunk runs the manual path's own
//! forward/backward pair. `reduction = none` is the one case whose gradients cannot be
//! finished in the forward pass: its upstream gradient is a vector `g_i`, which must scale row
//! `i` of `dS` before `dW = X^T dS` is summed. As in Liger-Kernel, the forward pass then only
//! computes the losses and keeps `X`, `W`, `b` (no `[N, C]` tensor); the backward pass
//! recomputes each chunk with `g` (one more pass of GEMMs, still `O(R C)` memory).
//!
//! The op is a Burn backend extension (`backend.rs`: device tensors in, one output struct out,
//! no host read on the way) implemented for Flex, NdArray and the CubeCL backends (`kernel.rs`,
//! which picks one of the kernels of [`Kernel`] per call, from metadata alone: [`kernel_for`]
//! tells which) and by hand for `Autodiff<B, C>` (`autodiff.rs`). The kernels: `cpu/` (chunked
//! GEMMs on raw CPU buffers; `cpu/few_classes.rs`, one streaming pass for `C <= 16`),
//! `tensor_kernel.rs` (the chunk loop on tensor operations: every CubeCL call, and the CPU
//! cases the raw kernels do not take) and `cube/` (on CubeCL, each chunk's row pass as one
//! kernel launch: class indices without softcap).
//!
//! # Backends without the op
//!
//! On a device whose backend has no implementation of the op (LibTorch, Remote, or a backend
//! this crate was built without, such as NdArray without the `ndarray` feature), every function
//! here runs the [`crate::autodiff`] path instead: the same loss and gradients, with that
//! path's `[N, C]` memory. The choice is made before anything is dispatched, and
//! [`kernel_for`] reports it as [`Kernel::Autodiff`].
//!
//! ```
//! use burn::prelude::*;
//! use linear_softmax::{LinearSoftmaxConfig, LossOptions, Targets, autodiff, fused};
//!
//! let device = Device::flex();
//! let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
//! let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], &device);
//! let targets = Targets::from_indices(&[3, 0], 4, &device)?;
//! let options = LossOptions::new();
//!
//! let fused = fused::loss_and_gradients(&head, x.clone(), &targets, &options)?;
//! let reference = autodiff::loss_and_gradients(&head, x, &targets, &options)?;
//! let difference = (fused.d_weight - reference.d_weight).abs().max().into_scalar::<f32>();
//! assert!(difference < 1e-6);
//! # Ok::<(), linear_softmax::Error>(())
//! ```

mod autodiff;
// NdArray is deprecated upstream in favour of Flex; this crate still serves both.
#[allow(deprecated)]
mod backend;
mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
mod kernel;
mod tensor_kernel;

use burn::backend::Dispatch;
use burn::prelude::*;
use burn::tensor::DType;

#[doc(hidden)]
pub use cpu::chunk_gemm_times;
pub use cpu::{CpuIsa, MAX_CPU_ISA_VAR, cpu_isa};
pub use kernel::{Kernel, KernelChoice, kernel_for};

use kernel::FusedBackend;

use backend::{
    FusedInputs, FusedLinearCrossEntropyOps, FusedSpec, Optional, OptionalInt, RowUpstream,
    TargetPrimitives, WantedGradients,
};

use crate::error::{Error, Result};
use crate::gradients::HeadGradients;
use crate::head::LinearSoftmax;
use crate::manual;
use crate::options::LossOptions;
use crate::resolved;
use crate::stats::LossStats;
use crate::targets::{TargetKind, Targets};

/// How many rows the fused kernel processes at a time.
///
/// With `rows` unset, `R` follows from `memory_budget`, the bytes one chunk's `[R, C]` logits
/// buffer may take, but never drops below `min_rows`:
///
/// ```text
/// R = min(max(floor(memory_budget / (C * bytes_per_element)), min_rows), N)
/// ```
///
/// The defaults (30 MiB, 192 rows) give `R = 240` for `C = 32768` in `f32`, which keeps a whole
/// language-model step (`D = 512`: the 64 MiB `dW`, `dX` and the buffer) under 100 MiB; the
/// whole batch in one chunk for small `C` (`C = 10`: up to 786 432 rows); and `R = 192` for
/// `C = 131072`.
///
/// Why a minimum: each chunk reads and writes the whole `[D, C]` gradient once
/// (`dW += X_r^T dS_r`) and packs `W` twice, costs shared by the chunk's `R` rows. Below ~200
/// rows they show: at `C = 131072`, `R = 64` (what a 32 MiB budget alone gives) made the step
/// 1.4x slower than `R = 256` (see BENCHMARKS.md). Set `min_rows` to 1 for a hard budget.
///
/// The raw CPU kernels hold exactly one such buffer (in f32 for a bf16 batch, whose row pass
/// runs in f32: [`rows_on`](Self::rows_on) budgets it so); the tensor-level kernel
/// (probability targets, softcap, other float types) holds up to two (a broadcast operation
/// that a backend does not run in place).
///
/// On a GPU (a CubeCL device) the budget is the larger of `memory_budget` and the size of the
/// input `X` itself, `N * D * bytes_per_element` ([`rows_on`](Self::rows_on)): a GPU wants
/// large GEMMs and is not bound by a CPU cache, and a chunk whose logits take as much memory
/// as `X` keeps the extra memory of the same order as what the caller already holds (the rule
/// of Liger-Kernel's fused linear cross-entropy). `D = 4096`, `C = 32768`, `N = 8192` rows in
/// `f32`: `R = 1024`.
#[derive(Config, Debug, PartialEq)]
pub struct Chunking {
    /// Rows per chunk `R`; `None` derives it from `memory_budget` and `min_rows`.
    #[config(default = "None")]
    pub rows: Option<usize>,
    /// Bytes one chunk's `[R, C]` logits buffer may take when `rows` is `None`.
    #[config(default = 31457280)]
    pub memory_budget: usize,
    /// The fewest rows per chunk the budget may pick (fewer only when `N` is smaller).
    #[config(default = 192)]
    pub min_rows: usize,
}

impl Default for Chunking {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunking {
    /// The chunk size `R` a fused call on `device` takes for an input of `[n_rows, d_input]`,
    /// `n_classes` classes, in `dtype`: [`rows_for`](Self::rows_for) on a CPU, with the budget
    /// raised to the size of the input on a GPU.
    ///
    /// Returns [`Error::InvalidOption`] when `rows` is `Some(0)`.
    pub fn rows_on(
        &self,
        device: &Device,
        [n_rows, d_input]: [usize; 2],
        n_classes: usize,
        dtype: DType,
    ) -> Result<usize> {
        match FusedBackend::of(device) {
            FusedBackend::Cube => {
                let input_bytes = n_rows * d_input * dtype.size();
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

    /// The chunk size `R` for a batch of `n_rows` rows, `n_classes` classes, in `dtype`, by the
    /// CPU rule (the `memory_budget` alone).
    ///
    /// Returns [`Error::InvalidOption`] when `rows` is `Some(0)`.
    pub fn rows_for(&self, n_rows: usize, n_classes: usize, dtype: DType) -> Result<usize> {
        let rows = match self.rows {
            Some(0) => {
                return Err(Error::InvalidOption {
                    name: "chunk rows",
                    value: "0".into(),
                    expected: "at least 1 row per chunk",
                });
            }
            Some(rows) => rows,
            None => {
                let bytes_per_row = n_classes.max(1) * dtype.size();
                (self.memory_budget / bytes_per_row).max(self.min_rows)
            }
        };
        Ok(rows.clamp(1, n_rows.max(1)))
    }
}

/// The fused loss of `head` on `(x, targets)`, with the default [`Chunking`].
///
/// The same loss as [`crate::autodiff::loss`]; on an autodiff device `loss.backward()` gives the
/// same gradients to every tracked tensor (the head's parameters, `x` and whatever produced it),
/// computed in this call and only scaled by the upstream gradient in the backward pass.
///
/// # Shapes
/// - `x`: `[N, D]`, `targets`: `[N]`, result: `[1]`
pub fn loss(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Result<Tensor<1>> {
    loss_with_chunking(head, x, targets, options, &Chunking::new())
}

/// [`loss`] with an explicit [`Chunking`].
pub fn loss_with_chunking(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    chunking: &Chunking,
) -> Result<Tensor<1>> {
    Ok(loss_and_log_sum_exp_with_chunking(head, x, targets, options, chunking)?.0)
}

/// [`loss`] and the per-row log-sum-exp `lse_i` `[N]` of the (capped) logits, a by-product of
/// the same pass (e.g. to monitor the z-loss's target, or for a later sampling step); `lse`
/// is a constant, outside the graph.
///
/// # Shapes
/// - `x`: `[N, D]`, `targets`: `[N]` or `[N, C]`, results: `[1]` (`[N]` with reduction none)
///   and `[N]`
pub fn loss_and_log_sum_exp(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Result<(Tensor<1>, Tensor<1>)> {
    loss_and_log_sum_exp_with_chunking(head, x, targets, options, &Chunking::new())
}

/// [`loss_and_log_sum_exp`] with an explicit [`Chunking`].
pub fn loss_and_log_sum_exp_with_chunking(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    chunking: &Chunking,
) -> Result<(Tensor<1>, Tensor<1>)> {
    let Some((inputs, spec)) = prepare(head, &x, targets, options, chunking, Graph::Keep)? else {
        return crate::autodiff::loss_and_log_sum_exp(head, x, targets, options);
    };
    let output = Dispatch::linear_cross_entropy(inputs, spec);
    let loss = manual::with_l2(Tensor::from_dispatch(output.loss), head.weight(), options);
    Ok((loss, Tensor::from_dispatch(output.log_sum_exp)))
}

/// [`loss`] and the per-row [`LossStats`] (predictions, the correct and counted rows, the
/// target log-probabilities, `lse`) from the same chunked pass, with the default
/// [`Chunking`].
///
/// The raw CPU kernels find each row's prediction in the row pass, where the row maximum
/// already is; the tensor kernels take an `argmax` of each chunk's logits; no `[N, C]` tensor
/// is formed either way. The statistics are constants, outside the graph; the loss is the
/// graph node [`loss`] returns.
///
/// # Shapes
/// - `x`: `[N, D]`, `targets`: `[N]` or `[N, C]`, loss: `[1]` (`[N]` with reduction none);
///   see [`LossStats`] for the rest
pub fn loss_with_stats(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Result<(Tensor<1>, LossStats)> {
    loss_with_stats_and_chunking(head, x, targets, options, &Chunking::new())
}

/// [`loss_with_stats`] with an explicit [`Chunking`].
pub fn loss_with_stats_and_chunking(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    chunking: &Chunking,
) -> Result<(Tensor<1>, LossStats)> {
    let Some((inputs, spec)) = prepare(head, &x, targets, options, chunking, Graph::Keep)? else {
        return crate::autodiff::loss_with_stats(head, x, targets, options);
    };
    let spec = FusedSpec {
        stats: true,
        ..spec
    };
    let device = x.device();
    let output = Dispatch::linear_cross_entropy(inputs, spec);
    let asked = "the kernel returns the statistics it was asked for";
    // The Int type `argmax` (and `predict`) gives on this device, whatever the kernel used.
    let int_dtype = device.settings().int_dtype;
    let int = |tensor: OptionalInt<Dispatch>| {
        Tensor::<1, Int>::from_dispatch(tensor.into_option().expect(asked)).cast(int_dtype)
    };
    let stats = LossStats {
        predictions: int(output.predictions),
        correct: int(output.correct),
        counted: int(output.counted),
        target_log_probability: Tensor::from_dispatch(
            output.target_log_probability.into_option().expect(asked),
        ),
        log_sum_exp: Tensor::from_dispatch(output.log_sum_exp),
    };
    let loss = manual::with_l2(Tensor::from_dispatch(output.loss), head.weight(), options);
    Ok((loss, stats))
}

/// Whether the op's tensors keep their place in the caller's graph.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Graph {
    /// The loss is a graph node: `x`, `W` and `b` stay tracked.
    Keep,
    /// Plain values: the tensors are detached first.
    Detach,
}

/// Validates the batch, the options and the chunking once, picks the chunk size, and assembles
/// the op's arguments: every tensor on the device of `x` (the class weights uploaded here,
/// once). `None` when the device's backend has no fused op: the caller runs the autodiff path.
fn prepare(
    head: &LinearSoftmax,
    x: &Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    chunking: &Chunking,
    graph: Graph,
) -> Result<Option<(FusedInputs<Dispatch>, FusedSpec)>> {
    head.check_loss_inputs(x, targets, options)?;
    let chunk_rows = chunking.rows_on(&x.device(), x.dims(), head.n_classes(), x.dtype())?;
    match FusedBackend::of(&x.device()) {
        FusedBackend::Unsupported => return Ok(None),
        // The CPU kernels' instruction-set cap, refused here if it names no level: the kernels
        // below read it, and cannot return an error. Other devices never read it.
        FusedBackend::Cpu => {
            cpu_isa()?;
        }
        FusedBackend::Cube => {}
    }
    let detach = |tensor: Tensor<2>| match graph {
        Graph::Keep => tensor,
        Graph::Detach => tensor.detach(),
    };
    let bias = head.bias().map(|bias| match graph {
        Graph::Keep => bias,
        Graph::Detach => bias.detach(),
    });
    let (device, dtype) = (x.device(), x.dtype());
    let class_weights = resolved::class_weights(options, &device, dtype);
    let inputs = FusedInputs {
        x: detach(x.clone()).into_dispatch(),
        weight: detach(head.weight()).into_dispatch(),
        bias: Optional::from(bias.map(Tensor::into_dispatch)),
        targets: target_primitives(targets, &device),
        class_weights: Optional::from(class_weights.map(Tensor::into_dispatch)),
    };
    let spec = FusedSpec {
        options: options.clone(),
        chunk_rows,
        stats: false,
    };
    Ok(Some((inputs, spec)))
}

/// The fused loss and its gradients `dW, db, dX` as plain values (no graph), with the default
/// [`Chunking`]: the fused counterpart of [`crate::manual::loss_and_gradients`].
pub fn loss_and_gradients(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
) -> Result<HeadGradients> {
    loss_and_gradients_with_chunking(head, x, targets, options, &Chunking::new())
}

/// [`loss_and_gradients`] with an explicit [`Chunking`].
pub fn loss_and_gradients_with_chunking(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    chunking: &Chunking,
) -> Result<HeadGradients> {
    let Some((inputs, spec)) = prepare(head, &x, targets, options, chunking, Graph::Detach)? else {
        return crate::autodiff::loss_and_gradients(head, x, targets, options);
    };
    let weight = head.weight().detach();
    let output = Dispatch::linear_cross_entropy_with_gradients(
        inputs,
        spec,
        WantedGradients::ALL,
        RowUpstream::Ones,
    );
    let computed = "the kernel computes every wanted gradient";
    let loss = Tensor::<1>::from_dispatch(output.loss);
    let d_weight = Tensor::<2>::from_dispatch(output.d_weight.into_option().expect(computed));
    Ok(HeadGradients {
        // The penalty does not touch the [N, C] logits: ordinary ops, outside the op.
        loss: manual::with_l2(loss, weight.clone(), options),
        d_weight: manual::with_l2_gradient(d_weight, weight, options),
        d_bias: output.d_bias.into_option().map(Tensor::from_dispatch),
        d_input: Tensor::from_dispatch(output.d_input.into_option().expect(computed)),
    })
}

/// The targets as dispatch primitives on the device of `x` (a no-op when they are there
/// already, as when built on the model's device).
fn target_primitives(targets: &Targets, device: &Device) -> TargetPrimitives<Dispatch> {
    match targets.kind() {
        TargetKind::Classes { indices, .. } => {
            TargetPrimitives::Classes(indices.clone().to_device(device).into_dispatch())
        }
        TargetKind::Probabilities(probabilities) => {
            TargetPrimitives::Probabilities(probabilities.clone().to_device(device).into_dispatch())
        }
    }
}
