//! The command-line tool's error type: the head's own errors, and malformed data or model files.

use thiserror::Error;

/// Everything that can go wrong with the tool's input: the head's errors (a bad option, label,
/// shape, a non-finite loss) and malformed data or model files.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Error {
    /// An error of the head (see [`linear_softmax::Error`]).
    #[error(transparent)]
    Head(#[from] linear_softmax::Error),
    /// Malformed data (a dataset or model file).
    #[error("{source_name}: {message}")]
    Data {
        /// File or data set the problem is in.
        source_name: String,
        /// What is wrong, with the line or offset.
        message: String,
    },
}

/// The tool's result type.
pub type Result<T, E = Error> = core::result::Result<T, E>;
