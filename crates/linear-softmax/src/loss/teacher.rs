//! [`Teacher`]: a frozen teacher head and its hidden states, the target of a distillation
//! ([`Targets::from_teacher`], [`Targets::with_teacher`]).

use core::ops::Range;

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::{Error, Result};
use crate::loss::options::LossOptions;
use crate::loss::targets::{TargetKind, Targets};

/// A teacher's head `T = X_t W_t + b_t` and its hidden states `X_t`, frozen: every tensor is
/// detached, so no gradient flows to the teacher on any path. Its logits are formed chunk by
/// chunk on the fused path, never as a whole `[N, C]` tensor.
///
/// # Shapes
/// - `hidden`: `[N, D_t]` (the rows of the `[.., D_t]` given), `weight`: `[D_t, C]`,
///   `bias`: `[C]`; `D_t` need not be the student's `D`
#[derive(Clone, Debug)]
pub struct Teacher {
    pub(crate) hidden: Tensor<2>,
    pub(crate) weight: Tensor<2>,
    pub(crate) bias: Option<Tensor<1>>,
}

impl Teacher {
    /// The teacher's hidden states `X_t`, `[N, D_t]`.
    pub fn hidden(&self) -> &Tensor<2> {
        &self.hidden
    }

    /// The teacher's weight `W_t`, `[D_t, C]`.
    pub fn weight(&self) -> &Tensor<2> {
        &self.weight
    }

    /// The teacher's bias `b_t`, `[C]`, if its head has one.
    pub fn bias(&self) -> Option<&Tensor<1>> {
        self.bias.as_ref()
    }

    /// The teacher's logits `T = X_t W_t + b_t`, `[N, C]` (of a chunk's rows on the fused
    /// path).
    pub(crate) fn logits(&self) -> Tensor<2> {
        let logits = self.hidden.clone().matmul(self.weight.clone());
        match &self.bias {
            Some(bias) => logits + bias.clone().unsqueeze_dim(0),
            None => logits,
        }
    }

    /// The teacher of rows `rows` (a chunk of the batch).
    pub(crate) fn rows(&self, rows: Range<usize>) -> Self {
        Self {
            hidden: self.hidden.clone().slice([rows]),
            ..self.clone()
        }
    }

    /// The same teacher on `device` in `dtype` (no copy for what is already there).
    pub(crate) fn to(&self, device: &Device, dtype: DType) -> Self {
        let place = |tensor: Tensor<2>| {
            let tensor = tensor.to_device(device);
            if tensor.dtype() == dtype {
                tensor
            } else {
                tensor.cast(dtype)
            }
        };
        Self {
            hidden: place(self.hidden.clone()),
            weight: place(self.weight.clone()),
            bias: self.bias.clone().map(|bias| {
                let bias = bias.to_device(device);
                if bias.dtype() == dtype {
                    bias
                } else {
                    bias.cast(dtype)
                }
            }),
        }
    }

    /// The frozen teacher of a head `weight` `[D_t, C]`, `bias` `[C]` for `hidden` `[.., D_t]`;
    /// the leading shape of `hidden`.
    fn new<const K: usize>(
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        hidden: Tensor<K>,
    ) -> Result<(Self, Vec<usize>)> {
        let width = weight.dims()[0];
        let dims = hidden.dims();
        if K < 2 {
            return Err(Error::ShapeMismatch {
                what: "teacher hidden states (at least [N, D_t])",
                expected: vec![0, width],
                got: dims.to_vec(),
            });
        }
        if dims[K - 1] != width {
            return Err(Error::ShapeMismatch {
                what: "teacher hidden states' last dimension (the teacher head's input width)",
                expected: vec![width],
                got: vec![dims[K - 1]],
            });
        }
        let shape = dims[..K - 1].to_vec();
        let rows = shape.iter().product::<usize>();
        let hidden = if rows == 0 {
            // Burn's `reshape` reads a 0 as "keep this dimension": build the empty rows.
            let empty = TensorData::new(Vec::<f64>::new(), [0, width]);
            Tensor::from_data(empty, (&hidden.device(), hidden.dtype()))
        } else {
            hidden.reshape([rows, width])
        };
        let device = hidden.device();
        let teacher = Self {
            hidden: hidden.detach(),
            weight: weight.detach().to_device(&device),
            bias: bias.map(|bias| bias.detach().to_device(&device)),
        };
        Ok((teacher, shape))
    }
}

impl Targets {
    /// The targets of a frozen teacher head (`weight` `[D_t, C]`, `bias` `[C]`) and its hidden
    /// states `[.., D_t]`, without labels: `Targets::from_teacher` (in `head/`, which knows
    /// the head) checked nothing else.
    pub(crate) fn teacher<const K: usize>(
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        hidden: Tensor<K>,
    ) -> Result<Self> {
        let n_classes = weight.dims()[1];
        let (teacher, shape) = Teacher::new(weight, bias, hidden)?;
        Ok(Self {
            kind: TargetKind::Teacher {
                teacher,
                labels: None,
                ignore_index: None,
            },
            n_classes,
            shape,
            row_weights: None,
        })
    }

    /// These class-index targets with a frozen teacher head and its hidden states, as
    /// [`teacher`](Self::teacher).
    pub(crate) fn and_teacher<const K: usize>(
        self,
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        hidden: Tensor<K>,
    ) -> Result<Self> {
        let TargetKind::Classes {
            indices,
            ignore_index,
        } = self.kind
        else {
            return Err(Error::TargetKind {
                option: "a teacher",
                expected: "class-index targets (the labels of the hard term)",
            });
        };
        let n_classes = weight.dims()[1];
        if n_classes != self.n_classes {
            return Err(Error::ClassCountMismatch {
                targets: self.n_classes,
                head: n_classes,
            });
        }
        let (teacher, shape) = Teacher::new(weight, bias, hidden)?;
        if shape != self.shape {
            return Err(Error::ShapeMismatch {
                what: "teacher hidden states' leading shape (the labels')",
                expected: self.shape.clone(),
                got: shape,
            });
        }
        Ok(Self {
            kind: TargetKind::Teacher {
                teacher,
                labels: Some(indices),
                ignore_index,
            },
            ..self
        })
    }

    /// Checks a teacher's targets against `options`: the options whose term the distillation
    /// loss does not define are refused, and the hard term needs labels.
    pub(super) fn check_teacher(&self, options: &LossOptions) -> Result<()> {
        let TargetKind::Teacher { labels, .. } = &self.kind else {
            return Ok(());
        };
        const NO_TERM: &str =
            "class-index or probability targets (the distillation loss has no such term)";
        let refused = [
            ("weights", options.weights.is_some(), NO_TERM),
            ("label_smoothing", options.label_smoothing != 0.0, NO_TERM),
            ("z_loss", options.z_loss != 0.0, NO_TERM),
            ("entropy_bonus", options.entropy_bonus != 0.0, NO_TERM),
            ("softcap", options.softcap.is_some(), NO_TERM),
            // A teacher's rows would have to move with the labels: shift them before.
            ("shift", options.shift != 0, "class-index targets"),
            // The statistics' target log-probabilities and counts are not defined for a
            // teacher's distribution yet.
            ("stats", options.stats, NO_TERM),
        ];
        if let Some((option, _, expected)) = refused.into_iter().find(|(_, set, _)| *set) {
            return Err(Error::TargetKind { option, expected });
        }
        if labels.is_none() && options.distillation.hard_weight != 0.0 {
            return Err(Error::TargetKind {
                option: "distillation hard_weight",
                expected: "labels: a teacher given with `Targets::with_teacher`",
            });
        }
        if labels.is_none() && options.pad_tokens.is_some() {
            return Err(Error::TargetKind {
                option: "pad_tokens",
                expected: "labels: a teacher given with `Targets::with_teacher`",
            });
        }
        Ok(())
    }
}
