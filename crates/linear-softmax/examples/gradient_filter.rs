//! What gradient filtering (`LossOptions::gradient_filter`, Cut Cross-Entropy's) saves and
//! costs on the LM-head step: the share of `dS`'s blocks it filters, the share of the backward
//! GEMMs' columns the CPU kernel skips, the fused step's time with and without it, and the
//! gradients' error against the unfiltered step, on two softmaxes:
//!
//! - **peaked**: as a trained language model's on a frequency-sorted vocabulary. The bias falls
//!   as `-1.1 ln(k + 1)` (a Zipf tail, exponent 1.1, in one class order for every row), the
//!   labels are drawn from the same Zipf law, and each row's input points along its label's
//!   weight column, far enough that the label's probability is about 0.5; the other logits
//!   get a per-row jitter of about 0.6 (a log-normal factor on the tail);
//! - **flat**: an untrained head (the benchmarks' seeded batch: `W`, `b` uniform in
//!   `+-1/sqrt(D)`), every probability near `1 / C`.
//!
//! ```text
//! cargo run --release --example gradient_filter                   # Flex and NdArray; bf16 on Flex
//! cargo run --release --example gradient_filter -- --backend flex --thresholds 0.000244,0.001 --repeats 3
//! ```
//!
//! The LM shape of the benchmarks (`N = 2048`, `D = 512`, `C = 32768`), reduction mean, the
//! fused path's `gradients` (plain values: the step without autograd's bookkeeping), best of
//! `--repeats` steps after a warm-up; the autodiff path's `gradients` and Burn's `Linear` +
//! `CrossEntropyLoss` (`backward()`) in the same run for scale. Blocks of 16 rows x 128
//! classes; the GEMMs skip a block of classes in a chunk when every block of rows of the chunk
//! filters it (chunks of `R` rows, the kernel's default: 240 rows here, f32 and bf16).

#[path = "peak_memory/batch.rs"]
mod batch;

use std::time::{Duration, Instant};

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::DType;
use linear_softmax::{
    Chunking, GradientFilter, HeadGradients, LinearSoftmax, LossOptions, LossPath, Targets,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const BLOCK_ROWS: usize = 16;
const BLOCK_CLASSES: usize = 128;
/// The Zipf exponent of the peaked softmax's tail and of its labels.
const ZIPF: f64 = 1.1;

/// A head and a batch on one device, with the labels on the host.
struct Problem {
    head: LinearSoftmax,
    x: Tensor<2>,
    labels: Vec<i64>,
    targets: Targets,
}

/// Zipf draws over `0..c` (`P(k) ~ (k + 1)^-ZIPF`) by the inverse of the cumulative weights.
fn zipf_labels(n: usize, c: usize, rng: &mut StdRng) -> Vec<i64> {
    let cumulative: Vec<f64> = (0..c)
        .scan(0.0, |sum, k| {
            *sum += ((k + 1) as f64).powf(-ZIPF);
            Some(*sum)
        })
        .collect();
    let total = cumulative[c - 1];
    (0..n)
        .map(|_| {
            let u = rng.random_range(0.0..total);
            cumulative.partition_point(|&sum| sum < u) as i64
        })
        .collect()
}

/// The peaked softmax of the module's doc, in f32.
fn peaked([n, d, c]: [usize; 3], device: &Device) -> Problem {
    let mut rng = StdRng::seed_from_u64(3);
    // W's entries of variance 1 / D: columns of norm ~1, nearly orthogonal (dot ~ 1 / sqrt(D)).
    let scale = (3.0 / d as f64).sqrt();
    let weight: Vec<f64> = (0..d * c)
        .map(|_| rng.random_range(-scale..scale))
        .collect();
    let bias: Vec<f64> = (0..c).map(|k| -ZIPF * ((k + 1) as f64).ln()).collect();
    let labels = zipf_labels(n, c, &mut rng);
    // The tail's mass: the label needs a logit ln Z above its bias for a probability ~0.5.
    let tail_mass: f64 = bias.iter().map(|b| b.exp()).sum();
    let mut x = vec![0.0; n * d];
    for (i, &label) in labels.iter().enumerate() {
        let column: Vec<f64> = (0..d).map(|j| weight[j * c + label as usize]).collect();
        let norm2: f64 = column.iter().map(|v| v * v).sum();
        let reach = tail_mass.ln() - bias[label as usize];
        for j in 0..d {
            x[i * d + j] = reach * column[j] / norm2;
        }
    }
    let f32s = |values: Vec<f64>| values.into_iter().map(|v| v as f32).collect::<Vec<_>>();
    let head = LinearSoftmax::from_tensors(
        Tensor::from_data(TensorData::new(f32s(weight), [d, c]), device),
        Some(Tensor::from_data(TensorData::new(f32s(bias), [c]), device)),
    )
    .expect("valid parameters");
    let x = Tensor::from_data(TensorData::new(f32s(x), [n, d]), device);
    problem(head, x, labels, c, device)
}

fn flat(shape: [usize; 3], device: &Device) -> Problem {
    let (head, x, labels) = batch::seeded(shape, device);
    problem(head, x, labels, shape[2], device)
}

fn problem(
    head: LinearSoftmax,
    x: Tensor<2>,
    labels: Vec<i64>,
    c: usize,
    device: &Device,
) -> Problem {
    let targets = Targets::from_indices(&labels, c, device).expect("labels in range");
    Problem {
        head,
        x,
        labels,
        targets,
    }
}

impl Problem {
    fn cast(&self, dtype: DType) -> Self {
        Self {
            head: self.head.clone().cast(dtype),
            x: self.x.clone().cast(dtype),
            labels: self.labels.clone(),
            targets: self.targets.clone(),
        }
    }
}

/// What the filter would do to this batch at `threshold`, from its f32 probabilities (on the
/// host, for the bf16 runs too): the share of blocks filtered, and of the chunks' blocks of classes that the GEMMs
/// skip; and the label's mean probability.
fn block_shares(p: &Problem, threshold: f64, chunk_rows: usize) -> (f64, f64, f64) {
    let probabilities = p.head.probabilities(p.x.clone()).expect("valid input");
    let [n, c] = probabilities.dims();
    let values = probabilities
        .to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 values");
    let q = |i: usize, k: usize| {
        let target = if p.labels[i] == k as i64 { 1.0 } else { 0.0 };
        (values[i * c + k] as f64 - target).abs()
    };
    let class_blocks = c.div_ceil(BLOCK_CLASSES);
    let row_blocks = n.div_ceil(BLOCK_ROWS);
    // kept[rb][cb]: some entry of the block at or above the threshold.
    let kept: Vec<Vec<bool>> = (0..row_blocks)
        .map(|rb| {
            (0..class_blocks)
                .map(|cb| {
                    (rb * BLOCK_ROWS..((rb + 1) * BLOCK_ROWS).min(n)).any(|i| {
                        (cb * BLOCK_CLASSES..((cb + 1) * BLOCK_CLASSES).min(c))
                            .any(|k| q(i, k) >= threshold)
                    })
                })
                .collect()
        })
        .collect();
    let blocks = (row_blocks * class_blocks) as f64;
    let filtered = kept.iter().flatten().filter(|kept| !**kept).count() as f64 / blocks;
    let blocks_per_chunk = chunk_rows / BLOCK_ROWS;
    let mut chunk_columns = 0;
    let mut skipped = 0;
    for chunk in kept.chunks(blocks_per_chunk) {
        for cb in 0..class_blocks {
            chunk_columns += 1;
            skipped += usize::from(chunk.iter().all(|row_block| !row_block[cb]));
        }
    }
    let label_probability = (0..n)
        .map(|i| values[i * c + p.labels[i] as usize] as f64)
        .sum::<f64>()
        / n as f64;
    (
        filtered,
        skipped as f64 / chunk_columns as f64,
        label_probability,
    )
}

fn filtered(threshold: f64, path: LossPath) -> LossOptions {
    LossOptions::new().with_path(path).with_gradient_filter(
        GradientFilter::new()
            .with_threshold(threshold)
            .with_block_rows(BLOCK_ROWS)
            .with_block_classes(BLOCK_CLASSES),
    )
}

/// `gradients(..)`, read back (a sum forces the work on a lazy backend).
fn gradients(p: &Problem, options: &LossOptions) -> HeadGradients {
    let g = p
        .head
        .gradients(p.x.clone(), &p.targets, options)
        .expect("a valid step");
    let forced = g.d_weight.clone().sum() + g.d_input.clone().sum();
    let _ = forced.into_scalar::<f32>();
    g
}

/// Burn's `Linear` + `CrossEntropyLoss`, forward and `backward()`.
fn burn_cross_entropy(p: &Problem) {
    let device = p.x.device().autodiff();
    let weight = p.head.weight().autodiff().require_grad();
    let bias = p.head.bias().expect("a bias").autodiff().require_grad();
    let x = p.x.clone().autodiff().require_grad();
    let logits = x.clone().matmul(weight.clone()) + bias.clone().unsqueeze_dim(0);
    let targets = Tensor::<1, Int>::from_data(p.labels.as_slice(), &device);
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(logits, targets);
    let grads = loss.backward();
    let forced = weight.grad(&grads).expect("dW").sum() + x.grad(&grads).expect("dX").sum();
    let _ = forced.into_scalar::<f32>();
}

/// The best of `repeats` runs after a warm-up.
fn best(repeats: usize, mut run: impl FnMut()) -> Duration {
    run();
    (0..repeats)
        .map(|_| {
            let started = Instant::now();
            run();
            started.elapsed()
        })
        .min()
        .expect("at least one repeat")
}

/// `||a - b||_F / ||b||_F` on the host.
fn relative_error(a: &Tensor<2>, b: &Tensor<2>) -> f64 {
    let host = |t: &Tensor<2>| {
        t.to_data()
            .convert::<f64>()
            .try_into_vec::<f64>()
            .expect("values")
    };
    let (a, b) = (host(a), host(b));
    let diff: f64 = a.iter().zip(&b).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f64 = b.iter().map(|b| b * b).sum();
    (diff / norm).sqrt()
}

struct Args {
    backends: Vec<&'static str>,
    thresholds: Vec<f64>,
    repeats: usize,
}

/// `--backend flex|ndarray` (both by default), `--thresholds T1,T2,..`, `--repeats K`.
fn args() -> Args {
    let mut parsed = Args {
        backends: vec!["flex", "ndarray"],
        thresholds: vec![2f64.powi(-12), 2f64.powi(-10)],
        repeats: 3,
    };
    let flags: Vec<String> = std::env::args().skip(1).collect();
    for pair in flags.chunks(2) {
        let [flag, value] = pair else {
            panic!("{pair:?}: a flag and its value");
        };
        match (flag.as_str(), value.as_str()) {
            ("--backend", "flex") => parsed.backends = vec!["flex"],
            ("--backend", "ndarray") => parsed.backends = vec!["ndarray"],
            ("--thresholds", list) => {
                parsed.thresholds = list
                    .split(',')
                    .map(|t| t.parse().expect("a threshold"))
                    .collect()
            }
            ("--repeats", count) => parsed.repeats = count.parse().expect("a count"),
            _ => panic!("unknown flag {flag} {value}"),
        }
    }
    parsed
}

#[allow(deprecated)]
fn device(name: &str) -> Device {
    if name == "flex" {
        Device::flex()
    } else {
        Device::ndarray()
    }
}

fn main() {
    let args = args();
    let shape @ [n, d, c] = [2048, 512, 32768];
    println!("N = {n}, D = {d}, C = {c}, reduction mean, blocks {BLOCK_ROWS} x {BLOCK_CLASSES}");
    println!(
        "| backend | dtype | softmax | p(label) | threshold | blocks filtered | GEMM columns skipped | step (s) | / unfiltered | dW error | dX error |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for backend in &args.backends {
        let device = device(backend);
        let dtypes: &[DType] = match *backend {
            "flex" => &[DType::F32, DType::BF16],
            _ => &[DType::F32],
        };
        for (softmax, problem) in [
            ("peaked", peaked(shape, &device)),
            ("flat", flat(shape, &device)),
        ] {
            for &dtype in dtypes {
                let p = problem.cast(dtype);
                // The kernel's R (a bf16 batch's buffer is f32), rounded to whole blocks.
                let chunk_rows =
                    (Chunking::new().rows_on(&device, [n, d], c, dtype)).expect("a chunking");
                let chunk_rows = (chunk_rows / BLOCK_ROWS).max(1) * BLOCK_ROWS;
                let label_probability = block_shares(&problem, 1.0, chunk_rows).2;
                let row = |threshold: &str,
                           shares: &str,
                           time: Duration,
                           ratio: f64,
                           errors: &str| {
                    println!(
                        "| {backend} | {dtype:?} | {softmax} | {label_probability:.3} | {threshold} | {shares} | {:.3} | {ratio:.2}x | {errors} |",
                        time.as_secs_f64()
                    );
                };
                let fused = filtered(0.0, LossPath::Fused);
                let reference = gradients(&p, &fused);
                let unfiltered = best(args.repeats, || drop(gradients(&p, &fused)));
                row("off", "- | -", unfiltered, 1.0, "- | -");
                for &threshold in &args.thresholds {
                    let options = filtered(threshold, LossPath::Fused);
                    let time = best(args.repeats, || drop(gradients(&p, &options)));
                    let g = gradients(&p, &options);
                    let (blocks, columns, _) = block_shares(&problem, threshold, chunk_rows);
                    let errors = format!(
                        "{:.2e} | {:.2e}",
                        relative_error(&g.d_weight, &reference.d_weight),
                        relative_error(&g.d_input, &reference.d_input)
                    );
                    row(
                        &format!("{threshold:.3e}"),
                        &format!("{:.1} % | {:.1} %", 100.0 * blocks, 100.0 * columns),
                        time,
                        time.as_secs_f64() / unfiltered.as_secs_f64(),
                        &errors,
                    );
                }
                if dtype == DType::F32 && softmax == "peaked" {
                    let autodiff = filtered(0.0, LossPath::Autodiff);
                    let time = best(1, || drop(gradients(&p, &autodiff)));
                    row(
                        "autodiff path",
                        "- | -",
                        time,
                        time.as_secs_f64() / unfiltered.as_secs_f64(),
                        "- | -",
                    );
                    let time = best(1, || burn_cross_entropy(&p));
                    row(
                        "Burn CE",
                        "- | -",
                        time,
                        time.as_secs_f64() / unfiltered.as_secs_f64(),
                        "- | -",
                    );
                }
            }
        }
    }
}
