//! The CPU backends' buffers: float primitives borrowed as slices, labels read from the
//! backend's own Int buffer, and the kernel's host outputs handed back as primitives.

// NdArray is deprecated upstream in favour of Flex; this crate still serves both.
#![allow(deprecated)]

use std::borrow::Cow;

use burn::backend::Backend;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::TensorData;
use burn::tensor::{DType, Element, bf16};

use super::{HostOutput, Shape};
use crate::fused::backend::FusedOutput;

/// A float primitive's elements as a row-major slice: borrowed when the buffer is contiguous,
/// a copy otherwise.
pub(crate) enum RawSlice<'a> {
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
    Bf16(Cow<'a, [bf16]>),
}

impl RawSlice<'_> {
    /// The elements widened to f64.
    pub(crate) fn to_f64(&self) -> Vec<f64> {
        match self {
            Self::F32(values) => values.iter().map(|&v| f64::from(v)).collect(),
            Self::F64(values) => values.to_vec(),
            Self::Bf16(values) => values.iter().map(|v| v.to_f64()).collect(),
        }
    }
}

/// A plain CPU backend whose primitives expose their buffers.
pub(crate) trait RawBackend: Backend {
    /// The tensor's elements in row-major order (`None` for dtypes other than f32, f64 and
    /// bf16).
    fn raw(tensor: &FloatTensor<Self>) -> Option<RawSlice<'_>>;
    /// An Int tensor's elements in row-major order, as `i64`.
    fn labels(tensor: &IntTensor<Self>) -> Vec<i64>;
}

#[cfg(feature = "flex")]
impl RawBackend for burn::backend::Flex {
    fn raw(tensor: &FloatTensor<Self>) -> Option<RawSlice<'_>> {
        Some(match tensor.dtype() {
            DType::F32 => RawSlice::F32(match tensor.as_slice::<f32>() {
                Some(slice) => Cow::Borrowed(slice),
                None => Cow::Owned(tensor.clone().into_data().try_to_vec::<f32>().ok()?),
            }),
            DType::F64 => RawSlice::F64(match tensor.as_slice::<f64>() {
                Some(slice) => Cow::Borrowed(slice),
                None => Cow::Owned(tensor.clone().into_data().try_to_vec::<f64>().ok()?),
            }),
            DType::BF16 => RawSlice::Bf16(match tensor.as_slice::<bf16>() {
                Some(slice) => Cow::Borrowed(slice),
                None => Cow::Owned(tensor.clone().into_data().try_to_vec::<bf16>().ok()?),
            }),
            _ => return None,
        })
    }

    fn labels(tensor: &IntTensor<Self>) -> Vec<i64> {
        match tensor.dtype() {
            DType::I32 if tensor.is_contiguous() => {
                tensor.storage::<i32>().iter().map(|&v| v.into()).collect()
            }
            DType::I64 if tensor.is_contiguous() => tensor.storage::<i64>().to_vec(),
            // Any other layout or width: a copy of the backend's own buffer, in order.
            _ => tensor
                .clone()
                .into_data()
                .convert::<i64>()
                .try_to_vec::<i64>()
                .expect("TensorData::convert::<i64> makes i64 data"),
        }
    }
}

#[cfg(feature = "ndarray")]
/// A view's elements in standard (row-major) order, borrowed when it is already laid out so.
macro_rules! standard_order {
    ($view:expr) => {{
        let view = $view;
        match view.to_slice() {
            Some(slice) => Cow::Borrowed(slice),
            None => Cow::Owned(view.iter().copied().collect()),
        }
    }};
}

#[cfg(feature = "ndarray")]
impl RawBackend for burn::backend::NdArray {
    fn raw(tensor: &FloatTensor<Self>) -> Option<RawSlice<'_>> {
        use burn::backend::ndarray::NdArrayTensor;
        Some(match tensor {
            NdArrayTensor::F32(storage) => RawSlice::F32(standard_order!(storage.view())),
            NdArrayTensor::F64(storage) => RawSlice::F64(standard_order!(storage.view())),
            _ => return None,
        })
    }

    fn labels(tensor: &IntTensor<Self>) -> Vec<i64> {
        use burn::backend::ndarray::NdArrayTensor;
        macro_rules! widen {
            ($storage:expr) => {
                $storage.view().iter().map(|&v| v as i64).collect()
            };
        }
        match tensor {
            NdArrayTensor::I64(storage) => widen!(storage),
            NdArrayTensor::I32(storage) => widen!(storage),
            NdArrayTensor::I16(storage) => widen!(storage),
            NdArrayTensor::I8(storage) => widen!(storage),
            NdArrayTensor::U64(storage) => widen!(storage),
            NdArrayTensor::U32(storage) => widen!(storage),
            NdArrayTensor::U16(storage) => widen!(storage),
            NdArrayTensor::U8(storage) => widen!(storage),
            other => unreachable!(
                "an Int primitive of dtype {:?}",
                burn::backend::TensorMetadata::dtype(other)
            ),
        }
    }
}

/// The kernel's host outputs as primitives of `B` on `device`.
///
/// The statistics' Int tensors are `i64` (the callers cast them to the device's Int type).
pub(super) fn into_primitives<B: Backend, E: Element>(
    output: HostOutput<E>,
    shape: Shape,
    device: &B::Device,
) -> FusedOutput<B> {
    let Shape {
        n_rows,
        d_input,
        n_classes,
    } = shape;
    let primitive = |values: Vec<E>, dims: Vec<usize>| {
        B::float_from_data(TensorData::new(values, dims), device)
    };
    let int = |values: Vec<i64>| {
        let len = values.len();
        B::int_from_data(TensorData::new(values, vec![len]), device)
    };
    let (mut predictions, mut target_log_probability, mut entropy) = (None, None, None);
    let (mut correct, mut counted) = (None, None);
    if let Some(stats) = output.stats {
        predictions = Some(int(stats.predictions));
        target_log_probability = Some(primitive(stats.target_log_probability, vec![n_rows]));
        entropy = Some(primitive(stats.entropy, vec![n_rows]));
        correct = Some(int(vec![stats.correct]));
        counted = Some(int(vec![stats.counted]));
    }
    let loss_len = output.loss.len();
    FusedOutput {
        loss: primitive(output.loss, vec![loss_len]),
        d_input: (output.d_input.map(|v| primitive(v, vec![n_rows, d_input]))).into(),
        d_weight: (output.d_weight)
            .map(|v| primitive(v, vec![d_input, n_classes]))
            .into(),
        d_bias: output.d_bias.map(|v| primitive(v, vec![n_classes])).into(),
        log_sum_exp: primitive(output.log_sum_exp, vec![n_rows]),
        predictions: predictions.into(),
        target_log_probability: target_log_probability.into(),
        entropy: entropy.into(),
        correct: correct.into(),
        counted: counted.into(),
    }
}
