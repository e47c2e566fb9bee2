//! The instruction sets the CPU kernel runs with: the best this CPU has, detected once per
//! process and capped by the environment variable [`MAX_CPU_ISA_VAR`]; and the build of the
//! row code a call runs.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use crate::{Error, Result};

/// The environment variable that caps the instruction sets of the raw CPU kernels:
/// `portable`, `avx2`, `avx512` or `avx512_bf16` (ASCII case ignored), as
/// `ATEN_CPU_CAPABILITY` caps PyTorch's CPU kernels and `ONEDNN_MAX_CPU_ISA` oneDNN's. Unset
/// or empty, the kernels run the best this CPU has. It is read once per process, at the first
/// call of [`cpu_isa`] (a fused call on a CPU device makes one), so setting it later changes
/// nothing. A value that names no [`CpuIsa`] makes every fused call on a CPU device return
/// [`Error::InvalidOption`] (PyTorch warns and ignores one; a typo here would otherwise
/// measure the wrong kernels); GPU devices never read it.
///
/// It exists to measure and test, on one machine, what a CPU with fewer features runs (e.g.
/// the AVX2 kernels on an AVX-512 CPU). It caps this crate's kernels only: Burn's own matmuls
/// and the GEMM libraries detect their instructions themselves (matrixmultiply's
/// `MMTEST_FEATURE` caps its own, at build time).
pub const MAX_CPU_ISA_VAR: &str = "LINEAR_SOFTMAX_MAX_CPU_ISA";

/// An instruction-set level of the raw CPU kernels (x86_64; every other CPU runs the
/// portable code), ordered: each level includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CpuIsa {
    /// Plain Rust, for any CPU (separate multiplies and adds).
    Portable,
    /// AVX2 with fused multiply-adds (x86_64 since Haswell and Zen).
    Avx2,
    /// AVX-512 F, BW and VL, with AVX2 and FMA (Skylake-SP and later, Zen 4 and later).
    Avx512,
    /// [`CpuIsa::Avx512`] and AVX512-BF16's `vdpbf16ps` for bf16 GEMMs (Cooper Lake, Sapphire
    /// Rapids and later, Zen 4 and later).
    Avx512Bf16,
}

impl CpuIsa {
    /// Every level, lowest first.
    pub const ALL: [Self; 4] = [Self::Portable, Self::Avx2, Self::Avx512, Self::Avx512Bf16];

    /// The level's name, as [`MAX_CPU_ISA_VAR`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Avx512Bf16 => "avx512_bf16",
        }
    }

    /// The best level this CPU runs, whatever the cap.
    pub fn detected() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
                    if has!("avx512bf16") {
                        return Self::Avx512Bf16;
                    }
                    return Self::Avx512;
                }
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// A cap as [`MAX_CPU_ISA_VAR`] holds it (`None`: unset or empty, no cap).
    fn parse_cap(value: Option<&str>) -> Result<Option<Self>> {
        match value.map(str::trim) {
            None | Some("") => Ok(None),
            Some(value) => value.parse().map(Some),
        }
    }
}

impl FromStr for CpuIsa {
    type Err = Error;

    /// A level by its [`name`](CpuIsa::name), ASCII case ignored.
    fn from_str(value: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|level| level.name().eq_ignore_ascii_case(value))
            .ok_or_else(|| Error::InvalidOption {
                name: MAX_CPU_ISA_VAR,
                value: value.to_owned(),
                expected: "one of portable, avx2, avx512 and avx512_bf16, or unset",
            })
    }
}

impl fmt::Display for CpuIsa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The level this process's CPU kernels run: [`CpuIsa::detected`] capped by
/// [`MAX_CPU_ISA_VAR`] (read at the first call: never above what the CPU has), or the error
/// its value makes.
pub fn cpu_isa() -> Result<CpuIsa> {
    static LEVEL: LazyLock<Result<CpuIsa>> = LazyLock::new(|| {
        let value = match std::env::var(MAX_CPU_ISA_VAR) {
            Ok(value) => Some(value),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(value)) => {
                Some(value.to_string_lossy().into_owned())
            }
        };
        let cap = CpuIsa::parse_cap(value.as_deref())?;
        let detected = CpuIsa::detected();
        Ok(cap.map_or(detected, |cap| cap.min(detected)))
    });
    LEVEL.clone()
}

/// The level the kernels run, for code below the entry points, which return [`cpu_isa`]'s
/// error first (`fused::prepare` on a CPU device, `chunk_gemm_times`).
pub(super) fn level() -> CpuIsa {
    cpu_isa().expect("the fused entry points refuse an invalid LINEAR_SOFTMAX_MAX_CPU_ISA")
}

/// The build of the row code a call runs: detected once, where the call enters the CPU
/// kernel, and handed down, so that every row of the call runs the same build.
///
/// Only [`Isa::detect`] makes one, from [`level`]: code that holds an `Isa` of level
/// [`CpuIsa::Avx512`] (or above) may call the AVX-512 row functions (`f32` rows in 16-lane
/// vectors), of level [`CpuIsa::Avx2`] the AVX2 + FMA ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Isa {
    level: CpuIsa,
}

impl Isa {
    /// The build of [`level`].
    pub(super) fn detect() -> Self {
        Self { level: level() }
    }

    /// Which build.
    pub(super) fn level(self) -> CpuIsa {
        self.level
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_names_a_level_or_is_refused() {
        assert_eq!(CpuIsa::parse_cap(None).unwrap(), None);
        for level in CpuIsa::ALL {
            assert_eq!(CpuIsa::parse_cap(Some(level.name())).unwrap(), Some(level));
        }
        assert_eq!(
            CpuIsa::parse_cap(Some(" AVX2 ")).unwrap(),
            Some(CpuIsa::Avx2)
        );
        assert_eq!(CpuIsa::parse_cap(Some(" ")).unwrap(), None);
        for bad in ["avx", "avx512bf16x", "sse4.2"] {
            let error = CpuIsa::parse_cap(Some(bad)).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidOption { name, value, .. }
                    if *name == MAX_CPU_ISA_VAR && value == bad),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn the_levels_are_ordered_lowest_first() {
        assert!(CpuIsa::ALL.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
