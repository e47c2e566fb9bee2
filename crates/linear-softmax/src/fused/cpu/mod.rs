//! The raw-buffer kernels of the fused head, for the plain CPU backends (Flex, NdArray).
//!
//! The tensor kernel (`tensor_kernel.rs`) pays for Burn's tensor API: `dW += X_r^T dS_r`
//! allocates a `[D, C]` temporary per chunk, and the softmax and `dS` allocate several `[R, C]`
//! temporaries. These kernels run the same loop on the primitives' buffers, borrowed without a
//! copy, with one reused `[R, C]` buffer:
//!
//! ```text
//! for each chunk of R rows:   buf  = X_r W                                GEMM, beta = 0
//!                             per row (in place, rayon over rows):
//!                               buf += b, m = max, lse = m + log sum exp(buf - m), l_i
//!                               buf <- dS_r = f_i [coef_i softmax(buf) - spread_i] ; buf[y_i] -= f_i (1 - eps) r_i
//!                               db_partial += buf                        (per task, reduced after)
//!                             dW += X_r^T dS_r                           GEMM, beta = 1, X_r^T by strides
//!                             dX_r = dS_r W^T                            GEMM into the output, W^T by strides
//! ```
//!
//! `f_i` is the per-row factor: the upstream gradient (1, or `g_i` for reduction none), divided
//! by the mean's denominator for reduction mean. For class-index targets the denominator
//! `sum_i v_i w_{y_i}` is known before the first chunk (the labels are in the backend's own
//! buffer), so the mean is folded into `f_i` and the gradients need no final scaling pass.
//!
//! | file | its one job |
//! |---|---|
//! | `buffers.rs` | primitives as slices (borrowed when contiguous), labels, outputs as primitives |
//! | `float.rs` | `f32` / `f64`: arithmetic, a vectorisable `exp`, the library's unsafe GEMM primitive |
//! | `gemm.rs` | the safe GEMM wrappers (matrix views checked against their slices); the GEMM of each operand type |
//! | `gemm/blas.rs` | the system OpenBLAS's `sgemm` / `dgemm` (feature `openblas-system`) |
//! | `gemm/packed.rs` | our packed GEMM (f32 sums): blocking, packing, threads |
//! | `gemm/packed/micro_kernel.rs` | its micro kernels as values, with the proof that the CPU runs them |
//! | `gemm/packed/tile.rs` | `C` shared by the GEMM's tasks; the micro kernels' tiles (and AVX2's quarters) in and out |
//! | `gemm/packed/transpose.rs` | packing lines that run along `k`: 16 x 16 transposes in AVX-512, 8 x 8 in AVX2 |
//! | `gemm/packed/bf16_kernels.rs` | bf16 operands: pairs of `k` packed; the `vdpbf16ps` and widening AVX-512 micro kernels; which way a bf16 GEMM runs |
//! | `gemm/packed/widened.rs` | bf16 operands widened to f32 as they are packed, for the f32 micro kernels (CPUs without AVX-512) |
//! | `gemm/packed/f32_kernels.rs` | f32 operands: packed as they are; the AVX-512 and AVX2 micro kernels |
//! | `gemm/packed/tests.rs` | the packed GEMM against a naive product, every micro kernel the CPU runs |
//! | `rounding.rs` | f32 results rounded to bf16 in their own memory (`dS_r`, `dW`) |
//! | `isa.rs` | the instruction sets: detected once per process, capped by `LINEAR_SOFTMAX_MAX_CPU_ISA`; the row code's build of a call |
//! | `probe.rs` | the chunk loop's three GEMMs alone, timed (for the `peak_memory` example) |
//! | `rows.rs` | the row pass: losses, log-sum-exps, `dS` in place, `colsum(dS)` |
//! | `filter.rs` | the gradient filter: a chunk's filtered blocks of `dS` zeroed, the classes the GEMMs keep |
//! | `chunks.rs` | many classes: chunks of `R` rows, three GEMMs each |
//! | `few_classes.rs` | `C <= 16`: one streaming pass over the rows instead of GEMMs |
//! | `few_classes/avx512.rs` | that pass's AVX-512 block code |
//!
//! The GEMMs (`gemm.rs`): in f32 on a CPU with AVX-512 or AVX2, from 2^27 multiply-adds on, and
//! in bf16, our packed GEMM (`gemm/packed.rs`, on rayon's threads); elsewhere in f32, and in
//! f64, `matrixmultiply`'s `sgemm`/`dgemm` (threaded over the cores by its `threading` feature,
//! which burn's `rayon` feature turns on; AVX-512 (f64), AVX2 or portable kernels detected at
//! run time); with the `openblas-system` feature, the system OpenBLAS in f32 and f64.
//!
//! bf16 (Flex): the GEMMs take the bf16 inputs as they are and sum in f32 (our packed GEMM,
//! with `vdpbf16ps` where the CPU has AVX512-BF16); the `[R, C]` buffer, the row pass and `dW`'s
//! accumulation across chunks are f32; `dS_r` is rounded once to bf16 (in place) for the two
//! backward GEMMs, and every output from its f32 value once at the end (the reduced loss is
//! summed in f64, so it is rounded to f32 first). A backward pass with an upstream gradient
//! `g != 1` scales the bf16 gradients, one more rounding. The few-classes pass runs on f32
//! copies of `X` and `W`.
//!
//! Supported: class-index targets (with `ignore_index`, `pad_tokens`, class weights, label
//! smoothing, z-loss), every reduction, `f32`, `f64` and `bf16`; `choice.rs`
//! sends everything else (probability targets, softcap, other dtypes) to the tensor-level
//! kernel before these start. The labels and the upstream gradients are read from the
//! backend's own CPU buffers (no device, nothing to synchronise). Peak extra memory: the
//! outputs (`dW`, `dX`, `db`, the `[N]` losses) plus one `[R, C]` buffer and a few `[C]` partial
//! column sums; in bf16, the outputs in f32 before their rounding (`dW` rounded in its own
//! allocation; `dX` and the `[N]` outputs in a second one); for few classes, the f32 copies of
//! `X` and `W`. Our packed GEMM (f32 on AVX-512 and AVX2, and bf16) adds its packed panels
//! (under 0.5 MiB per thread) and, for `dX`, a private `[R, D]` f32 tile per thread beyond the
//! first (at most 32 MiB together).

mod buffers;
mod chunks;
pub(crate) mod few_classes;
mod filter;
mod float;
mod gemm;
pub(crate) mod isa;
mod probe;
mod rounding;
mod rows;

use burn::backend::Scalar;
use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;

pub(crate) use buffers::RawBackend;
use buffers::{RawSlice, into_primitives};
use burn::tensor::bf16;
use float::RawFloat;
use gemm::Operand;
use isa::Isa;
pub use isa::{CpuIsa, MAX_CPU_ISA_VAR, cpu_isa};
pub use probe::chunk_gemm_times;
use rounding::F32ToBf16;
use rows::{ChunkRows, RowOutputs, RowTargets, row_targets};

use super::backend::{
    FusedInputs, FusedOutput, FusedSpec, RowUpstream, TargetPrimitives, WantedGradients,
    broadcast_scale,
};
use crate::loss::options::{LossOptions, LossReduction};

/// The raw kernel on the primitives of a plain backend.
///
/// `choice.rs` sends only what it handles here (class indices, no softcap, f32, f64 or bf16);
/// shapes, labels, dtypes and options were checked by the public entry points.
pub(crate) fn linear_cross_entropy<B: RawBackend>(
    inputs: &FusedInputs<B>,
    spec: &FusedSpec,
    wanted: WantedGradients,
    upstream: &RowUpstream<B>,
) -> FusedOutput<B> {
    let FusedInputs {
        x,
        weight,
        bias,
        targets,
        class_weights,
        row_weights,
    } = inputs;
    const CHOSEN: &str = "choice.rs chose the raw kernel for class indices in f32, f64 or bf16";
    let TargetPrimitives::Classes(labels) = targets else {
        unreachable!("{CHOSEN}");
    };
    let [n_rows, d_input] = x.shape().dims::<2>();
    let n_classes = weight.shape().dims::<2>()[1];
    let labels = B::labels(labels);
    let raw = |tensor| B::raw(tensor).expect(CHOSEN);
    let bias = bias.as_option().map(raw);
    let class_weights = class_weights.as_option().map(raw);
    // In f64 whatever the float type: they multiply f64 losses and factors.
    let row_scale = || row_weights.as_option().map(|rho| raw(rho).to_f64());
    let upstream = match upstream {
        RowUpstream::Ones => None,
        RowUpstream::Rows(rows) => Some(raw(rows)),
    };
    let shape = Shape {
        n_rows,
        d_input,
        n_classes,
    };
    let device = x.device();
    let options = &spec.options;
    let call = Call {
        shape,
        options,
        chunk_rows: spec.chunk_rows,
        wanted,
        stats: spec.stats,
        isa: Isa::detect(),
    };
    macro_rules! run {
        ($variant:ident, $ty:ty, $x:expr) => {{
            // The head checks that x, W and b share one dtype; the upstream gradient has the
            // loss's dtype.
            fn same_dtype<'a>(slice: &'a RawSlice<'_>) -> Option<&'a [$ty]> {
                match slice {
                    RawSlice::$variant(values) => Some(values.as_ref()),
                    _ => None,
                }
            }
            let weight = raw(weight);
            let weight = same_dtype(&weight).expect(CHOSEN);
            let bias = bias.as_ref().map(|b| same_dtype(b).expect(CHOSEN));
            let class_weights = class_weights.as_ref().map(|w| same_dtype(w).expect(CHOSEN));
            let upstream = upstream.as_ref().map(|g| same_dtype(g).expect(CHOSEN));
            let row_targets = row_targets::<$ty>(
                &labels,
                class_weights,
                row_scale(),
                n_classes,
                options,
                spec.ignore_index,
            );
            let output = kernel::<$ty, $ty>(Run {
                call,
                x: $x,
                weight,
                bias,
                targets: &row_targets,
                upstream,
                d_weight: None,
            });
            into_primitives::<B, $ty>(output, shape, &device)
        }};
    }
    match raw(x) {
        RawSlice::F32(x_raw) => run!(F32, f32, &x_raw),
        RawSlice::F64(x_raw) => run!(F64, f64, &x_raw),
        RawSlice::Bf16(x_raw) => {
            // bf16 inputs: the GEMMs take them as they are and sum in f32; the row pass and
            // every sum run in f32 on widened copies of the small operands (b, class weights,
            // the upstream gradient); every output is rounded once, at the end.
            fn bf16s<'a>(slice: &'a RawSlice<'_>) -> &'a [bf16] {
                match slice {
                    RawSlice::Bf16(values) => values,
                    _ => unreachable!("{CHOSEN}: x, W, b and the upstream gradient share a dtype"),
                }
            }
            let widen = |values: &[bf16]| values.iter().map(|v| v.to_f32()).collect::<Vec<_>>();
            let weight = raw(weight);
            let weight = bf16s(&weight);
            let bias = bias.as_ref().map(|b| widen(bf16s(b)));
            let class_weights = class_weights.as_ref().map(|w| widen(bf16s(w)));
            let upstream = upstream.as_ref().map(|g| widen(bf16s(g)));
            let row_targets = row_targets::<f32>(
                &labels,
                class_weights.as_deref(),
                row_scale(),
                n_classes,
                options,
                spec.ignore_index,
            );
            // dW accumulates in f32 in the allocation of its bf16 result (no second [D, C]).
            let mut d_weight = wanted
                .weight
                .then(|| F32ToBf16::zeros(shape.d_input * n_classes));
            let (bias, upstream) = (bias.as_deref(), upstream.as_deref());
            let d_weight_f32 = d_weight.as_mut().map(F32ToBf16::as_f32);
            let output = if n_classes <= few_classes::MAX_CLASSES {
                // The few-classes pass reads X once and W is tiny: widened copies, f32 throughout.
                let (x, weight) = (widen(&x_raw), widen(weight));
                kernel::<f32, f32>(Run {
                    call,
                    x: &x,
                    weight: &weight,
                    bias,
                    targets: &row_targets,
                    upstream,
                    d_weight: d_weight_f32,
                })
            } else {
                kernel::<f32, bf16>(Run {
                    call,
                    x: &x_raw,
                    weight,
                    bias,
                    targets: &row_targets,
                    upstream,
                    d_weight: d_weight_f32,
                })
            };
            let mut output = output.rounded();
            output.d_weight = d_weight.map(F32ToBf16::into_bf16);
            into_primitives::<B, bf16>(output, shape, &device)
        }
    }
}

/// `g * gradient` for a `[1]` upstream gradient `g` in the backend's own buffer: the
/// gradient itself when `g = 1` (a plain `loss.backward()`), else an in-place scalar multiply.
pub(crate) fn scale_by_scalar<B: RawBackend>(
    gradient: FloatTensor<B>,
    upstream: &FloatTensor<B>,
) -> FloatTensor<B> {
    let scale = match B::raw(upstream) {
        Some(RawSlice::F32(g)) => g[0] as f64,
        Some(RawSlice::F64(g)) => g[0],
        Some(RawSlice::Bf16(g)) => g[0].to_f64(),
        // Another float type: the broadcast multiply of any backend.
        None => return broadcast_scale::<B>(gradient, upstream.clone()),
    };
    if scale == 1.0 {
        gradient
    } else {
        B::float_mul_scalar(gradient, Scalar::from(scale))
    }
}

/// The batch's dimensions.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    pub(super) n_rows: usize,
    pub(super) d_input: usize,
    pub(super) n_classes: usize,
}

/// What a call asks of the kernel, whatever its float types.
#[derive(Clone, Copy)]
struct Call<'a> {
    shape: Shape,
    options: &'a LossOptions,
    chunk_rows: usize,
    wanted: WantedGradients,
    stats: bool,
    isa: Isa,
}

/// One call of the kernel on host slices: `x` and `weight` in the GEMMs' operand type `M`,
/// everything else in the compute type `E`.
struct Run<'a, E, M> {
    call: Call<'a>,
    x: &'a [M],
    weight: &'a [M],
    bias: Option<&'a [E]>,
    targets: &'a RowTargets<E>,
    upstream: Option<&'a [E]>,
    /// `dW`'s accumulator, when the caller holds it (bf16: `F32ToBf16`); else the kernel
    /// allocates it and returns it in [`HostOutput::d_weight`].
    d_weight: Option<&'a mut [E]>,
}

/// The kernel on host slices: the mean's denominator and per-row factors, then the pass.
fn kernel<E: RawFloat, M: Operand<E>>(run: Run<'_, E, M>) -> HostOutput<E> {
    let Run {
        call:
            Call {
                shape,
                options,
                chunk_rows,
                wanted,
                stats,
                isa,
            },
        x,
        weight,
        bias,
        targets,
        upstream,
        d_weight: d_weight_of_caller,
    } = run;
    let Shape {
        n_rows,
        d_input: d,
        n_classes: c,
    } = shape;
    let wanted = WantedGradients {
        bias: wanted.bias && bias.is_some(),
        ..wanted
    };
    let chunk_rows = chunk_rows.clamp(1, n_rows);

    // The mean's denominator: the caller's, or sum_i rho_i v_i w_{y_i} (N when no row is
    // weighted), 0 -> 1.
    let weighted =
        targets.valid.is_some() || targets.class_weights.is_some() || targets.row_scale.is_some();
    let denominator = match options.mean_denominator {
        Some(given) => given,
        None if weighted => (0..n_rows)
            .map(|i| targets.row_scale(i) * targets.row_weight(i))
            .sum::<f64>(),
        None => n_rows as f64,
    };
    let denominator = if denominator == 0.0 { 1.0 } else { denominator };
    let mean_scale = match options.reduction {
        LossReduction::Mean => 1.0 / denominator,
        LossReduction::Sum | LossReduction::None => 1.0,
    };

    let mut row_losses = vec![E::ZERO; n_rows];
    let mut log_sum_exp = vec![E::ZERO; n_rows];
    let mut d_input = wanted.input.then(|| vec![E::ZERO; n_rows * d]);
    let mut d_weight =
        (wanted.weight && d_weight_of_caller.is_none()).then(|| vec![E::ZERO; d * c]);
    let d_weight_out = match d_weight_of_caller {
        Some(accumulator) => wanted.weight.then_some(accumulator),
        None => d_weight.as_deref_mut(),
    };
    let mut d_bias = wanted.bias.then(|| vec![E::ZERO; c]);
    let mut predictions = stats.then(|| vec![0_i64; n_rows]);
    let mut target_log_probabilities = stats.then(|| vec![E::ZERO; n_rows]);
    let mut entropies = stats.then(|| vec![E::ZERO; n_rows]);
    let factor =
        |i: usize| mean_scale * targets.row_scale(i) * upstream.map_or(1.0, |g| g[i].to_f64());
    let outputs = Outputs {
        rows: RowOutputs {
            losses: &mut row_losses,
            log_sum_exp: &mut log_sum_exp,
            predictions: predictions.as_deref_mut(),
            target_log_probabilities: target_log_probabilities.as_deref_mut(),
            entropies: entropies.as_deref_mut(),
        },
        d_input: d_input.as_deref_mut(),
        d_weight: d_weight_out,
        d_bias: d_bias.as_deref_mut(),
    };
    // The few-classes pass forms no `dS` for a filter to act on; the chunk loop does.
    if c <= few_classes::MAX_CLASSES && !options.gradient_filter.is_on() {
        const WIDENED: &str = "bf16 inputs reach the few-classes pass widened to f32";
        let inputs = Inputs {
            x: M::as_compute(x).expect(WIDENED),
            weight: M::as_compute(weight).expect(WIDENED),
            features: d,
        };
        let factors: Vec<f64> = (0..n_rows).map(factor).collect();
        let batch = ChunkRows {
            start: 0,
            bias,
            targets,
            factors: &factors,
            gradients: wanted.any(),
            stats,
            n_classes: c,
            isa,
        };
        few_classes::pass(inputs, &batch, outputs);
    } else {
        let chunks = chunks::Chunks {
            bias,
            targets,
            factor: &factor,
            chunk_rows,
            stats,
            isa,
            filter: &options.gradient_filter,
        };
        let inputs = Inputs {
            x,
            weight,
            features: d,
        };
        chunks::pass(inputs, &chunks, outputs);
    }

    // The statistics' reductions here, on the host buffers (no tensor operations).
    let stats = predictions
        .zip(target_log_probabilities.zip(entropies))
        .map(|(predictions, (mut target_log_probability, mut entropy))| {
            let (mut correct, mut counted) = (0, 0);
            for row in 0..n_rows {
                if targets.is_valid(row) {
                    counted += 1;
                    correct += i64::from(predictions[row] == targets.labels[row] as i64);
                } else {
                    target_log_probability[row] = E::ZERO;
                    entropy[row] = E::ZERO;
                }
            }
            HostStats {
                predictions,
                target_log_probability,
                entropy,
                correct,
                counted,
            }
        });
    let loss = match options.reduction {
        LossReduction::None => row_losses,
        LossReduction::Mean | LossReduction::Sum => {
            let sum: f64 = row_losses.iter().map(|l| l.to_f64()).sum();
            vec![E::of(sum * mean_scale)]
        }
    };
    HostOutput {
        loss,
        d_input,
        d_weight,
        d_bias,
        log_sum_exp,
        stats,
    }
}

/// The kernel's outputs, each `None` when not wanted.
pub(super) struct Outputs<'a, E> {
    /// The per-row outputs, `[N]` each.
    pub(super) rows: RowOutputs<'a, E>,
    /// `dX`, `[N, D]`, overwritten.
    pub(super) d_input: Option<&'a mut [E]>,
    /// `dW`, `[D, C]`, overwritten.
    pub(super) d_weight: Option<&'a mut [E]>,
    /// `db`, `[C]`, overwritten.
    pub(super) d_bias: Option<&'a mut [E]>,
}

/// The kernel's matrices: `x` `[N, D]`, `weight` `[D, C]`, row-major.
pub(super) struct Inputs<'a, E> {
    pub(super) x: &'a [E],
    pub(super) weight: &'a [E],
    /// `D`, the number of features.
    pub(super) features: usize,
}

/// The host outputs of the kernel.
pub(super) struct HostOutput<E> {
    pub(super) loss: Vec<E>,
    pub(super) d_input: Option<Vec<E>>,
    pub(super) d_weight: Option<Vec<E>>,
    pub(super) d_bias: Option<Vec<E>>,
    pub(super) log_sum_exp: Vec<E>,
    pub(super) stats: Option<HostStats<E>>,
}

impl HostOutput<f32> {
    /// Every output rounded once to bf16 (to nearest, ties to even).
    fn rounded(self) -> HostOutput<bf16> {
        let round = |values: Vec<f32>| values.into_iter().map(bf16::from_f32).collect();
        HostOutput {
            loss: round(self.loss),
            d_input: self.d_input.map(round),
            d_weight: self.d_weight.map(round),
            d_bias: self.d_bias.map(round),
            log_sum_exp: round(self.log_sum_exp),
            stats: self.stats.map(|stats| HostStats {
                target_log_probability: round(stats.target_log_probability),
                entropy: round(stats.entropy),
                predictions: stats.predictions,
                correct: stats.correct,
                counted: stats.counted,
            }),
        }
    }
}

/// The statistics of [`crate::LossStats`], on the host.
pub(super) struct HostStats<E> {
    pub(super) predictions: Vec<i64>,
    pub(super) target_log_probability: Vec<E>,
    pub(super) entropy: Vec<E>,
    pub(super) correct: i64,
    pub(super) counted: i64,
}
