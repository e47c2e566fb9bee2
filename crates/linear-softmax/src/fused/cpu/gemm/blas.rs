//! The raw kernel's GEMMs through OpenBLAS's CBLAS interface (the opt-in `openblas-system`
//! feature; `matrixmultiply` otherwise).
//!
//! `matrixmultiply` takes any element strides; CBLAS takes a row-major matrix and a transpose
//! flag. Every matrix the kernel passes has one unit stride: `(rs, 1)` is a row-major matrix
//! with leading dimension `rs`, `(1, cs)` the transpose of one with leading dimension `cs`.
//! The library itself comes from burn's `openblas-system` feature (Debian's `libopenblas-dev`,
//! linked through `openblas-src`).

use std::ffi::c_int;

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

unsafe extern "C" {
    fn cblas_sgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f32,
        a: *const f32,
        lda: c_int,
        b: *const f32,
        ldb: c_int,
        beta: f32,
        c: *mut f32,
        ldc: c_int,
    );
    fn cblas_dgemm(
        order: c_int,
        trans_a: c_int,
        trans_b: c_int,
        m: c_int,
        n: c_int,
        k: c_int,
        alpha: f64,
        a: *const f64,
        lda: c_int,
        b: *const f64,
        ldb: c_int,
        beta: f64,
        c: *mut f64,
        ldc: c_int,
    );
}

/// The CBLAS transpose flag and leading dimension of a `[rows, cols]` matrix with element
/// strides `(rs, cs)`, one of which is 1.
fn layout(rows: usize, cols: usize, rs: isize, cs: isize) -> (c_int, c_int) {
    let dim = |value: isize| c_int::try_from(value.max(1)).expect("BLAS dimensions fit in an int");
    if cs == 1 && (rs as usize >= cols || rows <= 1) {
        (NO_TRANS, dim(rs.max(cols as isize)))
    } else {
        assert_eq!(rs, 1, "the raw kernel passes matrices with a unit stride");
        (TRANS, dim(cs.max(rows as isize)))
    }
}

macro_rules! gemm {
    ($name:ident, $ty:ty, $cblas:ident) => {
        /// `C <- alpha A B + beta C` for `A` `[m, k]`, `B` `[k, n]`, `C` `[m, n]` row-major.
        ///
        /// # Safety
        /// As `matrixmultiply`'s: the pointers and strides describe valid matrices, `c` not
        /// aliasing `a` or `b`; every matrix has a unit stride.
        #[allow(clippy::too_many_arguments)]
        pub(crate) unsafe fn $name(
            m: usize,
            k: usize,
            n: usize,
            alpha: $ty,
            a: *const $ty,
            rsa: isize,
            csa: isize,
            b: *const $ty,
            rsb: isize,
            csb: isize,
            beta: $ty,
            c: *mut $ty,
            rsc: isize,
            csc: isize,
        ) {
            if m == 0 || n == 0 {
                return;
            }
            if csc != 1 {
                // A column-major C: compute C^T = B^T A^T, whose C^T is row-major.
                assert_eq!(rsc, 1, "the raw kernel's outputs have a unit stride");
                // SAFETY: the same matrices, read through transposed strides.
                return unsafe {
                    $name(n, k, m, alpha, b, csb, rsb, a, csa, rsa, beta, c, csc, rsc)
                };
            }
            let (trans_a, lda) = layout(m, k, rsa, csa);
            let (trans_b, ldb) = layout(k, n, rsb, csb);
            let int = |v: usize| c_int::try_from(v).expect("BLAS dimensions fit in an int");
            let ldc = int((rsc as usize).max(n));
            // SAFETY: forwarded from the caller's contract; the layouts describe the same
            // elements as the strides.
            unsafe {
                $cblas(
                    ROW_MAJOR,
                    trans_a,
                    trans_b,
                    int(m),
                    int(n),
                    int(k),
                    alpha,
                    a,
                    lda,
                    b,
                    ldb,
                    beta,
                    c,
                    ldc,
                )
            }
        }
    };
}

gemm!(sgemm, f32, cblas_sgemm);
gemm!(dgemm, f64, cblas_dgemm);
