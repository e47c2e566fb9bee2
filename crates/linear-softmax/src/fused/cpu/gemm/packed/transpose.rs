//! The packing of operands whose lines run along `k` in memory (the rows of `dS_r` and of `W`
//! for `dX_r = dS_r W^T`, the rows of `X_r` for `S_r = X_r W`): a transpose of 4-byte units,
//! line `t`'s unit `p` to `out[p W + t]`. In AVX-512, 16 x 16 blocks are transposed in
//! registers (64 shuffles for 256 units, against a scalar store each); in AVX2, 8 x 8 blocks
//! (24 shuffles for 64 units), and 4 x 8 ones where a panel has 4 lines left (`W = 12`).

/// `out[p * W + t] = lines[t][p]` for `t < lines.len()` (at most `W`) and `p < units`, the
/// units read as 4-byte words at the lines' (unaligned) addresses.
///
/// # Safety
/// Each `lines[t]` is valid for reads of `units` 4-byte words; `out` holds `units * W` words.
pub(super) unsafe fn transpose_portable<const W: usize>(
    lines: &[*const u32],
    units: usize,
    out: &mut [u32],
) {
    assert!(lines.len() <= W && out.len() >= units * W);
    // SAFETY: the caller's contract.
    unsafe { words_one_by_one::<W>(lines, 0, 0..units, out) };
}

/// `out[p * W + first + t] = lines[t][p]` for the lines given and `p` in `units`, one word at
/// a time: the portable transpose, and the words a vector one leaves.
///
/// # Safety
/// Each `lines[t]` is valid for reads of `units.end` 4-byte words.
unsafe fn words_one_by_one<const W: usize>(
    lines: &[*const u32],
    first: usize,
    units: std::ops::Range<usize>,
    out: &mut [u32],
) {
    for (t, &line) in lines.iter().enumerate() {
        for p in units.clone() {
            // SAFETY: word p of the line (the caller's contract).
            out[p * W + first + t] = unsafe { line.add(p).read_unaligned() };
        }
    }
}

/// [`transpose_portable`] in 16 x 16 blocks of AVX-512 registers.
///
/// # Safety
/// As [`transpose_portable`]'s; the CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose_avx512<const W: usize>(
    lines: &[*const u32],
    units: usize,
    out: &mut [u32],
) {
    use std::arch::x86_64::{
        _mm512_loadu_si512, _mm512_mask_storeu_epi32, _mm512_setzero_si512, _mm512_shuffle_i32x4,
        _mm512_unpackhi_epi32, _mm512_unpackhi_epi64, _mm512_unpacklo_epi32, _mm512_unpacklo_epi64,
    };
    assert!(lines.len() <= W && out.len() >= units * W);
    let whole = units / 16 * 16;
    for t0 in (0..lines.len()).step_by(16) {
        let group = &lines[t0..(t0 + 16).min(lines.len())];
        // Lanes t0.. of each row of `out`: as many as the group has lines.
        let mask = ((1_u32 << group.len()) - 1) as u16;
        for p0 in (0..whole).step_by(16) {
            let mut r = [_mm512_setzero_si512(); 16];
            for (row, &line) in r.iter_mut().zip(group) {
                // SAFETY: words p0..p0 + 16 of the line (p0 + 16 <= units).
                *row = unsafe { _mm512_loadu_si512(line.add(p0).cast()) };
            }
            let mut t = [_mm512_setzero_si512(); 16];
            for i in 0..8 {
                t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
            }
            for i in 0..4 {
                let (a, b, c, d) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
                r[4 * i] = _mm512_unpacklo_epi64(a, c);
                r[4 * i + 1] = _mm512_unpackhi_epi64(a, c);
                r[4 * i + 2] = _mm512_unpacklo_epi64(b, d);
                r[4 * i + 3] = _mm512_unpackhi_epi64(b, d);
            }
            for i in 0..2 {
                for j in 0..4 {
                    let (a, b) = (r[8 * i + j], r[8 * i + 4 + j]);
                    t[8 * i + j] = _mm512_shuffle_i32x4::<0x88>(a, b);
                    t[8 * i + 4 + j] = _mm512_shuffle_i32x4::<0xDD>(a, b);
                }
            }
            for j in 0..8 {
                r[j] = _mm512_shuffle_i32x4::<0x88>(t[j], t[8 + j]);
                r[8 + j] = _mm512_shuffle_i32x4::<0xDD>(t[j], t[8 + j]);
            }
            for (q, row) in r.iter().enumerate() {
                let start = (p0 + q) * W + t0;
                // SAFETY: `out[start..start + group.len()]` lies in `out` (units * W words);
                // the masked-off lanes are neither written nor faulted on.
                unsafe { _mm512_mask_storeu_epi32(out.as_mut_ptr().add(start).cast(), mask, *row) }
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe { words_one_by_one::<W>(lines, 0, whole..units, out) };
}

/// [`transpose_portable`] in 8 x 8 blocks of AVX2 registers: groups of 8 lines while 8 lanes
/// fit in a row of `out`, then groups of 4 (the last third of a 12-line panel). A group with
/// fewer lines than lanes (a partial panel) is stored masked.
///
/// # Safety
/// As [`transpose_portable`]'s; the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transpose_avx2<const W: usize>(
    lines: &[*const u32],
    units: usize,
    out: &mut [u32],
) {
    use std::arch::x86_64::{
        __m256i, _mm_maskstore_epi32, _mm_storeu_si128, _mm256_castsi256_si128,
        _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_maskstore_epi32,
        _mm256_permute2x128_si256, _mm256_setr_epi32, _mm256_setzero_si256, _mm256_storeu_si256,
        _mm256_unpackhi_epi32, _mm256_unpackhi_epi64, _mm256_unpacklo_epi32, _mm256_unpacklo_epi64,
    };
    assert!(lines.len() <= W && out.len() >= units * W);
    let whole = units / 8 * 8;
    // Lane i of a store is written where `i < mask_width` (the sign bit of each 32-bit lane).
    let store_mask = |width: usize| {
        let lane = |i: i32| if (i as usize) < width { -1 } else { 0 };
        _mm256_setr_epi32(
            lane(0),
            lane(1),
            lane(2),
            lane(3),
            lane(4),
            lane(5),
            lane(6),
            lane(7),
        )
    };
    let mut t0 = 0;
    while t0 < lines.len() {
        let lanes = if t0 + 8 <= W {
            8
        } else if t0 + 4 <= W {
            4
        } else {
            break;
        };
        let group = &lines[t0..(t0 + lanes).min(lines.len())];
        let mask = store_mask(group.len());
        let base = out.as_mut_ptr();
        let out_at = |q: usize| base.wrapping_add(q * W + t0);
        for p0 in (0..whole).step_by(8) {
            let mut r = [_mm256_setzero_si256(); 8];
            for (row, &line) in r.iter_mut().zip(group) {
                // SAFETY: words p0..p0 + 8 of the line (p0 + 8 <= units).
                *row = unsafe { _mm256_loadu_si256(line.add(p0).cast()) };
            }
            // s[j] holds unit j of lines 0..4 in its low half and unit j + 4 in its high half;
            // s[4 + j] the same for lines 4..8.
            let mut s = [_mm256_setzero_si256(); 8];
            for half in [0, 4] {
                let (r0, r1, r2, r3) = (r[half], r[half + 1], r[half + 2], r[half + 3]);
                let (a, b) = (_mm256_unpacklo_epi32(r0, r1), _mm256_unpackhi_epi32(r0, r1));
                let (c, d) = (_mm256_unpacklo_epi32(r2, r3), _mm256_unpackhi_epi32(r2, r3));
                s[half] = _mm256_unpacklo_epi64(a, c);
                s[half + 1] = _mm256_unpackhi_epi64(a, c);
                s[half + 2] = _mm256_unpacklo_epi64(b, d);
                s[half + 3] = _mm256_unpackhi_epi64(b, d);
            }
            let whole_group = group.len() == lanes;
            for j in 0..4 {
                // SAFETY (each store): row p0 + q of `out` holds lanes t0..t0 + lanes (within
                // W, checked when the group was formed) and p0 + q < units; masked-off lanes are
                // neither written nor faulted on.
                if lanes == 8 {
                    let rows: [__m256i; 2] = [
                        _mm256_permute2x128_si256::<0x20>(s[j], s[4 + j]),
                        _mm256_permute2x128_si256::<0x31>(s[j], s[4 + j]),
                    ];
                    for (q, row) in [p0 + j, p0 + 4 + j].into_iter().zip(rows) {
                        unsafe {
                            if whole_group {
                                _mm256_storeu_si256(out_at(q).cast(), row);
                            } else {
                                _mm256_maskstore_epi32(out_at(q).cast(), mask, row);
                            }
                        }
                    }
                } else {
                    let rows = [
                        _mm256_castsi256_si128(s[j]),
                        _mm256_extracti128_si256::<1>(s[j]),
                    ];
                    for (q, row) in [p0 + j, p0 + 4 + j].into_iter().zip(rows) {
                        unsafe {
                            if whole_group {
                                _mm_storeu_si128(out_at(q).cast(), row);
                            } else {
                                let mask = _mm256_castsi256_si128(mask);
                                _mm_maskstore_epi32(out_at(q).cast(), mask, row);
                            }
                        }
                    }
                }
            }
        }
        t0 += lanes;
    }
    // The units past the blocks, then the lines no group took (none for panels of 12 or 32).
    let grouped = t0.min(lines.len());
    // SAFETY: the caller's contract.
    unsafe {
        words_one_by_one::<W>(&lines[..grouped], 0, whole..units, out);
        words_one_by_one::<W>(&lines[grouped..], grouped, 0..units, out);
    }
}

/// [`transpose_avx512`] where the build is AVX-512's, [`transpose_avx2`] where it is AVX2's,
/// else [`transpose_portable`].
///
/// # Safety
/// As [`transpose_portable`]'s.
#[inline(always)]
pub(super) unsafe fn transpose<const W: usize>(
    build: super::Build,
    lines: &[*const u32],
    units: usize,
    out: &mut [u32],
) {
    match build {
        // SAFETY: the caller's contract; `Avx512Found` exists only where `Build::avx512` found
        // AVX-512 F.
        #[cfg(target_arch = "x86_64")]
        super::Build::Avx512(_) => unsafe { transpose_avx512::<W>(lines, units, out) },
        // SAFETY: the caller's contract; `Avx2FmaFound` exists only where `Build::avx2_fma`
        // found AVX2.
        #[cfg(target_arch = "x86_64")]
        super::Build::Avx2Fma(_) => unsafe { transpose_avx2::<W>(lines, units, out) },
        // SAFETY: the caller's contract.
        _ => unsafe { transpose_portable::<W>(lines, units, out) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every build this CPU runs agrees with the definition: panels of 12 and 32 lines, fewer
    /// lines than the panel (groups of 8 and 4 lines part full), unit counts around the 8 x 8
    /// and 16 x 16 blocks, lines at odd addresses
    /// (bf16 pairs start at any even bf16, so at any 4-byte word of a 2-byte-aligned slice).
    #[test]
    fn every_build_is_the_transpose() {
        let builds: Vec<super::super::Build> = super::super::Build::avx512()
            .into_iter()
            .chain(super::super::Build::avx2_fma())
            .chain([super::super::Build::Portable])
            .collect();
        let data: Vec<u16> = (0..40_000_u32)
            .map(|i| (i * 7919 % 65_521) as u16)
            .collect();
        for build in builds {
            for lines in [1, 5, 9, 12, 16, 17, 32] {
                for units in [0, 1, 7, 8, 9, 15, 16, 17, 33, 64] {
                    check::<12>(build, &data, lines.min(12), units);
                    check::<32>(build, &data, lines, units);
                }
            }
        }
    }

    fn check<const W: usize>(build: super::super::Build, data: &[u16], lines: usize, units: usize) {
        // Line t at bf16 offset 1 + 301 t: words at odd 2-byte offsets, 4-byte unaligned.
        let starts: Vec<*const u32> = (0..lines)
            .map(|t| data[1 + 301 * t..][..2 * units].as_ptr().cast())
            .collect();
        let word = |t: usize, p: usize| {
            let at = 1 + 301 * t + 2 * p;
            u32::from(data[at]) | u32::from(data[at + 1]) << 16
        };
        let mut out = vec![u32::MAX; units * W];
        // SAFETY: each start holds `2 units` u16 (sliced above), `units` words.
        unsafe { transpose::<W>(build, &starts, units, &mut out) };
        for p in 0..units {
            for t in 0..W {
                let expected = if t < lines { word(t, p) } else { u32::MAX };
                assert_eq!(
                    out[p * W + t],
                    expected,
                    "{build:?} W {W}, line {t}, unit {p}"
                );
            }
        }
    }
}
