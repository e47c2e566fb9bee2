//! The row pass of the fused head as one CubeCL kernel launch per chunk (wgpu, CUDA): one cube
//! per row turns the chunk's `[R, C]` logits into row losses, log-sum-exps, target
//! log-probabilities, entropies and `dS`, the same math as the CPU row pass (`cpu/rows.rs`),
//! with `lse - s_k` formed as `log sum_j exp(s_j - max) - (s_k - max)`:
//!
//! ```text
//! l_i  = (1 - eps) r_i (lse - s_y) + v_i (eps / C) (W lse - sum_k w_k s_k) + beta v_i lse^2 - alpha v_i H_i
//! log A_{i, y_i} = s_y - lse,   H_i = -sum_k A_ik log A_ik
//! dS_i = f_i [coef_i softmax(s) - v_i (eps / C) w] - f_i (1 - eps) r_i e_y
//!        + f_i alpha v_i softmax(s) (log softmax(s) + H_i)
//! coef_i = (1 - eps) r_i + (eps / C) v_i W + 2 beta v_i lse_i,   W = sum_k w_k
//! ```
//!
//! The tensor operations of the manual path take about ten launches and several `[R, C]`
//! temporaries for the same work. The kernel is a backend extension with a Fusion lowering, so
//! under Burn's `fusion` it is one opaque operation in the fused stream.

// The row pass returns five tensors as a tuple, which the backend-extension macro maps across
// the dispatch boundary (a type alias would hide the tuple from it).
#![allow(clippy::type_complexity)]

use burn::backend::TensorMetadata;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, Dispatch, backend_extension};
use burn::prelude::*;
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;

use crate::loss::resolved::{ResolvedLoss, ResolvedTargets};

mod row_pass_kernel;

use row_pass_kernel::cross_entropy_rows_kernel;

/// Units per cube (one cube per row): a power of two, for the tree reductions.
const UNITS: usize = 256;

/// One chunk's row pass in one launch, for class-index targets: the row losses `[R]`, the
/// log-sum-exps `[R]`, the target log-probabilities `[R]`, the entropies `[R]` and `dS`
/// `[R, C]` for the per-row upstream factors `f_i` `[R]`.
///
/// # Shapes
/// - `logits`: `[R, C]` (the bias added), `rows`: the chunk's rows, `factors`: `[R]`
pub(crate) fn row_pass(
    logits: Tensor<2>,
    rows: &ResolvedLoss,
    factors: Tensor<1>,
) -> (Tensor<1>, Tensor<1>, Tensor<1>, Tensor<1>, Tensor<2>) {
    let ResolvedTargets::Classes {
        labels,
        valid,
        row_weights,
    } = &rows.targets
    else {
        unreachable!("the kernel choice sends only class indices here")
    };
    let [n, c] = logits.dims();
    let (device, dtype) = (logits.device(), logits.dtype());
    let ones = |len: usize| Tensor::<1>::ones([len], (&device, dtype));
    let column = |tensor: &Option<Tensor<2>>, len: usize| match tensor {
        Some(tensor) => tensor.clone().reshape([len]),
        None => ones(len),
    };
    let spec = RowPassSpec {
        smoothing: rows.smoothing as f32,
        z_loss: rows.z_loss as f32,
        weight_sum: rows.weight_sum as f32,
        entropy_bonus: rows.entropy_bonus as f32,
    };
    // The targets' row weights scale a row's loss and its upstream gradient (the kernel's
    // formulas are per unweighted row).
    let rho = rows.row_scale.clone().map(|rho| rho.reshape([n]));
    let factors = match &rho {
        Some(rho) => factors * rho.clone(),
        None => factors,
    };
    let (losses, log_sum_exp, log_probabilities, entropy, d_logits) = Dispatch::cross_entropy_rows(
        logits.into_dispatch(),
        labels.clone().reshape([n]).into_dispatch(),
        column(row_weights, n).into_dispatch(),
        column(valid, n).into_dispatch(),
        factors.into_dispatch(),
        column(&rows.class_weights, c).into_dispatch(),
        spec,
    );
    let losses = Tensor::from_dispatch(losses);
    (
        match rho {
            Some(rho) => losses * rho,
            None => losses,
        },
        Tensor::from_dispatch(log_sum_exp),
        Tensor::from_dispatch(log_probabilities),
        Tensor::from_dispatch(entropy),
        Tensor::from_dispatch(d_logits),
    )
}

/// The scalar part of a row pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RowPassSpec {
    /// Label smoothing `eps`.
    pub(crate) smoothing: f32,
    /// z-loss `beta`.
    pub(crate) z_loss: f32,
    /// `W = sum_k w_k` (`C` without class weights).
    pub(crate) weight_sum: f32,
    /// The entropy bonus `alpha`.
    pub(crate) entropy_bonus: f32,
}

/// The row pass on a CubeCL backend.
#[backend_extension(
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda"))
)]
pub(crate) trait CubeRowPassOps: Backend {
    /// Row losses `[R]`, log-sum-exps `[R]`, target log-probabilities `[R]`, entropies `[R]`
    /// and `dS` `[R, C]` of a chunk's logits `[R, C]`,
    /// for labels `[R]` (Int), `r_i` `[R]`, `v_i` `[R]`, `f_i` `[R]` and class weights `[C]`.
    #[fusion(meta = row_pass_outputs)]
    fn cross_entropy_rows(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        row_weights: FloatTensor<Self>,
        valid: FloatTensor<Self>,
        factors: FloatTensor<Self>,
        class_weights: FloatTensor<Self>,
        spec: RowPassSpec,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

/// The outputs' shapes, for Fusion: `[R]` four times and the logits' `[R, C]`.
fn row_pass_outputs(
    logits: &TensorSpec,
    _labels: &TensorSpec,
    _row_weights: &TensorSpec,
    _valid: &TensorSpec,
    _factors: &TensorSpec,
    _class_weights: &TensorSpec,
    _spec: &RowPassSpec,
) -> (TensorSpec, TensorSpec, TensorSpec, TensorSpec, TensorSpec) {
    let rows = TensorSpec::new(Shape::new([logits.shape[0]]), logits.dtype);
    (
        rows.clone(),
        rows.clone(),
        rows.clone(),
        rows,
        logits.clone(),
    )
}

impl CubeRowPassOps for CubeBackend {
    fn cross_entropy_rows(
        logits: FloatTensor<Self>,
        labels: IntTensor<Self>,
        row_weights: FloatTensor<Self>,
        valid: FloatTensor<Self>,
        factors: FloatTensor<Self>,
        class_weights: FloatTensor<Self>,
        spec: RowPassSpec,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        // The kernel indexes rows by stride: contiguous inputs (a no-op when they are).
        let logits = into_contiguous(logits);
        let labels = into_contiguous(labels);
        let [rows, _] = logits.shape().dims::<2>();
        let (client, device) = (logits.client.clone(), logits.device.clone());
        let (float, int) = (logits.dtype, labels.dtype);
        let losses = empty_device_dtype(client.clone(), device.clone(), Shape::new([rows]), float);
        let log_sum_exp =
            empty_device_dtype(client.clone(), device.clone(), Shape::new([rows]), float);
        let log_probabilities =
            empty_device_dtype(client.clone(), device.clone(), Shape::new([rows]), float);
        let entropy = empty_device_dtype(client.clone(), device.clone(), Shape::new([rows]), float);
        let d_logits = empty_device_dtype(client.clone(), device, logits.shape(), float);
        cross_entropy_rows_kernel::launch(
            &client,
            grid(rows),
            CubeDim::new_1d(UNITS as u32),
            logits.into_tensor_arg(),
            labels.into_tensor_arg(),
            into_contiguous(row_weights).into_tensor_arg(),
            into_contiguous(valid).into_tensor_arg(),
            into_contiguous(factors).into_tensor_arg(),
            into_contiguous(class_weights).into_tensor_arg(),
            losses.clone().into_tensor_arg(),
            log_sum_exp.clone().into_tensor_arg(),
            log_probabilities.clone().into_tensor_arg(),
            entropy.clone().into_tensor_arg(),
            d_logits.clone().into_tensor_arg(),
            spec.smoothing,
            spec.z_loss,
            spec.weight_sum,
            spec.entropy_bonus,
            UNITS,
            [dtype_to_storage_type(float), dtype_to_storage_type(int)],
        );
        (losses, log_sum_exp, log_probabilities, entropy, d_logits)
    }
}

/// One cube per row: `rows` cubes, in a second grid dimension beyond 65535 (the least limit of
/// a grid dimension across the runtimes).
fn grid(rows: usize) -> CubeCount {
    const MAX: usize = 65535;
    let x = rows.min(MAX);
    CubeCount::Static(x as u32, rows.div_ceil(MAX) as u32, 1)
}
