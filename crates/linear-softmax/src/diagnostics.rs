//! What the fused path does under the hood, for tests, benchmarks and bug reports: which kernel
//! a call takes ([`kernel_for`]), which CPU instruction set the raw kernels use ([`cpu_isa`])
//! and how long each of their GEMMs takes. Nothing here is needed to train.

pub use crate::fused::choice::{Kernel, KernelChoice, kernel_for};
#[doc(hidden)]
pub use crate::fused::cpu::chunk_gemm_times;
pub use crate::fused::cpu::{CpuIsa, MAX_CPU_ISA_VAR, cpu_isa};
