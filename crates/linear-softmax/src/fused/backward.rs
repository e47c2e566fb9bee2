//! The fused head on `Autodiff<B, C>`: gradients computed in the forward pass, scaled in the
//! backward.
//!
//! With reduction mean or sum the loss is a scalar at the end of the graph, so `dL/dX`, `dL/dW`
//! and `dL/db` of the loss itself are known as soon as the forward pass has seen every chunk.
//! The forward pass asks the inner backend's kernel for exactly the gradients of the tracked
//! inputs and stores them as the backward state; the backward pass multiplies them by the
//! upstream gradient `g` (`g = 1` for `loss.backward()`, `2.5` for `(loss * 2.5).backward()`),
//! because every gradient of `g L` is `g` times that of `L`.
//!
//! With reduction none the upstream gradient is a vector `g_i` that must scale row `i` of `dS`
//! before `dW = X^T dS` is summed: the forward pass computes the losses only and keeps `X`,
//! `W`, `b`; the backward pass recomputes the chunks with `g` (Liger-Kernel's scheme).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend};

use super::backend::{
    FusedInputs, FusedLinearCrossEntropyOps, FusedOutput, FusedSpec, Optional, OptionalInt,
    RowUpstream, TargetPrimitives, WantedGradients,
};
use crate::loss::LossReduction;

impl<B: FusedLinearCrossEntropyOps, C: CheckpointStrategy> FusedLinearCrossEntropyOps
    for Autodiff<B, C>
{
    fn linear_cross_entropy(inputs: FusedInputs<Self>, spec: FusedSpec) -> FusedOutput<Self> {
        let FusedInputs {
            x,
            weight,
            bias,
            targets,
            class_weights,
            row_weights,
        } = inputs;
        // Class weights and row weights are constants of the graph.
        let class_weights = inner_optional(class_weights);
        let row_weights = inner_optional(row_weights);
        // Which gradients to compute must be known before the kernel runs: ask each input
        // whether it takes part in the graph (the same test that decides the `parents` array).
        let wanted = WantedGradients {
            input: x.is_tracked(),
            weight: weight.is_tracked(),
            bias: matches!(&bias, Optional::Present(bias) if bias.is_tracked()),
        };
        let (x, x_node) = x.into_parts();
        let (weight, weight_node) = weight.into_parts();
        let (bias, bias_node) = match bias {
            Optional::Present(bias) => {
                let (bias, node) = bias.into_parts();
                (Some(bias), Some(node))
            }
            Optional::Absent => (None, None),
        };
        let targets = inner_targets(targets);
        if spec.options.reduction == LossReduction::None && wanted.any() {
            // The upstream gradient is a vector g_i that must scale row i of dS before
            // dW = X^T dS is summed: the forward computes the losses only, and the backward
            // recomputes the chunks with g (Liger-Kernel's scheme; one more pass of GEMMs,
            // still O(R C) memory).
            let inputs = FusedInputs {
                x,
                weight,
                bias: bias.into(),
                targets,
                class_weights,
                row_weights,
            };
            let state = RecomputeState {
                inputs: inputs.clone(),
                // The statistics come from the forward pass; the backward recomputes gradients.
                spec: FusedSpec {
                    stats: false,
                    ..spec.clone()
                },
                wanted,
            };
            let output = B::linear_cross_entropy(inputs, spec);
            let loss = match bias_node {
                Some(bias_node) => record::<B, C, 3, _>(
                    RecomputeBackward,
                    [x_node, weight_node, bias_node],
                    output.loss.clone(),
                    state,
                ),
                None => record::<B, C, 2, _>(
                    RecomputeBackward,
                    [x_node, weight_node],
                    output.loss.clone(),
                    state,
                ),
            };
            return with_constants(loss, output);
        }
        let output = B::linear_cross_entropy_with_gradients(
            FusedInputs {
                x,
                weight,
                bias: bias.into(),
                targets,
                class_weights,
                row_weights,
            },
            spec,
            wanted,
            RowUpstream::Ones,
        );
        // The gradients move into the node's state; the rest of the output is handed out.
        let (d_input, d_weight, d_bias) = (
            output.d_input.into_option(),
            output.d_weight.into_option(),
            output.d_bias.into_option(),
        );
        let loss = match bias_node {
            Some(bias_node) => record::<B, C, 3, _>(
                PrecomputedBackward,
                [x_node, weight_node, bias_node],
                output.loss.clone(),
                [d_input, d_weight, d_bias],
            ),
            None => record::<B, C, 2, _>(
                PrecomputedBackward,
                [x_node, weight_node],
                output.loss.clone(),
                [d_input, d_weight],
            ),
        };
        let rest = FusedOutput {
            d_input: Optional::Absent,
            d_weight: Optional::Absent,
            d_bias: Optional::Absent,
            ..output
        };
        with_constants(loss, rest)
    }

    fn linear_cross_entropy_with_gradients(
        inputs: FusedInputs<Self>,
        spec: FusedSpec,
        wanted: WantedGradients,
        upstream: RowUpstream<Self>,
    ) -> FusedOutput<Self> {
        // Explicit gradients are values, not graph nodes: run the inner kernel and hand its
        // results back as untracked tensors.
        let inputs = FusedInputs {
            x: inputs.x.into_primitive(),
            weight: inputs.weight.into_primitive(),
            bias: inner_optional(inputs.bias),
            targets: inner_targets(inputs.targets),
            class_weights: inner_optional(inputs.class_weights),
            row_weights: inner_optional(inputs.row_weights),
        };
        let output = B::linear_cross_entropy_with_gradients(
            inputs,
            spec,
            wanted,
            match upstream {
                RowUpstream::Ones => RowUpstream::Ones,
                RowUpstream::Rows(rows) => RowUpstream::Rows(rows.into_primitive()),
            },
        );
        let constant = <Self as AutodiffBackend>::from_inner;
        let optional = |tensor: Optional<B>| tensor.into_option().map(constant).into();
        FusedOutput {
            loss: constant(output.loss),
            d_input: optional(output.d_input),
            d_weight: optional(output.d_weight),
            d_bias: optional(output.d_bias),
            log_sum_exp: constant(output.log_sum_exp),
            predictions: inner_int(output.predictions),
            target_log_probability: optional(output.target_log_probability),
            entropy: optional(output.entropy),
            correct: inner_int(output.correct),
            counted: inner_int(output.counted),
        }
    }
}

/// The graph node `loss` with the inner kernel's per-row outputs as constants (its gradients,
/// kept by the node, are not handed out).
fn with_constants<B: Backend, C: CheckpointStrategy>(
    loss: FloatTensor<Autodiff<B, C>>,
    output: FusedOutput<B>,
) -> FusedOutput<Autodiff<B, C>> {
    let constant = <Autodiff<B, C> as AutodiffBackend>::from_inner;
    FusedOutput {
        loss,
        d_input: Optional::Absent,
        d_weight: Optional::Absent,
        d_bias: Optional::Absent,
        log_sum_exp: constant(output.log_sum_exp),
        predictions: inner_int(output.predictions),
        target_log_probability: (output.target_log_probability)
            .into_option()
            .map(constant)
            .into(),
        entropy: output.entropy.into_option().map(constant).into(),
        correct: inner_int(output.correct),
        counted: inner_int(output.counted),
    }
}

/// Int tensors are the same on `Autodiff<B, C>` as on `B` (autodiff does not wrap them).
fn inner_int<B: Backend, C: CheckpointStrategy>(
    tensor: OptionalInt<B>,
) -> OptionalInt<Autodiff<B, C>> {
    tensor.into_option().into()
}

/// The targets as the inner backend's primitives: labels are Int tensors, which autodiff does
/// not wrap; probabilities are constants of the graph.
fn inner_targets<B: Backend, C: CheckpointStrategy>(
    targets: TargetPrimitives<Autodiff<B, C>>,
) -> TargetPrimitives<B> {
    match targets {
        TargetPrimitives::Classes(labels) => TargetPrimitives::Classes(labels),
        TargetPrimitives::Probabilities(probabilities) => {
            TargetPrimitives::Probabilities(probabilities.into_primitive())
        }
        // The teacher is frozen: its tensors are constants of the graph.
        TargetPrimitives::Teacher {
            hidden,
            weight,
            bias,
            labels,
        } => TargetPrimitives::Teacher {
            hidden: hidden.into_primitive(),
            weight: weight.into_primitive(),
            bias: inner_optional(bias),
            labels: labels.into_option().into(),
        },
    }
}

/// An optional tensor as the inner backend's primitive (a constant of the graph).
fn inner_optional<B: Backend, C: CheckpointStrategy>(
    tensor: Optional<Autodiff<B, C>>,
) -> Optional<B> {
    tensor
        .into_option()
        .map(|tensor| tensor.into_primitive())
        .into()
}

/// What the backward of reduction none needs to recompute the chunks.
#[derive(Clone, Debug)]
struct RecomputeState<B: Backend> {
    inputs: FusedInputs<B>,
    spec: FusedSpec,
    wanted: WantedGradients,
}

/// Backward of the fused loss with reduction none: the chunks recomputed with the per-row
/// upstream gradient `g_i`.
#[derive(Debug)]
struct RecomputeBackward;

impl<B: FusedLinearCrossEntropyOps, const N: usize> Backward<B, N> for RecomputeBackward {
    type State = RecomputeState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let upstream = grads.consume::<B>(&ops.node);
        let RecomputeState {
            inputs,
            spec,
            wanted,
        } = ops.state;
        let output = B::linear_cross_entropy_with_gradients(
            inputs,
            spec,
            wanted,
            RowUpstream::Rows(upstream),
        );
        let gradients = [output.d_input, output.d_weight, output.d_bias].map(Optional::into_option);
        for (parent, gradient) in ops.parents.into_iter().zip(gradients) {
            if let (Some(node), Some(gradient)) = (parent, gradient) {
                grads.register::<B>(node.id, gradient);
            }
        }
    }
}

/// Registers the fused op in the graph with its `N` inputs (`[x, W]` or `[x, W, b]`) and the
/// backward state of `op`.
fn record<B: Backend, C: CheckpointStrategy, const N: usize, Op: Backward<B, N>>(
    op: Op,
    nodes: [NodeGuard; N],
    loss: FloatTensor<B>,
    state: Op::State,
) -> FloatTensor<Autodiff<B, C>> {
    match op
        .prepare::<C>(nodes)
        // Recomputing the kernel would cost three GEMMs: never do it for checkpointing.
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, loss),
        OpsKind::UnTracked(prep) => prep.finish(loss),
    }
}

/// Backward of the fused loss: `dInput_j = g * dInput_j(L)`, for gradients computed in the
/// forward pass.
#[derive(Debug)]
struct PrecomputedBackward;

impl<B: FusedLinearCrossEntropyOps, const N: usize> Backward<B, N> for PrecomputedBackward {
    /// The gradient of the loss itself for each input, `None` for untracked inputs.
    type State = [Option<FloatTensor<B>>; N];

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        // g, the `[1]` upstream gradient of the scalar loss, stays on the device: each
        // gradient is scaled by it there (see `scale_by_upstream`).
        let upstream = grads.consume::<B>(&ops.node);
        for (parent, gradient) in ops.parents.into_iter().zip(ops.state) {
            // `parents[j]` is `Some` exactly when input j was tracked, the same test that
            // decided in the forward pass whether its gradient was computed.
            debug_assert_eq!(parent.is_some(), gradient.is_some());
            if let (Some(node), Some(gradient)) = (parent, gradient) {
                let scaled = B::scale_by_upstream(gradient, upstream.clone());
                grads.register::<B>(node.id, scaled);
            }
        }
    }
}
