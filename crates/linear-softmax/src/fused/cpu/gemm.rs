//! The safe GEMM wrappers of the CPU kernel: `C <- alpha A B + beta C` on matrix views whose
//! extents are checked against their slices, posed so that the library threads well; and the
//! chunk loop's GEMMs for each operand type ([`Operand`]: f64 through the library, f32 through
//! our packed GEMM on AVX-512 or AVX2 for GEMMs of at least `PACKED_F32_MIN_WORK` multiply-adds
//! and the library otherwise, bf16 through our packed GEMM with f32 sums).

use std::ops::Range;

use burn::tensor::bf16;

use super::float::RawFloat;
use super::rounding::{round_in_place, rounded_rows, rounded_rows_mut};

#[cfg(feature = "openblas-system")]
pub(super) mod blas;
mod packed;

/// The element type of the chunk loop's GEMM operands (`X`, `W`, `dS`), for a kernel whose row
/// pass and sums run in `E`: `E` itself, or bf16 for `E = f32`.
pub(super) trait Operand<E: RawFloat>: Copy + Send + Sync + 'static {
    /// `C <- A B + beta C`, with `C` in `E`.
    fn gemm(a: MatRef<'_, Self>, b: MatRef<'_, Self>, beta: E, c: MatMut<'_, E>);

    /// Makes one finished row of the row pass's `dS_r` an operand row, in place, while it is
    /// in cache: nothing when the types agree, else its rounding to bf16.
    fn finish_row(row: &mut [E]);

    /// The row pass's `dS_r` (`values`, row-major `[rows, cols]`, each row passed through
    /// [`Operand::finish_row`]) as an operand.
    fn operand_matrix(values: &[E], rows: usize, cols: usize) -> MatRef<'_, Self>;

    /// `values` in `E` when the types agree (`None` for bf16).
    fn as_compute(values: &[Self]) -> Option<&[E]>;

    /// The operand values of one finished row of `dS_r` (a row passed through
    /// [`Operand::finish_row`]), `row.len()` of them, in place: for the gradient filter to
    /// read and zero.
    fn operand_row(row: &mut [E]) -> &mut [Self];

    /// `|value|`.
    fn magnitude(self) -> f64;

    /// Zero.
    const OPERAND_ZERO: Self;
}

/// The `Operand` impl of a compute type as its own operand type: the row pass's buffer as it
/// is, and the GEMM `$gemm`.
macro_rules! same_type_operand {
    ($ty:ty, $gemm:path) => {
        impl Operand<$ty> for $ty {
            fn gemm(a: MatRef<'_, $ty>, b: MatRef<'_, $ty>, beta: $ty, c: MatMut<'_, $ty>) {
                $gemm(a, b, beta, c);
            }

            fn finish_row(_: &mut [$ty]) {}

            fn operand_matrix(values: &[$ty], rows: usize, cols: usize) -> MatRef<'_, $ty> {
                MatRef::row_major(values, rows, cols)
            }

            fn as_compute(values: &[$ty]) -> Option<&[$ty]> {
                Some(values)
            }

            fn operand_row(row: &mut [$ty]) -> &mut [$ty] {
                row
            }

            fn magnitude(self) -> f64 {
                self.abs() as f64
            }

            const OPERAND_ZERO: $ty = 0.0;
        }
    };
}

same_type_operand!(f32, gemm_f32);
same_type_operand!(f64, gemm_f64);

/// The f32 GEMM: our packed one where the CPU has AVX-512 or AVX2 and FMA, and the GEMM has
/// at least [`PACKED_F32_MIN_WORK`] multiply-adds (the f32 LM-head step of docs/BENCHMARKS_HISTORY.md takes
/// 1.14-1.18 s with it, 1.40 s on matrixmultiply's AVX-512 kernel; capped to AVX2, 1.16-1.18 s
/// against 1.47-1.52 s on matrixmultiply's AVX2 kernel); matrixmultiply's kernels for smaller
/// GEMMs and on other CPUs; the system OpenBLAS whenever the `openblas-system` feature asks
/// for it.
fn gemm_f32(a: MatRef<'_, f32>, b: MatRef<'_, f32>, beta: f32, c: MatMut<'_, f32>) {
    if !cfg!(feature = "openblas-system")
        && a.rows.saturating_mul(a.cols).saturating_mul(b.cols) >= PACKED_F32_MIN_WORK
        && let Some(micro) = packed::f32_kernels::detect()
    {
        return packed::gemm(micro, a, b, beta, c);
    }
    gemm(1.0, a, b, beta, c);
}

/// Below this many multiply-adds an f32 GEMM costs less in matrixmultiply, whose per-call work
/// is smaller (ours zeroes and packs whole blocks). Measured on classifier steps (AVX-512, two
/// cores; each step's largest GEMM): N = 256, D = 784, C = 100 (20 M) took 0.90 ms with it
/// against 1.07 ms with ours, N = 512, C = 200 (80 M) 2.94 against 3.30 ms, and C = 1000
/// (200 M) 6.68 ms either way. Capped to AVX2 (both sides), steps of 256 x 784 x 1000,
/// 512 x 784 x 400 and 1024 x 784 x 1000 were level within the noise.
const PACKED_F32_MIN_WORK: usize = 1 << 27;

/// The f64 GEMM: matrixmultiply's (or the system OpenBLAS's).
fn gemm_f64(a: MatRef<'_, f64>, b: MatRef<'_, f64>, beta: f64, c: MatMut<'_, f64>) {
    gemm(1.0, a, b, beta, c);
}

impl Operand<f32> for bf16 {
    fn gemm(a: MatRef<'_, bf16>, b: MatRef<'_, bf16>, beta: f32, c: MatMut<'_, f32>) {
        packed::bf16_kernels::gemm(a, b, beta, c);
    }

    /// Each value rounded once to the nearest bf16 (ties to even), into the first half of its
    /// row's bytes (`rounding.rs`), no second buffer. The row pass does it row after row, each
    /// row still in cache from its last pass. (A pass of its own after the whole chunk read
    /// an LM head's `[240, 32768]` buffer, 30 MiB, back from memory: the bf16 step took
    /// 0.699 s with it against 0.690 s, means of six alternated runs.)
    fn finish_row(row: &mut [f32]) {
        round_in_place(row);
    }

    /// The rounded rows, read at a row stride of `2 cols` bf16.
    fn operand_matrix(values: &[f32], rows: usize, cols: usize) -> MatRef<'_, bf16> {
        assert_eq!(values.len(), rows * cols, "a [{rows}, {cols}] matrix");
        let matrix = MatRef {
            data: rounded_rows(values),
            rows,
            cols,
            row_stride: 2 * cols,
            col_stride: 1,
        };
        assert!(
            matrix.fits(),
            "row i at 2 i cols, within the 2 rows cols bf16"
        );
        matrix
    }

    fn as_compute(_: &[bf16]) -> Option<&[f32]> {
        None
    }

    /// The row's rounding, in the first half of its bytes (`rounding.rs`).
    fn operand_row(row: &mut [f32]) -> &mut [bf16] {
        let cols = row.len();
        &mut rounded_rows_mut(row)[..cols]
    }

    fn magnitude(self) -> f64 {
        self.to_f64().abs()
    }

    const OPERAND_ZERO: bf16 = bf16::ZERO;
}

/// A matrix over a slice: `rows x cols`, element `(i, j)` at `i * row_stride + j * col_stride`.
#[derive(Clone, Copy, Debug)]
pub(super) struct MatRef<'a, E> {
    data: &'a [E],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, E> MatRef<'a, E> {
    /// `data` as a row-major `[rows, cols]` matrix (exactly `rows * cols` elements).
    pub(super) fn row_major(data: &'a [E], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "a [{rows}, {cols}] matrix");
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Whether every element the view addresses lies inside its slice.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }

    /// Columns `columns` of the matrix, the same elements (no copy).
    pub(super) fn columns(self, columns: Range<usize>) -> Self {
        assert!(columns.start <= columns.end && columns.end <= self.cols);
        Self {
            data: &self.data[(columns.start * self.col_stride).min(self.data.len())..],
            cols: columns.len(),
            ..self
        }
    }

    /// The transpose: the same elements, read through swapped strides (no copy).
    pub(super) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// A mutable `[rows, cols]` matrix over a slice, row `i` at `i * row_stride` (unit column
/// stride).
#[derive(Debug)]
pub(super) struct MatMut<'a, E> {
    data: &'a mut [E],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a, E> MatMut<'a, E> {
    /// `data` as a row-major `[rows, cols]` matrix (exactly `rows * cols` elements).
    pub(super) fn row_major(data: &'a mut [E], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "a [{rows}, {cols}] matrix");
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
        }
    }

    /// Columns `columns` of the matrix, the same elements (no copy).
    pub(super) fn columns(self, columns: Range<usize>) -> Self {
        assert!(columns.start <= columns.end && columns.end <= self.cols);
        Self {
            data: &mut self.data[columns.start..],
            cols: columns.len(),
            ..self
        }
    }

    /// Whether every row lies inside the slice.
    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + self.cols <= self.data.len()
    }
}

/// `[m, k, n]` of `C [m, n] <- A [m, k] B [k, n]`, checked.
fn dimensions<A, B, C>(a: &MatRef<'_, A>, b: &MatRef<'_, B>, c: &MatMut<'_, C>) -> [usize; 3] {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(
        b.rows, k,
        "inner dimensions of A [{m}, {k}] and B [{}, {n}]",
        b.rows
    );
    assert_eq!((c.rows, c.cols), (m, n), "C for A [{m}, {k}] B [{k}, {n}]");
    // Every element a view addresses lies inside its slice (checked where the views are made:
    // `row_major`, `t` and the bf16 `dS` of `operand_matrix`).
    debug_assert!(a.fits() && b.fits() && c.fits());
    [m, k, n]
}

/// `C <- alpha A B + beta C`, `A` `[m, k]`, `B` `[k, n]`, `C` `[m, n]`.
///
/// Posed as `C^T = B^T A^T` when `n > m`: matrixmultiply spreads a GEMM's M dimension over its
/// threads, and a chunk's GEMMs have a short side (`R` rows, or `D` features) and a long one
/// (`C` classes). Posed with M = R, the three GEMMs of the LM-head step took 1.12 s against
/// 0.92 s with the long side as M (R = 256, C = 32768, 2 cores), the whole step going from
/// 1.30x to 1.09x its floor.
pub(super) fn gemm<E: RawFloat>(
    alpha: E,
    a: MatRef<'_, E>,
    b: MatRef<'_, E>,
    beta: E,
    c: MatMut<'_, E>,
) {
    let [m, k, n] = dimensions(&a, &b, &c);
    if m == 0 || n == 0 {
        return;
    }
    let (rsa, csa) = (a.row_stride as isize, a.col_stride as isize);
    let (rsb, csb) = (b.row_stride as isize, b.col_stride as isize);
    let (rsc, csc) = (c.row_stride as isize, 1);
    let (pa, pb, pc) = (a.data.as_ptr(), b.data.as_ptr(), c.data.as_mut_ptr());
    // SAFETY: the views describe valid matrices of their slices (checked above and in the
    // constructors), and C is borrowed mutably, so it aliases neither A nor B. The transposed
    // problem reads the same matrices through swapped strides.
    unsafe {
        if n > m {
            E::gemm(
                n, k, m, alpha, pb, csb, rsb, pa, csa, rsa, beta, pc, csc, rsc,
            )
        } else {
            E::gemm(
                m, k, n, alpha, pa, rsa, csa, pb, rsb, csb, beta, pc, rsc, csc,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `A B` by the definition, for row-major `A` `[m, k]` and `B` `[k, n]`.
    fn naive(a: &[f64], b: &[f64], [m, k, n]: [usize; 3]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    /// Both posings (`n > m` and `n <= m`), transposed operands, and beta = 1 accumulating.
    #[test]
    fn every_posing_and_transpose_is_the_product() {
        for [m, k, n] in [[3, 4, 7], [7, 4, 3], [1, 5, 1]] {
            let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
            let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.71).cos()).collect();
            let expected = naive(&a, &b, [m, k, n]);
            let mut c = vec![0.0; m * n];
            gemm(
                1.0,
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, k, n),
                0.0,
                MatMut::row_major(&mut c, m, n),
            );
            assert!(c.iter().zip(&expected).all(|(c, e)| (c - e).abs() < 1e-12));

            // (A^T)^T B with A^T stored row-major, and B from its stored transpose.
            let a_t: Vec<f64> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let b_t: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let a_view = MatRef::row_major(&a_t, k, m).t();
            let b_view = MatRef::row_major(&b_t, n, k).t();
            gemm(2.0, a_view, b_view, 1.0, MatMut::row_major(&mut c, m, n));
            assert!(
                c.iter()
                    .zip(&expected)
                    .all(|(c, e)| (c - 3.0 * e).abs() < 1e-12)
            );
        }
    }

    #[test]
    #[should_panic(expected = "inner dimensions")]
    fn mismatched_inner_dimensions_are_refused() {
        let (a, b, mut c) = (vec![0.0_f32; 6], vec![0.0_f32; 6], vec![0.0_f32; 4]);
        gemm(
            1.0,
            MatRef::row_major(&a, 2, 3),
            MatRef::row_major(&b, 2, 3),
            0.0,
            MatMut::row_major(&mut c, 2, 2),
        );
    }
}
