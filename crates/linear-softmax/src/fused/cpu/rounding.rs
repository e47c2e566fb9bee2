//! f32 results rounded to bf16 in their own memory: a bf16 head's `dS_r` (in the `[R, C]`
//! buffer that held its logits) and its `dW` (in the allocation that accumulated it), so that
//! no second buffer of either exists.
//!
//! Element `j` of an f32 run becomes the bf16 at byte `2 j` of the same run: the first half of
//! the run's bytes. Going up in `j`, each write lands on bytes already read.

use burn::tensor::bf16;

#[cfg(target_arch = "x86_64")]
use super::isa::{CpuIsa, level};

/// Elements rounded per step: read whole into registers before any of them is written. A
/// block of fixed size, so that each step is a few vector instructions (the rounding of
/// `bf16::from_f32` on 16 lanes, in one zmm register with AVX-512).
const BLOCK: usize = 16;

/// Rounds `values` to bf16 (to nearest, ties to even: the bits of `bf16::from_f32`), element
/// `j` into the bf16 at byte `2 j` of `values`; returns those `values.len()` bf16.
///
/// Built for the widest vectors the CPU kernels may use ([`level`]), in blocks of fixed size:
/// a bf16 LM head rounds its `[R, C]` `dS_r` every chunk. (The blocks used to be of run-time
/// length, copied in and out by `memcpy` calls, in the baseline build's four-lane vectors:
/// ~4.5 % of the LM-head step's samples, against 0.4 % now.)
/// Not `vcvtneps2bf16`: it flushes subnormals to zero, and a softmax probability below 2^-126
/// is an ordinary value of a long row.
pub(super) fn round_in_place(values: &mut [f32]) -> &mut [bf16] {
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: `level` names these levels only on CPUs that have the features.
        CpuIsa::Avx512 | CpuIsa::Avx512Bf16 => unsafe { round_avx512(values) },
        // SAFETY: as above.
        CpuIsa::Avx2 => unsafe { round_avx2(values) },
        CpuIsa::Portable => round_blocks(values),
    }
    #[cfg(not(target_arch = "x86_64"))]
    round_blocks(values);
    // SAFETY: the first `2 len` bytes of `values` now hold `len` bf16 (2-aligned, as `values`
    // is 4-aligned), borrowed from `values` for as long as the result lives.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<bf16>(), values.len()) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
fn round_avx512(values: &mut [f32]) {
    round_blocks(values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn round_avx2(values: &mut [f32]) {
    round_blocks(values);
}

/// The rounding of [`round_in_place`], for the caller's instruction set.
#[inline(always)]
fn round_blocks(values: &mut [f32]) {
    let len = values.len();
    let base = values.as_mut_ptr();
    let whole = len - len % BLOCK;
    for start in (0..whole).step_by(BLOCK) {
        // SAFETY: the block's f32 elements `start..start + BLOCK` lie in `values` and are read
        // whole before its bf16 elements `start..start + BLOCK` are written; those occupy bytes
        // `[2 start, 2 start + 2 BLOCK)`, inside `values` and below byte `4 (start + BLOCK)`, so
        // they overwrite only f32 elements already read. Both arrays are as aligned as their
        // elements (f32 at a 4-aligned address, bf16 at an even one), and any bits are a valid
        // bf16.
        unsafe {
            let block = base.add(start).cast::<[f32; BLOCK]>().read();
            let mut rounded = [bf16::ZERO; BLOCK];
            for (out, value) in rounded.iter_mut().zip(block) {
                *out = bf16::from_f32(value);
            }
            base.cast::<bf16>()
                .add(start)
                .cast::<[bf16; BLOCK]>()
                .write(rounded);
        }
    }
    // The last, partial block, one element at a time: element `j`'s bf16 (bytes
    // `[2 j, 2 j + 2)`) lies inside f32 elements `j / 2` and below, already read.
    for j in whole..len {
        // SAFETY: `j < len`; the write overwrites bytes of f32 elements at or below `j`, read
        // before it (this one just above), and any bits are a valid bf16.
        unsafe {
            let value = base.add(j).read();
            base.cast::<bf16>().add(j).write(bf16::from_f32(value));
        }
    }
}

/// A buffer of f32 rows, each already passed through [`round_in_place`], as the bf16 it now
/// holds: a row of `cols` values starts at bf16 offset `2 i cols` (a row stride of `2 cols`).
pub(super) fn rounded_rows(values: &[f32]) -> &[bf16] {
    // SAFETY: the buffer's bytes, as twice as many bf16 (any bits are valid), borrowed from
    // `values` for as long as the result lives.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<bf16>(), 2 * values.len()) }
}

/// [`rounded_rows`], mutable.
pub(super) fn rounded_rows_mut(values: &mut [f32]) -> &mut [bf16] {
    // SAFETY: as `rounded_rows`, borrowed mutably from `values`.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<bf16>(), 2 * values.len()) }
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

    /// The bits of `bf16::from_f32`, in whole blocks and in the partial last one, for ordinary
    /// values and for the cases its rounding treats apart: NaNs (payloads kept, made quiet),
    /// infinities, signed zeros, subnormals, exact ties (to even) and values that round up to
    /// the next binade or to infinity.
    #[test]
    fn rounding_in_place_is_rounding() {
        let special = [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001),
            f32::from_bits(0xFF81_2345),
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::from_bits(0x0000_0001),
            f32::from_bits(0x8000_8000),
            f32::from_bits(0x007F_FFFF),
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
            f32::from_bits(0x3F80_8001),
            f32::from_bits(0x3FFF_FFFF),
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
        ];
        for len in [0, 1, 15, 16, 17, 100] {
            let mut data = values(len);
            for (i, value) in data.iter_mut().enumerate() {
                if i % 3 == 0 {
                    *value = special[(i / 3 + len) % special.len()];
                }
            }
            let expected: Vec<u16> = data.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            let mut copy = data.clone();
            let rounded: Vec<u16> = round_in_place(&mut copy)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert_eq!(rounded, expected, "{len}");
            for (name, build) in builds() {
                let mut copy = data.clone();
                build(&mut copy);
                let rounded: Vec<u16> = rounded_rows(&copy)[..len]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                assert_eq!(rounded, expected, "{name}, {len}");
            }
        }
    }

    /// A build of the rounding, by name.
    type Build = (&'static str, fn(&mut [f32]));

    /// Every build of the rounding this CPU can run, whatever the level in use.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    fn builds() -> Vec<Build> {
        let mut builds: Vec<Build> = vec![("portable", round_blocks)];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                builds.push(("avx2", |values| unsafe { round_avx2(values) }));
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                // SAFETY: the CPU has AVX-512 F and BW (and so AVX2).
                builds.push(("avx512", |values| unsafe { round_avx512(values) }));
            }
        }
        builds
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
