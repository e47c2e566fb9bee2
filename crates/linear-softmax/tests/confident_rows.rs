//! Confident rows (the target's probability near 1) with large logits: every path and kernel
//! gives each row's loss and target log-probability as accurately as PyTorch's `log_softmax`
//! does, against PyTorch's float64 values (`tests/common/confident.rs`).
//!
//! A row loss formed as `lse_i - S_iy` after the row maximum was added back into `lse_i` keeps
//! only the f32 resolution of the maximum (2^-24 |m|: about 2e-6 at `m = 40`, all of a
//! loss of 1e-6); formed from the shifted logits it keeps that of a sum near 1.

mod common;

use burn::tensor::DType;
use common::backends;
use common::confident::{F32_ROW, F64_ROW, check_every_path};
use linear_softmax::diagnostics::Kernel;

#[test]
fn confident_rows_are_as_accurate_as_log_softmax_on_every_path_and_kernel() {
    let mut kernels = std::collections::BTreeSet::new();
    for (backend, plain) in backends() {
        let dtypes = [(DType::F32, F32_ROW), (DType::F64, F64_ROW)];
        kernels.extend(check_every_path(backend, &plain.autodiff(), &dtypes));
    }
    // Every CPU kernel of the fused op ran on these rows.
    for kernel in [Kernel::Raw, Kernel::FewClasses, Kernel::Tensor] {
        assert!(
            kernels.contains(&format!("{kernel:?}")),
            "{kernel:?} in {kernels:?}"
        );
    }
}
