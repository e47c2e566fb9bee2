//! The packing of operands whose lines run along `k` in memory (the rows of `dS_r` and of `W`
//! for `dX_r = dS_r W^T`, the rows of `X_r` for `S_r = X_r W`): a transpose of 4-byte units,
//! line `t`'s unit `p` to `out[p W + t]`. In AVX-512, 16 x 16 blocks are transposed in
//! registers (64 shuffles for 256 units, against a scalar store each).

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
    for (t, &line) in lines.iter().enumerate() {
        for p in 0..units {
            // SAFETY: word p of the line (the caller's contract).
            out[p * W + t] = unsafe { line.add(p).read_unaligned() };
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
    for (t, &line) in lines.iter().enumerate() {
        for p in whole..units {
            // SAFETY: word p of the line (the caller's contract).
            out[p * W + t] = unsafe { line.add(p).read_unaligned() };
        }
    }
}

/// [`transpose_avx512`] where the build is AVX-512's, else [`transpose_portable`].
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
        // SAFETY: the caller's contract.
        _ => unsafe { transpose_portable::<W>(lines, units, out) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every build this CPU runs agrees with the definition: panels of 12 and 32 lines, fewer
    /// lines than the panel, unit counts around the 16 x 16 blocks, lines at odd addresses
    /// (bf16 pairs start at any even bf16, so at any 4-byte word of a 2-byte-aligned slice).
    #[test]
    fn every_build_is_the_transpose() {
        let builds: Vec<super::super::Build> = super::super::Build::avx512()
            .into_iter()
            .chain([super::super::Build::Portable])
            .collect();
        let data: Vec<u16> = (0..40_000_u32)
            .map(|i| (i * 7919 % 65_521) as u16)
            .collect();
        for build in builds {
            for lines in [1, 5, 12, 16, 17, 32] {
                for units in [0, 1, 15, 16, 17, 33, 64] {
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
