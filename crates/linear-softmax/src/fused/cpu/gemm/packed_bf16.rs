//! The bf16 GEMM of the CPU kernel: `C <- A B + beta C` with `A`, `B` in bf16 and `C` in f32.
//! Each product of two bf16 values is exact in f32 (8-bit significands; short of overflow and
//! underflow), and every sum is an f32 sum.
//!
//! A packed GEMM in the GotoBLAS layout. `B` is packed `KC x NR` panels at a time and `A` in
//! `MR`-row panels, both as pairs of consecutive `k`: one `u32` holds `X[., 2p]` in its low
//! half and `X[., 2p + 1]` in its high half. That is the operand layout of AVX512-BF16's
//! `vdpbf16ps`, `acc[j] += a[2p] b[2p, j] + a[2p + 1] b[2p + 1, j]` per f32 lane, and the micro
//! kernel holds an `MR x NR` tile of f32 accumulators in 24 of the 32 vector registers. CPUs
//! without AVX512-BF16 run the same packed loops with the pairs widened to f32 (`widened`, in
//! an AVX2 + FMA build where the CPU has them): the same sums, rounded in another order (and `vdpbf16ps` flushes
//! subnormal inputs and results to zero, rounding to nearest-even whatever the FPU's mode).
//!
//! The work is spread over rayon's threads by columns of `C` when `C` has enough column
//! panels for every thread (`S = X W` and `dW += X^T dS`, whose `n` is the class count), else
//! by ranges of `k` into private tiles summed in a fixed order (`dX = dS W^T` with its `D`
//! columns: each of `A = dS` and `B = W^T` is then packed once, where a split by columns
//! would pack `dS` once per task).

use std::ops::Range;

use burn::tensor::bf16;
use rayon::prelude::*;

use super::{MatMut, MatRef};

/// Rows of the micro kernel's tile.
const MR: usize = 12;
/// Columns of the micro kernel's tile: two 16-lane f32 vectors.
const NR: usize = 32;
/// `k` per packed block (even): a `KC x NR` panel of `B` is 16 KiB, in L1.
const KC: usize = 256;
/// Rows of `A` per packed block: `MC x KC` is 96 KiB, in L2.
const MC: usize = 192;
/// Columns of `B` per packed block: `KC x NC` (512 KiB) in L2; also the widest column range
/// of one task.
const NC: usize = 1024;
/// Below this many multiply-adds a GEMM runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;
/// The most memory the private tiles of a split by ranges of `k` may take together.
const PARTIALS_BUDGET: usize = 32 << 20;

/// The micro kernel: `out = A_panel B_panel`, or `out += A_panel B_panel` when accumulating,
/// over `pairs` pairs of `k`, for an `MR x NR` block `out` with row stride `ldo`.
///
/// # Safety
/// The CPU runs the kernel's instructions (a [`MicroKernel`] that needs a CPU feature exists
/// only after [`MicroKernel::detect`] found it); `out` is valid for reads and writes of `MR`
/// rows of `NR` f32 at a stride of `ldo` elements, and no other reference covers them.
type Micro = unsafe fn(usize, &[u32], &[u32], *mut f32, usize, bool);

/// The micro kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::fused::cpu) enum MicroKernel {
    /// AVX512-BF16's `vdpbf16ps`, 32 multiply-adds per instruction.
    Avx512Bf16(Detected),
    /// AVX2 with FMA: the pairs widened to f32 in 8-lane vectors.
    Avx2Fma(Detected),
    /// Any CPU: the pairs widened to f32.
    Portable,
}

/// The proof that this CPU has the features of the kernel that holds it: made only by
/// [`MicroKernel::detect`], after checking for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::fused::cpu) struct Detected(());

impl MicroKernel {
    /// The best micro kernel this CPU runs (once per GEMM: no allocation, the feature tests
    /// are cached by the standard library).
    pub(in crate::fused::cpu) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512bf16") {
                    return Self::Avx512Bf16(Detected(()));
                }
                return Self::Avx2Fma(Detected(()));
            }
        }
        Self::Portable
    }

    /// Every micro kernel this CPU runs, the best first.
    #[cfg(test)]
    fn available() -> Vec<Self> {
        let mut kernels = vec![Self::detect()];
        if let Self::Avx512Bf16(detected) = kernels[0] {
            // AVX512-BF16 was only detected with AVX2 and FMA.
            kernels.push(Self::Avx2Fma(detected));
        }
        if kernels[0] != Self::Portable {
            kernels.push(Self::Portable);
        }
        kernels
    }

    fn function(self) -> Micro {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Bf16(_) => micro_avx512bf16,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2Fma(_) => micro_avx2,
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx512Bf16(_) | Self::Avx2Fma(_) => unreachable!("detected on x86_64 only"),
            Self::Portable => micro_portable,
        }
    }

    /// Runs `task` on the calling thread with this kernel, in the build its CPU runs best.
    fn run(self, task: Task<'_>, c: Out) {
        match self {
            // SAFETY: `Detected` exists only where `detect` found these CPU features.
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Bf16(_) => unsafe { block_avx512(task, c) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Self::Avx2Fma(_) => unsafe { block_avx2(task, c) },
            _ => block(task, c),
        }
    }
}

/// `C <- A B + beta C` for `A` `[m, k]` and `B` `[k, n]` in bf16, `C` `[m, n]` in f32, with
/// the micro kernel this CPU runs. `beta = 0` never reads `C`.
pub(in crate::fused::cpu) fn gemm_bf16(
    a: MatRef<'_, bf16>,
    b: MatRef<'_, bf16>,
    beta: f32,
    c: MatMut<'_, f32>,
) {
    gemm_with(MicroKernel::detect(), a, b, beta, c)
}

/// [`gemm_bf16`] with a given micro kernel.
pub(in crate::fused::cpu) fn gemm_with(
    micro: MicroKernel,
    a: MatRef<'_, bf16>,
    b: MatRef<'_, bf16>,
    beta: f32,
    c: MatMut<'_, f32>,
) {
    let [m, k, n] = super::dimensions(&a, &b, &c);
    let (a, b) = (Lines::rows_of(a), Lines::columns_of(b));
    if m == 0 || n == 0 {
        return;
    }
    let task = |depths, columns, beta| Task {
        micro: micro.function(),
        a: &a,
        b: &b,
        depths,
        columns,
        beta,
    };
    let threads = rayon::current_num_threads();
    let out = Out::of(c.data, n);
    // Ranges of k for a split by k: multiples of KC, two per thread (for balance on a busy
    // machine), no more than the budget of private tiles allows.
    let ranges = k
        .div_ceil(KC)
        .min(2 * threads)
        .min(PARTIALS_BUDGET / (m * n * 4).max(1))
        .max(1);
    if m * n * k < PARALLEL_WORK || threads == 1 {
        micro.run(task(0..k, 0..n, beta), out);
    } else if n >= 4 * NR * threads || ranges == 1 {
        // By columns: each task owns a disjoint column range of C.
        let width = n.div_ceil(2 * threads).next_multiple_of(NR).min(NC);
        (0..n.div_ceil(width)).into_par_iter().for_each(|t| {
            let columns = t * width..((t + 1) * width).min(n);
            micro.run(task(0..k, columns, beta), out);
        });
    } else {
        // By ranges of k into private tiles, summed into C in the ranges' order (the same
        // sums whichever thread ran which range).
        let length = k.div_ceil(ranges).next_multiple_of(KC);
        let partials: Vec<Vec<f32>> = (0..k.div_ceil(length))
            .into_par_iter()
            .map(|t| {
                let mut partial = vec![0.0_f32; m * n];
                let depths = t * length..((t + 1) * length).min(k);
                micro.run(task(depths, 0..n, 0.0), Out::of(&mut partial, n));
                partial
            })
            .collect();
        // SAFETY: no task runs any more; `out` is the whole of C.
        let c = unsafe { out.all() };
        for (t, partial) in partials.iter().enumerate() {
            if t == 0 && beta == 0.0 {
                c.copy_from_slice(partial);
            } else if t == 0 {
                c.iter_mut()
                    .zip(partial)
                    .for_each(|(c, p)| *c = beta * *c + p);
            } else {
                c.iter_mut().zip(partial).for_each(|(c, p)| *c += p);
            }
        }
    }
}

/// C (row-major `[len / ldc, ldc]`) as a pointer that tasks share, each touching only its own
/// columns: no task ever holds a reference to the whole of it.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    len: usize,
    ldc: usize,
}

// SAFETY: tasks holding copies touch disjoint elements (`block`'s contract: only the columns of
// its task), through references made for those elements alone.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// `c`, borrowed for as long as the tasks that use it run (the callers' scopes).
    fn of(c: &mut [f32], ldc: usize) -> Self {
        Self {
            ptr: c.as_mut_ptr(),
            len: c.len(),
            ldc,
        }
    }

    fn rows(self) -> usize {
        self.len / self.ldc
    }

    /// Columns `columns` of row `row`.
    ///
    /// # Safety
    /// No other live reference covers these elements.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, row: usize, columns: Range<usize>) -> &mut [f32] {
        assert!(row < self.rows() && columns.end <= self.ldc && columns.start <= columns.end);
        // SAFETY: in bounds (asserted); exclusive by the caller's contract.
        unsafe {
            let start = self.ptr.add(row * self.ldc + columns.start);
            std::slice::from_raw_parts_mut(start, columns.len())
        }
    }

    /// The whole of C.
    ///
    /// # Safety
    /// No other live reference covers any of it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn all(&self) -> &mut [f32] {
        // SAFETY: made from a live `&mut [f32]` of this length; exclusive by the contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// An operand seen as lines along its `k` dimension (the rows of `A`, the columns of `B`):
/// element `(line, depth)` at `line * line_stride + depth * depth_stride`.
struct Lines<'a> {
    data: &'a [bf16],
    line_stride: usize,
    depth_stride: usize,
}

impl<'a> Lines<'a> {
    fn rows_of(a: MatRef<'a, bf16>) -> Self {
        Self {
            data: a.data,
            line_stride: a.row_stride,
            depth_stride: a.col_stride,
        }
    }

    fn columns_of(b: MatRef<'a, bf16>) -> Self {
        Self {
            data: b.data,
            line_stride: b.col_stride,
            depth_stride: b.row_stride,
        }
    }

    fn bits(&self, line: usize, depth: usize) -> u32 {
        self.data[line * self.line_stride + depth * self.depth_stride].to_bits() as u32
    }

    /// Packs `lines` (at most `W` of them) at `depths` as `[pair][W]` pairs into `out`, zero
    /// past the lines and past an odd last depth.
    #[inline(always)]
    fn pack<const W: usize>(&self, lines: Range<usize>, depths: Range<usize>, out: &mut [u32]) {
        let pairs = depths.len().div_ceil(2);
        let full = depths.len() / 2;
        let width = lines.len();
        let out = &mut out[..pairs * W];
        let pair = |low: bf16, high: bf16| low.to_bits() as u32 | (high.to_bits() as u32) << 16;
        if self.depth_stride == 1 {
            // A pair is adjacent in memory: one line at a time.
            for (t, line) in lines.clone().enumerate() {
                let start = line * self.line_stride + depths.start;
                let values = &self.data[start..start + 2 * full];
                for (p, two) in values.chunks_exact(2).enumerate() {
                    out[p * W + t] = pair(two[0], two[1]);
                }
            }
        } else if self.line_stride == 1 {
            // The lines are adjacent in memory: two depths at a time, interleaved.
            for p in 0..full {
                let depth = depths.start + 2 * p;
                let low = &self.data[depth * self.depth_stride + lines.start..][..width];
                let high = &self.data[(depth + 1) * self.depth_stride + lines.start..][..width];
                for ((out, &low), &high) in out[p * W..p * W + width].iter_mut().zip(low).zip(high)
                {
                    *out = pair(low, high);
                }
            }
        } else {
            for p in 0..full {
                let depth = depths.start + 2 * p;
                for (t, line) in lines.clone().enumerate() {
                    out[p * W + t] = self.bits(line, depth) | self.bits(line, depth + 1) << 16;
                }
            }
        }
        if pairs > full {
            let depth = depths.end - 1;
            for (t, line) in lines.enumerate() {
                out[full * W + t] = self.bits(line, depth);
            }
        }
        if width < W {
            for p in 0..pairs {
                out[p * W + width..(p + 1) * W].fill(0);
            }
        }
    }
}

/// One task's part of a GEMM: `C[:, columns] <- A[:, depths] B[depths, columns] + beta
/// C[:, columns]`.
struct Task<'a> {
    micro: Micro,
    a: &'a Lines<'a>,
    b: &'a Lines<'a>,
    depths: Range<usize>,
    columns: Range<usize>,
    beta: f32,
}

/// [`block`] built for AVX-512: the packing and the tiles' write-back in 16-lane vectors.
///
/// # Safety
/// The CPU has AVX-512 F, BW and VL, AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn block_avx512(task: Task<'_>, c: Out) {
    block(task, c)
}

/// [`block`] built for AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(task: Task<'_>, c: Out) {
    block(task, c)
}

/// Runs `task` on the calling thread, `NC` columns at a time; reads and writes only C's
/// elements in `task.columns`, through references to those alone.
#[inline(always)]
fn block(task: Task<'_>, c: Out) {
    let Task {
        micro,
        a,
        b,
        depths,
        columns,
        beta,
    } = task;
    if depths.is_empty() {
        // k = 0: C <- beta C.
        for i in 0..c.rows() {
            // SAFETY: this task's columns of row i, the only reference to them.
            for value in unsafe { c.row(i, columns.clone()) } {
                *value = if beta == 0.0 { 0.0 } else { beta * *value };
            }
        }
        return;
    }
    let mut packed_b = vec![0_u32; NC.div_ceil(NR) * (KC / 2) * NR];
    let mut packed_a = vec![0_u32; MC.div_ceil(MR) * (KC / 2) * MR];
    let mut tile = [0.0_f32; MR * NR];
    for c0 in columns.clone().step_by(NC) {
        let columns = c0..(c0 + NC).min(columns.end);
        let panels_b = columns.len().div_ceil(NR);
        for k0 in depths.clone().step_by(KC) {
            let ks = k0..(k0 + KC).min(depths.end);
            let pairs = ks.len().div_ceil(2);
            // The first k block applies beta; the others accumulate.
            let first = k0 == depths.start;
            for panel in 0..panels_b {
                let j0 = columns.start + panel * NR;
                let out = &mut packed_b[panel * pairs * NR..(panel + 1) * pairs * NR];
                b.pack::<NR>(j0..(j0 + NR).min(columns.end), ks.clone(), out);
            }
            for i0 in (0..c.rows()).step_by(MC) {
                let rows = i0..(i0 + MC).min(c.rows());
                let panels_a = rows.len().div_ceil(MR);
                for panel in 0..panels_a {
                    let r0 = i0 + panel * MR;
                    let out = &mut packed_a[panel * pairs * MR..(panel + 1) * pairs * MR];
                    a.pack::<MR>(r0..(r0 + MR).min(rows.end), ks.clone(), out);
                }
                for panel_b in 0..panels_b {
                    let b_panel = &packed_b[panel_b * pairs * NR..(panel_b + 1) * pairs * NR];
                    let j0 = columns.start + panel_b * NR;
                    let nr = NR.min(columns.end - j0);
                    for panel_a in 0..panels_a {
                        let a_panel = &packed_a[panel_a * pairs * MR..(panel_a + 1) * pairs * MR];
                        let r0 = i0 + panel_a * MR;
                        let whole = r0 + MR <= rows.end && nr == NR;
                        if whole && (!first || beta == 0.0 || beta == 1.0) {
                            // A whole tile of C, read only when accumulating: straight into C.
                            assert!(r0 + MR <= c.rows() && j0 + NR <= c.ldc);
                            let accumulate = !first || beta == 1.0;
                            // SAFETY: `micro` is the kernel of a `MicroKernel` (see `Micro`);
                            // the tile's MR rows of NR columns at stride ldc lie in C (asserted)
                            // and in this task's columns, which no other reference covers.
                            unsafe {
                                let out = c.ptr.add(r0 * c.ldc + j0);
                                micro(pairs, a_panel, b_panel, out, c.ldc, accumulate);
                            }
                            continue;
                        }
                        // SAFETY: as above, into the local tile (MR rows of NR at stride NR).
                        unsafe { micro(pairs, a_panel, b_panel, tile.as_mut_ptr(), NR, false) };
                        for (ii, tile_row) in tile.chunks_exact(NR).take(rows.end - r0).enumerate()
                        {
                            // SAFETY: this task's columns of the row, the only reference to them.
                            let row = unsafe { c.row(r0 + ii, j0..j0 + nr) };
                            let tile_row = &tile_row[..nr];
                            if !first || beta == 1.0 {
                                row.iter_mut().zip(tile_row).for_each(|(c, t)| *c += t);
                            } else if beta == 0.0 {
                                row.copy_from_slice(tile_row);
                            } else {
                                row.iter_mut()
                                    .zip(tile_row)
                                    .for_each(|(c, t)| *c = beta * *c + t);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The widened pair `(low, high)`: bf16 is the high half of an f32.
#[inline(always)]
fn widen(pair: u32) -> (f32, f32) {
    (
        f32::from_bits(pair << 16),
        f32::from_bits(pair & 0xFFFF_0000),
    )
}

/// The micro kernel on any CPU.
///
/// # Safety
/// As [`Micro`]'s.
unsafe fn micro_portable(
    pairs: usize,
    a: &[u32],
    b: &[u32],
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded.
    unsafe { widened::<false>(pairs, a, b, out, ldo, accumulate) }
}

/// The widened micro kernel built for AVX2, with fused multiply-adds.
///
/// # Safety
/// As [`Micro`]'s; the CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn micro_avx2(
    pairs: usize,
    a: &[u32],
    b: &[u32],
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded.
    unsafe { widened::<true>(pairs, a, b, out, ldo, accumulate) }
}

/// The micro kernel with the pairs widened to f32 (`FMA`: with fused multiply-adds, which only
/// a build with the `fma` feature may ask for: elsewhere `mul_add` is a library call).
///
/// # Safety
/// As [`Micro`]'s.
#[inline(always)]
unsafe fn widened<const FMA: bool>(
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
                *acc = if FMA {
                    a_high.mul_add(*high, a_low.mul_add(*low, *acc))
                } else {
                    *acc + (a_low * low + a_high * high)
                };
            }
        }
    }
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

/// The micro kernel with AVX512-BF16: per pair of `k`, two loads of `B`, `MR` broadcasts of
/// `A` and `2 MR` `vdpbf16ps` into 24 accumulator registers, which start from `out` when
/// accumulating.
///
/// # Safety
/// As [`Micro`]'s; the CPU has AVX512F and AVX512-BF16.
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
    use std::arch::x86_64::{
        __m512bh, _mm512_dpbf16_ps, _mm512_loadu_ps, _mm512_loadu_si512, _mm512_set1_epi32,
        _mm512_setzero_ps, _mm512_storeu_ps,
    };
    assert!(
        a.len() >= pairs * MR && b.len() >= pairs * NR,
        "whole panels"
    );
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
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: row i of `out` holds NR = 32 f32 (the caller's contract).
        unsafe {
            _mm512_storeu_ps(out.add(i * ldo), acc[0]);
            _mm512_storeu_ps(out.add(i * ldo + 16), acc[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every product of two bf16 is exact in f32, so the only error is the f32 rounding of
    /// the sums: at most `k` roundings of `2^-24` of the sum of `|a b|`.
    fn bound(k: usize, magnitude: f64) -> f64 {
        (k as f64 + 2.0) * f64::from(f32::EPSILON) * magnitude
    }

    fn values(len: usize, seed: usize) -> Vec<bf16> {
        (0..len)
            .map(|i| bf16::from_f32((((i * 7 + seed) % 23) as f32 - 11.0) / 8.0))
            .collect()
    }

    /// Every micro kernel this CPU runs, every layout of A and B (row-major, transposed),
    /// odd k, partial panels, every way of splitting the work (on pools of 1, 2, 4 and 32
    /// threads), beta 0 over NaNs, beta 1 and beta 0.5: the product and its f64 reference
    /// agree within the f32 sums' rounding.
    #[test]
    fn every_layout_and_split_is_the_product() {
        let kernels = MicroKernel::available();
        // [m, k, n]: one block; odd k and partial panels; wide C (split by columns); long k
        // (split by ranges of k); short k (one range: by columns); k = 0.
        let shapes = [
            [1, 1, 1],
            [13, 7, 33],
            [30, 513, 70],
            [40, 300, 2000],
            [25, 3001, 40],
            [200, 40, 40],
            [3, 0, 5],
        ];
        for threads in [1, 2, 4, 32] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for &micro in &kernels {
                for [m, k, n] in shapes {
                    pool.install(|| check_product(micro, [m, k, n], threads));
                }
            }
        }
    }

    fn check_product(micro: MicroKernel, [m, k, n]: [usize; 3], threads: usize) {
        let (a, b) = (values(m * k, 1), values(k * n, 5));
        // Row-major and stored-transposed copies, and every pairing of them.
        let a_t: Vec<bf16> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let b_t: Vec<bf16> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut expected = vec![0.0_f64; m * n];
        let mut magnitude = vec![0.0_f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let product = a[i * k + p].to_f64() * b[p * n + j].to_f64();
                    expected[i * n + j] += product;
                    magnitude[i * n + j] += product.abs();
                }
            }
        }
        let a_views = [
            ("A", MatRef::row_major(&a, m, k)),
            ("A^T^T", MatRef::row_major(&a_t, k, m).t()),
        ];
        let b_views = [
            ("B", MatRef::row_major(&b, k, n)),
            ("B^T^T", MatRef::row_major(&b_t, n, k).t()),
        ];
        for (a_name, a_view) in a_views {
            for (b_name, b_view) in b_views {
                let context =
                    format!("{micro:?} [{m}, {k}, {n}] {a_name} {b_name}, {threads} threads");
                let mut c = vec![f32::NAN; m * n];
                // beta 0 over NaNs, then accumulating: C = AB, 2 AB, then 0.5 (2 AB) + AB.
                for (beta, factor, roundings) in
                    [(0.0, 1.0, k), (1.0, 2.0, k + 1), (0.5, 2.0, k + 2)]
                {
                    gemm_with(micro, a_view, b_view, beta, MatMut::row_major(&mut c, m, n));
                    for ((c, e), s) in c.iter().zip(&expected).zip(&magnitude) {
                        let (e, s) = (factor * e, factor * s);
                        assert!(
                            (f64::from(*c) - e).abs() <= bound(roundings, s),
                            "{context}, beta {beta}: {c} vs {e}"
                        );
                    }
                }
            }
        }
    }

    /// A view with neither stride 1 (a column of a wider matrix, read down): the general
    /// packing path.
    #[test]
    fn strided_views_are_packed_element_by_element() {
        let [m, k, n] = [5, 9, 6];
        // A's element (i, p) at 2 (i * k + p): every other element of a longer slice.
        let wide: Vec<bf16> = values(2 * m * k, 3);
        let a = MatRef {
            data: &wide,
            rows: m,
            cols: k,
            row_stride: 2 * k,
            col_stride: 2,
        };
        let b = values(k * n, 4);
        let mut c = vec![0.0_f32; m * n];
        gemm_with(
            MicroKernel::Portable,
            a,
            MatRef::row_major(&b, k, n),
            0.0,
            MatMut::row_major(&mut c, m, n),
        );
        for i in 0..m {
            for j in 0..n {
                let e: f64 = (0..k)
                    .map(|p| wide[2 * (i * k + p)].to_f64() * b[p * n + j].to_f64())
                    .sum();
                assert!((f64::from(c[i * n + j]) - e).abs() < 1e-5, "({i}, {j})");
            }
        }
    }
}
