//! The next-token shift ([`LossOptions::shift`]): the targets a shift `s` makes of a sequence
//! batch's own tokens, and its checks.

use burn::prelude::*;

use crate::error::{Error, Result};
use crate::loss::options::LossOptions;
use crate::loss::targets::{TargetKind, Targets};

/// PyTorch's default `ignore_index`: the label the next-token shift gives the positions it
/// leaves out, when the targets have no ignore index of their own (no label is negative).
const DEFAULT_IGNORE_INDEX: i64 = -100;

impl Targets {
    /// Checks the options' shift against these targets: class indices, and `s` below the
    /// sequence length `T` (the last dimension of the leading shape).
    pub(super) fn check_shift(&self, options: &LossOptions) -> Result<()> {
        if options.shift == 0 {
            return Ok(());
        }
        if let TargetKind::Probabilities(_) = &self.kind {
            return Err(Error::TargetKind {
                option: "shift",
                expected: "class-index targets",
            });
        }
        let time = self.shape.last().copied().unwrap_or(0);
        if options.shift >= time {
            return Err(Error::InvalidOption {
                name: "shift",
                value: options.shift.to_string(),
                expected: "below the sequence length T, the targets' last dimension (a shift of \
                           T or more leaves no position to count)",
            });
        }
        Ok(())
    }

    /// The targets the options' next-token shift `s` makes of these (themselves when `s` is
    /// 0): in each sequence (the last dimension of the leading shape, `T`), position `t` gets
    /// the label of position `t + s`, and the last `s` positions the ignore index (the
    /// targets' own, else PyTorch's -100, which no label can be), so they count nowhere: not
    /// in the loss, the mean's denominator or the statistics. Row weights move with their
    /// labels. One `[.., T]` Int tensor is made on the device; the inputs `x` are not touched.
    ///
    /// The caller checked the options against these targets (`check_shift`).
    pub(crate) fn shifted(&self, shift: usize) -> Self {
        let TargetKind::Classes {
            indices,
            ignore_index,
        } = &self.kind
        else {
            // Refused by `check_options`.
            return self.clone();
        };
        if shift == 0 {
            return self.clone();
        }
        let time = *self.shape.last().expect("targets have a leading shape");
        let sequences = self.len() / time;
        let ignore = ignore_index.unwrap_or(DEFAULT_IGNORE_INDEX);
        let along_time = |values: Tensor<1, Int>| values.reshape([sequences, time]);
        let device = indices.device();
        let tail = Tensor::<2, Int>::full([sequences, shift], ignore, (&device, indices.dtype()));
        let labels = Tensor::cat(
            vec![
                along_time(indices.clone()).slice([0..sequences, shift..time]),
                tail,
            ],
            1,
        );
        let row_weights = self.row_weights.as_ref().map(|rho| {
            let rho = rho.clone().reshape([sequences, time]);
            let tail = Tensor::<2>::zeros([sequences, shift], (&device, rho.dtype()));
            Tensor::cat(vec![rho.slice([0..sequences, shift..time]), tail], 1)
                .reshape([sequences * time])
        });
        Self {
            kind: TargetKind::Classes {
                indices: labels.reshape([sequences * time]),
                ignore_index: Some(ignore),
            },
            n_classes: self.n_classes,
            shape: self.shape.clone(),
            row_weights,
        }
    }
}
