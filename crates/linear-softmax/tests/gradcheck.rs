//! Centred finite differences in f64 confirm the hand-derived (and the autodiff) gradients.

mod common;

use burn::tensor::DType;
use common::{FINITE_DIFFERENCE, backends, problem};
use linear_softmax::gradcheck::{
    DEFAULT_STEP, HostGradients, compare, gradcheck, numerical_gradients,
};
use linear_softmax::{LossOptions, LossPath};

#[test]
fn finite_differences_confirm_both_paths() {
    for (backend, device) in backends() {
        let cases = [
            ([1, 1, 2], true, 0.0),
            ([1, 1, 2], false, 0.05),
            ([7, 31, 10], true, 0.05),
            ([7, 31, 10], false, 0.0),
            ([5, 3, 4], true, 0.0),
            ([5, 3, 4], false, 0.05),
            ([47, 31, 123], true, 0.05),
        ];
        for (seed, (shape, bias, l2)) in cases.into_iter().enumerate() {
            let p = problem(shape, bias, DType::F64, &device, 100 + seed as u64);
            let options = LossOptions::new().with_l2(l2);
            // One set of finite differences (the expensive part) witnesses both paths.
            let numerical =
                numerical_gradients(&p.head, &p.x, &p.targets, &options, DEFAULT_STEP).unwrap();
            for path in [LossPath::Manual, LossPath::Autodiff] {
                let path_options = options.clone().with_path(path);
                let gradients = p.head.gradients(p.x.clone(), &p.targets, &path_options);
                let gradients = gradients.unwrap();
                let report = compare(
                    &HostGradients::from_tensors(&gradients).unwrap(),
                    &numerical,
                );
                assert_eq!(report.d_bias.is_some(), bias);
                assert!(
                    report.max_rel() <= FINITE_DIFFERENCE,
                    "{path} {backend} {shape:?} bias={bias} l2={l2}: {report:?}"
                );
            }
        }
    }
}

#[test]
fn finite_differences_catch_a_wrong_gradient() {
    // The witness must be able to fail: a gradient off by 1% is reported as such.
    let device = burn::prelude::Device::flex();
    let p = problem([7, 5, 3], true, DType::F64, &device, 7);
    let options = LossOptions::new().with_path(LossPath::Manual);
    let mut gradients = p.head.gradients(p.x.clone(), &p.targets, &options).unwrap();
    gradients.d_weight = gradients.d_weight * 1.01;
    let report = gradcheck(&p.head, &p.x, &p.targets, &options, &gradients).unwrap();
    assert!(report.d_weight.max_rel > 1e-3, "{report:?}");
    assert!(report.d_input.max_rel <= FINITE_DIFFERENCE, "{report:?}");
}
