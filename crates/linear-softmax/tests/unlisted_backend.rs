//! A device whose backend has no fused op: the fused path runs the autodiff path instead of
//! panicking ("Backend not supported for custom op").
//!
//! Built only without this crate's `ndarray` feature, where NdArray (which the test build of
//! burn always has) is such a backend: CI runs it as
//! `cargo test --no-default-features --test unlisted_backend`.
#![cfg(all(feature = "flex", not(feature = "ndarray")))]
#![allow(deprecated)]

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::cases::{Kind, targets};
use common::{
    F32_AGREEMENT, assert_close, assert_gradients_close, loss_backward, problem, uniform,
};
use linear_softmax::diagnostics::{Kernel, kernel_for};
use linear_softmax::{Chunking, Error, LossOptions, LossPath, LossReduction};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The fused path on a backend without the op is the autodiff path: the same operations in the
/// same order, so only a tolerance for safety.
const SAME_OPERATIONS: f64 = F32_AGREEMENT;

#[test]
fn the_fused_path_reports_and_runs_the_autodiff_path() {
    for device in [Device::ndarray(), Device::ndarray().autodiff()] {
        let p = problem([7, 5, 40], true, DType::F32, &device, 11);
        let choice = kernel_for(&p.head, &p.x, &p.targets, &LossOptions::new());
        let choice = choice.expect("the fused path");
        assert_eq!(choice.kernel, Kernel::Autodiff, "{}", choice.reason);
        assert!(choice.reason.contains("no fused"), "{}", choice.reason);

        let options = LossOptions::new().with_label_smoothing(0.1);
        let [fused, reference] = [LossPath::Fused, LossPath::Autodiff].map(|path| {
            let options = options.clone().with_path(path);
            p.head.gradients(p.x.clone(), &p.targets, &options).unwrap()
        });
        assert_gradients_close("ndarray", &fused, &reference, SAME_OPERATIONS);
    }
    // Flex, in the same build, still runs a fused kernel.
    let p = problem([7, 5, 40], true, DType::F32, &Device::flex(), 11);
    let choice = kernel_for(&p.head, &p.x, &p.targets, &LossOptions::new());
    let choice = choice.expect("the fused path");
    assert_eq!(choice.kernel, Kernel::Raw, "{}", choice.reason);
}

/// The route users take: the model, targets and upstream gradient on the model's autodiff
/// device, `head.loss(..)?.backward()`, every target kind, mean and none.
#[test]
fn loss_backward_on_the_model_device_gives_the_autodiff_gradients() {
    let device = Device::ndarray().autodiff();
    let [n, d, c] = [6, 4, 9];
    let p = problem([n, d, c], true, DType::F32, &device, 3);
    let soft = targets(Kind::Probabilities, &p, [n, c], &device, 4);
    let mut rng = StdRng::seed_from_u64(5);
    let upstream = Tensor::<1>::from_data(uniform(&mut rng, n, 2.0).as_slice(), &device);
    for (kind, targets) in [("classes", &p.targets), ("probabilities", &soft)] {
        for reduction in [LossReduction::Mean, LossReduction::None] {
            let options = LossOptions::new().with_reduction(reduction);
            let gradients = |path| loss_backward(&p, targets, &options, path, &upstream);
            let fused = gradients(LossPath::Fused);
            let reference = gradients(LossPath::Autodiff);
            let names = ["loss", "dW", "db", "dX"];
            for ((what, actual), expected) in names.iter().zip(fused).zip(reference) {
                let context = format!("{kind}, {reduction:?}: {what}");
                assert_close(&context, &actual, &expected, SAME_OPERATIONS);
            }
        }
    }
}

#[test]
fn the_fallback_still_checks_its_arguments() {
    let device = Device::ndarray();
    let p = problem([3, 2, 5], false, DType::F32, &device, 1);
    let fused = LossOptions::new().with_path(LossPath::Fused);
    let zero_rows = Chunking::new().with_rows(Some(0));
    let zero_rows = fused.clone().with_chunking(zero_rows);
    let result = p.head.loss(p.x.clone(), &p.targets, &zero_rows);
    assert!(
        matches!(result, Err(Error::InvalidOption { .. })),
        "{result:?}"
    );
    let wrong_width = Tensor::<2>::zeros([3, 4], &device);
    let result = p.head.loss(wrong_width, &p.targets, &fused);
    assert!(
        matches!(result, Err(Error::InputWidthMismatch { .. })),
        "{result:?}"
    );
}
