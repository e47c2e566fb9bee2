//! The gradient filter's fixture (a head whose softmax is peaked on a frequency-sorted
//! vocabulary), its cases, and the filtered gradients computed on the host from the
//! definition (`GradientFilter`'s doc, docs/MATH.md), for `tests/gradient_filter.rs` and the
//! wgpu suite.

use burn::prelude::*;
use burn::tensor::DType;
use linear_softmax::{
    GradientFilter, HeadGradients, LinearSoftmax, LossOptions, LossReduction, Targets,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::{host, tensor, uniform};

/// f64 paths against the host's f64 reference: sums in other orders, a few ulps of the
/// largest entry times the longest sum (300 classes).
pub const F64_REFERENCE: f64 = 1e-10;
/// The threshold of the tests, between the head's frequent and rare classes.
pub const THRESHOLD: f64 = 1e-3;
/// No block's largest `|q_ik|` lies within this relative distance of the threshold, so that
/// f32 and bf16 roundings (2^-8 relative in bf16, a few times over) decide every block as f64
/// does.
pub const DECISION_MARGIN: f64 = 0.05;
pub const IGNORE: i64 = -100;
/// A seed whose blocks all clear the decision margin (searched from 0: the first).
pub const SEED: u64 = 0;
/// Not a multiple of the 16 rows of a block: the last block of rows is partial.
pub const N: usize = 85;
pub const D: usize = 6;
pub const C: usize = 300;

pub fn filter() -> GradientFilter {
    GradientFilter::new()
        .with_threshold(THRESHOLD)
        .with_block_rows(16)
        .with_block_classes(32)
}

/// A head whose softmax is peaked on a frequency-sorted vocabulary, as a trained language
/// model's: the bias falls by 0.08 per class, so the classes past ~60 are rare; most labels
/// are frequent classes, every 13th a rare one. Every value is exact in bf16.
pub struct Fixture {
    pub x: Vec<f64>,
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
    pub labels: Vec<i64>,
    pub row_weights: Vec<f64>,
    pub upstream: Vec<f64>,
}

pub fn bf16_exact(values: Vec<f64>) -> Vec<f64> {
    values
        .into_iter()
        .map(|v| burn::tensor::bf16::from_f64(v).to_f64())
        .collect()
}

pub fn fixture(seed: u64) -> Fixture {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = bf16_exact(uniform(&mut rng, N * D, 1.0));
    let weight = bf16_exact(uniform(&mut rng, D * C, 0.5));
    let bias = bf16_exact((0..C).map(|k| -0.08 * k as f64).collect());
    let labels = (0..N)
        .map(|i| match i % 13 {
            12 => rng.random_range(200..C as i64),
            _ => rng.random_range(0..30),
        })
        .collect();
    let row_weights = bf16_exact((0..N).map(|_| rng.random_range(0.5..1.5)).collect());
    let upstream = bf16_exact(uniform(&mut rng, N, 1.0));
    Fixture {
        x,
        weight,
        bias,
        labels,
        row_weights,
        upstream,
    }
}

/// One case: its options, and how the rows are weighted, ignored and seeded.
pub struct Case {
    pub name: &'static str,
    pub options: LossOptions,
    /// Row weights, rows 5, 18, ... ignored, and a random upstream gradient (reduction none).
    pub weighted: bool,
}

pub fn cases() -> Vec<Case> {
    let filtered = LossOptions::new().with_gradient_filter(filter());
    vec![
        Case {
            name: "mean (CPU kernel)",
            options: filtered.clone(),
            weighted: false,
        },
        Case {
            name: "none, row weights, ignored rows, upstream (CPU kernel)",
            options: filtered.clone().with_reduction(LossReduction::None),
            weighted: true,
        },
        Case {
            name: "sum, temperature 2 (CPU kernel, folded temperature)",
            options: filtered
                .clone()
                .with_reduction(LossReduction::Sum)
                .with_temperature(2.0),
            weighted: false,
        },
        Case {
            name: "mean, softcap 4 (tensor kernel)",
            options: filtered.clone().with_softcap(Some(4.0)),
            weighted: false,
        },
        Case {
            name: "mean, softcap 4, temperature 2 (tensor kernel, folded temperature)",
            options: filtered.with_softcap(Some(4.0)).with_temperature(2.0),
            weighted: false,
        },
    ]
}

pub fn labels_of(fixture: &Fixture, case: &Case) -> Vec<i64> {
    let mut labels = fixture.labels.clone();
    if case.weighted {
        labels
            .iter_mut()
            .skip(5)
            .step_by(13)
            .for_each(|l| *l = IGNORE);
    }
    labels
}

/// The gradients from the definition, on the host in f64: `dS = f_i q_ik`, the filtered
/// blocks zeroed for `dW` and `dX`, `db` from the whole `dS`; with the unfiltered `dW`, `dX`,
/// the filtered share of blocks and `||E||_F`.
pub struct Reference {
    pub d_weight: Vec<f64>,
    pub d_bias: Vec<f64>,
    pub d_input: Vec<f64>,
    pub full_d_weight: Vec<f64>,
    pub full_d_input: Vec<f64>,
    pub filtered_blocks: f64,
    pub dropped_norm: f64,
    /// The classes filtered in every block of rows: their column of `dW` is 0.
    pub dead_classes: Vec<usize>,
}

pub fn reference(fixture: &Fixture, case: &Case, upstream: bool) -> Reference {
    let options = &case.options;
    let labels = labels_of(fixture, case);
    let (tau, cap) = (options.temperature, options.softcap);
    // f_i: upstream, row weight, v_i, and the mean's 1 / sum_i rho_i v_i.
    let counted = |i: usize| labels[i] != IGNORE;
    let rho = |i: usize| {
        if case.weighted {
            fixture.row_weights[i]
        } else {
            1.0
        }
    };
    let denominator: f64 = (0..N).filter(|&i| counted(i)).map(rho).sum();
    let factor = |i: usize| {
        if !counted(i) {
            return 0.0;
        }
        let g = if upstream && case.weighted {
            fixture.upstream[i]
        } else {
            1.0
        };
        let mean = match options.reduction {
            LossReduction::Mean => 1.0 / denominator,
            _ => 1.0,
        };
        g * rho(i) * mean
    };
    // q_ik = dl_i / dS_ik.
    let mut q = vec![0.0; N * C];
    for i in 0..N {
        let logits: Vec<f64> = (0..C)
            .map(|k| {
                fixture.bias[k]
                    + (0..D)
                        .map(|j| fixture.x[i * D + j] * fixture.weight[j * C + k])
                        .sum::<f64>()
            })
            .collect();
        let tempered: Vec<f64> = logits
            .iter()
            .map(|&s| cap.map_or(s, |c| c * (s / c).tanh()) / tau)
            .collect();
        let max = tempered.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = tempered.iter().map(|t| (t - max).exp()).sum();
        for k in 0..C {
            let a = (tempered[k] - max).exp() / sum;
            let target = if k as i64 == labels[i] { 1.0 } else { 0.0 };
            let chain = cap.map_or(1.0, |c| 1.0 - (logits[k] / c).tanh().powi(2));
            q[i * C + k] = (a - target) / tau * chain;
        }
    }
    let filter = &options.gradient_filter;
    let (br, bc) = (filter.block_rows, filter.block_classes);
    let (row_blocks, class_blocks) = (N.div_ceil(br), C.div_ceil(bc));
    let d_logits: Vec<f64> = (0..N * C).map(|e| factor(e / C) * q[e]).collect();
    let mut kept = d_logits.clone();
    let (mut filtered, mut dropped) = (0, 0.0);
    let mut dead = vec![true; class_blocks];
    for rb in 0..row_blocks {
        for (cb, dead) in dead.iter_mut().enumerate() {
            let entries = || {
                (rb * br..((rb + 1) * br).min(N))
                    .flat_map(|i| (cb * bc..((cb + 1) * bc).min(C)).map(move |k| (i, k)))
            };
            let largest = entries()
                .filter(|&(i, _)| factor(i) != 0.0)
                .map(|(i, k)| q[i * C + k].abs())
                .fold(0.0, f64::max);
            assert!(
                largest == 0.0 || ((largest - THRESHOLD) / THRESHOLD).abs() > DECISION_MARGIN,
                "{}: block ({rb}, {cb})'s largest |q| {largest:e} is too near the threshold",
                case.name
            );
            *dead = *dead && largest < THRESHOLD;
            if largest < THRESHOLD {
                filtered += 1;
                for (i, k) in entries() {
                    dropped += d_logits[i * C + k].powi(2);
                    kept[i * C + k] = 0.0;
                }
            }
        }
    }
    let x = |i: usize, j: usize| fixture.x[i * D + j];
    let w = |j: usize, k: usize| fixture.weight[j * C + k];
    let d_weight = |ds: &[f64]| {
        (0..D * C)
            .map(|e| (0..N).map(|i| x(i, e / C) * ds[i * C + e % C]).sum())
            .collect::<Vec<f64>>()
    };
    let d_input = |ds: &[f64]| {
        (0..N * D)
            .map(|e| (0..C).map(|k| ds[e / D * C + k] * w(e % D, k)).sum())
            .collect::<Vec<f64>>()
    };
    Reference {
        d_weight: d_weight(&kept),
        d_bias: (0..C)
            .map(|k| (0..N).map(|i| d_logits[i * C + k]).sum())
            .collect(),
        d_input: d_input(&kept),
        full_d_weight: d_weight(&d_logits),
        full_d_input: d_input(&d_logits),
        filtered_blocks: filtered as f64 / (row_blocks * class_blocks) as f64,
        dropped_norm: dropped.sqrt(),
        dead_classes: (0..C).filter(|k| dead[k / bc]).collect(),
    }
}

pub fn head(fixture: &Fixture, dtype: DType, device: &Device) -> LinearSoftmax {
    LinearSoftmax::from_tensors(
        tensor(fixture.weight.clone(), [D, C], dtype, device),
        Some(tensor(fixture.bias.clone(), [C], dtype, device)),
    )
    .unwrap()
}

pub fn targets(fixture: &Fixture, case: &Case, dtype: DType, device: &Device) -> Targets {
    let targets =
        Targets::from_indices_with_ignore(&labels_of(fixture, case), C, IGNORE, device).unwrap();
    if case.weighted {
        let rho = tensor(fixture.row_weights.clone(), [N], dtype, device);
        targets.with_row_weights(rho).unwrap()
    } else {
        targets
    }
}

/// `[dW, db, dX]` through `loss(..)?.backward()` on the autodiff device, with the case's
/// upstream gradient.
pub fn backward(
    fixture: &Fixture,
    case: &Case,
    options: &LossOptions,
    dtype: DType,
    device: &Device,
) -> [Vec<f64>; 3] {
    let device = device.clone().autodiff();
    let head = head(fixture, dtype, &device);
    let x = tensor(fixture.x.clone(), [N, D], dtype, &device).require_grad();
    let loss = head
        .loss(x.clone(), &targets(fixture, case, dtype, &device), options)
        .unwrap();
    let loss = if case.weighted {
        loss * tensor(fixture.upstream.clone(), [N], dtype, &device)
    } else {
        loss
    };
    let grads = loss.sum().backward();
    [
        host(&head.weight().grad(&grads).unwrap()),
        host(&head.bias().unwrap().grad(&grads).unwrap()),
        host(&x.grad(&grads).unwrap()),
    ]
}

/// `[dW, db, dX]` from `gradients` (upstream 1) on the plain device.
pub fn gradients(
    fixture: &Fixture,
    case: &Case,
    options: &LossOptions,
    dtype: DType,
    device: &Device,
) -> HeadGradients {
    let head = head(fixture, dtype, device);
    let x = tensor(fixture.x.clone(), [N, D], dtype, device);
    head.gradients(x, &targets(fixture, case, dtype, device), options)
        .unwrap()
}

pub fn as_host(g: &HeadGradients) -> [Vec<f64>; 3] {
    [
        host(&g.d_weight),
        host(g.d_bias.as_ref().unwrap()),
        host(&g.d_input),
    ]
}
