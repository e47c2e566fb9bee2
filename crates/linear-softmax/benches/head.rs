//! One training step of the head, every path side by side (criterion).
//!
//! ```text
//! cargo bench --bench head                                          # every group, NdArray
//! BENCH_BACKEND=flex cargo bench --bench head -- lm_head             # one group, Flex
//! BENCH_BACKEND=both cargo bench --bench head -- classifier
//! BENCH_BACKEND=flex cargo bench --bench head -- lm_head            # f32 and bf16 side by side
//! ```
//!
//! Groups: `classifier` (N = 256, D = 784, C = 10), `lm_head` (N = 2048, D = 512, C = 32768),
//! `sweep_c` (N = 2048, D = 512, C in {4096, 32768, 131072}) and `sweep_n` (D = 512, C = 32768,
//! N in {512, 2048, 8192}), in f32; `lm_head_bf16`: the LM head with bf16 inputs and parameters,
//! on the backends that have bf16 (Flex). Paths (`LossOptions::path`): our `autodiff` path, the
//! `manual` (hand-derived) gradients, the `fused` op (default chunking), Burn's `Linear` +
//! `CrossEntropyLoss` (`burn_ce`), all through `.backward()` except `manual` (`head.gradients`,
//! which returns its gradients directly), `fused_stats` (the fused step through
//! `head.loss_output` with `LossOptions::stats`, which also returns the predictions and the
//! correct count: its cost over `fused` is the statistics'), `fused_rl` (the fused step with
//! per-token row weights and the entropy bonus, what RL fine-tuning adds: its cost over
//! `fused` is theirs), and the `floor`: the step's three
//! GEMMs `S = XW`, `X^T G`, `G W^T` on the same backend (transposes made contiguous before
//! timing). The LM-sized steps take about a second each: those groups take ten
//! single-iteration samples.

use std::time::Duration;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::DType;
use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use linear_softmax::{LinearSoftmax, LossOptions, LossPath, Targets, check_dtype};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

#[derive(Clone, Copy, Debug)]
enum Step {
    Autodiff,
    Manual,
    Fused,
    FusedStats,
    FusedRl,
    BurnCe,
    Floor,
}

const STEPS: [Step; 7] = [
    Step::Autodiff,
    Step::Manual,
    Step::Fused,
    Step::FusedStats,
    Step::FusedRl,
    Step::BurnCe,
    Step::Floor,
];

impl Step {
    fn name(self) -> &'static str {
        match self {
            Self::Autodiff => "autodiff",
            Self::Manual => "manual",
            Self::Fused => "fused",
            Self::FusedStats => "fused_stats",
            Self::FusedRl => "fused_rl",
            Self::BurnCe => "burn_ce",
            Self::Floor => "floor",
        }
    }
}

/// A head, a batch and the contiguous transposes the floor uses.
struct Problem {
    head: LinearSoftmax,
    x: Tensor<2>,
    targets: Targets,
    /// The same targets with row weights in `[0, 2)`.
    weighted_targets: Targets,
    x_t: Tensor<2>,
    w_t: Tensor<2>,
}

fn problem([n, d, c]: [usize; 3], device: &Device, dtype: DType) -> Problem {
    let mut rng = StdRng::seed_from_u64(7);
    let mut uniform = |len: usize, scale: f32| -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-scale..scale)).collect()
    };
    let x = Tensor::<2>::from_data(TensorData::new(uniform(n * d, 1.0), [n, d]), device);
    let scale = 1.0 / (d as f32).sqrt();
    let weight = Tensor::<2>::from_data(TensorData::new(uniform(d * c, scale), [d, c]), device);
    let bias = Tensor::<1>::from_data(TensorData::new(uniform(c, scale), [c]), device);
    let (x, weight, bias) = (x.cast(dtype), weight.cast(dtype), bias.cast(dtype));
    let labels: Vec<i64> = (0..n).map(|i| ((i * 7919) % c) as i64).collect();
    let row_weights =
        Tensor::<1>::from_data(TensorData::new(uniform(n, 1.0), [n]), device).abs() * 2.0;
    // Reshaping a transposed view to its own shape makes it contiguous.
    let x_t = x.clone().transpose().reshape([d, n]);
    let w_t = weight.clone().transpose().reshape([c, d]);
    Problem {
        head: LinearSoftmax::from_tensors(weight, Some(bias)).expect("valid parameters"),
        targets: Targets::from_indices(&labels, c, device).expect("labels in range"),
        weighted_targets: Targets::from_indices(&labels, c, device)
            .and_then(|targets| targets.with_row_weights(row_weights))
            .expect("labels in range, weights >= 0"),
        x,
        x_t,
        w_t,
    }
}

/// One training step; returns one value of each gradient so nothing is optimised away.
fn step(kind: Step, p: &Problem) -> f32 {
    let options = LossOptions::new();
    let first = |t: Tensor<2>| t.slice(s![0..1, 0..1]).into_scalar::<f32>();
    match kind {
        Step::Floor => {
            let logits = p.x.clone().matmul(p.head.weight());
            let d_weight = p.x_t.clone().matmul(logits.clone());
            let d_input = logits.matmul(p.w_t.clone());
            first(d_weight) + first(d_input)
        }
        Step::Manual => {
            let options = options.with_path(LossPath::Manual);
            let g = p
                .head
                .gradients(p.x.clone(), &p.targets, &options)
                .expect("a valid batch");
            first(g.d_weight) + first(g.d_input)
        }
        Step::Autodiff | Step::Fused | Step::FusedStats | Step::FusedRl | Step::BurnCe => {
            let head = p.head.clone().train();
            let x = p.x.clone().autodiff().require_grad();
            let mut correct = 0.0;
            let loss = match kind {
                Step::Autodiff => {
                    let options = options.with_path(LossPath::Autodiff);
                    head.loss(x.clone(), &p.targets, &options)
                }
                Step::Fused => head.loss(x.clone(), &p.targets, &options),
                Step::FusedRl => {
                    let options = options.with_entropy_bonus(0.01);
                    head.loss(x.clone(), &p.weighted_targets, &options)
                }
                Step::FusedStats => head
                    .loss_output(x.clone(), &p.targets, &options.with_stats(true))
                    .map(|output| {
                        let stats = output.stats.expect("options.stats asks for them");
                        correct = stats.correct.into_scalar::<i64>() as f32;
                        output.loss
                    }),
                _ => {
                    let logits = head.linear.forward(x.clone());
                    let labels = p.targets.indices().expect("class targets").clone();
                    Ok(CrossEntropyLossConfig::new()
                        .init(&logits.device())
                        .forward(logits, labels.to_device(&x.device())))
                }
            }
            .expect("a valid batch");
            let mut grads = loss.backward();
            let d_weight = head
                .linear
                .weight
                .grad_remove(&mut grads)
                .expect("W is tracked");
            let d_input = x.grad_remove(&mut grads).expect("x is tracked");
            first(d_weight) + first(d_input) + correct
        }
    }
}

fn backends() -> Vec<(&'static str, Device)> {
    #[allow(deprecated)]
    let all = [("ndarray", Device::ndarray()), ("flex", Device::flex())];
    let wanted = std::env::var("BENCH_BACKEND").unwrap_or_else(|_| "ndarray".into());
    all.into_iter()
        .filter(|(name, _)| wanted == "both" || wanted == *name)
        .collect()
}

/// Benchmarks every path on each shape of a group, in `dtype`.
fn group(c: &mut Criterion, name: &str, shapes: &[[usize; 3]], large: bool, dtype: DType) {
    for (backend, device) in backends() {
        if check_dtype(&device, dtype).is_err() {
            continue;
        }
        let mut group = c.benchmark_group(format!("{name}/{backend}"));
        if large {
            group
                .sample_size(10)
                .sampling_mode(SamplingMode::Flat)
                .warm_up_time(Duration::from_millis(1))
                .measurement_time(Duration::from_secs(1));
        } else {
            group.measurement_time(Duration::from_secs(3));
        }
        for &shape in shapes {
            let p = problem(shape, &device, dtype);
            let [n, d, classes] = shape;
            for kind in STEPS {
                let id = BenchmarkId::new(kind.name(), format!("N{n}_D{d}_C{classes}"));
                group.bench_function(id, |b| b.iter(|| step(kind, &p)));
            }
        }
        group.finish();
    }
}

fn classifier(c: &mut Criterion) {
    group(c, "classifier", &[[256, 784, 10]], false, DType::F32);
}

fn lm_head(c: &mut Criterion) {
    group(c, "lm_head", &[[2048, 512, 32768]], true, DType::F32);
}

fn lm_head_bf16(c: &mut Criterion) {
    group(c, "lm_head_bf16", &[[2048, 512, 32768]], true, DType::BF16);
}

fn sweep_c(c: &mut Criterion) {
    group(
        c,
        "sweep_c",
        &[[2048, 512, 4096], [2048, 512, 131072]],
        true,
        DType::F32,
    );
}

fn sweep_n(c: &mut Criterion) {
    group(
        c,
        "sweep_n",
        &[[512, 512, 32768], [8192, 512, 32768]],
        true,
        DType::F32,
    );
}

criterion_group!(benches, classifier, lm_head, lm_head_bf16, sweep_c, sweep_n);
criterion_main!(benches);
