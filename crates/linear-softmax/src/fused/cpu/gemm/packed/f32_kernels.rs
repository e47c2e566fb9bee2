//! f32 operands of the packed GEMM: packed as they are, one value per line and step of `k`;
//! the micro kernel in AVX-512 or AVX2 fused multiply-adds (the same sums in the same order:
//! the same bits).
//!
//! f32 GEMMs run it on CPUs with AVX2 and FMA, from 2^27 multiply-adds on: smaller ones, and
//! every f32 GEMM on the other CPUs, take matrixmultiply's kernels (or OpenBLAS, with the
//! `openblas-system` feature: `gemm.rs`). bf16 GEMMs on CPUs without AVX-512 run these
//! kernels on operands widened as they are packed (`widened.rs`), the portable one on CPUs
//! without AVX2.

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use super::tile::{QC, QR};
use super::transpose::transpose;
use super::{Build, Lines, MicroKernel, Packed, pack_each_panel, pack_rows, zero_past_width};
use super::{MR, NR};

impl Packed for f32 {
    type Unit = f32;
    const K_PER_UNIT: usize = 1;

    #[inline(always)]
    fn pack<const W: usize>(
        lines: &Lines<'_, f32>,
        range: Range<usize>,
        depths: Range<usize>,
        out: &mut [f32],
        build: Build,
    ) {
        let width = range.len();
        let out = &mut out[..depths.len() * W];
        if lines.depth_stride == 1 {
            // Each line is adjacent in memory: a transpose into the panel.
            let starts = lines.starts::<W>(range.clone(), depths.start, depths.len());
            // SAFETY: each start is valid for `depths.len()` f32 (sliced above), read as their
            // bits; `out` holds `depths.len() * W` f32, written as bits.
            unsafe {
                let words = std::slice::from_raw_parts_mut(out.as_mut_ptr().cast(), out.len());
                transpose::<W>(build, &starts[..width], depths.len(), words);
            }
        } else {
            for (p, depth) in depths.enumerate() {
                for (t, line) in range.clone().enumerate() {
                    out[p * W + t] = lines.get(line, depth);
                }
            }
        }
        zero_past_width::<f32, W>(out, width);
    }

    /// Lines adjacent in memory (`W` read as `S_r = X_r W`'s B, `dS_r` as `dW`'s): copied row
    /// after row of the whole range ([`pack_rows`]).
    #[inline(always)]
    fn pack_panels<const W: usize>(
        lines: &Lines<'_, Self>,
        range: Range<usize>,
        depths: Range<usize>,
        out: &mut [f32],
        build: Build,
    ) {
        if lines.line_stride != 1 {
            return pack_each_panel::<Self, W>(lines, range, depths, out, build);
        }
        pack_rows::<f32, W>(lines, range, depths, out, |value| value);
    }
}

/// The AVX-512 micro kernel, where the CPU has AVX-512 (F, BW, VL, with AVX2 and FMA).
pub(in crate::fused::cpu) fn avx512() -> Option<MicroKernel<f32>> {
    #[cfg(target_arch = "x86_64")]
    if let Some(build) = Build::avx512() {
        // SAFETY: the CPU has AVX-512 F (in `Build::avx512`).
        return Some(unsafe { MicroKernel::new("avx512f", micro_avx512, build) });
    }
    None
}

/// The AVX2 micro kernel, where the CPU has AVX2 and FMA.
pub(in crate::fused::cpu) fn avx2_fma() -> Option<MicroKernel<f32>> {
    #[cfg(target_arch = "x86_64")]
    if let Some(build) = Build::avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (in `Build::avx2_fma`).
        return Some(unsafe { MicroKernel::new("avx2 fma", micro_avx2, build) });
    }
    None
}

/// The best micro kernel this CPU runs with vector instructions (AVX-512, else AVX2 + FMA).
pub(in crate::fused::cpu) fn detect() -> Option<MicroKernel<f32>> {
    avx512().or_else(avx2_fma)
}

/// The micro kernel on any CPU.
pub(in crate::fused::cpu) fn portable() -> MicroKernel<f32> {
    // SAFETY: plain Rust, for any CPU.
    unsafe { MicroKernel::new("portable", micro_portable, Build::Portable) }
}

/// Every micro kernel this CPU runs for f32, the best first, the portable one last.
#[cfg(test)]
pub(super) fn available() -> Vec<MicroKernel<f32>> {
    avx512()
        .into_iter()
        .chain(avx2_fma())
        .chain([portable()])
        .collect()
}

/// The micro kernel on any CPU (separate multiplies and adds).
///
/// # Safety
/// As `Micro`'s.
unsafe fn micro_portable(
    depths: usize,
    a: &[f32],
    b: &[f32],
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    let mut tile = [0.0_f32; MR * NR];
    for (a, b) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(depths) {
        for (row, &a) in tile.chunks_exact_mut(NR).zip(a) {
            for (acc, &b) in row.iter_mut().zip(b) {
                *acc += a * b;
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { super::tile::write_tile(&tile, out, ldo, accumulate) }
}

/// The micro kernel with AVX-512: per step of `k`, two loads of `B`, `MR` broadcasts of `A`
/// (folded into the multiply-adds) and `2 MR` fused multiply-adds into 24 accumulator
/// registers, which start from `out` when accumulating.
///
/// # Safety
/// As `Micro`'s; the CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_avx512(
    depths: usize,
    a: &[f32],
    b: &[f32],
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps};
    assert!(
        a.len() >= depths * MR && b.len() >= depths * NR,
        "whole panels"
    );
    // SAFETY: the caller's contract.
    let mut acc = unsafe { super::tile::load_tile_avx512(out, ldo, accumulate) };
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..depths {
        // SAFETY: step `p` of each panel lies within it (asserted above); unaligned loads.
        unsafe {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            for (i, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*a.add(p * MR + i));
                acc[0] = _mm512_fmadd_ps(a, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(a, b1, acc[1]);
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { super::tile::store_tile_avx512(&acc, out, ldo) };
}

/// The micro kernel with AVX2: the `MR x NR` tile as four `QR x QC` (6 x 16) quarters, each
/// over every step of `k` in turn, since 16 vector registers hold one quarter's 12
/// accumulators, two vectors of `B` and a broadcast of `A`. Per step of a quarter: two loads
/// of `B`, `QR` broadcasts of `A` and `2 QR` fused multiply-adds. The two quarters of a half
/// of the `B` panel run one after the other, so that the second reads it from L1 (16 KiB,
/// beside the 12 KiB `A` panel). Each element is the AVX-512 kernel's sum, in its order.
///
/// # Safety
/// As `Micro`'s; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2(
    depths: usize,
    a: &[f32],
    b: &[f32],
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    assert!(
        depths > 0 && a.len() >= depths * MR && b.len() >= depths * NR,
        "whole panels"
    );
    for column in [0, QC] {
        for row in [0, QR] {
            // SAFETY: the quarter's steps lie within the panels (asserted above); its rows
            // and columns within the caller's tile.
            unsafe {
                quarter_avx2(
                    depths,
                    a.as_ptr().add(row),
                    b.as_ptr().add(column),
                    out.add(row * ldo + column),
                    ldo,
                    accumulate,
                );
            }
        }
    }
}

/// One quarter of [`micro_avx2`]: `a` and `b` point at the quarter's first line of the
/// panels (steps `MR` and `NR` apart), `out` at its first element.
///
/// # Safety
/// `a` and `b` are valid for `depths` steps of `QR` and `QC` values; `out` as
/// [`super::tile::load_quarter_avx2`]'s; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn quarter_avx2(
    depths: usize,
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::{_mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps};
    // SAFETY: the caller's contract.
    let mut acc = unsafe { super::tile::load_quarter_avx2(out, ldo, accumulate) };
    for p in 0..depths {
        // SAFETY: step `p` lies within the panels (the caller's contract); unaligned loads.
        unsafe {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            for (i, acc) in acc.iter_mut().enumerate() {
                let a = _mm256_broadcast_ss(&*a.add(p * MR + i));
                acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { super::tile::store_quarter_avx2(&acc, out, ldo) };
}
