//! Device memory of one training step of the head on wgpu, per path, as the batch grows at a
//! fixed chunk size: the fused op's extra memory is `O(R C)`, flat in `N`; the autodiff path's
//! grows with `N C`.
//!
//! ```text
//! cargo run --features linear-softmax/wgpu --example device_memory
//! ```
//!
//! `D = 256`, `C = 8192`, `N` in {1024, 2048, 4096, 8192}, f32, `x`, `W` and `b` tracked; the
//! fused op with chunks of `R = 256` rows. Each (path, N) runs in a child process with a fresh
//! device. On Mesa's software Vulkan (lavapipe, what CI and these machines have) device memory
//! is the process's own memory, so the step's peak is the growth of the process's peak
//! resident set (`VmHWM` in `/proc/self/status`, Linux) over the step (forward, `backward()`,
//! the three gradients taken out, the device synchronised); the table shows it minus the
//! gradients themselves (`dX`, `dW`, `db`): the extra memory the path needed. (The allocator's
//! own counters report what it holds at the end, not the peak: cubecl frees large pages.) On
//! a real GPU, read the device's own peak instead.

use std::process::Command;

use burn::prelude::*;
use burn::tensor::DeviceKind;
use linear_softmax::{Chunking, LinearSoftmax, LossOptions, LossPath, Targets};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

// The reading of `/proc/self/status` that `peak_memory --rss` uses (its reset is not needed
// here: each measurement has a fresh process).
#[allow(dead_code)]
#[path = "peak_memory/rss.rs"]
mod rss;

const FEATURES: usize = 256;
const CLASSES: usize = 8192;
const CHUNK_ROWS: usize = 256;
const ROWS: [usize; 4] = [1024, 2048, 4096, 8192];
const PATHS: [LossPath; 2] = [LossPath::Autodiff, LossPath::Fused];
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, path, rows] = args.as_slice()
        && flag == "--one"
    {
        let path: LossPath = path.parse().expect("a path's name");
        let rows: usize = rows.parse().expect("a row count");
        println!("{}", extra_bytes(path, rows));
        return;
    }
    println!(
        "extra device memory of one step on wgpu, D = {FEATURES}, C = {CLASSES}, fused R = {CHUNK_ROWS} (MiB)"
    );
    println!(
        "{:>6} {:>10} {:>10} {:>12}",
        "N", "autodiff", "fused", "R * C * 4"
    );
    let exe = std::env::current_exe().expect("this example's path");
    for rows in ROWS {
        let figures = PATHS.map(|path| {
            let output = Command::new(&exe)
                .args(["--one", path.name(), &rows.to_string()])
                .output()
                .expect("the child process runs");
            assert!(output.status.success(), "{path} N={rows}: {output:?}");
            let text = String::from_utf8(output.stdout).expect("utf-8");
            let bytes: f64 = text.trim().lines().last().unwrap().parse().unwrap();
            bytes / MIB
        });
        let chunk = (CHUNK_ROWS * CLASSES * 4) as f64 / MIB;
        println!(
            "{rows:>6} {:>10.1} {:>10.1} {chunk:>12.1}",
            figures[0], figures[1]
        );
    }
}

/// The extra bytes one step of `path` reserves on a fresh device, for `rows` rows.
fn extra_bytes(path: LossPath, rows: usize) -> i64 {
    let plain = Device::wgpu(DeviceKind::DefaultDevice);
    let mut rng = StdRng::seed_from_u64(1);
    let mut uniform = |len: usize, scale: f32| -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-scale..scale)).collect()
    };
    let weight = Tensor::<2>::from_data(
        TensorData::new(uniform(FEATURES * CLASSES, 0.05), [FEATURES, CLASSES]),
        &plain,
    );
    let bias = Tensor::<1>::from_data(TensorData::new(uniform(CLASSES, 0.05), [CLASSES]), &plain);
    let head = LinearSoftmax::from_tensors(weight, Some(bias))
        .expect("a valid head")
        .train();
    let x = Tensor::<2>::from_data(
        TensorData::new(uniform(rows * FEATURES, 1.0), [rows, FEATURES]),
        &plain,
    )
    .autodiff()
    .require_grad();
    let labels: Vec<i64> = (0..rows)
        .map(|_| rng.random_range(0..CLASSES as i64))
        .collect();
    let targets = Targets::from_indices(&labels, CLASSES, &x.device()).expect("labels in range");
    let device = x.device();
    device.sync().expect("the uploads finish");
    let before = rss::high_water().expect("Linux /proc") as i64;

    // The chunking is the fused path's; the autodiff path takes the whole batch at once.
    let options = LossOptions::new()
        .with_path(path)
        .with_chunking(Chunking::new().with_rows(Some(CHUNK_ROWS)));
    let loss = head
        .loss(x.clone(), &targets, &options)
        .expect("a valid batch");
    let grads = loss.backward();
    // Taken out of the graph and kept alive until the measurement.
    let d_weight = head.weight().grad(&grads).expect("dW");
    let d_input = x.grad(&grads).expect("dX");
    let d_bias = head.bias().expect("a bias").grad(&grads).expect("db");
    device.sync().expect("the step finishes");
    let after = rss::high_water().expect("Linux /proc") as i64;
    drop((d_weight, d_input, d_bias));
    let gradient_bytes = ((FEATURES * CLASSES + rows * FEATURES + CLASSES) * 4) as i64;
    after - before - gradient_bytes
}
