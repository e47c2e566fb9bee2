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
use burn::backend::{Autodiff, AutodiffBackend, Backend, Scalar, TensorMetadata, try_read_sync};

use super::backend::{
    Bias, FusedGradients, FusedGradientsTuple, FusedLinearCrossEntropyOps, RowUpstream,
    WantedGradients,
};
use crate::options::{LossOptions, Reduction};
use crate::targets::Targets;

impl<B: FusedLinearCrossEntropyOps, C: CheckpointStrategy> FusedLinearCrossEntropyOps
    for Autodiff<B, C>
{
    fn linear_cross_entropy(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Bias<Self>,
        targets: Targets,
        options: LossOptions,
        chunk_rows: usize,
    ) -> FloatTensor<Self> {
        // Which gradients to compute must be known before the kernel runs: ask each input
        // whether it takes part in the graph (the same test that decides the `parents` array).
        let wanted = WantedGradients {
            input: x.is_tracked(),
            weight: weight.is_tracked(),
            bias: matches!(&bias, Bias::Present(bias) if bias.is_tracked()),
        };
        let (x, x_node) = x.into_parts();
        let (weight, weight_node) = weight.into_parts();
        let (bias, bias_node) = match bias {
            Bias::Present(bias) => {
                let (bias, node) = bias.into_parts();
                (Some(bias), Some(node))
            }
            Bias::Absent => (None, None),
        };
        if options.reduction == Reduction::None && wanted.any() {
            // The upstream gradient is a vector g_i that must scale row i of dS before
            // dW = X^T dS is summed: the forward computes the losses only, and the backward
            // recomputes the chunks with g (Liger-Kernel's scheme; one more pass of GEMMs,
            // still O(R C) memory).
            let state = RecomputeState {
                x: x.clone(),
                weight: weight.clone(),
                bias: bias.clone(),
                targets: targets.clone(),
                options: options.clone(),
                chunk_rows,
                wanted,
            };
            let loss =
                B::linear_cross_entropy(x, weight, Bias::from(bias), targets, options, chunk_rows);
            return match bias_node {
                Some(bias_node) => record::<B, C, 3, _>(
                    RecomputeBackward,
                    [x_node, weight_node, bias_node],
                    loss,
                    state,
                ),
                None => record::<B, C, 2, _>(RecomputeBackward, [x_node, weight_node], loss, state),
            };
        }
        let FusedGradients {
            loss,
            d_input,
            d_weight,
            d_bias,
            ..
        } = FusedGradients::<B>::from_tuple(B::linear_cross_entropy_with_gradients(
            x,
            weight,
            Bias::from(bias),
            targets,
            options,
            chunk_rows,
            wanted,
            RowUpstream::Ones,
        ));
        match bias_node {
            Some(bias_node) => record::<B, C, 3, _>(
                PrecomputedBackward,
                [x_node, weight_node, bias_node],
                loss,
                [d_input, d_weight, d_bias],
            ),
            None => record::<B, C, 2, _>(
                PrecomputedBackward,
                [x_node, weight_node],
                loss,
                [d_input, d_weight],
            ),
        }
    }

    fn linear_cross_entropy_with_gradients(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: Bias<Self>,
        targets: Targets,
        options: LossOptions,
        chunk_rows: usize,
        wanted: WantedGradients,
        upstream: RowUpstream<Self>,
    ) -> FusedGradientsTuple<Self> {
        // Explicit gradients are values, not graph nodes: run the inner kernel and hand its
        // results back as untracked tensors.
        let constant = <Self as AutodiffBackend>::from_inner;
        let (loss, d_input, d_weight, d_bias, log_sum_exp) = B::linear_cross_entropy_with_gradients(
            x.into_primitive(),
            weight.into_primitive(),
            Bias::from(bias.into_option().map(|bias| bias.into_primitive())),
            targets,
            options,
            chunk_rows,
            wanted,
            match upstream {
                RowUpstream::Ones => RowUpstream::Ones,
                RowUpstream::Rows(rows) => RowUpstream::Rows(rows.into_primitive()),
            },
        );
        (
            constant(loss),
            d_input.map(constant),
            d_weight.map(constant),
            d_bias.map(constant),
            log_sum_exp.map(constant),
        )
    }
}

/// What the backward of reduction none needs to recompute the chunks.
#[derive(Clone, Debug)]
struct RecomputeState<B: Backend> {
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    targets: Targets,
    options: LossOptions,
    chunk_rows: usize,
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
            x,
            weight,
            bias,
            targets,
            options,
            chunk_rows,
            wanted,
        } = ops.state;
        let (_, d_input, d_weight, d_bias, _) = B::linear_cross_entropy_with_gradients(
            x,
            weight,
            Bias::from(bias),
            targets,
            options,
            chunk_rows,
            wanted,
            RowUpstream::Rows(upstream),
        );
        for (parent, gradient) in ops.parents.into_iter().zip([d_input, d_weight, d_bias]) {
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

impl<B: Backend, const N: usize> Backward<B, N> for PrecomputedBackward {
    /// The gradient of the loss itself for each input, `None` for untracked inputs.
    type State = [Option<FloatTensor<B>>; N];

    fn backward(
        self,
        ops: Ops<Self::State, N>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let upstream = UpstreamScale::<B>::read(grads.consume::<B>(&ops.node));
        for (parent, gradient) in ops.parents.into_iter().zip(ops.state) {
            // `parents[j]` is `Some` exactly when input j was tracked, the same test that
            // decided in the forward pass whether its gradient was computed.
            debug_assert_eq!(parent.is_some(), gradient.is_some());
            if let (Some(node), Some(gradient)) = (parent, gradient) {
                grads.register::<B>(node.id, upstream.apply(gradient));
            }
        }
    }
}

/// The upstream gradient `g` of the scalar loss, as the cheapest form to multiply by.
enum UpstreamScale<B: Backend> {
    /// `g = 1` (a plain `loss.backward()`): the gradients are passed on untouched.
    One,
    /// `g` read back to the host: an in-place scalar multiply, no broadcast.
    Host(f64),
    /// `g` could not be read back: a broadcast multiply by the `[1]` tensor.
    Device(FloatTensor<B>),
}

impl<B: Backend> UpstreamScale<B> {
    /// Reads `g` (a `[1]` tensor). On the CPU backends this op serves, the read-back is a copy
    /// of one number: no device to synchronise with.
    fn read(upstream: FloatTensor<B>) -> Self {
        let value = try_read_sync(B::float_into_data(upstream.clone()))
            .and_then(Result::ok)
            .and_then(|data| data.convert::<f64>().try_to_vec::<f64>().ok())
            .and_then(|values| values.first().copied());
        match value {
            Some(1.0) => Self::One,
            Some(value) => Self::Host(value),
            None => Self::Device(upstream),
        }
    }

    fn apply(&self, gradient: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Self::One => gradient,
            Self::Host(value) => B::float_mul_scalar(gradient, Scalar::from(*value)),
            Self::Device(upstream) => {
                let ones = vec![1; gradient.shape().num_dims()];
                B::float_mul(gradient, B::float_reshape(upstream.clone(), ones.into()))
            }
        }
    }
}
