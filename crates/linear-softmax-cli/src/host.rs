//! Reading tensors back to the host (reports and metrics, outside any hot loop).

use burn::prelude::*;

use crate::error::Result;

/// A tensor's values as host `f64`s (row-major), whatever its float type.
pub fn to_host_f64<const D: usize>(tensor: &Tensor<D>) -> Result<Vec<f64>> {
    tensor
        .to_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_err(|err| linear_softmax::Error::ReadBack(format!("{err:?}")).into())
}

/// An Int tensor's values as host `i64`s (Flex stores Int tensors as `i32`).
pub fn to_host_i64<const D: usize>(tensor: &Tensor<D, Int>) -> Result<Vec<i64>> {
    tensor
        .to_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .map_err(|err| linear_softmax::Error::ReadBack(format!("{err:?}")).into())
}
