//! The tiles of `C`: the matrix that a GEMM's tasks share, and a micro kernel's `MR x NR`
//! tile read from and written to it.

use std::marker::PhantomData;
use std::ops::Range;

use super::{MR, NR};

/// C (`[rows, cols]`, row `i` at `i * ldc`) as a pointer that a GEMM's tasks share: each
/// touches only its own columns, or its own rows (or, in a split by `k`, one task the whole of
/// C and the others only their own tiles), through references to those elements alone.
#[derive(Clone, Copy)]
pub(super) struct SharedC<'a> {
    ptr: *mut f32,
    rows: usize,
    cols: usize,
    pub(super) ldc: usize,
    /// The borrow of C's slice, for as long as the tasks run.
    _c: PhantomData<&'a mut [f32]>,
}

// SAFETY: the tasks holding copies touch disjoint elements (see the type's doc), through
// references made for those elements alone.
unsafe impl Send for SharedC<'_> {}
unsafe impl Sync for SharedC<'_> {}

impl<'a> SharedC<'a> {
    /// `c` as `[rows, cols]` at row stride `ldc >= cols` (every row inside the slice).
    pub(super) fn of(c: &'a mut [f32], rows: usize, cols: usize, ldc: usize) -> Self {
        assert!(cols <= ldc && (rows == 0 || (rows - 1) * ldc + cols <= c.len()));
        Self {
            ptr: c.as_mut_ptr(),
            rows,
            cols,
            ldc,
            _c: PhantomData,
        }
    }

    pub(super) fn rows(self) -> usize {
        self.rows
    }

    pub(super) fn cols(self) -> usize {
        self.cols
    }

    /// The element at `(row, column)`, for a micro kernel's tile.
    ///
    /// # Safety
    /// In bounds.
    pub(super) unsafe fn at(self, row: usize, column: usize) -> *mut f32 {
        // SAFETY: in bounds (the caller's contract).
        unsafe { self.ptr.add(row * self.ldc + column) }
    }

    /// Columns `columns` of row `row`.
    ///
    /// # Safety
    /// No other live reference covers these elements.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn row(&self, row: usize, columns: Range<usize>) -> &mut [f32] {
        assert!(row < self.rows && columns.end <= self.cols && columns.start <= columns.end);
        // SAFETY: in bounds (asserted); exclusive by the caller's contract.
        unsafe {
            let start = self.ptr.add(row * self.ldc + columns.start);
            std::slice::from_raw_parts_mut(start, columns.len())
        }
    }

    /// Row `row` of C, its `cols` elements.
    ///
    /// # Safety
    /// No other live reference covers any of them.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn whole_row(&self, row: usize) -> &mut [f32] {
        // SAFETY: in bounds (`row` checked by `row`); exclusive by the contract.
        unsafe { self.row(row, 0..self.cols) }
    }
}

/// `out <- tile`, or `out += tile` when accumulating: a portable micro kernel's `MR x NR`
/// tile into rows of stride `ldo`.
///
/// # Safety
/// As `Micro`'s: `out` holds `MR` rows of `NR` f32 at stride `ldo`, no other reference to them.
#[inline(always)]
pub(super) unsafe fn write_tile(
    tile: &[f32; MR * NR],
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    for (i, tile_row) in tile.chunks_exact(NR).enumerate() {
        // SAFETY: row i of `out` holds NR f32 (the caller's contract).
        let row = unsafe { std::slice::from_raw_parts_mut(out.add(i * ldo), NR) };
        if accumulate {
            row.iter_mut().zip(tile_row).for_each(|(o, t)| *o += t);
        } else {
            row.copy_from_slice(tile_row);
        }
    }
}

/// An AVX-512 micro kernel's accumulators: the `MR x NR` tile of `out` (row stride `ldo`)
/// when accumulating, else zeros.
///
/// # Safety
/// As `Micro`'s; the CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn load_tile_avx512(
    out: *const f32,
    ldo: usize,
    accumulate: bool,
) -> [[std::arch::x86_64::__m512; 2]; MR] {
    use std::arch::x86_64::{_mm512_loadu_ps, _mm512_setzero_ps};
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    if accumulate {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row i of `out` holds NR = 32 f32 (the caller's contract).
            unsafe {
                acc[0] = _mm512_loadu_ps(out.add(i * ldo));
                acc[1] = _mm512_loadu_ps(out.add(i * ldo + 16));
            }
        }
    }
    acc
}

/// Stores an AVX-512 micro kernel's accumulators into the `MR x NR` tile of `out`.
///
/// # Safety
/// As `Micro`'s; the CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn store_tile_avx512(
    acc: &[[std::arch::x86_64::__m512; 2]; MR],
    out: *mut f32,
    ldo: usize,
) {
    use std::arch::x86_64::_mm512_storeu_ps;
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: row i of `out` holds NR = 32 f32 (the caller's contract).
        unsafe {
            _mm512_storeu_ps(out.add(i * ldo), acc[0]);
            _mm512_storeu_ps(out.add(i * ldo + 16), acc[1]);
        }
    }
}

/// Rows of a quarter of the tile, which an AVX2 micro kernel holds in registers.
pub(super) const QR: usize = MR / 2;
/// Columns of a quarter of the tile: two 8-lane f32 vectors.
pub(super) const QC: usize = NR / 2;

/// An AVX2 micro kernel's accumulators for a `QR x QC` quarter of a tile: the quarter of `out`
/// (row stride `ldo`) when accumulating, else zeros.
///
/// # Safety
/// `out` holds `QR` rows of `QC` f32 at stride `ldo`; the CPU has AVX.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub(super) unsafe fn load_quarter_avx2(
    out: *const f32,
    ldo: usize,
    accumulate: bool,
) -> [[std::arch::x86_64::__m256; 2]; QR] {
    use std::arch::x86_64::{_mm256_loadu_ps, _mm256_setzero_ps};
    let mut acc = [[_mm256_setzero_ps(); 2]; QR];
    if accumulate {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: row i of `out` holds QC = 16 f32 (the caller's contract).
            unsafe {
                acc[0] = _mm256_loadu_ps(out.add(i * ldo));
                acc[1] = _mm256_loadu_ps(out.add(i * ldo + 8));
            }
        }
    }
    acc
}

/// Stores an AVX2 micro kernel's accumulators into the `QR x QC` quarter of `out`.
///
/// # Safety
/// As [`load_quarter_avx2`]'s, and no other reference covers the quarter.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub(super) unsafe fn store_quarter_avx2(
    acc: &[[std::arch::x86_64::__m256; 2]; QR],
    out: *mut f32,
    ldo: usize,
) {
    use std::arch::x86_64::_mm256_storeu_ps;
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: row i of `out` holds QC = 16 f32 (the caller's contract).
        unsafe {
            _mm256_storeu_ps(out.add(i * ldo), acc[0]);
            _mm256_storeu_ps(out.add(i * ldo + 8), acc[1]);
        }
    }
}
