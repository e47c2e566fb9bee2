//! Every device this build enables (Flex, NdArray with its feature, wgpu with its feature): the
//! head built on it, `loss` then `.backward()` on every path, the same numbers as Flex.
//!
//! The wgpu device is in the list when the crate is built with `wgpu` (CI:
//! `cargo test --features linear-softmax/wgpu --test devices`).

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::{F32_AGREEMENT, assert_close, backends, loss_backward, problem, uniform};
use linear_softmax::{LossOptions, LossPath, LossReduction};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Every device of this build, by name.
fn devices() -> Vec<(&'static str, Device)> {
    #[allow(unused_mut)]
    let mut devices = backends();
    #[cfg(feature = "wgpu")]
    devices.push((
        "wgpu",
        Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
    ));
    devices
}

#[test]
fn every_device_runs_every_path_with_the_same_numbers() {
    let [n, d, c] = [11, 6, 29];
    let mut rng = StdRng::seed_from_u64(21);
    let upstream = uniform(&mut rng, n, 2.0);
    let on = |device: &Device| {
        let device = device.clone().autodiff();
        let p = problem([n, d, c], true, DType::F32, &device, 13);
        let upstream = Tensor::<1>::from_data(upstream.as_slice(), &device);
        (p, upstream)
    };
    let (flex, flex_upstream) = on(&Device::flex());
    for (name, device) in devices() {
        let (p, upstream) = on(&device);
        for reduction in [LossReduction::Mean, LossReduction::None] {
            let options = LossOptions::new()
                .with_reduction(reduction)
                .with_z_loss(1e-3);
            for path in LossPath::ALL {
                let actual = loss_backward(&p, &p.targets, &options, path, &upstream);
                let expected = loss_backward(
                    &flex,
                    &flex.targets,
                    &options,
                    LossPath::Autodiff,
                    &flex_upstream,
                );
                for ((what, actual), expected) in
                    ["loss", "dW", "db", "dX"].iter().zip(actual).zip(expected)
                {
                    let context = format!("{name} {reduction:?} {path} {what}");
                    assert_close(&context, &actual, &expected, F32_AGREEMENT);
                }
            }
        }
        // Let a GPU finish before the process exits (see tests/wgpu.rs).
        device.sync().expect("the device finishes its queued work");
    }
}
