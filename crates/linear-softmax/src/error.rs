//! The crate's one error type.
//!
//! Every variant names the offending value, so a message alone tells the user what to fix.

use thiserror::Error;

/// Everything that can go wrong with user-supplied data, shapes or options.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Error {
    /// A class index outside `0..n_classes` (negative labels included).
    #[error("label {value} at index {index} is out of range: expected a class in 0..{n_classes}")]
    LabelOutOfRange {
        /// Position of the first bad label.
        index: usize,
        /// The bad label itself.
        value: i64,
        /// Number of classes of the head.
        n_classes: usize,
    },
    /// The targets do not have one entry per input row.
    #[error("targets have {targets} rows but the input has {rows} rows")]
    TargetCountMismatch {
        /// Number of targets.
        targets: usize,
        /// Number of input rows.
        rows: usize,
    },
    /// The targets were built for a different number of classes than the head has.
    #[error("targets are for {targets} classes but the head has {head} classes")]
    ClassCountMismatch {
        /// Number of classes the targets were validated against.
        targets: usize,
        /// Number of classes of the head.
        head: usize,
    },
    /// The input's feature dimension does not match the head's weight.
    #[error("input has {got} features per row but the head expects {expected}")]
    InputWidthMismatch {
        /// Features per row in the input.
        got: usize,
        /// `d_input` of the head.
        expected: usize,
    },
    /// Two tensors that must agree in shape do not.
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// Which tensor is wrong.
        what: &'static str,
        /// The shape it must have.
        expected: Vec<usize>,
        /// The shape it has.
        got: Vec<usize>,
    },
    /// The input's float type is not the head's.
    #[error("input is {got:?} but the head's parameters are {expected:?}: cast one to the other")]
    DTypeMismatch {
        /// The head's float type.
        expected: burn::tensor::DType,
        /// The input's.
        got: burn::tensor::DType,
    },
    /// The device cannot compute the loss in the head's float type: refused rather than
    /// computed wrongly.
    #[error(
        "{device} cannot compute the loss in {dtype:?}: {reason}; cast the head and its input to f32"
    )]
    UnsupportedDType {
        /// The head's float type.
        dtype: burn::tensor::DType,
        /// The device, as Burn names it.
        device: String,
        /// Why not.
        reason: &'static str,
    },
    /// The input lives on another device (backend) than the head's parameters.
    #[error("input is on {got} but the head's parameters are on {expected}: move one to the other")]
    DeviceMismatch {
        /// The head's device.
        expected: String,
        /// The input's.
        got: String,
    },
    /// A batch with no rows: the mean loss is undefined.
    #[error("empty batch: the input has no rows")]
    EmptyBatch,
    /// An entry of the input is NaN or infinite ([`LinearSoftmax::check_finite`]).
    ///
    /// [`LinearSoftmax::check_finite`]: crate::LinearSoftmax::check_finite
    #[error("input x[{row}, {column}] is NaN or infinite")]
    NonFiniteInput {
        /// Row of the first such entry.
        row: usize,
        /// Its column.
        column: usize,
    },
    /// An entry of the head's weight or bias is NaN or infinite
    /// ([`LinearSoftmax::check_finite`]).
    ///
    /// [`LinearSoftmax::check_finite`]: crate::LinearSoftmax::check_finite
    #[error("parameter {at} is NaN or infinite")]
    NonFiniteParameter {
        /// The first such entry, e.g. `weight[3, 7]` or `bias[7]`.
        at: String,
    },
    /// A configuration or loss option outside its valid range.
    #[error("invalid {name} = {value}: {expected}")]
    InvalidOption {
        /// The option's name.
        name: &'static str,
        /// The rejected value, as written.
        value: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// A probability or multi-label target row that is not a distribution.
    #[error("target row {row}: {message}")]
    InvalidTarget {
        /// The first bad row.
        row: usize,
        /// What is wrong with it.
        message: String,
    },
    /// Targets of a kind the options do not apply to.
    #[error("{option} needs {expected}")]
    TargetKind {
        /// The option that needs another kind of targets.
        option: &'static str,
        /// The kind it needs.
        expected: &'static str,
    },
    /// A tensor could not be read back to the host.
    #[error("cannot read a tensor back to the host: {0}")]
    ReadBack(String),
    /// A gradient check cannot check one of its inputs (not `f64`, not on an autodiff
    /// device).
    #[error("gradcheck cannot check {input}: {problem}")]
    GradcheckInput {
        /// The input (`"input 0"`) or parameter (`"head.weight"`).
        input: String,
        /// What is wrong with it, and what to do.
        problem: String,
    },
    /// The function under a gradient check failed or returned what cannot be checked.
    #[error("the function under gradcheck: {0}")]
    CheckedFunction(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = core::result::Result<T, E>;
