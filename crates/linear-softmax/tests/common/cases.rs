//! The loss options and target kinds every path is checked with, and each path's loss and
//! gradients for one of them.

use burn::prelude::*;
use linear_softmax::{Chunking, HeadGradients, LossOptions, LossPath, LossReduction, Targets};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::Problem;

/// PyTorch's default ignore label.
pub const IGNORE: i64 = -100;

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Classes,
    /// Rows 1 and 4 carry the ignore label.
    Ignored,
    /// Every row carries the ignore label.
    AllIgnored,
    Probabilities,
    MultiHot,
    /// [`Kind::Ignored`] with per-row loss weights in `[0, 2)`, two of them 0.
    RowWeighted,
    /// [`Kind::Probabilities`] with the same kind of row weights.
    RowWeightedProbabilities,
}

/// Row weights in `[0, 2)` for `n` rows, rows 0 and `n - 2` weighing 0 (`n >= 2`).
pub fn row_weights(n: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    (0..n)
        .map(|i| {
            let rho: f64 = rng.random_range(0.0..2.0);
            if i == 0 || i + 2 == n { 0.0 } else { rho }
        })
        .collect()
}

pub fn targets(kind: Kind, p: &Problem, [n, c]: [usize; 2], device: &Device, seed: u64) -> Targets {
    let mut rng = StdRng::seed_from_u64(seed);
    match kind {
        Kind::Classes => p.targets.clone(),
        Kind::RowWeighted | Kind::RowWeightedProbabilities => {
            let plain = match kind {
                Kind::RowWeighted => Kind::Ignored,
                _ => Kind::Probabilities,
            };
            let rho = row_weights(n, seed);
            let rho = Tensor::<1>::from_data(TensorData::new(rho, [n]), device);
            targets(plain, p, [n, c], device, seed)
                .with_row_weights(rho)
                .unwrap()
        }
        Kind::Ignored | Kind::AllIgnored => {
            let labels: Vec<i64> = p
                .labels
                .iter()
                .enumerate()
                .map(|(i, &l)| {
                    if matches!(kind, Kind::AllIgnored) || i == 1 || i == 4 {
                        IGNORE
                    } else {
                        l
                    }
                })
                .collect();
            Targets::from_indices_with_ignore(&labels, c, IGNORE, device).unwrap()
        }
        Kind::Probabilities => {
            let mut values: Vec<f64> = (0..n * c).map(|_| rng.random_range(0.0..1.0)).collect();
            for row in values.chunks_mut(c) {
                let sum: f64 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= sum);
            }
            Targets::from_probabilities(&values, [n, c], device).unwrap()
        }
        Kind::MultiHot => {
            let mut hot: Vec<bool> = (0..n * c).map(|_| rng.random_range(0..3) == 0).collect();
            for (row, label) in p.labels.iter().enumerate() {
                hot[row * c + *label as usize] = true;
            }
            Targets::from_multi_hot(&hot, [n, c], device).unwrap()
        }
    }
}

pub fn weights(c: usize) -> Vec<f64> {
    (0..c).map(|k| 0.25 + (k % 4) as f64 * 0.5).collect()
}

/// The options and target kinds checked, by name.
pub fn cases(c: usize) -> Vec<(&'static str, LossOptions, Kind)> {
    let base = LossOptions::new;
    vec![
        (
            "reduction sum",
            base().with_reduction(LossReduction::Sum),
            Kind::Classes,
        ),
        (
            "reduction none",
            base().with_reduction(LossReduction::None),
            Kind::Classes,
        ),
        ("ignore_index", base(), Kind::Ignored),
        (
            "pad_tokens",
            base().with_pad_tokens(Some(vec![1])),
            Kind::Classes,
        ),
        (
            "class weights",
            base().with_weights(Some(weights(c))),
            Kind::Classes,
        ),
        (
            "label smoothing",
            base().with_label_smoothing(0.1),
            Kind::Classes,
        ),
        (
            "weights + ignore + smoothing",
            base()
                .with_weights(Some(weights(c)))
                .with_label_smoothing(0.2),
            Kind::Ignored,
        ),
        (
            "weights + ignore + smoothing, sum",
            base()
                .with_weights(Some(weights(c)))
                .with_label_smoothing(0.2)
                .with_reduction(LossReduction::Sum),
            Kind::Ignored,
        ),
        ("probabilities", base(), Kind::Probabilities),
        (
            "probabilities + weights + smoothing",
            base()
                .with_weights(Some(weights(c)))
                .with_label_smoothing(0.3),
            Kind::Probabilities,
        ),
        ("multi-label", base(), Kind::MultiHot),
        (
            "reduction none + ignore",
            base().with_reduction(LossReduction::None),
            Kind::Ignored,
        ),
        ("z-loss", base().with_z_loss(0.01), Kind::Classes),
        ("softcap", base().with_softcap(Some(1.5)), Kind::Classes),
        (
            "softcap + z-loss + ignore",
            base().with_softcap(Some(1.5)).with_z_loss(0.05),
            Kind::Ignored,
        ),
        (
            "probabilities + z-loss + softcap, none",
            base()
                .with_z_loss(0.05)
                .with_softcap(Some(2.0))
                .with_reduction(LossReduction::None),
            Kind::Probabilities,
        ),
        (
            "l2 + sum",
            base().with_l2(0.05).with_reduction(LossReduction::Sum),
            Kind::Classes,
        ),
        ("all rows ignored", base(), Kind::AllIgnored),
        ("row weights + ignore", base(), Kind::RowWeighted),
        (
            "row weights + class weights + smoothing + z-loss, sum",
            base()
                .with_weights(Some(weights(c)))
                .with_label_smoothing(0.1)
                .with_z_loss(0.02)
                .with_reduction(LossReduction::Sum),
            Kind::RowWeighted,
        ),
        (
            "row weights, none",
            base().with_reduction(LossReduction::None),
            Kind::RowWeighted,
        ),
        (
            "probabilities + row weights + smoothing",
            base().with_label_smoothing(0.1),
            Kind::RowWeightedProbabilities,
        ),
        (
            "mean over a given denominator + weights + ignore",
            base()
                .with_weights(Some(weights(c)))
                .with_mean_denominator(Some(11.5)),
            Kind::Ignored,
        ),
        (
            "probabilities, mean over a given denominator",
            base().with_mean_denominator(Some(2.5)),
            Kind::Probabilities,
        ),
        ("temperature", base().with_temperature(0.7), Kind::Classes),
        (
            "temperature + softcap + z-loss + ignore",
            base()
                .with_temperature(2.5)
                .with_softcap(Some(1.5))
                .with_z_loss(0.05),
            Kind::Ignored,
        ),
        (
            "entropy bonus",
            base().with_entropy_bonus(0.3),
            Kind::Classes,
        ),
        (
            "entropy bonus + temperature + smoothing + ignore, none",
            base()
                .with_entropy_bonus(0.5)
                .with_temperature(1.5)
                .with_label_smoothing(0.1)
                .with_reduction(LossReduction::None),
            Kind::Ignored,
        ),
        (
            "probabilities + entropy bonus + softcap + row weights",
            base().with_entropy_bonus(0.2).with_softcap(Some(2.0)),
            Kind::RowWeightedProbabilities,
        ),
        (
            "next-token shift 2 + ignore + row weights",
            base().with_shift(2),
            Kind::RowWeighted,
        ),
        (
            "next-token shift 1 + smoothing, none",
            base()
                .with_shift(1)
                .with_label_smoothing(0.1)
                .with_reduction(LossReduction::None),
            Kind::Classes,
        ),
        (
            "probabilities + temperature + row weights, none",
            base()
                .with_temperature(1.7)
                .with_reduction(LossReduction::None),
            Kind::RowWeightedProbabilities,
        ),
    ]
}

/// Chunks of 3 rows: several chunks, the last one short, for every shape tested here.
pub fn small_chunks() -> Chunking {
    Chunking::new().with_rows(Some(3))
}

/// The fused path with [`small_chunks`]: `options` with the path and the chunking set.
fn fused_options(options: &LossOptions) -> LossOptions {
    options
        .clone()
        .with_path(LossPath::Fused)
        .with_chunking(small_chunks())
}

/// The gradients `.backward()` gives through the fused op (reduction none: recomputed in the
/// backward pass with the per-row upstream gradient).
pub fn fused_graph(p: &Problem, targets: &Targets, options: &LossOptions) -> HeadGradients {
    let head = p.head.clone().train();
    let x = p.x.clone().detach().autodiff().require_grad();
    let output = head
        .loss_output(x.clone(), targets, &fused_options(options))
        .unwrap();
    let grads = output.loss.clone().sum().backward();
    HeadGradients {
        d_weight: head.linear.weight.grad(&grads).unwrap(),
        d_bias: head.linear.bias.as_ref().map(|b| b.grad(&grads).unwrap()),
        d_input: x.grad(&grads).unwrap(),
        loss: output.loss.inner(),
        log_sum_exp: output.log_sum_exp.inner(),
        stats: output.stats,
    }
}

/// Every path's loss and gradients, the autodiff reference last.
pub fn all_paths(
    p: &Problem,
    targets: &Targets,
    options: &LossOptions,
) -> Vec<(&'static str, HeadGradients)> {
    let fused = fused_options(options);
    let fused = p.head.gradients(p.x.clone(), targets, &fused).unwrap();
    let [manual, autodiff] = both_paths(p, targets, options);
    vec![
        manual,
        ("fused", fused),
        ("fused graph", fused_graph(p, targets, options)),
        autodiff,
    ]
}

pub fn both_paths(
    p: &Problem,
    targets: &Targets,
    options: &LossOptions,
) -> [(&'static str, HeadGradients); 2] {
    [LossPath::Manual, LossPath::Autodiff].map(|path| {
        let options = options.clone().with_path(path);
        let gradients = p.head.gradients(p.x.clone(), targets, &options).unwrap();
        (path.name(), gradients)
    })
}
