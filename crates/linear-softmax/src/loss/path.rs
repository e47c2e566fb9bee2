//! [`LossPath`]: which of the three paths computes a loss, a setting of
//! [`LossOptions`](crate::LossOptions).

use std::fmt;
use std::str::FromStr;

use burn::serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which of the three paths computes the loss and its gradients
/// ([`LossOptions::path`](crate::LossOptions::path)).
///
/// All three give the same loss and the same gradients; they differ in how the gradients come
/// about and what they cost:
///
/// | path | as a graph node ([`loss`](crate::LinearSoftmax::loss), `.backward()`) | as plain values ([`gradients`](crate::LinearSoftmax::gradients)) |
/// |---|---|---|
/// | `Autodiff` | ordinary tensor ops, differentiated by Burn's autograd | the same graph, `.backward()` on a detached copy |
/// | `Manual` | the [`math`](crate::math) forward functions, differentiated by Burn's autograd | the hand-derived backward of [`math`](crate::math), no autograd |
/// | `Fused` | one custom op whose backward is the hand-derived one, chunked over rows | the same op, chunked, never an `[N, C]` tensor |
///
/// So as a graph node `Manual` is autograd over the manual forward functions, not the
/// hand-written backward; the hand-written backward runs in `gradients`, and in the fused op.
///
/// ```
/// use burn::prelude::*;
/// use linear_softmax::{LinearSoftmaxConfig, LossOptions, LossPath, Targets};
///
/// let device = Device::flex();
/// let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
/// let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], &device);
/// let targets = Targets::from_indices(&[3, 0], 4, &device)?;
/// let losses = LossPath::ALL.map(|path| {
///     let options = LossOptions::new().with_path(path);
///     head.loss(x.clone(), &targets, &options).unwrap().into_scalar::<f32>()
/// });
/// assert!(losses.iter().all(|loss| (loss - losses[0]).abs() < 1e-6));
/// assert_eq!("manual".parse::<LossPath>()?, LossPath::Manual);
/// # Ok::<(), linear_softmax::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(crate = "burn::serde", rename_all = "lowercase")]
pub enum LossPath {
    /// Ordinary tensor ops differentiated by Burn's autograd, the reference: keeps several
    /// `[N, C]` tensors for the backward pass.
    Autodiff,
    /// The hand-derived backward of [`math`](crate::math): `dS = (A - Y) / N`,
    /// `dW = X^T dS`, `db = colsum(dS)`, `dX = dS W^T` as explicit tensor code on a plain
    /// device (for [`gradients`](crate::LinearSoftmax::gradients)). As a graph node it is the
    /// manual forward functions, which Burn's autograd differentiates like
    /// [`LossPath::Autodiff`].
    Manual,
    /// The fused op (a custom autodiff op, the crate's `fused` module): chunked over rows, gradients computed in the forward
    /// pass, never an `[N, C]` tensor. The default. Implemented for Flex, NdArray and the
    /// CubeCL backends (wgpu, CUDA, with this crate's features of those names); on a device of
    /// any other backend it runs the [`LossPath::Autodiff`] path (the same loss and gradients,
    /// none of the memory savings), which [`crate::diagnostics::kernel_for`] reports.
    #[default]
    Fused,
}

impl LossPath {
    /// Every path, in the order reports show them.
    pub const ALL: [LossPath; 3] = [LossPath::Manual, LossPath::Autodiff, LossPath::Fused];

    /// The path's name, as `Display`, `FromStr` and the command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Autodiff => "autodiff",
            Self::Manual => "manual",
            Self::Fused => "fused",
        }
    }
}

impl fmt::Display for LossPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LossPath {
    type Err = Error;

    /// `autodiff`, `manual` or `fused`.
    fn from_str(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|path| path.name() == name)
            .ok_or_else(|| Error::InvalidOption {
                name: "loss path",
                value: name.to_string(),
                expected: "one of autodiff, manual, fused",
            })
    }
}
