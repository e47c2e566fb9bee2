//! The side-by-side gradient comparison: manual vs autodiff vs finite differences.

use std::fmt;

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::Result;
use crate::gradcheck::{
    DEFAULT_STEP, ErrorStats, GradcheckReport, HostGradients, compare, numerical_gradients,
};
use crate::head::LinearSoftmax;
use crate::options::LossOptions;
use crate::targets::Targets;
use crate::{autodiff, manual};

/// Pairwise differences of the three witnesses of the gradients, computed in `f64`.
#[derive(Clone, Debug, PartialEq)]
pub struct GradientComparison {
    /// Loss from each witness: manual, autodiff, host `f64` forward.
    pub losses: [f64; 3],
    /// Manual against autodiff.
    pub manual_vs_autodiff: GradcheckReport,
    /// Manual against centred finite differences.
    pub manual_vs_numerical: GradcheckReport,
    /// Autodiff against centred finite differences.
    pub autodiff_vs_numerical: GradcheckReport,
}

impl GradientComparison {
    /// Runs the three witnesses on `(x, targets)`, with the head and `x` cast to `f64`.
    pub fn run(
        head: &LinearSoftmax,
        x: &Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<Self> {
        let head = head.clone().cast(DType::F64);
        let x = x.clone().cast(DType::F64);
        let by_hand = HostGradients::from_tensors(&manual::loss_and_gradients(
            &head,
            x.clone(),
            targets,
            options,
        )?)?;
        let by_autograd = HostGradients::from_tensors(&autodiff::loss_and_gradients(
            &head,
            x.clone(),
            targets,
            options,
        )?)?;
        let numerical = numerical_gradients(&head, &x, targets, options, DEFAULT_STEP)?;
        Ok(Self {
            losses: [by_hand.loss, by_autograd.loss, numerical.loss],
            manual_vs_autodiff: compare(&by_hand, &by_autograd),
            manual_vs_numerical: compare(&by_hand, &numerical),
            autodiff_vs_numerical: compare(&by_autograd, &numerical),
        })
    }
}

impl fmt::Display for GradientComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [manual, autodiff, host] = self.losses;
        writeln!(
            f,
            "loss (f64): manual {manual:.12}  autodiff {autodiff:.12}  host forward {host:.12}"
        )?;
        writeln!(
            f,
            "{:<28} {:>8} {:>12} {:>12}",
            "comparison", "gradient", "max abs", "max rel"
        )?;
        let pairs = [
            ("manual vs autodiff", &self.manual_vs_autodiff),
            ("manual vs finite diff.", &self.manual_vs_numerical),
            ("autodiff vs finite diff.", &self.autodiff_vs_numerical),
        ];
        for (name, report) in pairs {
            let rows: [(&str, Option<ErrorStats>); 3] = [
                ("dW", Some(report.d_weight)),
                ("db", report.d_bias),
                ("dX", Some(report.d_input)),
            ];
            for (gradient, stats) in rows {
                if let Some(stats) = stats {
                    writeln!(
                        f,
                        "{name:<28} {gradient:>8} {:>12.3e} {:>12.3e}",
                        stats.max_abs, stats.max_rel
                    )?;
                }
            }
        }
        Ok(())
    }
}
