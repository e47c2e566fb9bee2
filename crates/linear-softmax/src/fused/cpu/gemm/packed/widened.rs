//! bf16 operands widened to f32 as they are packed, for the f32 micro kernels: the bf16 GEMMs
//! of CPUs without AVX-512 (AVX2 ones, and the portable kernel). A bf16 is the high half of an
//! f32, so each value widens exactly, once per packing of its block, and the micro kernel runs
//! at the f32 rate: capped to AVX2, the bf16 LM-head step took 1.21-1.25 s so, against
//! 1.42-1.50 s with the pairs widened in the micro kernel at every use (a shift or a mask more
//! per vector of `B` and per broadcast of `A`). The sums are the f32 kernel's: per element,
//! `k` after `k` in fused multiply-adds from `C`'s value on the vector kernels (those of the
//! widening AVX-512 kernel, `bf16_kernels.rs`, in its order, on whole tiles).

use std::ops::Range;

use burn::tensor::bf16;

use super::super::MatRef;
use super::transpose::transpose;
use super::{Build, Lines, Packed, pack_each_panel, pack_rows, zero_past_width};

/// A bf16 operand to be packed widened to f32.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub(in crate::fused::cpu) struct WidenedBf16(pub(in crate::fused::cpu) bf16);

impl WidenedBf16 {
    /// The f32 of the same value, bit for bit (NaN payloads kept).
    #[inline(always)]
    fn to_f32(self) -> f32 {
        widen_low(self.0.to_bits().into())
    }
}

/// The f32 whose high half is the low half of `bits`.
#[inline(always)]
fn widen_low(bits: u32) -> f32 {
    f32::from_bits(bits << 16)
}

/// The f32 whose high half is the high half of `bits`.
#[inline(always)]
fn widen_high(bits: u32) -> f32 {
    f32::from_bits(bits & 0xFFFF_0000)
}

/// `matrix` read as [`WidenedBf16`] (no copy).
pub(in crate::fused::cpu) fn widened(matrix: MatRef<'_, bf16>) -> MatRef<'_, WidenedBf16> {
    // SAFETY: `WidenedBf16` is `repr(transparent)` over `bf16`: the same layout, any bits valid.
    let data = unsafe {
        std::slice::from_raw_parts(
            matrix.data.as_ptr().cast::<WidenedBf16>(),
            matrix.data.len(),
        )
    };
    MatRef {
        data,
        rows: matrix.rows,
        cols: matrix.cols,
        row_stride: matrix.row_stride,
        col_stride: matrix.col_stride,
    }
}

impl Packed for WidenedBf16 {
    type Unit = f32;
    const K_PER_UNIT: usize = 1;

    /// Lines adjacent in memory: pairs of `k`-neighbours transposed as 4-byte words into the
    /// tail of the panel, then each row of pairs widened into two rows of f32, front to back
    /// (the rows of pair `p` end where pair `p + 1`'s words begin, or before: each row of pairs
    /// is copied out before its rows are written).
    #[inline(always)]
    fn pack<const W: usize>(
        lines: &Lines<'_, Self>,
        range: Range<usize>,
        depths: Range<usize>,
        out: &mut [f32],
        build: Build,
    ) {
        let width = range.len();
        let units = depths.len();
        let out = &mut out[..units * W];
        let full = units / 2;
        if lines.depth_stride == 1 && full > 0 && cfg!(target_endian = "little") {
            let tail = out.len() - full * W;
            let starts = lines.starts::<W>(range.clone(), depths.start, 2 * full);
            // SAFETY: each start is valid for `2 full` bf16, read as `full` words; the tail
            // holds `full * W` f32, written as words.
            unsafe {
                let words = &mut out[tail..];
                let words = std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len());
                transpose::<W>(build, &starts[..width], full, words);
            }
            for p in 0..full {
                // Row p of pairs, read as the words the transpose wrote (not as f32 values, which
                // a NaN pattern need not survive on every target).
                let row = &out[tail + p * W..][..W];
                let mut pairs = [0_u32; W];
                for (t, pair) in pairs.iter_mut().enumerate() {
                    // SAFETY: element t of `row`, read as the 4 bytes it is.
                    *pair = unsafe { row.as_ptr().add(t).cast::<u32>().read() };
                }
                let (low, high) = out[2 * p * W..(2 * p + 2) * W].split_at_mut(W);
                for ((low, high), &pair) in low.iter_mut().zip(high).zip(&pairs) {
                    *low = widen_low(pair);
                    *high = widen_high(pair);
                }
            }
            if units > 2 * full {
                let depth = depths.end - 1;
                for (t, line) in range.enumerate() {
                    out[2 * full * W + t] = lines.get(line, depth).to_f32();
                }
            }
        } else {
            for (p, depth) in depths.enumerate() {
                for (t, line) in range.clone().enumerate() {
                    out[p * W + t] = lines.get(line, depth).to_f32();
                }
            }
        }
        zero_past_width::<f32, W>(out, width);
    }

    /// Lines adjacent in memory (`W` read as `S_r = X_r W`'s B, `dS_r` as `dW`'s): widened row
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
        pack_rows::<Self, W>(lines, range, depths, out, Self::to_f32);
    }
}
