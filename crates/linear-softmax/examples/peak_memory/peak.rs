//! The machine's peak arithmetic rate, measured: every core at once runs independent
//! multiply-adds in the widest vector registers the fused kernels use
//! (`diagnostics::cpu_isa`: the best the CPU has, or the level `LINEAR_SOFTMAX_MAX_CPU_ISA`
//! caps it to; f32 FMA, bf16 dot products at AVX512-BF16), so the ratio of a step's rate to it
//! says how far the step is from what the cores can do with those instructions, whatever their
//! clock is today.

use std::time::Instant;

use linear_softmax::diagnostics::CpuIsa;

/// A measured peak: FLOP per second on all cores, and the instruction measured.
pub struct Peak {
    pub gflops: f64,
    pub instruction: &'static str,
}

/// Independent accumulators per thread: enough to cover the instruction's latency.
const ACCUMULATORS: usize = 12;
/// Iterations of the accumulator loop per thread (about 0.1 s).
const ITERATIONS: usize = 20_000_000;
/// Measurements, of which the fastest counts.
const ROUNDS: usize = 5;

/// The f32 peak at `isa`: FMAs on 16-lane (AVX-512) or 8-lane (AVX2) vectors.
pub fn f32_peak(isa: CpuIsa) -> Option<Peak> {
    #[cfg(target_arch = "x86_64")]
    {
        if isa >= CpuIsa::Avx512 && std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            let flops = ITERATIONS * ACCUMULATORS * 16 * 2;
            return Some(on_every_core(
                flops,
                || unsafe { x86::fma512(ITERATIONS) },
                "vfmadd zmm",
            ));
        }
        if isa >= CpuIsa::Avx2
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            let flops = ITERATIONS * ACCUMULATORS * 8 * 2;
            // SAFETY: the CPU has AVX2 and FMA.
            return Some(on_every_core(
                flops,
                || unsafe { x86::fma256(ITERATIONS) },
                "vfmadd ymm",
            ));
        }
    }
    None
}

/// The bf16 peak at `isa`: `vdpbf16ps` (32 multiply-adds per instruction) at AVX512-BF16;
/// below it, the f32 peak (the kernels widen bf16 to f32: one FMA per multiply-add).
pub fn bf16_peak(isa: CpuIsa) -> Option<Peak> {
    #[cfg(target_arch = "x86_64")]
    if isa >= CpuIsa::Avx512Bf16
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
    {
        let flops = ITERATIONS * ACCUMULATORS * 32 * 2;
        // SAFETY: the CPU has AVX-512F and AVX512-BF16.
        return Some(on_every_core(
            flops,
            || unsafe { x86::dpbf16(ITERATIONS) },
            "vdpbf16ps zmm",
        ));
    }
    f32_peak(isa)
}

/// Runs `kernel` (doing `flops` FLOP) on one thread per core at once; the best of
/// [`ROUNDS`] rounds (a shared machine's other work only slows a round down).
fn on_every_core(flops: usize, kernel: impl Fn() -> f32 + Sync, instruction: &'static str) -> Peak {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let round = || {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..cores {
                scope.spawn(|| std::hint::black_box(kernel()));
            }
        });
        (cores * flops) as f64 / start.elapsed().as_secs_f64() / 1e9
    };
    Peak {
        gflops: (0..ROUNDS).map(|_| round()).fold(0.0, f64::max),
        instruction,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    use super::ACCUMULATORS;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iterations: usize) -> f32 {
        // Distinct starting values, so that no two accumulators can be merged.
        let mut acc: [__m512; ACCUMULATORS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        let (a, b) = (
            _mm512_set1_ps(black_box(0.999_9)),
            _mm512_set1_ps(black_box(1e-4)),
        );
        for _ in 0..iterations {
            for acc in &mut acc {
                *acc = _mm512_fmadd_ps(*acc, a, b);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iterations: usize) -> f32 {
        let mut acc: [__m256; ACCUMULATORS] = std::array::from_fn(|i| _mm256_set1_ps(i as f32));
        let (a, b) = (
            _mm256_set1_ps(black_box(0.999_9)),
            _mm256_set1_ps(black_box(1e-4)),
        );
        for _ in 0..iterations {
            for acc in &mut acc {
                *acc = _mm256_fmadd_ps(*acc, a, b);
            }
        }
        let mut lanes = [0.0_f32; 8];
        acc.iter()
            .map(|&v| {
                // SAFETY: 8 f32 lanes into an 8-element array.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
                lanes.iter().sum::<f32>()
            })
            .sum()
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(iterations: usize) -> f32 {
        let mut acc: [__m512; ACCUMULATORS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        // Pairs of bf16 1.0 (0x3F80) and 1/128 (0x3C00).
        let pair = _mm512_set1_epi32(black_box(0x3F80_3C00));
        let a: __m512bh = unsafe { std::mem::transmute(pair) };
        for _ in 0..iterations {
            for acc in &mut acc {
                *acc = _mm512_dpbf16_ps(*acc, a, a);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }
}
