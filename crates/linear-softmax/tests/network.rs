//! The fused head as the last layer of a real network: a two-hidden-layer MLP (Linear + ReLU
//! twice, then the head) gets the same gradient for every parameter, and Adam follows the same
//! trajectory, whether the head is fused or differentiated by Burn's autograd.

mod common;

use burn::optim::{AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::DType;
use common::mlp::{Mlp, batch};
use common::{
    ADAM_TRAJECTORY_F32, ADAM_TRAJECTORY_F64, F32_NETWORK, F64_AGREEMENT, assert_close, backends,
    host,
};
use linear_softmax::LossPath;

fn network_tolerances() -> [(DType, f64, f64); 2] {
    [
        (DType::F32, F32_NETWORK, ADAM_TRAJECTORY_F32),
        (DType::F64, F64_AGREEMENT, ADAM_TRAJECTORY_F64),
    ]
}

#[test]
fn every_parameter_gets_the_same_gradient_with_the_fused_head() {
    for (backend, device) in backends() {
        for (dtype, tolerance, _) in network_tolerances() {
            let net = Mlp::new(dtype, &device, 1);
            let (x, targets) = batch(dtype, &device, 2);
            let gradients = |path: LossPath| {
                let net = net.clone().train();
                let loss = net.loss(x.clone(), &targets, path);
                let grads = loss.backward();
                (host(&loss.inner()), net.gradients(&grads))
            };
            let (fused_loss, fused) = gradients(LossPath::Fused);
            let (reference_loss, reference) = gradients(LossPath::Autodiff);
            let context = format!("{backend} {dtype:?}");
            assert_close(
                &format!("{context} loss"),
                &fused_loss,
                &reference_loss,
                tolerance,
            );
            assert_eq!(fused.len(), 6);
            for ((name, actual), (_, expected)) in fused.iter().zip(&reference) {
                assert!(
                    expected.iter().any(|g| g.abs() > 1e-6),
                    "{context} {name}: the reference gradient is not trivially zero"
                );
                assert_close(&format!("{context} {name}"), actual, expected, tolerance);
            }
        }
    }
}

#[test]
fn adam_follows_the_same_trajectory_with_the_fused_head() {
    const STEPS: usize = 5;
    const LEARNING_RATE: f64 = 1e-2;
    for (backend, device) in backends() {
        for (dtype, _, tolerance) in network_tolerances() {
            let (x, targets) = batch(dtype, &device, 4);
            let train = |path: LossPath| {
                let mut net = Mlp::new(dtype, &device, 3).train();
                let mut optimizer = AdamConfig::new().init();
                let mut trajectory = Vec::with_capacity(STEPS);
                for _ in 0..STEPS {
                    let loss = net.loss(x.clone(), &targets, path);
                    let grads = GradientsParams::from_grads(loss.backward(), &net);
                    net = optimizer.step(LEARNING_RATE, net, grads);
                    trajectory.push(
                        net.parameters()
                            .into_iter()
                            .map(|(name, value)| (name, host(&value)))
                            .collect::<Vec<_>>(),
                    );
                }
                trajectory
            };
            let fused = train(LossPath::Fused);
            let reference = train(LossPath::Autodiff);
            let initial = Mlp::new(dtype, &device, 3).parameters();
            for (step, (actual, expected)) in fused.iter().zip(&reference).enumerate() {
                for (((name, actual), (_, expected)), (_, initial)) in
                    actual.iter().zip(expected).zip(&initial)
                {
                    let context = format!("{backend} {dtype:?} step {} {name}", step + 1);
                    assert!(expected != &host(initial), "{context}: the parameter moved");
                    assert_close(&context, actual, expected, tolerance);
                }
            }
        }
    }
}
