//! Gradient accumulation: `k` micro-batches, each a mean over the whole optimiser step's
//! denominator (`LossOptions::mean_denominator`, summed from `Targets::mean_denominator`),
//! accumulate exactly the gradients of the whole batch's ordinary mean, on every path, through
//! `loss(..)?.backward()` with the targets on the model's device.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::cases::{IGNORE, weights};
use common::{assert_close, backends, host, problem};
use linear_softmax::{Chunking, Error, LossOptions, LossPath, LossReduction, Targets};

/// f64, summation orders alone (a sum of k gradients against one).
const ACCUMULATED_F64: f64 = 1e-12;

#[test]
fn micro_batches_over_the_step_denominator_give_the_whole_batch_gradient() {
    let [n, d, c] = [13, 5, 7];
    // Micro-batches of unequal sizes and unequal numbers of ignored rows.
    let splits = [0..4, 4..5, 5..13];
    let with_options = [
        ("ignore", LossOptions::new()),
        (
            "ignore + class weights + smoothing + z-loss",
            LossOptions::new()
                .with_weights(Some(weights(c)))
                .with_label_smoothing(0.1)
                .with_z_loss(0.01),
        ),
        (
            "pad tokens + softcap",
            LossOptions::new()
                .with_pad_tokens(Some(vec![2]))
                .with_softcap(Some(2.0)),
        ),
    ];
    for (backend, plain) in backends() {
        let device = plain.autodiff();
        let p = problem([n, d, c], true, DType::F64, &device, 7);
        let labels: Vec<i64> = p
            .labels
            .iter()
            .enumerate()
            .map(|(i, &l)| if i % 4 == 1 { IGNORE } else { l })
            .collect();
        let targets_of = |rows: std::ops::Range<usize>| {
            Targets::from_indices_with_ignore(&labels[rows], c, IGNORE, &device).unwrap()
        };
        for (name, options) in &with_options {
            for path in LossPath::ALL {
                let options = options
                    .clone()
                    .with_path(path)
                    .with_chunking(Chunking::new().with_rows(Some(3)));
                let context = format!("{name}: {path} {backend}");
                let gradients = |x: Tensor<2>, targets: &Targets, options: &LossOptions| {
                    let x = x.require_grad();
                    let head = p.head.clone();
                    let grads = head.loss(x.clone(), targets, options).unwrap().backward();
                    [
                        host(&head.weight().grad(&grads).unwrap()),
                        host(&head.bias().unwrap().grad(&grads).unwrap()),
                        host(&x.grad(&grads).unwrap()),
                    ]
                };
                let [whole_w, whole_b, whole_x] =
                    gradients(p.x.clone(), &targets_of(0..n), &options);

                let total: f64 = splits
                    .iter()
                    .map(|rows| targets_of(rows.clone()).mean_denominator(&options).unwrap())
                    .sum();
                assert_eq!(
                    total,
                    targets_of(0..n).mean_denominator(&options).unwrap(),
                    "{context}"
                );
                let step = options.clone().with_mean_denominator(Some(total));
                let (mut sum_w, mut sum_b) = (vec![0.0; d * c], vec![0.0; c]);
                let mut micro_x = Vec::new();
                for rows in &splits {
                    let x = p.x.clone().slice([rows.clone()]);
                    let [w, b, x] = gradients(x, &targets_of(rows.clone()), &step);
                    sum_w.iter_mut().zip(w).for_each(|(s, g)| *s += g);
                    sum_b.iter_mut().zip(b).for_each(|(s, g)| *s += g);
                    micro_x.extend(x);
                }
                assert_close(&format!("{context} dW"), &sum_w, &whole_w, ACCUMULATED_F64);
                assert_close(&format!("{context} db"), &sum_b, &whole_b, ACCUMULATED_F64);
                assert_close(
                    &format!("{context} dX"),
                    &micro_x,
                    &whole_x,
                    ACCUMULATED_F64,
                );
            }
        }
    }
}

#[test]
fn a_given_denominator_must_be_positive_and_with_reduction_mean() {
    let device = Device::flex();
    let p = problem([3, 2, 4], true, DType::F32, &device, 1);
    for (options, why) in [
        (LossOptions::new().with_mean_denominator(Some(0.0)), "> 0"),
        (LossOptions::new().with_mean_denominator(Some(-2.0)), "> 0"),
        (
            LossOptions::new().with_mean_denominator(Some(f64::NAN)),
            "> 0",
        ),
        (
            LossOptions::new()
                .with_mean_denominator(Some(4.0))
                .with_reduction(LossReduction::Sum),
            "reduction sum or none",
        ),
        (
            LossOptions::new()
                .with_mean_denominator(Some(4.0))
                .with_reduction(LossReduction::None),
            "reduction sum or none",
        ),
    ] {
        for path in LossPath::ALL {
            let options = options.clone().with_path(path);
            let error = p.head.loss(p.x.clone(), &p.targets, &options).unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::InvalidOption {
                        name: "mean_denominator",
                        ..
                    }
                ),
                "{path}: {error:?}"
            );
            assert!(error.to_string().contains(why), "{path}: {error}");
        }
    }
}

/// f16 cannot hold a step's token count above 65504: refused, not turned into infinity (and a
/// loss of 0); f32 takes it.
#[test]
fn a_denominator_beyond_f16_is_refused_in_f16() {
    let device = Device::flex();
    let options = LossOptions::new().with_mean_denominator(Some(100_000.0));
    for path in LossPath::ALL {
        let options = options.clone().with_path(path);
        let p = problem([3, 2, 4], true, DType::F16, &device, 1);
        let error = p.head.loss(p.x.clone(), &p.targets, &options).unwrap_err();
        assert!(error.to_string().contains("65504"), "{path}: {error}");
        let p = problem([3, 2, 4], true, DType::F32, &device, 1);
        let loss = p.head.loss(p.x.clone(), &p.targets, &options).unwrap();
        let loss = host(&loss)[0];
        assert!(loss > 0.0 && loss.is_finite(), "{path}: {loss}");
    }
}
