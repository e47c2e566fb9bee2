//! The bf16 GEMM of the CPU kernel: `C <- A B + beta C` with `A`, `B` in bf16 and `C` in f32.
//! Every product of two bf16 values is exact in f32, and every sum is an f32 sum.
//!
//! A packed GEMM in the GotoBLAS layout. `B` is packed `KC x NR` panels at a time and `A` in
//! `MR`-row panels, both as pairs of consecutive `k`: one `u32` holds `X[., 2p]` in its low
//! half and `X[., 2p + 1]` in its high half. That is the operand layout of AVX512-BF16's
//! `vdpbf16ps`, `acc[j] += a[2p] b[2p, j] + a[2p + 1] b[2p + 1, j]` per f32 lane, and the micro
//! kernel holds an `MR x NR` tile of f32 accumulators in 24 of the 32 vector registers. CPUs
//! without AVX512-BF16 run the same packed loops with the pairs widened to f32
//! (`micro_portable`): the same sums, rounded in another order.
//!
//! The work is spread over rayon's threads by columns of `C` when `C` is wide (`S = X W` and
//! `dW += X^T dS`, whose `n` is the class count), else by ranges of `k` into private tiles that
//! are summed after (`dX = dS W^T`, whose `k` is the class count and `n` the feature count).

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
/// The widest column range of one task: its packed `KC x NC` block of `B` (512 KiB) in L2.
const NC: usize = 1024;
/// Below this many multiply-adds a GEMM runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;

/// The micro kernel: `out = A_panel B_panel`, or `out += A_panel B_panel` when accumulating,
/// over `pairs` pairs of `k`, for an `MR x NR` block `out` with row stride `ldo`.
///
/// # Safety
/// The CPU runs the kernel's instructions (only [`MicroKernel::detect`] names one that needs a
/// CPU feature, after checking for it); `out` is valid for reads and writes of `MR` rows of
/// `NR` f32 at a stride of `ldo` elements, and aliases neither panel.
type Micro = unsafe fn(usize, &[u32], &[u32], *mut f32, usize, bool);

/// The micro kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::fused::cpu) enum MicroKernel {
    /// AVX512-BF16's `vdpbf16ps`, 32 multiply-adds per instruction.
    Avx512Bf16,
    /// Any CPU: the pairs widened to f32.
    Portable,
}

impl MicroKernel {
    /// The best micro kernel this CPU runs.
    pub(in crate::fused::cpu) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
        {
            return Self::Avx512Bf16;
        }
        Self::Portable
    }

    fn function(self) -> Micro {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Bf16 => micro_avx512bf16,
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx512Bf16 => unreachable!("detected on x86_64 only"),
            Self::Portable => micro_portable,
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
    let block = |a: &Lines<'_>, b: &Lines<'_>, depths, columns, beta, c: &mut [f32]| {
        let task = Task {
            micro: micro.function(),
            a,
            b,
            depths,
            columns,
            beta,
        };
        match micro {
            // SAFETY: only `detect` names this kernel, after checking for AVX-512.
            #[cfg(target_arch = "x86_64")]
            MicroKernel::Avx512Bf16 => unsafe { block_avx512(task, c, n) },
            _ => block(task, c, n),
        }
    };
    let (a, b, c) = (Lines::rows_of(a), Lines::columns_of(b), c.data);
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    if m * n * k < PARALLEL_WORK || threads == 1 {
        block(&a, &b, 0..k, 0..n, beta, c);
    } else if n >= 4 * NR * threads {
        // By columns: each task owns a disjoint column range of C.
        let width = n.div_ceil(2 * threads).next_multiple_of(NR).min(NC);
        let out = SharedOut(c.as_mut_ptr(), c.len());
        (0..n.div_ceil(width)).into_par_iter().for_each(|task| {
            let columns = task * width..((task + 1) * width).min(n);
            // SAFETY: the task reads and writes only the elements of C in `columns` (`block`'s
            // contract), and the tasks' column ranges are disjoint.
            let c = unsafe { out.slice() };
            block(&a, &b, 0..k, columns, beta, c);
        });
    } else {
        // By ranges of k: private tiles, summed into C after.
        let length = k.div_ceil(2 * threads).next_multiple_of(KC);
        let sum = (0..k.div_ceil(length))
            .into_par_iter()
            .map(|task| {
                let mut partial = vec![0.0_f32; m * n];
                let ks = task * length..((task + 1) * length).min(k);
                block(&a, &b, ks, 0..n, 0.0, &mut partial);
                partial
            })
            .reduce_with(|mut sum, partial| {
                sum.iter_mut().zip(&partial).for_each(|(s, p)| *s += p);
                sum
            })
            .expect("k > 0 here (m n k >= PARALLEL_WORK): at least one range");
        if beta == 0.0 {
            c.copy_from_slice(&sum);
        } else {
            c.iter_mut().zip(&sum).for_each(|(c, s)| *c = beta * *c + s);
        }
    }
}

/// C's elements, shared by tasks that touch disjoint elements of it.
struct SharedOut(*mut f32, usize);

// SAFETY: the tasks holding it touch disjoint elements (see its use).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The whole of C.
    ///
    /// # Safety
    /// No two holders may touch the same element.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self) -> &mut [f32] {
        // SAFETY: made from a live `&mut [f32]` of this length; disjointness is the caller's.
        unsafe { std::slice::from_raw_parts_mut(self.0, self.1) }
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
/// The CPU has AVX-512F, AVX-512BW and AVX-512VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn block_avx512(task: Task<'_>, c: &mut [f32], ldc: usize) {
    block(task, c, ldc)
}

/// Runs `task` on the calling thread, for `C` row-major `[m, ldc]`; reads and writes only C's
/// elements in `task.columns`.
#[inline(always)]
fn block(task: Task<'_>, c: &mut [f32], ldc: usize) {
    let Task {
        micro,
        a,
        b,
        depths,
        columns,
        beta,
    } = task;
    let m = c.len() / ldc;
    let panels_b = columns.len().div_ceil(NR);
    if depths.is_empty() {
        // k = 0: C <- beta C.
        for row in c.chunks_exact_mut(ldc) {
            for value in &mut row[columns.clone()] {
                *value = if beta == 0.0 { 0.0 } else { beta * *value };
            }
        }
        return;
    }
    let mut packed_b = vec![0_u32; panels_b * (KC / 2) * NR];
    let mut packed_a = vec![0_u32; MC.div_ceil(MR) * (KC / 2) * MR];
    let mut tile = [0.0_f32; MR * NR];
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
        for i0 in (0..m).step_by(MC) {
            let rows = i0..(i0 + MC).min(m);
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
                    let start = r0 * ldc + j0;
                    let whole = r0 + MR <= rows.end && nr == NR;
                    if whole && (!first || beta == 0.0 || beta == 1.0) {
                        // A whole tile of C, read only when accumulating: straight into C.
                        let out = &mut c[start..start + (MR - 1) * ldc + NR];
                        let accumulate = !first || beta == 1.0;
                        // SAFETY: `micro` is the kernel of a `MicroKernel` (which only `detect`
                        // names after checking the CPU); `out` holds MR rows of NR at stride ldc.
                        unsafe {
                            micro(pairs, a_panel, b_panel, out.as_mut_ptr(), ldc, accumulate)
                        };
                        continue;
                    }
                    // SAFETY: as above, with the tile's MR rows of NR at stride NR.
                    unsafe { micro(pairs, a_panel, b_panel, tile.as_mut_ptr(), NR, false) };
                    for (ii, tile_row) in tile.chunks_exact(NR).take(rows.end - r0).enumerate() {
                        let start = (r0 + ii) * ldc + j0;
                        let row = &mut c[start..start + nr];
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

    /// Every micro kernel this CPU runs, every layout of A and B (row-major, transposed,
    /// strided both ways), odd k, partial panels, every way of splitting the work, beta 0
    /// over NaNs and beta 1: the product and its f64 reference agree within the f32 sums'
    /// rounding.
    #[test]
    fn every_layout_and_split_is_the_product() {
        let mut kernels = vec![MicroKernel::Portable, MicroKernel::detect()];
        kernels.dedup();
        // [m, k, n]: one block; odd k and partial panels; wide C (split by columns); long k
        // (split by ranges of k); k = 0.
        let shapes = [
            [1, 1, 1],
            [13, 7, 33],
            [30, 513, 70],
            [40, 300, 2000],
            [25, 3001, 40],
            [3, 0, 5],
        ];
        for micro in kernels {
            for [m, k, n] in shapes {
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
                    MatRef::row_major(&a, m, k),
                    MatRef::row_major(&a_t, k, m).t(),
                ];
                let b_views = [
                    MatRef::row_major(&b, k, n),
                    MatRef::row_major(&b_t, n, k).t(),
                ];
                for (a_view, b_view) in a_views
                    .iter()
                    .flat_map(|a| b_views.iter().map(move |b| (*a, *b)))
                {
                    let context = format!("{micro:?} [{m}, {k}, {n}] {a_view:?} {b_view:?}");
                    let mut c = vec![f32::NAN; m * n];
                    gemm_with(micro, a_view, b_view, 0.0, MatMut::row_major(&mut c, m, n));
                    for ((c, e), s) in c.iter().zip(&expected).zip(&magnitude) {
                        assert!(
                            (f64::from(*c) - e).abs() <= bound(k, *s),
                            "{context}: {c} vs {e}"
                        );
                    }
                    gemm_with(micro, a_view, b_view, 1.0, MatMut::row_major(&mut c, m, n));
                    for ((c, e), s) in c.iter().zip(&expected).zip(&magnitude) {
                        let (e, s) = (2.0 * e, 2.0 * s);
                        assert!(
                            (f64::from(*c) - e).abs() <= bound(k + 1, s),
                            "{context}: {c} vs {e}"
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
