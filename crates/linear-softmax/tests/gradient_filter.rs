//! Gradient filtering (`LossOptions::gradient_filter`): on every path that filters (the manual
//! path's `gradients`, the fused path through `loss(..)?.backward()` and `gradients`, its CPU
//! kernel and its tensor kernel, several chunkings), on both CPU backends, in f64, f32 and
//! bf16, the gradients are those of `dS` with the filtered blocks zeroed, computed here on the
//! host from the definition; the error against the unfiltered gradient is within the
//! documented bound; a threshold of 0, or one below every entry, changes nothing, bit for bit;
//! where Burn's autograd would derive the gradient the filter is refused.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::{BF16_VS_F32, F32_VS_F64, assert_close, backends, host, tensor, uniform};
use linear_softmax::{
    Chunking, Error, GradientFilter, HeadGradients, LinearSoftmax, LossOptions, LossPath,
    LossReduction, Targets,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// f64 paths against the host's f64 reference: sums in other orders, a few ulps of the
/// largest entry times the longest sum (300 classes).
const F64_REFERENCE: f64 = 1e-10;
/// The threshold of the tests, between the head's frequent and rare classes.
const THRESHOLD: f64 = 1e-3;
/// No block's largest `|q_ik|` lies within this relative distance of the threshold, so that
/// f32 and bf16 roundings (2^-8 relative in bf16, a few times over) decide every block as f64
/// does.
const DECISION_MARGIN: f64 = 0.05;
const IGNORE: i64 = -100;
/// The first seed whose blocks all clear the decision margin (0 to 4 each have a block within
/// 5 % of the threshold).
const SEED: u64 = 5;
const N: usize = 80;
const D: usize = 6;
const C: usize = 300;

fn filter() -> GradientFilter {
    GradientFilter::new()
        .with_threshold(THRESHOLD)
        .with_block_rows(16)
        .with_block_classes(32)
}

/// A head whose softmax is peaked on a frequency-sorted vocabulary, as a trained language
/// model's: the bias falls by 0.08 per class, so the classes past ~60 are rare; most labels
/// are frequent classes, every 13th a rare one. Every value is exact in bf16.
struct Fixture {
    x: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    labels: Vec<i64>,
    row_weights: Vec<f64>,
    upstream: Vec<f64>,
}

fn bf16_exact(values: Vec<f64>) -> Vec<f64> {
    values
        .into_iter()
        .map(|v| burn::tensor::bf16::from_f64(v).to_f64())
        .collect()
}

fn fixture(seed: u64) -> Fixture {
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
struct Case {
    name: &'static str,
    options: LossOptions,
    /// Row weights, rows 5, 18, ... ignored, and a random upstream gradient (reduction none).
    weighted: bool,
}

fn cases() -> Vec<Case> {
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
            options: filtered.with_softcap(Some(4.0)),
            weighted: false,
        },
    ]
}

fn labels_of(fixture: &Fixture, case: &Case) -> Vec<i64> {
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
struct Reference {
    d_weight: Vec<f64>,
    d_bias: Vec<f64>,
    d_input: Vec<f64>,
    full_d_weight: Vec<f64>,
    full_d_input: Vec<f64>,
    filtered_blocks: f64,
    dropped_norm: f64,
    /// The classes filtered in every block of rows: their column of `dW` is 0.
    dead_classes: Vec<usize>,
}

fn reference(fixture: &Fixture, case: &Case, upstream: bool) -> Reference {
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

fn head(fixture: &Fixture, dtype: DType, device: &Device) -> LinearSoftmax {
    LinearSoftmax::from_tensors(
        tensor(fixture.weight.clone(), [D, C], dtype, device),
        Some(tensor(fixture.bias.clone(), [C], dtype, device)),
    )
    .unwrap()
}

fn targets(fixture: &Fixture, case: &Case, dtype: DType, device: &Device) -> Targets {
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
fn backward(
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
fn gradients(
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

fn as_host(g: &HeadGradients) -> [Vec<f64>; 3] {
    [
        host(&g.d_weight),
        host(g.d_bias.as_ref().unwrap()),
        host(&g.d_input),
    ]
}

/// Chunk sizes that the filter rounds down to whole blocks (to 16 and 32 rows).
const ROUNDED_CHUNKS: [Option<usize>; 3] = [None, Some(20), Some(40)];
/// Chunk sizes of whole blocks, which the filter leaves as they are.
const WHOLE_BLOCK_CHUNKS: [Option<usize>; 3] = [None, Some(16), Some(48)];

/// The routes that filter: (name, options, through backward?).
fn routes(
    options: &LossOptions,
    chunkings: [Option<usize>; 3],
) -> Vec<(String, LossOptions, bool)> {
    let mut routes = vec![(
        "manual gradients".to_string(),
        options.clone().with_path(LossPath::Manual),
        false,
    )];
    for chunk_rows in chunkings {
        let fused = options
            .clone()
            .with_path(LossPath::Fused)
            .with_chunking(Chunking::new().with_rows(chunk_rows));
        routes.push((
            format!("fused gradients, chunk rows {chunk_rows:?}"),
            fused.clone(),
            false,
        ));
        routes.push((
            format!("fused backward, chunk rows {chunk_rows:?}"),
            fused,
            true,
        ));
    }
    routes
}

#[test]
fn filtered_gradients_are_those_of_ds_with_the_filtered_blocks_zeroed() {
    let fixture = fixture(SEED);
    let mut checked = 0;
    for case in cases() {
        for (backend, device) in backends() {
            for (dtype, tolerance) in [(DType::F64, F64_REFERENCE), (DType::F32, F32_VS_F64)] {
                for (route, options, through_backward) in routes(&case.options, ROUNDED_CHUNKS) {
                    let expected = reference(&fixture, &case, through_backward);
                    let actual = if through_backward {
                        backward(&fixture, &case, &options, dtype, &device)
                    } else {
                        as_host(&gradients(&fixture, &case, &options, dtype, &device))
                    };
                    let what =
                        |name| format!("{}, {backend} {dtype:?}, {route}: {name}", case.name);
                    assert_close(&what("dW"), &actual[0], &expected.d_weight, tolerance);
                    assert_close(&what("db"), &actual[1], &expected.d_bias, tolerance);
                    assert_close(&what("dX"), &actual[2], &expected.d_input, tolerance);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 4 * 7 * 2, "{checked} routes checked");
}

#[test]
fn the_fixture_filters_some_blocks_and_keeps_others_and_the_error_is_within_the_bound() {
    let fixture = fixture(SEED);
    let x_norm = fixture.x.iter().map(|v| v * v).sum::<f64>().sqrt();
    let w_norm = fixture.weight.iter().map(|v| v * v).sum::<f64>().sqrt();
    let distance = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    for case in cases() {
        let r = reference(&fixture, &case, true);
        assert!(
            (0.3..0.95).contains(&r.filtered_blocks),
            "{}: {:.2} of the blocks filtered",
            case.name,
            r.filtered_blocks
        );
        // The documented bound, and the bound in the threshold alone.
        let f_max = match case.options.reduction {
            LossReduction::Mean => 1.0 / N as f64 * 1.5,
            _ => 1.5,
        };
        let blocks = (N.div_ceil(16) * C.div_ceil(32)) as f64 * r.filtered_blocks;
        let threshold_bound = THRESHOLD * f_max * (blocks * 16.0 * 32.0).sqrt();
        assert!(
            r.dropped_norm <= threshold_bound,
            "{}: ||E|| {} > {threshold_bound}",
            case.name,
            r.dropped_norm
        );
        assert!(r.dropped_norm > 0.0, "{}: something is dropped", case.name);
        let dw_error = distance(&r.d_weight, &r.full_d_weight);
        let dx_error = distance(&r.d_input, &r.full_d_input);
        assert!(
            dw_error <= x_norm * r.dropped_norm,
            "{}: dW error {dw_error}",
            case.name
        );
        assert!(
            dx_error <= w_norm * r.dropped_norm,
            "{}: dX error {dx_error}",
            case.name
        );
        // And the library's filtered dW is that far from its own unfiltered one.
        let device = Device::flex();
        let unfiltered = case
            .options
            .clone()
            .with_gradient_filter(GradientFilter::new());
        let full = as_host(&gradients(
            &fixture,
            &case,
            &unfiltered,
            DType::F64,
            &device,
        ));
        let cut = as_host(&gradients(
            &fixture,
            &case,
            &case.options,
            DType::F64,
            &device,
        ));
        let library_error = distance(&cut[0], &full[0]);
        // gradients() seeds the upstream with 1.
        let seeded = reference(&fixture, &case, false);
        let dw_error = distance(&seeded.d_weight, &seeded.full_d_weight);
        assert!(
            (library_error - dw_error).abs() <= 1e-6 * dw_error,
            "{}: the library's filtered dW is {library_error:e} from its unfiltered one, \
             the reference's {dw_error:e}",
            case.name
        );
    }
}

#[test]
fn a_threshold_of_zero_or_below_every_entry_changes_nothing_bit_for_bit() {
    let fixture = fixture(SEED);
    for case in cases().into_iter().filter(|case| !case.weighted) {
        for (backend, device) in backends() {
            for dtype in [DType::F32, DType::F64] {
                for (route, options, _) in routes(&case.options, WHOLE_BLOCK_CHUNKS) {
                    let off = options.clone().with_gradient_filter(GradientFilter::new());
                    let baseline = gradients(&fixture, &case, &off, dtype, &device);
                    for threshold in [0.0, 1e-30] {
                        let on = options
                            .clone()
                            .with_gradient_filter(filter().with_threshold(threshold));
                        let filtered = gradients(&fixture, &case, &on, dtype, &device);
                        let what = format!(
                            "{}, {backend} {dtype:?}, {route}, threshold {threshold}",
                            case.name
                        );
                        assert_eq!(host(&filtered.loss), host(&baseline.loss), "{what}: loss");
                        assert_eq!(as_host(&filtered), as_host(&baseline), "{what}: gradients");
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_heads_filter_the_blocks_the_f64_reference_filters() {
    let fixture = fixture(SEED);
    let device = Device::flex();
    for case in cases() {
        let expected = reference(&fixture, &case, false);
        for (route, options, through_backward) in routes(&case.options, ROUNDED_CHUNKS) {
            if through_backward {
                continue;
            }
            let actual = as_host(&gradients(&fixture, &case, &options, DType::BF16, &device));
            let what = |name| format!("{}, bf16, {route}: {name}", case.name);
            assert_close(&what("dW"), &actual[0], &expected.d_weight, BF16_VS_F32);
            // Sharper than bf16's tolerance: the classes filtered in every row have no dW.
            assert!(
                !expected.dead_classes.is_empty(),
                "{}",
                what("dead classes")
            );
            for &k in &expected.dead_classes {
                let column: Vec<f64> = (0..D).map(|j| actual[0][j * C + k]).collect();
                assert!(
                    column.iter().all(|v| *v == 0.0),
                    "{}: {column:?}",
                    what("dead class")
                );
            }
            assert_close(&what("dX"), &actual[2], &expected.d_input, BF16_VS_F32);
        }
    }
}

#[test]
fn the_filter_is_refused_where_burns_autograd_derives_the_gradient_and_bad_filters_are_refused() {
    let fixture = fixture(SEED);
    let case = &cases()[0];
    let on = case.options.clone();
    let refused = |result: Result<Tensor<1>, Error>, what: &str| match result {
        Err(Error::InvalidOption { name, .. }) => {
            assert_eq!(name, "gradient_filter threshold", "{what}")
        }
        other => panic!("{what}: {:?}", other.map(|loss| loss.dims())),
    };
    let device = Device::flex().autodiff();
    let head = head(&fixture, DType::F32, &device);
    let x = tensor(fixture.x.clone(), [N, D], DType::F32, &device);
    let targets = targets(&fixture, case, DType::F32, &device);
    refused(
        head.loss(
            x.clone(),
            &targets,
            &on.clone().with_path(LossPath::Autodiff),
        ),
        "autodiff path",
    );
    refused(
        head.loss(x.clone(), &targets, &on.clone().with_path(LossPath::Manual)),
        "manual loss on an autodiff device",
    );
    assert!(
        head.loss(x.clone(), &targets, &on).is_ok(),
        "the fused path filters"
    );
    let plain = Device::flex();
    let plain_head = self::head(&fixture, DType::F32, &plain);
    let plain_x = tensor(fixture.x.clone(), [N, D], DType::F32, &plain);
    let plain_targets = self::targets(&fixture, case, DType::F32, &plain);
    let manual = on.clone().with_path(LossPath::Manual);
    assert!(
        plain_head
            .loss(plain_x.clone(), &plain_targets, &manual)
            .is_ok(),
        "manual loss on a plain device: no gradient to filter"
    );
    assert!(
        plain_head
            .gradients(plain_x.clone(), &plain_targets, &manual)
            .is_ok(),
        "manual gradients filter"
    );
    for (bad, name) in [
        (
            filter().with_threshold(f64::NAN),
            "gradient_filter threshold",
        ),
        (filter().with_threshold(-1e-3), "gradient_filter threshold"),
        (
            filter().with_threshold(f64::INFINITY),
            "gradient_filter threshold",
        ),
        (filter().with_block_rows(0), "gradient_filter block_rows"),
        (
            filter().with_block_classes(0),
            "gradient_filter block_classes",
        ),
    ] {
        let options = LossOptions::new().with_gradient_filter(bad);
        match plain_head.gradients(plain_x.clone(), &plain_targets, &options) {
            Err(Error::InvalidOption { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{name}: {:?}", other.map(|g| g.d_weight.dims())),
        }
    }
}
