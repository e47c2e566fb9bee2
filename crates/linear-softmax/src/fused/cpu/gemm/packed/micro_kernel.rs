//! The micro kernels of the packed GEMM as values: a kernel, the build of the loops around it,
//! and the proof that this CPU runs both.
//!
//! The builds are the packed GEMM's own rather than the row code's (`isa.rs`): its AVX-512
//! build also asks for AVX-512 BW and VL, for the packing's 16-bit lanes and masks.

use std::fmt;

use super::{Packed, SharedC, Task, block};
#[cfg(target_arch = "x86_64")]
use crate::fused::cpu::isa::{CpuIsa, level};

/// The micro kernel: `out = A_panel B_panel`, or `out += A_panel B_panel` when accumulating,
/// over `units` units of `k`, for an `MR x NR` block `out` with row stride `ldo`.
///
/// # Safety
/// The CPU runs the kernel's instructions (see [`MicroKernel::new`]); `out` is valid for reads
/// and writes of `MR` rows of `NR` f32 at a stride of `ldo` elements, and no other reference
/// covers them.
pub(super) type Micro<U> = unsafe fn(usize, &[U], &[U], *mut f32, usize, bool);

/// A micro kernel and the build of the loops around it.
#[derive(Clone, Copy)]
pub(in crate::fused::cpu) struct MicroKernel<U: 'static> {
    name: &'static str,
    pub(super) micro: Micro<U>,
    pub(super) build: Build,
}

impl<U> fmt::Debug for MicroKernel<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

impl<U> MicroKernel<U> {
    /// # Safety
    /// This CPU runs `micro`'s instructions.
    pub(super) unsafe fn new(name: &'static str, micro: Micro<U>, build: Build) -> Self {
        Self { name, micro, build }
    }

    /// Runs `task` on the calling thread, in the build its CPU runs best.
    pub(super) fn run<P: Packed<Unit = U>>(self, task: Task<'_, P>, c: SharedC<'_>) {
        match self.build {
            // SAFETY: `Avx512Found` exists only where `Build::avx512` found these features.
            #[cfg(target_arch = "x86_64")]
            Build::Avx512(_) => unsafe { super::block_avx512(task, c) },
            // SAFETY: `Avx2FmaFound` exists only where `Build::avx2_fma` found them.
            #[cfg(target_arch = "x86_64")]
            Build::Avx2Fma(_) => unsafe { super::block_avx2(task, c) },
            _ => block(task, c),
        }
    }
}

/// The builds of the packing and write-back loops.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(in crate::fused::cpu) enum Build {
    /// AVX-512 F, BW and VL, with AVX2 and FMA.
    Avx512(Avx512Found),
    /// AVX2 and FMA.
    Avx2Fma(Avx2FmaFound),
    /// Any CPU.
    Portable,
}

/// The proof that this CPU has AVX-512 F, BW and VL, AVX2 and FMA: made only by
/// [`Build::avx512`], after checking for them.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(in crate::fused::cpu) struct Avx512Found(());

/// The proof that this CPU has AVX2 and FMA: made only by [`Build::avx2_fma`], after checking
/// for them.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(in crate::fused::cpu) struct Avx2FmaFound(());

impl Build {
    /// The AVX-512 build, where the CPU has its features and [`level`] allows them (detected
    /// once per process).
    pub(super) fn avx512() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if level() >= CpuIsa::Avx512 {
            return Some(Self::Avx512(Avx512Found(())));
        }
        None
    }

    /// The AVX2 + FMA build, where the CPU has them and [`level`] allows them.
    pub(super) fn avx2_fma() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if level() >= CpuIsa::Avx2 {
            return Some(Self::Avx2Fma(Avx2FmaFound(())));
        }
        None
    }
}
