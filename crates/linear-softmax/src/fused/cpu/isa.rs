//! The instruction set the row code runs with, detected once per call.

/// The build of the row code a call runs: detected once, where the call enters the CPU
/// kernel, and handed down, so that every row of the call runs the same build.
///
/// Only [`Isa::detect`] can name a vector build, and only after the CPU check: code that
/// holds an `Isa` of kind [`IsaKind::Avx512`] may call the AVX-512 functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Isa {
    kind: IsaKind,
}

/// The builds of the row code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IsaKind {
    /// AVX-512 (with AVX2 and FMA): `f32` rows in 16-lane vectors.
    Avx512,
    /// AVX2 with fused multiply-adds.
    Avx2Fma,
    /// Any CPU: separate multiplies and adds.
    Portable,
}

impl Isa {
    /// The best build this CPU runs (x86_64: AVX-512, else AVX2 + FMA, else portable).
    pub(super) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self {
                    kind: IsaKind::Avx512,
                };
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self {
                    kind: IsaKind::Avx2Fma,
                };
            }
        }
        Self {
            kind: IsaKind::Portable,
        }
    }

    /// Which build.
    pub(super) fn kind(self) -> IsaKind {
        self.kind
    }
}
