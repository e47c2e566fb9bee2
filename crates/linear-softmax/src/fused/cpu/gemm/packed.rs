//! The packed GEMM of the CPU kernel: `C <- A B + beta C` with `C` in f32 and `A`, `B` in
//! bf16 (`packed/bf16_kernels.rs`) or f32 (`packed/f32_kernels.rs`), every sum an f32 sum.
//!
//! The GotoBLAS layout. `B` is packed `KU x NR` units at a time and `A` in `MR`-row panels of
//! `KU` units, where a unit is what the micro kernel takes per line and step: one f32, or a
//! pair of bf16 `k`-neighbours in a `u32` (the operand layout of AVX512-BF16's `vdpbf16ps`).
//! The micro kernel holds an `MR x NR` tile of f32 accumulators in 24 of AVX-512's 32 vector
//! registers; each operand type has one built for its instructions, and a portable one.
//!
//! Operands whose lines run along `k` in memory (the rows of `X_r`, `dS_r` and `W` read as
//! `W^T`) are packed by a transpose, in 16 x 16 register blocks with AVX-512
//! (`packed/transpose.rs`); the others by copies.
//!
//! The work is spread over rayon's threads by columns of `C` (`S_r = X_r W` and
//! `dW += X_r^T dS_r`, whose `n` is the class count: each task packs the whole of `A`, small),
//! or by ranges of `k` (`dX_r = dS_r W^T`, whose `k` is the class count and `n` only `D`: each
//! of `A` and `B` packed once, the first range summed into `C` and the others into private
//! `[m, n]` tiles added to it in a fixed order), whichever moves less memory.

pub(in crate::fused::cpu) mod bf16_kernels;
pub(in crate::fused::cpu) mod f32_kernels;
mod transpose;

use std::fmt;
use std::ops::Range;

use rayon::prelude::*;

use super::{MatMut, MatRef};

/// Rows of the micro kernel's tile.
const MR: usize = 12;
/// Columns of the micro kernel's tile: two 16-lane f32 vectors.
const NR: usize = 32;
/// Units (of 4 bytes) of `k` per packed block: a `KU x NR` panel of `B` is 16 KiB, in L1.
const KU: usize = 256;
/// Rows of `A` per packed block: `MC x KU` is 96 KiB, in L2.
const MC: usize = 192;
/// Columns of `B` per packed block: `KU x NC` (512 KiB) in L2; also the widest column range
/// of one task.
const NC: usize = 256;
/// Below this many multiply-adds a GEMM runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;
/// The most memory the private tiles of a split by ranges of `k` may take together.
const PARTIALS_BUDGET: usize = 32 << 20;

/// An operand type of the packed GEMM, and how it is packed.
pub(in crate::fused::cpu) trait Packed: Copy + Send + Sync + 'static {
    /// What a packed panel holds per line and step: one value, or `DEPTHS` consecutive values
    /// of `k` (4 bytes, whatever the type).
    type Unit: Copy + Default + Send + Sync + 'static;
    /// Values of `k` per unit.
    const DEPTHS: usize;

    /// Packs `range` (at most `W` lines) at `depths` as `[unit][W]` into `out`, zero past the
    /// lines and past the last depth, with the instructions of `build`.
    fn pack<const W: usize>(
        lines: &Lines<'_, Self>,
        range: Range<usize>,
        depths: Range<usize>,
        out: &mut [Self::Unit],
        build: Build,
    );

    /// Packs `range` as consecutive panels of `W` lines (the last one zero-padded), each of
    /// `units * W` units for the `units` that `depths` make.
    #[inline(always)]
    fn pack_panels<const W: usize>(
        lines: &Lines<'_, Self>,
        range: Range<usize>,
        depths: Range<usize>,
        out: &mut [Self::Unit],
        build: Build,
    ) {
        pack_each_panel::<Self, W>(lines, range, depths, out, build);
    }
}

/// [`Packed::pack_panels`] one panel at a time.
#[inline(always)]
fn pack_each_panel<P: Packed, const W: usize>(
    lines: &Lines<'_, P>,
    range: Range<usize>,
    depths: Range<usize>,
    out: &mut [P::Unit],
    build: Build,
) {
    let units = depths.len().div_ceil(P::DEPTHS);
    for (panel, start) in range.clone().step_by(W).enumerate() {
        let out = &mut out[panel * units * W..(panel + 1) * units * W];
        P::pack::<W>(
            lines,
            start..(start + W).min(range.end),
            depths.clone(),
            out,
            build,
        );
    }
}

/// The micro kernel: `out = A_panel B_panel`, or `out += A_panel B_panel` when accumulating,
/// over `units` units of `k`, for an `MR x NR` block `out` with row stride `ldo`.
///
/// # Safety
/// The CPU runs the kernel's instructions (see [`MicroKernel::new`]); `out` is valid for reads
/// and writes of `MR` rows of `NR` f32 at a stride of `ldo` elements, and no other reference
/// covers them.
type Micro<U> = unsafe fn(usize, &[U], &[U], *mut f32, usize, bool);

/// A micro kernel and the build of the loops around it.
#[derive(Clone, Copy)]
pub(in crate::fused::cpu) struct MicroKernel<U: 'static> {
    name: &'static str,
    micro: Micro<U>,
    build: Build,
}

impl<U> fmt::Debug for MicroKernel<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl<U> MicroKernel<U> {
    /// # Safety
    /// This CPU runs `micro`'s instructions.
    unsafe fn new(name: &'static str, micro: Micro<U>, build: Build) -> Self {
        Self { name, micro, build }
    }

    /// Runs `task` on the calling thread, in the build its CPU runs best.
    fn run<P: Packed<Unit = U>>(self, task: Task<'_, P>, c: Out) {
        match self.build {
            // SAFETY: `Detected` exists only where `Build::avx512` found these CPU features.
            #[cfg(target_arch = "x86_64")]
            Build::Avx512(_) => unsafe { block_avx512(task, c) },
            // SAFETY: as above, `Build::avx2_fma`.
            #[cfg(target_arch = "x86_64")]
            Build::Avx2Fma(_) => unsafe { block_avx2(task, c) },
            _ => block(task, c),
        }
    }
}

/// The builds of the packing and write-back loops.
#[derive(Clone, Copy, Debug)]
pub(in crate::fused::cpu) enum Build {
    /// AVX-512 F, BW and VL, with AVX2 and FMA.
    Avx512(Detected),
    /// AVX2 and FMA.
    Avx2Fma(Detected),
    /// Any CPU.
    Portable,
}

/// The proof that this CPU has the features of the build that holds it: made only by
/// [`Build::avx512`] and [`Build::avx2_fma`], after checking for them.
#[derive(Clone, Copy, Debug)]
pub(in crate::fused::cpu) struct Detected(());

impl Build {
    /// The AVX-512 build, where the CPU has its features (cached by the standard library: no
    /// cost per GEMM).
    fn avx512() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("avx2")
                && has!("fma")
            {
                return Some(Self::Avx512(Detected(())));
            }
        }
        None
    }

    /// The AVX2 + FMA build, where the CPU has them.
    fn avx2_fma() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                return Some(Self::Avx2Fma(Detected(())));
            }
        }
        None
    }
}

/// `C <- A B + beta C` for `A` `[m, k]` and `B` `[k, n]` of `P`, `C` `[m, n]` in f32, with
/// the micro kernel `micro`. `beta = 0` never reads `C`.
pub(in crate::fused::cpu) fn gemm<P: Packed>(
    micro: MicroKernel<P::Unit>,
    a: MatRef<'_, P>,
    b: MatRef<'_, P>,
    beta: f32,
    c: MatMut<'_, f32>,
) {
    let [m, k, n] = super::dimensions(&a, &b, &c);
    let (a, b) = (Lines::rows_of(a), Lines::columns_of(b));
    if m == 0 || n == 0 {
        return;
    }
    let task = |depths, columns, beta| Task {
        micro: micro.micro,
        build: micro.build,
        a: &a,
        b: &b,
        depths,
        columns,
        beta,
    };
    let threads = rayon::current_num_threads();
    let out = Out::of(c.data, n);
    // A split by k: one range of whole blocks per thread, no more than the budget of private
    // tiles allows (the first range's tile is C itself).
    let block_depth = KU * P::DEPTHS;
    let ranges = k
        .div_ceil(block_depth)
        .min(threads)
        .min(PARTIALS_BUDGET / (m * n * 4).max(1) + 1);
    // A split by columns: two ranges per thread (for balance on a busy machine), each task
    // packing the whole of A.
    let width = n.div_ceil(2 * threads).next_multiple_of(NR);
    let column_tasks = n.div_ceil(width);
    if m * n * k < PARALLEL_WORK || threads == 1 {
        micro.run(task(0..k, 0..n, beta), out);
    } else if ranges == 1 || (column_tasks - 1) * k <= (ranges - 1) * n {
        // By columns, where packing A once more per task moves less memory than summing the
        // private tiles (`S_r`, `dW`, whose `n` is the class count): each task owns a disjoint
        // column range of C.
        (0..column_tasks).into_par_iter().for_each(|t| {
            let columns = t * width..((t + 1) * width).min(n);
            micro.run(task(0..k, columns, beta), out);
        });
    } else {
        // By ranges of k (`dX_r`, whose `k` is the class count): the first into C, the others
        // into private tiles added to C in the ranges' order (the same sums whichever thread
        // ran which range).
        let length = k.div_ceil(ranges).next_multiple_of(block_depth);
        let partials: Vec<Vec<f32>> = (0..k.div_ceil(length))
            .into_par_iter()
            .filter_map(|t| {
                let depths = t * length..((t + 1) * length).min(k);
                if t == 0 {
                    // The only task that touches C.
                    micro.run(task(depths, 0..n, beta), out);
                    return None;
                }
                let mut partial = vec![0.0_f32; m * n];
                micro.run(task(depths, 0..n, 0.0), Out::of(&mut partial, n));
                Some(partial)
            })
            .collect();
        // SAFETY: no task runs any more; `out` is the whole of C.
        let c = unsafe { out.all() };
        for partial in &partials {
            c.iter_mut().zip(partial).for_each(|(c, p)| *c += p);
        }
    }
}

/// C (row-major `[len / ldc, ldc]`) as a pointer that tasks share, each touching only its own
/// columns (or, in a split by `k`, one task the whole of C and the others their own tiles):
/// no task ever holds a reference to elements another one touches.
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

    /// Asks the cache for the `MR x NR` tile at `(row, column)`, where it lies in C: the
    /// micro kernel after this one reads or writes it, 12 rows a whole row apart, which the
    /// hardware's stride prefetchers do not follow.
    #[inline(always)]
    fn prefetch_tile(&self, row: usize, column: usize) {
        #[cfg(target_arch = "x86_64")]
        for i in row..(row + MR).min(self.rows()) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let start = i * self.ldc + column;
            for offset in [0, 16] {
                if start + offset < self.len {
                    // SAFETY: a prefetch never faults; the address lies in C.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(self.ptr.add(start + offset).cast()) };
                }
            }
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

/// `out <- tile`, or `out += tile` when accumulating: a portable micro kernel's `MR x NR`
/// tile into rows of stride `ldo`.
///
/// # Safety
/// As `Micro`'s: `out` holds `MR` rows of `NR` f32 at stride `ldo`, no other reference to them.
#[inline(always)]
unsafe fn write_tile(tile: &[f32; MR * NR], out: *mut f32, ldo: usize, accumulate: bool) {
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
unsafe fn load_tile_avx512(
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
unsafe fn store_tile_avx512(acc: &[[std::arch::x86_64::__m512; 2]; MR], out: *mut f32, ldo: usize) {
    use std::arch::x86_64::_mm512_storeu_ps;
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: row i of `out` holds NR = 32 f32 (the caller's contract).
        unsafe {
            _mm512_storeu_ps(out.add(i * ldo), acc[0]);
            _mm512_storeu_ps(out.add(i * ldo + 16), acc[1]);
        }
    }
}

/// An operand seen as lines along its `k` dimension (the rows of `A`, the columns of `B`):
/// element `(line, depth)` at `line * line_stride + depth * depth_stride`.
pub(in crate::fused::cpu) struct Lines<'a, T> {
    data: &'a [T],
    line_stride: usize,
    depth_stride: usize,
}

impl<'a, T: Copy> Lines<'a, T> {
    fn rows_of(a: MatRef<'a, T>) -> Self {
        Self {
            data: a.data,
            line_stride: a.row_stride,
            depth_stride: a.col_stride,
        }
    }

    fn columns_of(b: MatRef<'a, T>) -> Self {
        Self {
            data: b.data,
            line_stride: b.col_stride,
            depth_stride: b.row_stride,
        }
    }

    fn get(&self, line: usize, depth: usize) -> T {
        self.data[line * self.line_stride + depth * self.depth_stride]
    }
}

/// One task's part of a GEMM: `C[:, columns] <- A[:, depths] B[depths, columns] + beta
/// C[:, columns]`.
struct Task<'a, P: Packed> {
    micro: Micro<P::Unit>,
    /// The build `micro` came with: the packing's instructions.
    build: Build,
    a: &'a Lines<'a, P>,
    b: &'a Lines<'a, P>,
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
unsafe fn block_avx512<P: Packed>(task: Task<'_, P>, c: Out) {
    block(task, c)
}

/// [`block`] built for AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<P: Packed>(task: Task<'_, P>, c: Out) {
    block(task, c)
}

/// Runs `task` on the calling thread, `NC` columns at a time; reads and writes only C's
/// elements in `task.columns`, through references to those alone.
#[inline(always)]
fn block<P: Packed>(task: Task<'_, P>, c: Out) {
    let Task {
        micro,
        build,
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
    let mut packed_b = vec![P::Unit::default(); NC.div_ceil(NR) * KU * NR];
    let mut packed_a = vec![P::Unit::default(); MC.div_ceil(MR) * KU * MR];
    let mut tile = [0.0_f32; MR * NR];
    for c0 in columns.clone().step_by(NC) {
        let columns = c0..(c0 + NC).min(columns.end);
        let panels_b = columns.len().div_ceil(NR);
        for k0 in depths.clone().step_by(KU * P::DEPTHS) {
            let ks = k0..(k0 + KU * P::DEPTHS).min(depths.end);
            let units = ks.len().div_ceil(P::DEPTHS);
            // The first k block applies beta; the others accumulate.
            let first = k0 == depths.start;
            P::pack_panels::<NR>(b, columns.clone(), ks.clone(), &mut packed_b, build);
            for i0 in (0..c.rows()).step_by(MC) {
                let rows = i0..(i0 + MC).min(c.rows());
                let panels_a = rows.len().div_ceil(MR);
                P::pack_panels::<MR>(a, rows.clone(), ks.clone(), &mut packed_a, build);
                for panel_b in 0..panels_b {
                    let b_panel = &packed_b[panel_b * units * NR..(panel_b + 1) * units * NR];
                    let j0 = columns.start + panel_b * NR;
                    let nr = NR.min(columns.end - j0);
                    for panel_a in 0..panels_a {
                        let a_panel = &packed_a[panel_a * units * MR..(panel_a + 1) * units * MR];
                        let r0 = i0 + panel_a * MR;
                        let whole = r0 + MR <= rows.end && nr == NR;
                        c.prefetch_tile(r0 + MR, j0);
                        if whole && (!first || beta == 0.0 || beta == 1.0) {
                            // A whole tile of C, read only when accumulating: straight into C.
                            assert!(r0 + MR <= c.rows() && j0 + NR <= c.ldc);
                            let accumulate = !first || beta == 1.0;
                            // SAFETY: `micro` is the kernel of a `MicroKernel` (see `Micro`);
                            // the tile's MR rows of NR columns at stride ldc lie in C (asserted)
                            // and in this task's columns, which no other reference covers.
                            unsafe {
                                let out = c.ptr.add(r0 * c.ldc + j0);
                                micro(units, a_panel, b_panel, out, c.ldc, accumulate);
                            }
                            continue;
                        }
                        // SAFETY: as above, into the local tile (MR rows of NR at stride NR).
                        unsafe { micro(units, a_panel, b_panel, tile.as_mut_ptr(), NR, false) };
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

#[cfg(test)]
mod tests {
    use burn::tensor::bf16;

    use super::*;

    /// The operand types under test: made from small values (exact in bf16), read in f64.
    trait Value: Packed {
        fn of(value: f32) -> Self;
        fn to_f64(self) -> f64;
        /// Every micro kernel this CPU runs for the type, the portable one last.
        fn kernels() -> Vec<MicroKernel<Self::Unit>>;
    }

    impl Value for bf16 {
        fn of(value: f32) -> Self {
            bf16::from_f32(value)
        }
        fn to_f64(self) -> f64 {
            bf16::to_f64(self)
        }
        fn kernels() -> Vec<MicroKernel<u32>> {
            bf16_kernels::available()
        }
    }

    impl Value for f32 {
        fn of(value: f32) -> Self {
            value
        }
        fn to_f64(self) -> f64 {
            f64::from(self)
        }
        fn kernels() -> Vec<MicroKernel<f32>> {
            f32_kernels::available()
        }
    }

    /// The products of the test values are exact in f32 (multiples of 1/64 below 2), so the
    /// only error is the f32 rounding of the sums: at most `k` roundings of `2^-24` of the sum
    /// of `|a b|`.
    fn bound(k: usize, magnitude: f64) -> f64 {
        (k as f64 + 2.0) * f64::from(f32::EPSILON) * magnitude
    }

    fn values<P: Value>(len: usize, seed: usize) -> Vec<P> {
        (0..len)
            .map(|i| P::of((((i * 7 + seed) % 23) as f32 - 11.0) / 8.0))
            .collect()
    }

    /// Every micro kernel this CPU runs for each operand type, every layout of A and B
    /// (row-major, transposed), odd k, partial panels, every way of splitting the work (on
    /// pools of 1, 2, 4 and 32 threads), beta 0 over NaNs, beta 1 and beta 0.5: the product and
    /// its f64 reference agree within the f32 sums' rounding.
    #[test]
    fn every_layout_and_split_is_the_product() {
        // [m, k, n]: one block; odd k and partial panels; wide C (split by columns, several
        // blocks of columns and of k per task); long k (split by ranges of k); short k (one
        // range: by columns); k = 0.
        let shapes = [
            [1, 1, 1],
            [13, 7, 33],
            [30, 513, 70],
            [40, 600, 1000],
            [25, 3001, 40],
            [200, 40, 40],
            [3, 0, 5],
        ];
        for threads in [1, 2, 4, 32] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for shape in shapes {
                for micro in bf16::kernels() {
                    pool.install(|| check_product::<bf16>(micro, shape, threads));
                }
                for micro in f32::kernels() {
                    pool.install(|| check_product::<f32>(micro, shape, threads));
                }
            }
        }
    }

    fn check_product<P: Value>(micro: MicroKernel<P::Unit>, [m, k, n]: [usize; 3], threads: usize) {
        let (a, b) = (values::<P>(m * k, 1), values::<P>(k * n, 5));
        // Row-major and stored-transposed copies, and every pairing of them.
        let a_t: Vec<P> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let b_t: Vec<P> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
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
                    gemm(micro, a_view, b_view, beta, MatMut::row_major(&mut c, m, n));
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
    /// packing path of each operand type.
    #[test]
    fn strided_views_are_packed_element_by_element() {
        check_strided::<bf16>();
        check_strided::<f32>();
    }

    fn check_strided<P: Value>() {
        let [m, k, n] = [5, 9, 6];
        // A's element (i, p) at 2 (i * k + p): every other element of a longer slice.
        let wide: Vec<P> = values(2 * m * k, 3);
        let a = MatRef {
            data: &wide,
            rows: m,
            cols: k,
            row_stride: 2 * k,
            col_stride: 2,
        };
        let b = values::<P>(k * n, 4);
        let mut c = vec![0.0_f32; m * n];
        for micro in P::kernels() {
            gemm(
                micro,
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
                    assert!(
                        (f64::from(c[i * n + j]) - e).abs() < 1e-5,
                        "{micro:?} ({i}, {j})"
                    );
                }
            }
        }
    }
}
