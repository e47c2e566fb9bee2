//! [`DistillationOptions`]: how a student's loss against a teacher ([`Targets::from_teacher`],
//! [`Targets::with_teacher`](crate::Targets::with_teacher)) is defined, a field of
//! [`LossOptions`](crate::LossOptions).
//!
//! [`Targets::from_teacher`]: crate::Targets::from_teacher

use burn::prelude::*;

use crate::error::{Error, Result};

/// The distillation loss of a student against a frozen teacher: a generalised Jensen-Shannon
/// divergence between their tempered distributions, optionally mixed with the hard-label
/// cross-entropy. Used when the targets carry a teacher ([`crate::Targets::from_teacher`]);
/// other targets leave it unused (its ranges are checked all the same).
///
/// With the student's logits `S`, the teacher's `T` (no gradient flows to the teacher), the
/// options' temperature `tau`, `lq = log_softmax(S / tau)`, `Q = exp(lq)`,
/// `lp = log_softmax(T / tau)`, `P = exp(lp)`:
///
/// ```text
/// beta = 0:   D_i = KL(P || Q) = sum_k P_ik (lp_ik - lq_ik)                         (forward KL)
/// beta = 1:   D_i = KL(Q || P) = sum_k Q_ik (lq_ik - lp_ik)                         (reverse KL)
/// otherwise:  D_i = beta KL(P || M) + (1 - beta) KL(Q || M),  M = beta P + (1 - beta) Q   (JSD)
/// l_i = rho_i v_i [ w_soft D_i + w_hard (lse(S_i) - S_{i, y_i}) ]
/// ```
///
/// Liger-Kernel's `LigerFusedLinearJSD` (`jsd_beta`, `temperature`, `ignore_index`) is
/// `w_hard = 0`; its distillation base's hard-label mix (Hinton et al.) is the cross-entropy
/// at temperature 1 with weights `(w_hard, w_soft)`, and no `tau^2` factor. Rows whose label is
/// the ignore index (or a pad token) count nowhere (`v_i = 0`), row weights `rho_i` scale a
/// row's loss, and reduction mean divides by `sum_i rho_i v_i`. The hard term needs labels
/// ([`Targets::with_teacher`](crate::Targets::with_teacher)).
///
/// ```
/// use linear_softmax::{DistillationOptions, LossOptions};
///
/// // Hinton et al.'s mix: half the teacher's forward KL at temperature 2, half the labels.
/// let options = LossOptions::new()
///     .with_temperature(2.0)
///     .with_distillation(DistillationOptions::new().with_beta(0.0).with_hard_weight(0.5).with_soft_weight(0.5));
/// assert_eq!(options.summary(), "mean, temperature 2, distillation beta 0 soft 0.5 hard 0.5");
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct DistillationOptions {
    /// `beta` in `[0, 1]`: 0 the forward KL `KL(P || Q)`, 1 the reverse KL `KL(Q || P)`, in
    /// between the JSD with mixture `M = beta P + (1 - beta) Q` (Liger's `jsd_beta`).
    #[config(default = 0.5)]
    pub beta: f64,
    /// `w_soft >= 0`, the divergence's weight.
    #[config(default = 1.0)]
    pub soft_weight: f64,
    /// `w_hard >= 0`, the hard-label cross-entropy's weight (needs labels).
    #[config(default = 0.0)]
    pub hard_weight: f64,
}

impl DistillationOptions {
    /// Checks the ranges: `beta` in `[0, 1]`, the weights finite and `>= 0`.
    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |name, value: f64, expected| Error::InvalidOption {
            name,
            value: value.to_string(),
            expected,
        };
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(invalid("distillation beta", self.beta, "a value in [0, 1]"));
        }
        for (name, weight) in [
            ("distillation soft_weight", self.soft_weight),
            ("distillation hard_weight", self.hard_weight),
        ] {
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(invalid(name, weight, "a finite weight >= 0"));
            }
        }
        Ok(())
    }

    /// `distillation beta 0.5 soft 1 hard 0`, for [`crate::LossOptions::summary`].
    pub(crate) fn summary(&self) -> String {
        format!(
            "distillation beta {} soft {} hard {}",
            self.beta, self.soft_weight, self.hard_weight
        )
    }
}
