//! The float types the CPU kernel runs in (`f32`, `f64`): their arithmetic, a vectorisable
//! `exp` for shifted logits, and the unsafe GEMM primitive of the library (matrixmultiply or
//! OpenBLAS; wrapped safely in `gemm.rs`, which serves f64 with it, and f32 where our packed
//! GEMM does not run).

use std::ops::{Add, AddAssign, Div, Mul, Sub};

use burn::tensor::Element;

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
    fn is_nan(self) -> bool;
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
            fn is_nan(self) -> bool {
                $ty::is_nan(self)
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
                use super::gemm::blas::$gemm;
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
