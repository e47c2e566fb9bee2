//! What a loss call is given and what it returns: the options and settings ([`LossOptions`],
//! with its [`LossPath`] and [`Chunking`]), the validated [`Targets`], and the outputs
//! ([`LossOutput`], [`LossStats`], [`HeadGradients`]). Pure data: nothing here computes a loss.

pub(crate) mod chunking;
pub(crate) mod distillation_options;
pub(crate) mod gradient_filter;
pub(crate) mod options;
pub(crate) mod output;
pub(crate) mod path;
pub(crate) mod resolved;
mod shift;
pub(crate) mod stats;
pub(crate) mod targets;
pub(crate) mod teacher;
mod validation;

pub use chunking::Chunking;
pub use distillation_options::DistillationOptions;
pub use gradient_filter::GradientFilter;
pub use options::{LossOptions, LossReduction};
pub use output::{HeadGradients, LossOutput};
pub use path::LossPath;
pub use stats::LossStats;
pub use targets::{PROBABILITY_SUM_TOLERANCE, TargetKind, Targets};
pub use teacher::Teacher;
