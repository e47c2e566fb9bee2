//! The raw-buffer chunk kernel of the fused head, for the plain CPU backends (Flex, NdArray).
//!
//! The tensor-level kernel (`chunked.rs`) pays for Burn's tensor API: `dW += X_r^T dS_r`
//! allocates a `[D, C]` temporary per chunk, and the softmax and `dS` allocate several `[R, C]`
//! temporaries. This kernel runs the same loop on the primitives' buffers, borrowed without a
//! copy, with one reused `[R, C]` buffer:
//!
//! ```text
//! for each chunk of R rows:   buf  = X_r W                                GEMM, beta = 0
//!                             per row (in place, rayon over rows):
//!                               buf += b, m = max, lse = m + log sum exp(buf - m), l_i
//!                               buf <- dS_r = f_i [coef_i softmax(buf) - spread_i] ; buf[y_i] -= f_i (1 - eps) r_i
//!                               db_partial += buf                        (per task, reduced after)
//!                             dW += X_r^T dS_r                           GEMM, beta = 1, X_r^T by strides
//!                             dX_r = dS_r W^T                            GEMM into the output, W^T by strides
//! ```
//!
//! `f_i` is the per-row factor: the upstream gradient (1, or `g_i` for reduction none), divided
//! by the mean's denominator for reduction mean. For class-index targets the denominator
//! `sum_i v_i w_{y_i}` is known before the first chunk (the labels are read once to the host),
//! so the mean is folded into `f_i` and the gradients need no final scaling pass.
//!
//! For few classes (`C <= 16`, a classifier) GEMMs with so few columns waste most of their
//! width; `few_classes.rs` replaces them with one streaming pass over the rows, around the same row
//! code.
//!
//! The GEMMs are `matrixmultiply`'s `sgemm`/`dgemm` (threaded over the cores by its
//! `threading` feature, which burn's `rayon` feature turns on; AVX-512 kernel detected at run
//! time); the row passes run on rayon, with a vectorisable `exp` for `f32`.
//!
//! Supported: class-index targets (with `ignore_index`, `pad_tokens`, class weights, label
//! smoothing, z-loss, `return_log_sum_exp`), every reduction, `f32` and `f64`; `kernel.rs`
//! sends everything else (probability targets, softcap, other dtypes) to the tensor-level
//! kernel before this one starts. The labels and the upstream gradients are read from the
//! backend's own CPU buffers (no device, nothing to synchronise). Peak extra memory: the outputs (`dW`, `dX`, `db`, the `[N]` losses) plus
//! one `[R, C]` buffer and a few `[C]` partial column sums.

// NdArray is deprecated upstream in favour of Flex; this crate still serves both.
#![allow(deprecated)]

use std::borrow::Cow;
use std::ops::{Add, AddAssign, Div, Mul, Sub};

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Scalar, TensorMetadata};
use burn::tensor::{DType, Element, TensorData};
use rayon::prelude::*;

use super::backend::{
    FusedOutput, FusedSpec, Optional, RowUpstream, TargetPrimitives, WantedGradients,
};
use crate::options::{LossOptions, Reduction};

#[cfg(feature = "openblas-system")]
mod blas;
pub(crate) mod few_classes;

/// A float primitive's elements as a row-major slice: borrowed when the buffer is contiguous,
/// a copy otherwise.
pub(crate) enum RawSlice<'a> {
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
}

/// A plain CPU backend whose primitives expose their buffers.
pub(crate) trait RawBackend: Backend {
    /// The tensor's elements in row-major order (`None` for dtypes other than f32/f64).
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
            other => unreachable!("an Int primitive of dtype {:?}", other.dtype()),
        }
    }
}

/// The float types the kernel runs in.
pub(crate) trait RawFloat:
    Element
    + 'static
    + Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + AddAssign
{
    const ZERO: Self;
    const NEG_INFINITY: Self;
    fn of(value: f64) -> Self;
    fn to_f64(self) -> f64;
    fn ln(self) -> Self;
    /// `exp(x)` for `x <= 0` (a shifted logit), vectorisable.
    fn exp_nonpositive(self) -> Self;
    /// `self * a + b` with one rounding: one instruction where the caller enables `fma`, a
    /// slow library call otherwise (callers without `fma` write `self * a + b`).
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// `C <- alpha A B + beta C` (matrixmultiply's conventions: element strides).
    ///
    /// # Safety
    /// The pointers and strides must describe valid `[m, k]`, `[k, n]`, `[m, n]` matrices, `c`
    /// not aliasing `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

/// The `RawFloat` impl of one float type: its `exp` for shifted logits and its GEMM.
macro_rules! raw_float {
    ($ty:ident, $exp:path, $gemm:ident) => {
        impl RawFloat for $ty {
            const ZERO: Self = 0.0;
            const NEG_INFINITY: Self = $ty::NEG_INFINITY;
            #[allow(clippy::unnecessary_cast)]
            fn of(value: f64) -> Self {
                value as $ty
            }
            #[allow(clippy::unnecessary_cast)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn ln(self) -> Self {
                $ty::ln(self)
            }
            #[inline(always)]
            fn exp_nonpositive(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn mul_add(self, a: Self, b: Self) -> Self {
                $ty::mul_add(self, a, b)
            }
            unsafe fn gemm(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                #[cfg(feature = "openblas-system")]
                use blas::$gemm;
                #[cfg(not(feature = "openblas-system"))]
                use matrixmultiply::$gemm;
                // SAFETY: forwarded from the caller's contract.
                unsafe { $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
    };
}

raw_float!(f32, exp_f32, sgemm);
raw_float!(f64, f64::exp, dgemm);

/// `exp(x)` in f32 without branches or calls, so that row loops vectorise: `x = n ln 2 + r`
/// with `|r| <= ln 2 / 2`, `exp(r)` by its degree-7 Taylor polynomial (truncation error
/// `< 5e-9` relative), `2^n` built in the exponent bits. Inputs below `-87.3` give `~1e-38`
/// instead of 0 (a difference invisible next to a softmax sum >= 1); the relative error is
/// a few ulp.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let t = x * LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // t's bits are 0x4B40_0000 + n for |n| < 2^22; the exponent field of 2^n is n + 127.
    let scale = f32::from_bits(
        t.to_bits()
            .wrapping_sub(0x4B40_0000)
            .wrapping_add(127)
            .wrapping_shl(23),
    );
    p * scale
}

/// Per-row target data, read once from the host labels and options.
struct RowTargets<E> {
    /// `y_i` (0 for ignored rows).
    labels: Vec<usize>,
    /// `v_i`, 1 or 0 (absent: all rows count).
    valid: Option<Vec<bool>>,
    /// Class weights `w` `[C]` (absent: all 1).
    class_weights: Option<Vec<E>>,
    /// `sum_k w_k` (`C` without weights).
    weight_sum: f64,
    /// Label smoothing `eps`.
    smoothing: f64,
    /// z-loss `beta`.
    z_loss: f64,
}

impl<E: RawFloat> RowTargets<E> {
    /// `r_i = v_i w_{y_i}`.
    fn row_weight(&self, row: usize) -> f64 {
        if self.valid.as_ref().is_some_and(|valid| !valid[row]) {
            return 0.0;
        }
        self.class_weights
            .as_ref()
            .map_or(1.0, |w| w[self.labels[row]].to_f64())
    }

    fn is_valid(&self, row: usize) -> bool {
        self.valid.as_ref().is_none_or(|valid| valid[row])
    }
}

/// The host outputs of the kernel.
struct RawOutput<E> {
    loss: Vec<E>,
    d_input: Option<Vec<E>>,
    d_weight: Option<Vec<E>>,
    d_bias: Option<Vec<E>>,
    log_sum_exp: Option<Vec<E>>,
}

/// The raw kernel on the primitives of a plain backend.
///
/// `kernel.rs` sends only what it handles here (class indices, no softcap, f32 or f64);
/// shapes, labels, dtypes and options were checked by the public entry points.
pub(crate) fn linear_cross_entropy<B: RawBackend>(
    x: &FloatTensor<B>,
    weight: &FloatTensor<B>,
    bias: &Optional<B>,
    targets: &TargetPrimitives<B>,
    spec: &FusedSpec,
    wanted: WantedGradients,
    upstream: &RowUpstream<B>,
) -> FusedOutput<B> {
    const CHOSEN: &str = "kernel.rs chose the raw kernel for class indices in f32 or f64";
    let TargetPrimitives::Classes(labels) = targets else {
        unreachable!("{CHOSEN}");
    };
    let [n_rows, d_input] = x.shape().dims::<2>();
    let n_classes = weight.shape().dims::<2>()[1];
    let labels = B::labels(labels);
    let raw = |tensor| B::raw(tensor).expect(CHOSEN);
    let bias = bias.as_option().map(raw);
    let upstream = match upstream {
        RowUpstream::Ones => None,
        RowUpstream::Rows(rows) => Some(raw(rows)),
    };
    let shape = Shape2 {
        n_rows,
        d_input,
        n_classes,
    };
    let device = x.device();
    let options = &spec.options;
    macro_rules! run {
        ($variant:ident, $ty:ty, $x:expr) => {{
            // The head checks that x, W and b share one dtype; the upstream gradient has the
            // loss's dtype.
            fn same_dtype<'a>(slice: &'a RawSlice<'_>) -> Option<&'a [$ty]> {
                match slice {
                    RawSlice::$variant(values) => Some(values.as_ref()),
                    _ => None,
                }
            }
            let weight = raw(weight);
            let weight = same_dtype(&weight).expect(CHOSEN);
            let bias = bias.as_ref().map(|b| same_dtype(b).expect(CHOSEN));
            let upstream = upstream.as_ref().map(|g| same_dtype(g).expect(CHOSEN));
            let row_targets = row_targets::<$ty>(&labels, n_classes, options);
            let output = kernel::<$ty>(
                shape,
                $x,
                weight,
                bias,
                &row_targets,
                options,
                spec.chunk_rows,
                wanted,
                upstream,
            );
            into_primitives::<B, $ty>(output, shape, &device)
        }};
    }
    match raw(x) {
        RawSlice::F32(x_raw) => run!(F32, f32, &x_raw),
        RawSlice::F64(x_raw) => run!(F64, f64, &x_raw),
    }
}

/// `g * gradient` for a `[1]` upstream gradient `g` in the backend's own buffer: the
/// gradient itself when `g = 1` (a plain `loss.backward()`), else an in-place scalar multiply.
pub(crate) fn scale_by_scalar<B: RawBackend>(
    gradient: FloatTensor<B>,
    upstream: &FloatTensor<B>,
) -> FloatTensor<B> {
    let scale = match B::raw(upstream) {
        Some(RawSlice::F32(g)) => g[0] as f64,
        Some(RawSlice::F64(g)) => g[0],
        // Another float type: the broadcast multiply of any backend.
        None => {
            let ones = vec![1; gradient.shape().num_dims()];
            return B::float_mul(gradient, B::float_reshape(upstream.clone(), ones.into()));
        }
    };
    if scale == 1.0 {
        gradient
    } else {
        B::float_mul_scalar(gradient, Scalar::from(scale))
    }
}

#[derive(Clone, Copy, Debug)]
struct Shape2 {
    n_rows: usize,
    d_input: usize,
    n_classes: usize,
}

fn row_targets<E: RawFloat>(
    labels: &[i64],
    n_classes: usize,
    options: &LossOptions,
) -> RowTargets<E> {
    let ignored = |label: i64| {
        options.ignore_index == Some(label)
            || options
                .pad_tokens
                .as_ref()
                .is_some_and(|pads| pads.iter().any(|&pad| pad as i64 == label))
    };
    let ignores = options.ignore_index.is_some() || options.pad_tokens.is_some();
    let valid = ignores.then(|| labels.iter().map(|&label| !ignored(label)).collect());
    RowTargets {
        labels: labels
            .iter()
            .map(|&label| if ignored(label) { 0 } else { label as usize })
            .collect(),
        valid,
        class_weights: options
            .weights
            .as_ref()
            .map(|w| w.iter().map(|&w| E::of(w)).collect()),
        weight_sum: options
            .weights
            .as_ref()
            .map_or(n_classes as f64, |w| w.iter().sum()),
        smoothing: options.label_smoothing,
        z_loss: options.z_loss,
    }
}

fn into_primitives<B: Backend, E: RawFloat>(
    output: RawOutput<E>,
    shape: Shape2,
    device: &B::Device,
) -> FusedOutput<B> {
    let Shape2 {
        n_rows,
        d_input,
        n_classes,
    } = shape;
    let primitive = |values: Vec<E>, dims: Vec<usize>| {
        B::float_from_data(TensorData::new(values, dims), device)
    };
    let loss_len = output.loss.len();
    FusedOutput {
        loss: primitive(output.loss, vec![loss_len]),
        d_input: (output.d_input.map(|v| primitive(v, vec![n_rows, d_input]))).into(),
        d_weight: (output.d_weight)
            .map(|v| primitive(v, vec![d_input, n_classes]))
            .into(),
        d_bias: output.d_bias.map(|v| primitive(v, vec![n_classes])).into(),
        log_sum_exp: output
            .log_sum_exp
            .map(|v| primitive(v, vec![n_rows]))
            .into(),
    }
}

/// Below this many `[R, C]` elements a chunk's row pass runs on the calling thread.
const PARALLEL_ELEMENTS: usize = 1 << 15;

#[allow(clippy::too_many_arguments)]
fn kernel<E: RawFloat>(
    shape: Shape2,
    x: &[E],
    weight: &[E],
    bias: Option<&[E]>,
    targets: &RowTargets<E>,
    options: &LossOptions,
    chunk_rows: usize,
    wanted: WantedGradients,
    upstream: Option<&[E]>,
) -> RawOutput<E> {
    let Shape2 {
        n_rows,
        d_input: d,
        n_classes: c,
    } = shape;
    let wanted = WantedGradients {
        bias: wanted.bias && bias.is_some(),
        ..wanted
    };
    let chunk_rows = chunk_rows.clamp(1, n_rows);

    // The mean's denominator sum_i v_i w_{y_i} (N when no row is weighted), 0 -> 1.
    let weighted = targets.valid.is_some() || targets.class_weights.is_some();
    let denominator = if weighted {
        (0..n_rows).map(|i| targets.row_weight(i)).sum::<f64>()
    } else {
        n_rows as f64
    };
    let denominator = if denominator == 0.0 { 1.0 } else { denominator };
    let mean_scale = match options.reduction {
        Reduction::Mean => 1.0 / denominator,
        Reduction::Sum | Reduction::None => 1.0,
    };

    let mut row_losses = vec![E::ZERO; n_rows];
    let mut log_sum_exp = vec![E::ZERO; n_rows];
    let mut d_input = wanted.input.then(|| vec![E::ZERO; n_rows * d]);
    let mut d_weight = wanted.weight.then(|| vec![E::ZERO; d * c]);
    let mut d_bias = wanted.bias.then(|| vec![E::ZERO; c]);
    let factor = |i: usize| mean_scale * upstream.map_or(1.0, |g| g[i].to_f64());
    let inputs = Inputs {
        x,
        weight,
        d_input: d,
    };
    let outputs = Outputs {
        losses: &mut row_losses,
        log_sum_exp: &mut log_sum_exp,
        d_input: d_input.as_deref_mut(),
        d_weight: d_weight.as_deref_mut(),
        d_bias: d_bias.as_deref_mut(),
    };
    if c <= few_classes::MAX_CLASSES {
        let factors: Vec<f64> = (0..n_rows).map(factor).collect();
        let batch = ChunkRows {
            start: 0,
            bias,
            targets,
            factors: &factors,
            gradients: wanted.any(),
            n_classes: c,
        };
        few_classes::pass(inputs, &batch, outputs);
    } else {
        gemm_chunks(inputs, bias, targets, &factor, chunk_rows, outputs);
    }

    let loss = match options.reduction {
        Reduction::None => row_losses,
        Reduction::Mean | Reduction::Sum => {
            let sum: f64 = row_losses.iter().map(|l| l.to_f64()).sum();
            vec![E::of(sum * mean_scale)]
        }
    };
    RawOutput {
        loss,
        d_input,
        d_weight,
        d_bias,
        log_sum_exp: options.return_log_sum_exp.then_some(log_sum_exp),
    }
}

/// The kernel's outputs, each `None` when not wanted.
struct Outputs<'a, E> {
    /// `l_i`, `[N]`.
    losses: &'a mut [E],
    /// `lse_i`, `[N]`.
    log_sum_exp: &'a mut [E],
    /// `dX`, `[N, D]`, overwritten.
    d_input: Option<&'a mut [E]>,
    /// `dW`, `[D, C]`, overwritten.
    d_weight: Option<&'a mut [E]>,
    /// `db`, `[C]`, overwritten.
    d_bias: Option<&'a mut [E]>,
}

/// The kernel's matrices: `x` `[N, D]`, `weight` `[D, C]`, row-major.
struct Inputs<'a, E> {
    x: &'a [E],
    weight: &'a [E],
    d_input: usize,
}

/// `C <- alpha A B + beta C` ([`RawFloat::gemm`]), posed as `C^T = B^T A^T` when `N > M`.
///
/// matrixmultiply spreads a GEMM's M dimension over its threads. A chunk's GEMMs have a short
/// side (`R` rows, or `D` features) and a long one (`C` classes); posed with M = R, the three
/// GEMMs of the LM-head step took 1.12 s against 0.92 s with the long side as M (R = 256,
/// C = 32768, 2 cores), the whole-step figure going from 1.30x to 1.09x its floor.
///
/// # Safety
/// As [`RawFloat::gemm`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_wide_m<E: RawFloat>(
    m: usize,
    k: usize,
    n: usize,
    alpha: E,
    a: *const E,
    rsa: isize,
    csa: isize,
    b: *const E,
    rsb: isize,
    csb: isize,
    beta: E,
    c: *mut E,
    rsc: isize,
    csc: isize,
) {
    // SAFETY: the same matrices either way, the transposed problem read through swapped strides.
    unsafe {
        if n > m {
            E::gemm(n, k, m, alpha, b, csb, rsb, a, csa, rsa, beta, c, csc, rsc)
        } else {
            E::gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        }
    }
}

/// The kernel for many classes: chunks of `R` rows, three GEMMs each, around the row pass.
fn gemm_chunks<E: RawFloat>(
    inputs: Inputs<'_, E>,
    bias: Option<&[E]>,
    targets: &RowTargets<E>,
    factor: &dyn Fn(usize) -> f64,
    chunk_rows: usize,
    mut out: Outputs<'_, E>,
) {
    let Inputs {
        x,
        weight,
        d_input: d,
    } = inputs;
    let n_rows = out.losses.len();
    let c = weight.len() / d;
    let gradients = out.d_input.is_some() || out.d_weight.is_some() || out.d_bias.is_some();
    let mut buffer = vec![E::ZERO; chunk_rows * c];

    for start in (0..n_rows).step_by(chunk_rows) {
        let end = (start + chunk_rows).min(n_rows);
        let rows = end - start;
        let logits = &mut buffer[..rows * c];
        let x_chunk = &x[start * d..end * d];
        // S_r = X_r W (the bias is added in the row pass, while the row is in cache).
        // SAFETY: X_r [rows, d], W [d, c] and the buffer [rows, c] are distinct row-major
        // slices of exactly these sizes.
        unsafe {
            gemm_wide_m(
                rows,
                d,
                c,
                E::of(1.0),
                x_chunk.as_ptr(),
                d as isize,
                1,
                weight.as_ptr(),
                c as isize,
                1,
                E::ZERO,
                logits.as_mut_ptr(),
                c as isize,
                1,
            );
        }

        let factors: Vec<f64> = (start..end).map(factor).collect();
        let chunk = ChunkRows {
            start,
            bias,
            targets,
            factors: &factors,
            gradients,
            n_classes: c,
        };
        let partial_bias = row_pass(
            logits,
            &chunk,
            &mut out.losses[start..end],
            &mut out.log_sum_exp[start..end],
            out.d_bias.is_some(),
        );
        if let (Some(d_bias), Some(partial)) = (&mut out.d_bias, partial_bias) {
            d_bias
                .iter_mut()
                .zip(partial)
                .for_each(|(sum, p)| *sum += p);
        }
        if let Some(d_weight) = &mut out.d_weight {
            // dW += X_r^T dS_r: X_r^T read through the strides (1, d), no copy.
            // SAFETY: X_r^T [d, rows], dS_r [rows, c], dW [d, c], dW distinct from both.
            unsafe {
                gemm_wide_m(
                    d,
                    rows,
                    c,
                    E::of(1.0),
                    x_chunk.as_ptr(),
                    1,
                    d as isize,
                    logits.as_ptr(),
                    c as isize,
                    1,
                    // The first chunk overwrites the zeros: no read of dW.
                    if start == 0 { E::ZERO } else { E::of(1.0) },
                    d_weight.as_mut_ptr(),
                    c as isize,
                    1,
                );
            }
        }
        if let Some(d_input) = &mut out.d_input {
            // dX_r = dS_r W^T straight into the output: W^T read through the strides (1, c).
            // SAFETY: dS_r [rows, c], W^T [c, d], dX_r [rows, d], dX distinct from both.
            unsafe {
                gemm_wide_m(
                    rows,
                    c,
                    d,
                    E::of(1.0),
                    logits.as_ptr(),
                    c as isize,
                    1,
                    weight.as_ptr(),
                    1,
                    c as isize,
                    E::of(0.0),
                    d_input[start * d..end * d].as_mut_ptr(),
                    d as isize,
                    1,
                );
            }
        }
    }
    drop(buffer);
}

/// What a chunk's row pass needs to know about its rows.
struct ChunkRows<'a, E> {
    /// The chunk's first row in the batch.
    start: usize,
    /// `b`, added to each row of logits first.
    bias: Option<&'a [E]>,
    targets: &'a RowTargets<E>,
    /// `f_i`, per row of the chunk.
    factors: &'a [f64],
    /// Whether to turn the logits into `dS`.
    gradients: bool,
    n_classes: usize,
}

/// One task's rows: `(index, ((logits, losses), log_sum_exps))`.
type RowBlock<'a, E> = (usize, ((&'a mut [E], &'a mut [E]), &'a mut [E]));

/// The row pass over a chunk's logits `[rows, C]`: row losses and log-sum-exps, the logits
/// turned into `dS` in place (when gradients are wanted), and `colsum(dS)` when `bias`.
fn row_pass<E: RawFloat>(
    logits: &mut [E],
    chunk: &ChunkRows<'_, E>,
    losses: &mut [E],
    log_sum_exp: &mut [E],
    bias: bool,
) -> Option<Vec<E>> {
    let c = chunk.n_classes;
    let rows = losses.len();
    let tasks = if rows * c < PARALLEL_ELEMENTS {
        1
    } else {
        (2 * rayon::current_num_threads()).min(rows)
    };
    let rows_per_task = rows.div_ceil(tasks);
    let block = |(task, ((logits, losses), log_sum_exp)): RowBlock<'_, E>| {
        let mut partial = bias.then(|| vec![E::ZERO; c]);
        let first = task * rows_per_task;
        for (offset, ((row, loss), lse)) in logits
            .chunks_exact_mut(c)
            .zip(losses.iter_mut())
            .zip(log_sum_exp.iter_mut())
            .enumerate()
        {
            let local = first + offset;
            (*loss, *lse) = row_dispatch(row, chunk, local, partial.as_deref_mut());
        }
        partial
    };
    let chunks = logits
        .chunks_mut(rows_per_task * c)
        .zip(losses.chunks_mut(rows_per_task))
        .zip(log_sum_exp.chunks_mut(rows_per_task))
        .enumerate();
    let partials: Vec<Option<Vec<E>>> = if tasks == 1 {
        chunks.map(block).collect()
    } else {
        chunks
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(block)
            .collect()
    };
    let mut partials = partials.into_iter().flatten();
    let mut sum = partials.next()?;
    for partial in partials {
        sum.iter_mut().zip(partial).for_each(|(s, p)| *s += p);
    }
    Some(sum)
}

/// One row, with the AVX-512 or AVX2 + FMA build of the row code when the CPU has it (f32
/// only; f64 uses the portable build).
fn row_dispatch<E: RawFloat>(
    row: &mut [E],
    chunk: &ChunkRows<'_, E>,
    local: usize,
    partial: Option<&mut [E]>,
) -> (E, E) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>()
            && std::arch::is_x86_feature_detected!("avx512f")
        {
            // SAFETY: the CPU supports the enabled features (checked just above).
            return unsafe { row_avx512(row, chunk, local, partial) };
        }
        if std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>()
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the enabled features (checked just above).
            return unsafe { row_avx2(row, chunk, local, partial) };
        }
    }
    row_kernel(row, chunk, local, partial)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn row_avx512<E: RawFloat>(
    row: &mut [E],
    chunk: &ChunkRows<'_, E>,
    local: usize,
    partial: Option<&mut [E]>,
) -> (E, E) {
    row_kernel(row, chunk, local, partial)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2<E: RawFloat>(
    row: &mut [E],
    chunk: &ChunkRows<'_, E>,
    local: usize,
    partial: Option<&mut [E]>,
) -> (E, E) {
    row_kernel(row, chunk, local, partial)
}

/// Lanes of the independent accumulators that let the reductions vectorise.
const LANES: usize = 16;

/// One row `s` (`C` logits, row `local` of the chunk): returns `(l_i, lse_i)` and, when the
/// chunk wants gradients, overwrites `s` with `dS_i` (adding it to `partial`, the column sums).
///
/// ```text
/// l_i  = (1 - eps) r_i (lse - s_y) + v_i (eps / C) (W lse - sum_k w_k s_k) + beta v_i lse^2
/// dS_i = f_i [coef_i softmax(s) - v_i (eps / C) w] - f_i (1 - eps) r_i e_y
/// coef_i = (1 - eps) r_i + (eps / C) v_i W + 2 beta v_i lse_i,   W = sum_k w_k
/// ```
#[inline(always)]
fn row_kernel<E: RawFloat>(
    s: &mut [E],
    chunk: &ChunkRows<'_, E>,
    local: usize,
    partial: Option<&mut [E]>,
) -> (E, E) {
    let targets = chunk.targets;
    let row = chunk.start + local;
    let c = chunk.n_classes;
    let label = targets.labels[row];
    let valid = targets.is_valid(row);
    let r = targets.row_weight(row);
    let eps = targets.smoothing;

    // Pass 1: the bias, the row max (and the weighted logit sum for label smoothing).
    let max = match chunk.bias {
        Some(bias) => lane_add_max(s, bias),
        None => lane_max(s),
    };
    let weighted_sum = if eps > 0.0 && valid {
        match &targets.class_weights {
            Some(w) => s.iter().zip(w).map(|(&s, &w)| (s * w).to_f64()).sum(),
            None => s.iter().map(|&s| s.to_f64()).sum(),
        }
    } else {
        0.0
    };
    let true_logit = s[label];

    // Pass 2: exp(s - max) in place, and its sum.
    let sum = lane_exp_sum(s, max);
    let lse = max + sum.ln();
    let lse64 = lse.to_f64();
    let v = if valid { 1.0 } else { 0.0 };
    let loss = (1.0 - eps) * r * (lse64 - true_logit.to_f64())
        + v * (eps / c as f64) * (targets.weight_sum * lse64 - weighted_sum)
        + targets.z_loss * v * lse64 * lse64;

    if chunk.gradients {
        // Pass 3: dS_i in place.
        let f = chunk.factors[local];
        let coef = (1.0 - eps) * r
            + (eps / c as f64) * v * targets.weight_sum
            + 2.0 * targets.z_loss * v * lse64;
        let scale = E::of(f * coef / sum.to_f64());
        let spread = f * v * eps / c as f64;
        match (&targets.class_weights, spread != 0.0) {
            (Some(w), true) => {
                let spread = E::of(spread);
                s.iter_mut()
                    .zip(w)
                    .for_each(|(s, &w)| *s = *s * scale - spread * w);
            }
            (None, true) => {
                let spread = E::of(spread);
                s.iter_mut().for_each(|s| *s = *s * scale - spread);
            }
            (_, false) => s.iter_mut().for_each(|s| *s = *s * scale),
        }
        s[label] = s[label] - E::of(f * (1.0 - eps) * r);
        if let Some(partial) = partial {
            partial.iter_mut().zip(s.iter()).for_each(|(p, &s)| *p += s);
        }
    }
    (E::of(loss), lse)
}

#[inline(always)]
fn lane_max<E: RawFloat>(s: &[E]) -> E {
    let mut lanes = [E::NEG_INFINITY; LANES];
    let mut blocks = s.chunks_exact(LANES);
    for block in &mut blocks {
        for (lane, &value) in lanes.iter_mut().zip(block) {
            if value > *lane {
                *lane = value;
            }
        }
    }
    let mut max = E::NEG_INFINITY;
    for &value in lanes.iter().chain(blocks.remainder()) {
        if value > max {
            max = value;
        }
    }
    max
}

/// `s += b`, returning `max(s)`.
#[inline(always)]
fn lane_add_max<E: RawFloat>(s: &mut [E], bias: &[E]) -> E {
    let mut lanes = [E::NEG_INFINITY; LANES];
    let mut blocks = s.chunks_exact_mut(LANES);
    let mut bias_blocks = bias.chunks_exact(LANES);
    for (block, bias) in (&mut blocks).zip(&mut bias_blocks) {
        for ((lane, value), &b) in lanes.iter_mut().zip(block.iter_mut()).zip(bias) {
            *value += b;
            if *value > *lane {
                *lane = *value;
            }
        }
    }
    let mut max = E::NEG_INFINITY;
    for (value, &b) in blocks
        .into_remainder()
        .iter_mut()
        .zip(bias_blocks.remainder())
    {
        *value += b;
        if *value > max {
            max = *value;
        }
    }
    lanes
        .iter()
        .fold(max, |max, &lane| if lane > max { lane } else { max })
}

#[inline(always)]
fn lane_exp_sum<E: RawFloat>(s: &mut [E], max: E) -> E {
    let mut lanes = [E::ZERO; LANES];
    let mut blocks = s.chunks_exact_mut(LANES);
    for block in &mut blocks {
        for (lane, value) in lanes.iter_mut().zip(block.iter_mut()) {
            let e = (*value - max).exp_nonpositive();
            *value = e;
            *lane += e;
        }
    }
    let mut sum = E::ZERO;
    for value in blocks.into_remainder() {
        let e = (*value - max).exp_nonpositive();
        *value = e;
        sum += e;
    }
    lanes.iter().fold(sum, |acc, &lane| acc + lane)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_a_few_ulp_of_std() {
        let mut worst = 0.0_f64;
        let mut x = -87.0_f32;
        while x <= 0.0 {
            let exact = (x as f64).exp();
            let relative = ((exp_f32(x) as f64) - exact).abs() / exact;
            worst = worst.max(relative);
            x += 0.000_37;
        }
        assert!(worst < 5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(-1000.0) < 1e-37);
    }
}
