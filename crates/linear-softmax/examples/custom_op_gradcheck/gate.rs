//! `gate(a, b) = a * sigmoid(b)`, the gate of a GLU, as a Burn custom op with a hand-written
//! backward, and the same backward with one of four deliberate mistakes.
//!
//! ```text
//! forward:   y = a s,  s = sigmoid(b)
//! backward:  da = g s,  db = g a s (1 - s)      (g: the upstream gradient)
//! ```
//!
//! The op is a Burn backend extension: the plain backends run the trait's default body (the
//! forward in backend primitives), `Autodiff<B, C>` records the op with its backward.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, backend_extension};
use burn::prelude::*;

/// What the backward gets wrong (the forward is always right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mistake {
    /// The correct backward.
    None,
    /// `db` with the wrong sign.
    SignFlip,
    /// `db = g a s`: the factor `(1 - s)` of the sigmoid's derivative forgotten.
    MissingTerm,
    /// `da = 2 g s`.
    Doubled,
    /// `da` given to `b` and `db` to `a`.
    WrongInput,
}

/// The mistakes a gradient check must catch.
pub const MISTAKES: [Mistake; 4] = [
    Mistake::SignFlip,
    Mistake::MissingTerm,
    Mistake::Doubled,
    Mistake::WrongInput,
];

/// `a * sigmoid(b)`, elementwise, for `a` and `b` of one shape, with the backward `mistake`
/// makes.
pub fn gate<const D: usize>(a: Tensor<D>, b: Tensor<D>, mistake: Mistake) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::gate(
        a.into_dispatch(),
        b.into_dispatch(),
        mistake,
    ))
}

/// The backend extension: a forward every backend runs, differentiated by hand under autodiff.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait GateOps: Backend {
    /// `a * sigmoid(b)`; `mistake` only matters to the backward.
    fn gate(a: FloatTensor<Self>, b: FloatTensor<Self>, mistake: Mistake) -> FloatTensor<Self> {
        let _ = mistake;
        Self::float_mul(a, sigmoid::<Self>(b))
    }
}

/// `1 / (1 + exp(-x))` in the tensor's own float type. Not `B::sigmoid`: Burn 0.22.1's
/// default `sigmoid` (which NdArray uses) computes in f32 whatever the input's type, and
/// f32-rounded values make f64 finite differences wrong by ~1e-8 / eps (gradcheck found it).
fn sigmoid<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let denominator = B::float_add_scalar(B::float_exp(B::float_neg(x)), 1.0.into());
    B::float_recip(denominator)
}

#[cfg(feature = "flex")]
impl GateOps for burn::backend::Flex {}
#[cfg(feature = "ndarray")]
impl GateOps for burn::backend::NdArray {}
#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl GateOps for burn::backend::Cube {}

impl<B: GateOps, C: CheckpointStrategy> GateOps for Autodiff<B, C> {
    fn gate(a: FloatTensor<Self>, b: FloatTensor<Self>, mistake: Mistake) -> FloatTensor<Self> {
        let (a, a_node) = a.into_parts();
        let (b, b_node) = b.into_parts();
        let output = B::gate(a.clone(), b.clone(), mistake);
        match GateBackward
            .prepare::<C>([a_node, b_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((a, b, mistake), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// The hand-written backward of [`gate`]; its state is `(a, b, mistake)`.
#[derive(Debug)]
struct GateBackward;

impl<B: Backend> Backward<B, 2> for GateBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, Mistake);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b, mistake) = ops.state;
        let [a_node, b_node] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let s = sigmoid::<B>(b);
        let one_minus_s = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
        let d_sigmoid = match mistake {
            Mistake::MissingTerm => s.clone(),
            _ => B::float_mul(s.clone(), one_minus_s),
        };
        let mut d_a = B::float_mul(g.clone(), s);
        let mut d_b = B::float_mul(B::float_mul(g, a), d_sigmoid);
        match mistake {
            Mistake::SignFlip => d_b = B::float_neg(d_b),
            Mistake::Doubled => d_a = B::float_mul_scalar(d_a, 2.0.into()),
            _ => {}
        }
        let (a_node, b_node) = match mistake {
            Mistake::WrongInput => (b_node, a_node),
            _ => (a_node, b_node),
        };
        if let Some(node) = a_node {
            grads.register::<B>(node.id, d_a);
        }
        if let Some(node) = b_node {
            grads.register::<B>(node.id, d_b);
        }
    }
}
