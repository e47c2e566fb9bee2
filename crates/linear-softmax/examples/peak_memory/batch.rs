//! The benchmarks' head and batch, from a seeded generator: `x` uniform in `[-1, 1)`, `W` and
//! `b` uniform in `[-1/sqrt(D), 1/sqrt(D))`, label `i` = `7919 i mod C`: the draws of
//! `benches/head.rs` (`scripts/pytorch_bench.py` draws its own, from the same distributions).
//! Shared with `examples/gpu_check.rs`.

use burn::prelude::*;
use linear_softmax::LinearSoftmax;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The head `[D, C]` (with a bias), the input `[N, D]` and the labels, in f32 on `device`.
pub fn seeded([n, d, c]: [usize; 3], device: &Device) -> (LinearSoftmax, Tensor<2>, Vec<i64>) {
    let mut rng = StdRng::seed_from_u64(7);
    let mut uniform = |len: usize, scale: f32| -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-scale..scale)).collect()
    };
    let x = Tensor::<2>::from_data(TensorData::new(uniform(n * d, 1.0), [n, d]), device);
    let scale = 1.0 / (d as f32).sqrt();
    let head = LinearSoftmax::from_tensors(
        Tensor::from_data(TensorData::new(uniform(d * c, scale), [d, c]), device),
        Some(Tensor::from_data(
            TensorData::new(uniform(c, scale), [c]),
            device,
        )),
    )
    .expect("valid parameters");
    let labels = (0..n).map(|i| ((i * 7919) % c) as i64).collect();
    (head, x, labels)
}
