//! bf16 operands of the packed GEMM: packed as pairs of consecutive `k`, one `u32` holding
//! `X[., 2p]` in its low half and `X[., 2p + 1]` in its high half, the operand layout of
//! AVX512-BF16's `vdpbf16ps` (`acc[j] += a[2p] b[2p, j] + a[2p + 1] b[2p + 1, j]` per f32
//! lane). Each product of two bf16 values is exact in f32 (8-bit significands; short of
//! overflow and underflow), and every sum is an f32 sum.
//!
//! AVX-512 CPUs without AVX512-BF16 run the same packed loops with the pairs widened to f32
//! in registers (`micro_avx512_widened`); the others pack the operands widened to f32
//! (`widened.rs`) for the f32 micro kernels: the same sums in the same order either way (on
//! whole tiles: a partial tile restarts its sums at each block of `k`, whose length differs
//! between pairs and single values), rounded after each product rather than each pair (and `vdpbf16ps` flushes subnormal inputs and results to
//! zero, rounding to nearest-even whatever the FPU's mode).

use std::ops::Range;

use burn::tensor::bf16;

use super::super::{MatMut, MatRef};
use super::f32_kernels;
use super::transpose::transpose;
use super::widened::widened;
use super::{Build, Lines, MR, MicroKernel, NR, Packed, pack_each_panel, zero_past_width};
#[cfg(target_arch = "x86_64")]
use crate::fused::cpu::isa::{CpuIsa, level};

impl Packed for bf16 {
    type Unit = u32;
    const K_PER_UNIT: usize = 2;

    #[inline(always)]
    fn pack<const W: usize>(
        lines: &Lines<'_, bf16>,
        range: Range<usize>,
        depths: Range<usize>,
        out: &mut [u32],
        build: Build,
    ) {
        let pairs = depths.len().div_ceil(2);
        let full = depths.len() / 2;
        let width = range.len();
        let out = &mut out[..pairs * W];
        let bits = |line, depth| lines.get(line, depth).to_bits() as u32;
        if lines.depth_stride == 1 && cfg!(target_endian = "little") {
            // A pair is adjacent in memory, a `u32` of the panel as it is (little-endian: the
            // lower depth in the low half): a transpose of the lines' words into the panel.
            let starts = lines.starts::<W>(range.clone(), depths.start, 2 * full);
            // SAFETY: each start is valid for `2 full` bf16, read as `full` words; `out` holds
            // `pairs * W >= full * W` words.
            unsafe { transpose::<W>(build, &starts[..width], full, out) };
        } else {
            for p in 0..full {
                let depth = depths.start + 2 * p;
                for (t, line) in range.clone().enumerate() {
                    out[p * W + t] = bits(line, depth) | bits(line, depth + 1) << 16;
                }
            }
        }
        if pairs > full {
            let depth = depths.end - 1;
            for (t, line) in range.enumerate() {
                out[full * W + t] = bits(line, depth);
            }
        }
        zero_past_width::<u32, W>(out, width);
    }

    /// Lines adjacent in memory (`W` read as `S_r = X_r W`'s B, `dS_r` as `dW`'s): pairs of
    /// rows of the whole range, each row read in one run (across rows, strides of a whole row
    /// of `W` defeat the hardware's prefetchers), into every panel at once.
    #[inline(always)]
    fn pack_panels<const W: usize>(
        lines: &Lines<'_, bf16>,
        range: Range<usize>,
        depths: Range<usize>,
        out: &mut [u32],
        build: Build,
    ) {
        if lines.line_stride != 1 {
            return pack_each_panel::<Self, W>(lines, range, depths, out, build);
        }
        let pairs = depths.len().div_ceil(2);
        for p in 0..pairs {
            let depth = depths.start + 2 * p;
            lines.prefetch_ahead(depth..depth + 2, depths.end, range.clone());
            let low = lines.run(depth, range.clone());
            // An odd last depth pairs with zeros.
            let high = (depth + 1 < depths.end).then(|| lines.run(depth + 1, range.clone()));
            for (panel, start) in (0..range.len()).step_by(W).enumerate() {
                let width = W.min(range.len() - start);
                let out = &mut out[(panel * pairs + p) * W..][..W];
                let low = &low[start..start + width];
                match high {
                    Some(high) => {
                        let high = &high[start..start + width];
                        for ((out, low), high) in out.iter_mut().zip(low).zip(high) {
                            *out = low.to_bits() as u32 | (high.to_bits() as u32) << 16;
                        }
                    }
                    None => {
                        for (out, low) in out.iter_mut().zip(low) {
                            *out = low.to_bits() as u32;
                        }
                    }
                }
                out[width..].fill(0);
            }
        }
    }
}

/// `C <- A B + beta C` for bf16 `A` and `B`: packed as pairs, for `vdpbf16ps` where the CPU
/// has AVX512-BF16, else for the pairs widened in AVX-512 registers (Skylake-SP to Ice Lake);
/// on other CPUs widened to f32 as they are packed, for the f32 AVX2 kernel (or the portable
/// one). Widened when packed on AVX-512, the LM-head step took 1.17-1.21 s against
/// 1.12-1.15 s widened in registers (its panels twice the bytes); widened in registers on
/// AVX2, 1.43-1.49 s against 1.18-1.20 s.
pub(in crate::fused::cpu) fn gemm(
    a: MatRef<'_, bf16>,
    b: MatRef<'_, bf16>,
    beta: f32,
    c: MatMut<'_, f32>,
) {
    match avx512bf16().or_else(avx512_widened) {
        Some(micro) => super::gemm(micro, a, b, beta, c),
        None => {
            let micro = f32_kernels::detect().unwrap_or_else(f32_kernels::portable);
            super::gemm(micro, widened(a), widened(b), beta, c);
        }
    }
}

/// Every micro kernel this CPU runs for bf16 pairs, the portable one (the witness of the
/// packing on any CPU) last.
#[cfg(test)]
pub(super) fn available() -> Vec<MicroKernel<u32>> {
    // SAFETY: plain Rust, for any CPU.
    let portable = unsafe { MicroKernel::new("portable", micro_portable, Build::Portable) };
    avx512bf16()
        .into_iter()
        .chain(avx512_widened())
        .chain([portable])
        .collect()
}

/// The `vdpbf16ps` micro kernel, where the CPU has AVX512-BF16 (and the AVX-512 build's
/// features) and the process's [`level`] allows it.
fn avx512bf16() -> Option<MicroKernel<u32>> {
    #[cfg(target_arch = "x86_64")]
    if level() >= CpuIsa::Avx512Bf16
        && let Some(build) = Build::avx512()
    {
        // SAFETY: the CPU has AVX512-BF16 (in `level`) and AVX-512 F (in `Build::avx512`).
        return Some(unsafe { MicroKernel::new("avx512bf16", micro_avx512bf16, build) });
    }
    None
}

/// The widening AVX-512 micro kernel, where the CPU has the AVX-512 build's features.
fn avx512_widened() -> Option<MicroKernel<u32>> {
    #[cfg(target_arch = "x86_64")]
    if let Some(build) = Build::avx512() {
        // SAFETY: the CPU has AVX-512 F (in `Build::avx512`).
        return Some(unsafe { MicroKernel::new("avx512 widened", micro_avx512_widened, build) });
    }
    None
}

/// The widened pair `(low, high)`: bf16 is the high half of an f32.
#[cfg(test)]
fn widen(pair: u32) -> (f32, f32) {
    (
        f32::from_bits(pair << 16),
        f32::from_bits(pair & 0xFFFF_0000),
    )
}

/// The micro kernel on any CPU: the pairs widened to f32, separate multiplies and adds.
///
/// # Safety
/// As `Micro`'s.
#[cfg(test)]
unsafe fn micro_portable(
    pairs: usize,
    a: &[u32],
    b: &[u32],
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    let mut tile = [0.0_f32; MR * NR];
    for (a, b) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(pairs) {
        let (mut b_low, mut b_high) = ([0.0_f32; NR], [0.0_f32; NR]);
        for ((low, high), &pair) in b_low.iter_mut().zip(&mut b_high).zip(b) {
            (*low, *high) = widen(pair);
        }
        for (row, &pair) in tile.chunks_exact_mut(NR).zip(a) {
            let (a_low, a_high) = widen(pair);
            for ((acc, low), high) in row.iter_mut().zip(&b_low).zip(&b_high) {
                *acc += a_low * low + a_high * high;
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { super::tile::write_tile(&tile, out, ldo, accumulate) }
}

/// The micro kernel with AVX512-BF16: per pair of `k`, two loads of `B`, `MR` broadcasts of
/// `A` and `2 MR` `vdpbf16ps` into 24 accumulator registers, which start from `out` when
/// accumulating.
///
/// # Safety
/// As `Micro`'s; the CPU has AVX512F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn micro_avx512bf16(
    pairs: usize,
    a: &[u32],
    b: &[u32],
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::{__m512bh, _mm512_dpbf16_ps, _mm512_loadu_si512, _mm512_set1_epi32};
    assert!(
        a.len() >= pairs * MR && b.len() >= pairs * NR,
        "whole panels"
    );
    // SAFETY: the caller's contract.
    let mut acc = unsafe { super::tile::load_tile_avx512(out, ldo, accumulate) };
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        // SAFETY: pair `p` of each panel lies within it (asserted above); unaligned loads of
        // 16 u32s. A `__m512bh` is 32 bf16 in the bits of a `__m512i`.
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
            for (i, acc) in acc.iter_mut().enumerate() {
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + i) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { super::tile::store_tile_avx512(&acc, out, ldo) };
}

/// The micro kernel with the pairs widened to f32 in AVX-512 registers: per pair of `k`, two
/// loads of `B` widened into four vectors (a bf16 is the high half of an f32: the low value
/// shifted up, the high one masked), `MR` broadcasts of `A` widened likewise, and `4 MR` fused
/// multiply-adds into 24 accumulator registers, which start from `out` when accumulating: the
/// f32 kernels' sums on operands widened as they are packed (`widened.rs`), in their order (on
/// whole tiles; see the module's doc).
///
/// # Safety
/// As `Micro`'s; the CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_avx512_widened(
    pairs: usize,
    a: &[u32],
    b: &[u32],
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::{
        __m512i, _mm512_and_si512, _mm512_castsi512_ps, _mm512_fmadd_ps, _mm512_loadu_si512,
        _mm512_set1_epi32, _mm512_slli_epi32,
    };
    assert!(
        a.len() >= pairs * MR && b.len() >= pairs * NR,
        "whole panels"
    );
    // SAFETY: the caller's contract.
    let mut acc = unsafe { super::tile::load_tile_avx512(out, ldo, accumulate) };
    let high_half = _mm512_set1_epi32(0xFFFF_0000_u32 as i32);
    let widen = |pairs: __m512i| {
        (
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(pairs)),
            _mm512_castsi512_ps(_mm512_and_si512(pairs, high_half)),
        )
    };
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..pairs {
        // SAFETY: pair `p` of each panel lies within it (asserted above); unaligned loads of
        // 16 u32s.
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_si512(b.add(p * NR).cast()),
                _mm512_loadu_si512(b.add(p * NR + 16).cast()),
            )
        };
        let ((b0_low, b0_high), (b1_low, b1_high)) = (widen(b0), widen(b1));
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            let (a_low, a_high) = widen(_mm512_set1_epi32(unsafe { *a.add(p * MR + i) } as i32));
            acc[0] = _mm512_fmadd_ps(a_high, b0_high, _mm512_fmadd_ps(a_low, b0_low, acc[0]));
            acc[1] = _mm512_fmadd_ps(a_high, b1_high, _mm512_fmadd_ps(a_low, b1_low, acc[1]));
        }
    }
    // SAFETY: the caller's contract.
    unsafe { super::tile::store_tile_avx512(&acc, out, ldo) };
}
