//! Reading tensors back to the host, whatever their element type, with this crate's
//! [`Error::ReadBack`] when the data cannot be read. Inside the crate: where user data enters
//! (validating targets built from tensors), in the opt-in checks and reports
//! ([`LinearSoftmax::check_finite`](crate::LinearSoftmax::check_finite),
//! [`LossStats::accuracy`](crate::LossStats::accuracy)) and in the finite-difference witness,
//! never inside a loss path's op; outside it, for reports and metrics (the command-line tool
//! reads through these too).
//!
//! Each read counts itself on the calling thread, so a test can assert that a fused forward
//! and backward read nothing back (on a GPU each read would be a device synchronisation). The
//! raw CPU kernels' `into_data` calls (`fused/cpu/buffers.rs`) are not such reads: they copy a
//! non-contiguous CPU primitive, already in host memory on Flex and NdArray, into a buffer.

use std::cell::Cell;

use burn::prelude::*;

use crate::error::{Error, Result};

thread_local! {
    static READS: Cell<usize> = const { Cell::new(0) };
}

/// How many tensors this thread has read back to the host so far.
#[cfg(test)]
pub(crate) fn reads_on_this_thread() -> usize {
    READS.with(Cell::get)
}

fn count_read() {
    READS.with(|reads| reads.set(reads.get() + 1));
}

/// A tensor's values as host `f64`s (row-major), whatever its float type.
pub fn to_host_f64<const D: usize>(tensor: &Tensor<D>) -> Result<Vec<f64>> {
    count_read();
    tensor
        .to_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_err(|err| Error::ReadBack(format!("{err:?}")))
}

/// An Int tensor's values as host `i64`s (Flex stores Int tensors as `i32`).
pub fn to_host_i64<const D: usize>(tensor: &Tensor<D, Int>) -> Result<Vec<i64>> {
    count_read();
    tensor
        .to_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|err| Error::ReadBack(format!("{err:?}")))
}
