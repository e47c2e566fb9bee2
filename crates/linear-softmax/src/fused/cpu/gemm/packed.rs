//! The packed GEMM of the CPU kernel: `C <- A B + beta C` with `C` in f32 and `A`, `B` in
//! bf16 (`packed/bf16_kernels.rs`) or f32 (`packed/f32_kernels.rs`), every sum an f32 sum.
//!
//! The GotoBLAS layout. `B` is packed `KU` units of `k` by a block of columns (`NC` to
//! `NC_MAX`) at a time, in panels of `NR` columns, and `A` `MC x KU` at a time in panels of
//! `MR` rows, where a unit is what the micro kernel takes per line and step: one f32, or a
//! pair of bf16 `k`-neighbours in a `u32` (the operand layout of AVX512-BF16's `vdpbf16ps`). The micro kernel (`packed/micro_kernel.rs`) holds an
//! `MR x NR` tile of f32 accumulators in 24 of AVX-512's 32 vector registers (AVX2's 16 hold a
//! quarter of it at a time), and writes it to `C` (`packed/tile.rs`), tile after tile along
//! the rows of `C`.
//!
//! Operands whose lines run along `k` in memory (the rows of `X_r`, `dS_r` and `W` read as
//! `W^T`) are packed by a transpose, in 16 x 16 register blocks with AVX-512, 8 x 8 with AVX2
//! (`packed/transpose.rs`); the others by copies, row after row of the block.
//!
//! The work is spread over rayon's threads by columns of `C`, each task packing the whole of
//! a small `A` once (`S_r = X_r W` and `dW += X_r^T dS_r`, whose `n` is the class count, `A`
//! a chunk's `X_r`; a large `A` once per block of columns), or by ranges of `k`, the first
//! summed into `C` and the others into private `[m, n]` tiles added to it in a fixed order
//! (`dX_r = dS_r W^T`, whose `k` is the class count and `n` only `D`), or by rows of `C`, each
//! task packing the whole of `B` (few columns against many rows, when the tiles of a split by
//! `k` would be over their budget: a large chunk's `dX`, a bf16 classifier's `dW`): whichever
//! moves the least memory.

pub(in crate::fused::cpu) mod bf16_kernels;
pub(in crate::fused::cpu) mod f32_kernels;
mod micro_kernel;
mod tile;
mod transpose;
mod widened;

use std::ops::Range;

use rayon::prelude::*;

use super::{MatMut, MatRef};
use micro_kernel::Build;
pub(in crate::fused::cpu) use micro_kernel::MicroKernel;
use tile::SharedC;

/// Rows of the micro kernel's tile.
const MR: usize = 12;
/// Columns of the micro kernel's tile: two 16-lane f32 vectors.
const NR: usize = 32;
/// Units (of 4 bytes) of `k` per packed block: an `MR x KU` panel of `A` is 12 KiB, reused for
/// a row of tiles while the micro kernel streams the block's `KU x NR` panels of `B` (32 KiB
/// each) from L2 (it runs at the core's peak from L2: measured alone).
const KU: usize = 256;
/// Rows of `A` per packed block: `MC x KU` is 192 KiB, in L2.
const MC: usize = 192;
/// Columns of `B` per packed block: `KU x NC` is 256 KiB, in L2. (1024 columns made the
/// LM-head step ~2 % faster, for 1.5 MiB more memory, over its 100 MiB design.) A task whose
/// `A` has more than `NC` rows and is not kept (see [`keeps_a`]) takes wider blocks, about as
/// many columns as `A` has rows (see [`column_block`]): it packs `A` once per block, which
/// then costs about what packing the block of `B` does.
const NC: usize = 256;
/// The most columns of `B` per packed block: 2 MiB.
const NC_MAX: usize = 2048;
/// The most units of A that a task keeps packed for all its blocks of columns (512 KiB).
const KEPT_A_UNITS: usize = 1 << 17;
/// Below this many multiply-adds a GEMM runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;
/// The most memory the private tiles of a split by ranges of `k` may take together (beside
/// C: an LM head's `dX` takes 0.5 MiB; a `[1920, 512]` one, 3.75 MiB, split by rows instead
/// in the same time, for 2.8 MiB less at the step's peak).
const PARTIALS_BUDGET: usize = 2 << 20;

/// An operand type of the packed GEMM, and how it is packed.
pub(in crate::fused::cpu) trait Packed: Copy + Send + Sync + 'static {
    /// What a packed panel holds per line and step: one value, or `K_PER_UNIT` consecutive
    /// values of `k` (4 bytes, whatever the type).
    type Unit: Copy + Default + Send + Sync + 'static;
    /// Values of `k` per unit.
    const K_PER_UNIT: usize;

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
    let units = depths.len().div_ceil(P::K_PER_UNIT);
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

/// [`Packed::pack_panels`] for lines adjacent in memory (`line_stride` 1) whose units are
/// single values, each made an f32 by `convert`: row after row of the whole range, so that
/// each row is read in one run (across rows, strides of a whole row of `W` defeat the
/// hardware's prefetchers), into every panel at once.
#[inline(always)]
fn pack_rows<T: Copy, const W: usize>(
    lines: &Lines<'_, T>,
    range: Range<usize>,
    depths: Range<usize>,
    out: &mut [f32],
    convert: impl Fn(T) -> f32,
) {
    debug_assert_eq!(lines.line_stride, 1);
    let units = depths.len();
    for (p, depth) in depths.clone().enumerate() {
        lines.prefetch_ahead(depth..depth + 1, depths.end, range.clone());
        let row = lines.run(depth, range.clone());
        for (panel, values) in row.chunks(W).enumerate() {
            let out = &mut out[(panel * units + p) * W..][..W];
            for (out, &value) in out.iter_mut().zip(values) {
                *out = convert(value);
            }
            out[values.len()..].fill(0.0);
        }
    }
}

/// Rows ahead of the one being packed whose runs [`pack_rows`] (and the bf16 pairs' packing)
/// prefetch, within the block of `k` being packed (`W` for `S_r`; `dS_r` and `X_r^T` for
/// `dW`): a run is short (a block's columns: 1 KiB for 256 f32), too short for the
/// hardware's prefetchers to ramp up on. The f32 LM-head step of docs/BENCHMARKS_HISTORY.md took ~2.5 % less
/// with 4 rows ahead (`S_r` and `dW` 1-2 ms less a chunk, alternated runs), no less with 8,
/// less so with 2; the bf16 step, whose runs are pairs of half the bytes, is level.
const ROWS_AHEAD: usize = 4;

/// Asks for every cache line of `run` to be brought into L1: an address every 64 bytes, and
/// the last byte (a run that starts inside a line ends inside one more).
#[inline(always)]
fn prefetch_run<T>(run: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = std::mem::size_of_val(run);
        let start = run.as_ptr().cast::<i8>();
        let last = bytes.checked_sub(1);
        for offset in (0..bytes).step_by(64).chain(last) {
            // SAFETY: a prefetch of an address inside `run`; it never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = run;
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
    let task = |rows, depths, columns, beta| Task {
        micro,
        a: &a,
        b: &b,
        rows,
        depths,
        columns,
        beta,
    };
    let threads = rayon::current_num_threads();
    let shared = SharedC::of(c.data, m, n, c.row_stride);
    // A split by k: one range of whole blocks per thread, no more than the budget of private
    // tiles allows (the first range's tile is C itself).
    let block_depth = KU * P::K_PER_UNIT;
    let k_ranges = k
        .div_ceil(block_depth)
        .min(threads)
        .min(PARTIALS_BUDGET / (m * n * 4).max(1) + 1)
        .max(1);
    // A split by columns, or by rows: two ranges per thread (for balance on a busy machine).
    let width = n.div_ceil(2 * threads).next_multiple_of(NR);
    let column_tasks = n.div_ceil(width);
    let height = m.div_ceil(2 * threads).next_multiple_of(MR);
    let row_tasks = m.div_ceil(height);
    // What each split moves beyond packing A and B once: A packed again by every task (by
    // columns), B packed again by every task (by rows), or the private tiles written and read
    // (by k).
    let a_packings = |width: usize| {
        if keeps_a::<P>(m, k, width) {
            1
        } else {
            width.div_ceil(column_block(m, false, width))
        }
    };
    let more_for_columns = (column_tasks * a_packings(width)).saturating_sub(a_packings(n)) * m * k;
    let more_for_rows = (row_tasks - 1) * n * k;
    let more_for_k = if k_ranges > 1 {
        2 * (k_ranges - 1) * m * n
    } else {
        usize::MAX
    };
    if m * n * k < PARALLEL_WORK || threads == 1 {
        micro.run(task(0..m, 0..k, 0..n, beta), shared);
    } else if more_for_columns <= more_for_rows.min(more_for_k) {
        // By columns (`S_r`, `dW`): each task owns a disjoint column range of C.
        (0..column_tasks).into_par_iter().for_each(|t| {
            let columns = t * width..((t + 1) * width).min(n);
            micro.run(task(0..m, 0..k, columns, beta), shared);
        });
    } else if more_for_rows <= more_for_k {
        // By rows (few columns, short k: a classifier's `dW`): each task owns a disjoint row
        // range of C.
        (0..row_tasks).into_par_iter().for_each(|t| {
            let rows = t * height..((t + 1) * height).min(m);
            micro.run(task(rows, 0..k, 0..n, beta), shared);
        });
    } else {
        // By ranges of k (`dX_r`): the first into C, the others into private tiles added to C
        // in the ranges' order (the same sums whichever thread ran which range).
        let range_len = k.div_ceil(k_ranges).next_multiple_of(block_depth);
        let partials: Vec<Vec<f32>> = (0..k.div_ceil(range_len))
            .into_par_iter()
            .filter_map(|t| {
                let depths = t * range_len..((t + 1) * range_len).min(k);
                if t == 0 {
                    // The only task that touches C.
                    micro.run(task(0..m, depths, 0..n, beta), shared);
                    return None;
                }
                let mut partial = vec![0.0_f32; m * n];
                micro.run(
                    task(0..m, depths, 0..n, 0.0),
                    SharedC::of(&mut partial, m, n, n),
                );
                Some(partial)
            })
            .collect();
        for partial in &partials {
            for (row, partial_row) in partial.chunks_exact(n).enumerate() {
                // SAFETY: no task runs any more; this row is the only reference into C.
                let c_row = unsafe { shared.whole_row(row) };
                c_row.iter_mut().zip(partial_row).for_each(|(c, p)| *c += p);
            }
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

    /// The values of lines `range` at `depth`, for lines adjacent in memory (`line_stride` 1):
    /// one run.
    fn run(&self, depth: usize, range: Range<usize>) -> &'a [T] {
        &self.data[depth * self.depth_stride + range.start..][..range.len()]
    }

    /// Prefetches the runs ([`Lines::run`]) of `range` at the depths [`ROWS_AHEAD`] past
    /// `depths`, those below `end`.
    #[inline(always)]
    fn prefetch_ahead(&self, depths: Range<usize>, end: usize, range: Range<usize>) {
        for depth in depths.start + ROWS_AHEAD..(depths.end + ROWS_AHEAD).min(end) {
            prefetch_run(self.run(depth, range.clone()));
        }
    }

    /// The addresses of lines `range` (at most `W`) from `depth`, each line adjacent in memory
    /// (`depth_stride` 1) and checked to hold `len` values there, as words for a transpose.
    fn starts<const W: usize>(
        &self,
        range: Range<usize>,
        depth: usize,
        len: usize,
    ) -> [*const u32; W] {
        debug_assert_eq!(self.depth_stride, 1);
        let mut starts = [std::ptr::null::<u32>(); W];
        for (start, line) in starts.iter_mut().zip(range) {
            let first = line * self.line_stride + depth;
            *start = self.data[first..first + len].as_ptr().cast();
        }
        starts
    }
}

/// Zeroes the units past `width` in each row of `W` of a packed panel (a partial panel's
/// missing lines).
#[inline(always)]
fn zero_past_width<U: Copy + Default, const W: usize>(panel: &mut [U], width: usize) {
    if width < W {
        for row in panel.chunks_exact_mut(W) {
            row[width..].fill(U::default());
        }
    }
}

/// Whether a task of `width` columns packs its whole `[m, depth]` A once (A is small: `S_r`'s
/// `X_r`, `dW`'s `X_r^T`) rather than once per block of columns.
fn keeps_a<P: Packed>(m: usize, depth: usize, width: usize) -> bool {
    width > NC && m.div_ceil(MR) * MR * depth.div_ceil(P::K_PER_UNIT) <= KEPT_A_UNITS
}

/// The columns of `B` per packed block for a task of `width` columns and an `A` of `m` rows
/// (`kept`: packed once for all blocks): `NC`, or for an `A` packed once per block, blocks of
/// about `m` columns (at least `NC`, at most `NC_MAX`), as few as cover `width` with that.
fn column_block(m: usize, kept: bool, width: usize) -> usize {
    if kept {
        return NC;
    }
    let wanted = m.next_multiple_of(NR).clamp(NC, NC_MAX);
    let blocks = (width / wanted).max(1);
    width.div_ceil(blocks).next_multiple_of(NR).min(NC_MAX)
}

/// One task's part of a GEMM: `C[rows, columns] <- A[rows, depths] B[depths, columns] +
/// beta C[rows, columns]`.
struct Task<'a, P: Packed> {
    micro: MicroKernel<P::Unit>,
    /// The rows of C (and of A) this task computes.
    rows: Range<usize>,
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
unsafe fn block_avx512<P: Packed>(task: Task<'_, P>, c: SharedC<'_>) {
    block(task, c)
}

/// [`block`] built for AVX2 and FMA.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2<P: Packed>(task: Task<'_, P>, c: SharedC<'_>) {
    block(task, c)
}

/// Runs `task` on the calling thread, a block of columns at a time; reads and writes only C's
/// elements in `task.rows` x `task.columns`, through references to those alone.
#[inline(always)]
fn block<P: Packed>(task: Task<'_, P>, c: SharedC<'_>) {
    let Task {
        micro: MicroKernel { micro, build, .. },
        a,
        b,
        rows: task_rows,
        depths,
        columns,
        beta,
    } = task;
    if depths.is_empty() {
        // k = 0: C <- beta C.
        for i in task_rows {
            // SAFETY: this task's columns of its row i, the only reference to them.
            for value in unsafe { c.row(i, columns.clone()) } {
                *value = if beta == 0.0 { 0.0 } else { beta * *value };
            }
        }
        return;
    }
    // The packed blocks, no larger than this task needs (a small GEMM zeroes little).
    let units_all = depths.len().div_ceil(P::K_PER_UNIT);
    let block_units = units_all.min(KU);
    let m = task_rows.len();
    let panels_m = m.div_ceil(MR);
    let keep_a = keeps_a::<P>(m, depths.len(), columns.len());
    let nc = column_block(m, keep_a, columns.len());
    let mut packed_b =
        vec![P::Unit::default(); columns.len().min(nc).next_multiple_of(NR) * block_units];
    let mut packed_a = vec![
        P::Unit::default();
        if keep_a {
            panels_m * MR * units_all
        } else {
            m.min(MC).next_multiple_of(MR) * block_units
        }
    ];
    let mut tile = [0.0_f32; MR * NR];
    for c0 in columns.clone().step_by(nc) {
        let pack_a = !keep_a || c0 == columns.start;
        let columns = c0..(c0 + nc).min(columns.end);
        let panels_b = columns.len().div_ceil(NR);
        for (k_block, k0) in depths.clone().step_by(KU * P::K_PER_UNIT).enumerate() {
            let ks = k0..(k0 + KU * P::K_PER_UNIT).min(depths.end);
            let units = ks.len().div_ceil(P::K_PER_UNIT);
            // The first k block applies beta; the others accumulate.
            let first = k0 == depths.start;
            P::pack_panels::<NR>(b, columns.clone(), ks.clone(), &mut packed_b, build);
            for i0 in task_rows.clone().step_by(MC) {
                let rows = i0..(i0 + MC).min(task_rows.end);
                let panels_a = rows.len().div_ceil(MR);
                // This block's panels of A: where the kept A holds them (k block after k
                // block, each of `panels_m` panels of its units), else in the block's buffer.
                let packed_a = if keep_a {
                    let start =
                        (k_block * KU * panels_m + (i0 - task_rows.start) / MR * units) * MR;
                    &mut packed_a[start..start + panels_a * units * MR]
                } else {
                    &mut packed_a[..panels_a * units * MR]
                };
                if pack_a {
                    P::pack_panels::<MR>(a, rows.clone(), ks.clone(), packed_a, build);
                }
                let packed_a = &*packed_a;
                // Tile after tile along C's rows: one panel of A (12 KiB) against the block's
                // panels of B (from L2), so that C is read and written in 12 streams along its
                // rows, which the hardware prefetches. Down C's columns (a panel of B against
                // every panel of A: tiles 12 rows apart, each of its rows on another page of a
                // large C), the LM-head step was 4-8 % slower in f32 and 7-11 % in bf16, with
                // the next tile prefetched by hand.
                for panel_a in 0..panels_a {
                    let a_panel = &packed_a[panel_a * units * MR..(panel_a + 1) * units * MR];
                    let r0 = i0 + panel_a * MR;
                    for panel_b in 0..panels_b {
                        let b_panel = &packed_b[panel_b * units * NR..(panel_b + 1) * units * NR];
                        let j0 = columns.start + panel_b * NR;
                        let nr = NR.min(columns.end - j0);
                        let whole = r0 + MR <= rows.end && nr == NR;
                        if whole && (!first || beta == 0.0 || beta == 1.0) {
                            // A whole tile of C, read only when accumulating: straight into C.
                            assert!(r0 + MR <= c.rows() && j0 + NR <= c.cols());
                            let accumulate = !first || beta == 1.0;
                            // SAFETY: `micro` is the kernel of a `MicroKernel` (see `Micro`);
                            // the tile's MR rows of NR columns at stride ldc lie in C (asserted)
                            // and in this task's rows and columns, which no other reference
                            // covers.
                            unsafe {
                                let out = c.at(r0, j0);
                                micro(units, a_panel, b_panel, out, c.ldc, accumulate);
                            }
                            continue;
                        }
                        // SAFETY: as above, into the local tile (MR rows of NR at stride NR).
                        unsafe { micro(units, a_panel, b_panel, tile.as_mut_ptr(), NR, false) };
                        for (ii, tile_row) in tile.chunks_exact(NR).take(rows.end - r0).enumerate()
                        {
                            // SAFETY: this task's columns of its row, the only reference to them.
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
mod tests;
