//! f32 results rounded to bf16 in their own memory: a bf16 head's `dS_r` (in the `[R, C]`
//! buffer that held its logits) and its `dW` (in the allocation that accumulated it), so that
//! no second buffer of either exists.
//!
//! Element `j` of an f32 run becomes the bf16 at byte `2 j` of the same run: the first half of
//! the run's bytes. Going up in `j`, each write lands on bytes already read.

use burn::tensor::bf16;

/// Elements rounded per step: read whole into registers before any of them is written.
const BLOCK: usize = 16;

/// Rounds `values` to bf16 (to nearest, ties to even), element `j` into the bf16 at byte `2 j`
/// of `values`; returns those `values.len()` bf16.
pub(super) fn round_in_place(values: &mut [f32]) -> &mut [bf16] {
    let len = values.len();
    let base = values.as_mut_ptr();
    let mut block = [0.0_f32; BLOCK];
    let mut rounded = [bf16::ZERO; BLOCK];
    for start in (0..len).step_by(BLOCK) {
        let count = BLOCK.min(len - start);
        // SAFETY: the block's f32 elements `start..start + count` lie in `values` and are read
        // whole before its bf16 elements `start..start + count` are written; those occupy bytes
        // `[2 start, 2 (start + count))`, inside `values` and below byte `4 (start + count)`, so
        // they overwrite only f32 elements already read. The locals do not overlap `values`,
        // and any bits are a valid bf16.
        unsafe {
            std::ptr::copy_nonoverlapping(base.add(start), block.as_mut_ptr(), count);
            for (out, &value) in rounded.iter_mut().zip(&block).take(count) {
                *out = bf16::from_f32(value);
            }
            std::ptr::copy_nonoverlapping(rounded.as_ptr(), base.cast::<bf16>().add(start), count);
        }
    }
    // SAFETY: the first `2 len` bytes of `values` now hold `len` bf16 (2-aligned, as `values`
    // is 4-aligned), borrowed from `values` for as long as the result lives.
    unsafe { std::slice::from_raw_parts_mut(base.cast::<bf16>(), len) }
}

/// A buffer of f32 rows, each already passed through [`round_in_place`], as the bf16 it now
/// holds: a row of `cols` values starts at bf16 offset `2 i cols` (a row stride of `2 cols`).
pub(super) fn rounded_rows(values: &[f32]) -> &[bf16] {
    // SAFETY: the buffer's bytes, as twice as many bf16 (any bits are valid), borrowed from
    // `values` for as long as the result lives.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<bf16>(), 2 * values.len()) }
}

/// An f32 accumulator whose allocation becomes its bf16 rounding: `2 n + 1` bf16 (one spare,
/// for an allocation that is only 2-aligned) seen as `n` f32, then rounded in place and shrunk
/// to `n` bf16.
pub(super) struct F32ToBf16 {
    storage: Vec<bf16>,
    /// 0, or 1 when the allocation is not 4-aligned (the f32 start one bf16 in).
    offset: usize,
    len: usize,
}

impl F32ToBf16 {
    /// `len` zeros.
    pub(super) fn zeros(len: usize) -> Self {
        let storage = vec![bf16::ZERO; 2 * len + 1];
        let offset = usize::from(!storage.as_ptr().addr().is_multiple_of(4));
        Self {
            storage,
            offset,
            len,
        }
    }

    /// The accumulator.
    pub(super) fn as_f32(&mut self) -> &mut [f32] {
        let span = &mut self.storage[self.offset..self.offset + 2 * self.len];
        let start = span.as_mut_ptr().cast::<f32>();
        assert!(start.is_aligned(), "the f32 view starts 4-aligned");
        // SAFETY: `2 len` bf16 are the bytes of `len` f32, 4-aligned (asserted), and every bit
        // pattern is a valid f32; borrowed from `self` for as long as the result lives.
        unsafe { std::slice::from_raw_parts_mut(start, self.len) }
    }

    /// The accumulated values rounded to bf16, in the same allocation (shrunk in place by the
    /// allocator where it can).
    pub(super) fn into_bf16(mut self) -> Vec<bf16> {
        round_in_place(self.as_f32());
        if self.offset > 0 {
            self.storage
                .copy_within(self.offset..self.offset + self.len, 0);
        }
        self.storage.truncate(self.len);
        self.storage.shrink_to_fit();
        self.storage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (i as f32 * 0.731).sin() * 1e3 / (1.0 + i as f32))
            .collect()
    }

    #[test]
    fn rounding_in_place_is_rounding() {
        for len in [0, 1, 15, 16, 17, 100] {
            let mut data = values(len);
            let expected: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
            assert_eq!(round_in_place(&mut data), &expected[..], "{len}");
        }
    }

    #[test]
    fn rows_round_in_place_at_twice_their_stride() {
        let (rows, cols) = (5, 37);
        let mut data = values(rows * cols);
        let expected: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
        data.chunks_mut(cols).for_each(|row| {
            round_in_place(row);
        });
        let rounded = rounded_rows(&data);
        for i in 0..rows {
            let row = &rounded[2 * i * cols..2 * i * cols + cols];
            assert_eq!(row, &expected[i * cols..(i + 1) * cols], "row {i}");
        }
    }

    #[test]
    fn the_accumulator_becomes_its_rounding() {
        let len = 1000;
        let mut accumulator = F32ToBf16::zeros(len);
        assert!(accumulator.as_f32().iter().all(|&v| v == 0.0));
        let data = values(len);
        accumulator.as_f32().copy_from_slice(&data);
        let expected: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
        let rounded = accumulator.into_bf16();
        assert_eq!(rounded, expected);
    }
}
