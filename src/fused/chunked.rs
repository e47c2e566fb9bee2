//! The row-chunk kernel of the fused head, on plain (non-autodiff) backend primitives.
//!
//! For rows `r = r0..r1` of the batch (at most `R` of them at a time):
//!
//! ```text
//! S_r   = X_r W + b                                   [R, C]  the only [R, C] buffer
//! l_i   = lse_i - S_{i, y_i},  lse_i = m_i + log sum_k exp(S_ik - m_i)
//! dS_r  = (exp(S_r - m) / sum_k exp(S_rk - m) - Y_r) / N   (S_r turned into dS_r in place)
//! dW   += X_r^T dS_r,   db += colsum(dS_r),   dX_r = dS_r W^T
//! ```
//!
//! so the `[N, C]` logits never exist: peak extra memory is `O(R C + D C)`. The loss is the end
//! of the graph, so its gradients can be computed here, in the forward pass; the autodiff
//! wrapper only scales them by the upstream gradient.
//!
//! This is written with Burn's primitive ops so that it runs on any backend; it is kept apart
//! from the extension trait so that a faster kernel (raw buffers, an accumulating GEMM) can
//! replace it without touching the autodiff wrapper.

use burn::backend::tensor::{FloatTensor, IndexingUpdateOp, IntTensor};
use burn::backend::{Backend, Scalar, Slice, TensorMetadata};

use super::backend::{FusedGradients, WantedGradients};

/// How the kernel gets `W^T` for `dX_r = dS_r W^T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WeightTranspose {
    /// A strided view: for backends whose matmul reads any strides without copying (Flex).
    View,
    /// One contiguous copy of `W^T` made before the loop: for backends whose matmul copies a
    /// non-contiguous operand on every call (NdArray would copy `[C, D]` once per chunk).
    Contiguous,
}

/// Runs the chunked forward pass and the gradients in `wanted`.
///
/// `labels` are the class indices, `[N]`, already validated to lie in `0..C`.
///
/// # Shapes
/// - `x`: `[N, D]`, `weight`: `[D, C]`, `bias`: `[C]`, `labels`: `[N]` (Int)
/// - loss: `[1]`; `d_input`: `[N, D]`, `d_weight`: `[D, C]`, `d_bias`: `[C]`
pub(crate) fn linear_cross_entropy<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    labels: IntTensor<B>,
    chunk_rows: usize,
    wanted: WantedGradients,
    weight_transpose: WeightTranspose,
) -> FusedGradients<B> {
    let [n_rows, d_input] = dims2(&x);
    let n_classes = weight.shape()[1];
    let device = x.device();
    let dtype = x.dtype().into();
    let chunk_rows = chunk_rows.clamp(1, n_rows);
    let mean_factor = 1.0 / n_rows as f64;
    let wanted = WantedGradients {
        bias: wanted.bias && bias.is_some(),
        ..wanted
    };
    let needs_d_logits = wanted.any();

    let bias_row = bias.map(|bias| B::float_reshape(bias, [1, n_classes].into()));
    let labels = B::int_reshape(labels, [n_rows, 1].into());
    let weight_transposed = wanted.input.then(|| {
        let view = B::float_transpose(weight.clone());
        match weight_transpose {
            WeightTranspose::View => view,
            // Reshaping a non-contiguous tensor to its own shape makes it contiguous.
            WeightTranspose::Contiguous => B::float_reshape(view, [n_classes, d_input].into()),
        }
    });

    let mut loss_sum: Option<FloatTensor<B>> = None;
    let mut d_weight: Option<FloatTensor<B>> = None;
    let mut d_bias: Option<FloatTensor<B>> = None;
    let mut d_input_chunks = Vec::with_capacity(n_rows.div_ceil(chunk_rows));

    for start in (0..n_rows).step_by(chunk_rows) {
        let end = (start + chunk_rows).min(n_rows);
        let rows = end - start;
        let x_chunk = B::float_slice(
            x.clone(),
            &[Slice::from(start..end), Slice::from(0..d_input)],
        );
        let labels_chunk = B::int_slice(
            labels.clone(),
            &[Slice::from(start..end), Slice::from(0..1)],
        );

        let mut logits = B::float_matmul(x_chunk.clone(), weight.clone());
        if let Some(bias_row) = &bias_row {
            logits = B::float_add(logits, bias_row.clone());
        }
        // Gather the true class's logit and the row maximum while `logits` is still shared,
        // then let the subtraction and the exponential run in place on the uniquely owned buffer.
        let true_logits = B::float_gather(1, logits.clone(), labels_chunk.clone());
        let row_max = B::float_max_dim(logits.clone(), 1);
        let exp_shifted = B::float_exp(B::float_sub(logits, row_max.clone()));
        let sum_exp = B::float_sum_dim(exp_shifted.clone(), 1);
        let log_sum_exp = B::float_add(row_max, B::float_log(sum_exp.clone()));
        let chunk_loss = B::float_sum(B::float_sub(log_sum_exp, true_logits));
        loss_sum = Some(match loss_sum {
            Some(sum) => B::float_add(sum, chunk_loss),
            None => chunk_loss,
        });
        if !needs_d_logits {
            continue;
        }

        // dS_r = A_r / N - Y_r / N: one [R, 1] scale per row, then -1/N scattered onto each
        // row's label column (no one-hot matrix).
        let row_scale = B::float_mul_scalar(B::float_recip(sum_exp), Scalar::from(mean_factor));
        let probabilities_over_n = B::float_mul(exp_shifted, row_scale);
        let minus_one_over_n =
            B::float_full([rows, 1].into(), Scalar::from(-mean_factor), &device, dtype);
        let d_logits = B::float_scatter(
            1,
            probabilities_over_n,
            labels_chunk,
            minus_one_over_n,
            IndexingUpdateOp::Add,
        );

        if wanted.bias {
            let column_sums = B::float_sum_dim(d_logits.clone(), 0);
            d_bias = Some(accumulate::<B>(d_bias, column_sums));
        }
        if let Some(weight_transposed) = &weight_transposed {
            d_input_chunks.push(B::float_matmul(d_logits.clone(), weight_transposed.clone()));
        }
        if wanted.weight {
            let chunk_d_weight = B::float_matmul(B::float_transpose(x_chunk), d_logits);
            d_weight = Some(accumulate::<B>(d_weight, chunk_d_weight));
        }
    }

    let loss_sum = loss_sum.expect("a non-empty batch has at least one chunk");
    let d_input = match d_input_chunks.len() {
        0 => None,
        1 => d_input_chunks.pop(),
        _ => Some(B::float_cat(d_input_chunks, 0)),
    };
    FusedGradients {
        loss: B::float_mul_scalar(
            B::float_reshape(loss_sum, [1].into()),
            Scalar::from(mean_factor),
        ),
        d_input,
        d_weight,
        d_bias: d_bias.map(|d_bias| B::float_reshape(d_bias, [n_classes].into())),
    }
}

/// `sum + term`, where the first term starts the sum (no zero tensor, no extra buffer).
fn accumulate<B: Backend>(sum: Option<FloatTensor<B>>, term: FloatTensor<B>) -> FloatTensor<B> {
    match sum {
        Some(sum) => B::float_add(sum, term),
        None => term,
    }
}

fn dims2<T: TensorMetadata>(tensor: &T) -> [usize; 2] {
    let shape = tensor.shape();
    [shape[0], shape[1]]
}
