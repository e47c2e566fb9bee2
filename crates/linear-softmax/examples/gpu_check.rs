//! The GPU check: on a GPU backend (wgpu, or CUDA in a build with the `cuda` feature), the
//! LM-head step per path, and the fused op's loss and gradients against the CPU's. One
//! measurement per process, so that `scripts/gpu_check.sh` can read each one's peak device
//! memory from outside (`nvidia-smi`) on a fresh device.
//!
//! ```text
//! gpu_check --backend wgpu|cuda --step fused|autodiff|burn_ce [--shape N,D,C] [--repeats K]
//! gpu_check --backend wgpu|cuda --check
//! ```
//!
//! `--step`: `x`, `W` and `b` tracked, labels on the device; a warm-up step at full size (the
//! GPU backends compile and autotune their kernels per shape on first use), then the best of
//! `K` steps, each synchronised; one JSON line with the time and the growth of what the
//! device's allocator reserved (`Device::memory_pool_usage`; the pools may have released pages
//! by the end, so the script's `nvidia-smi` peak is the figure to trust).
//!
//! `--check`: a batch of 512 rows, `D = 128`, `C = 4096`, with ignored rows, label smoothing
//! and z-loss; the loss and `dW`, `db`, `dX` of the fused path and of the autodiff path on the
//! GPU against the autodiff path in f64 on Flex, as the largest difference over the largest
//! entry; exits 1 when one is above [`GPU_F32`].

use std::time::{Duration, Instant};

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::{DType, DeviceKind};
use linear_softmax::{LinearSoftmax, LossOptions, LossPath, Targets};

#[path = "peak_memory/batch.rs"]
mod batch;

/// f32 on the GPU against f64 on the CPU, relative to the largest entry: f32 sums over
/// `D = 128` and `C = 4096` terms leave ~1e-6, but a GPU matmul may round its f32 inputs to
/// TF32 (10 mantissa bits: 2^-11 ~ 5e-4 relative per product).
const GPU_F32: f64 = 1e-3;
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut backend, mut step, mut check) = (None, None, false);
    let (mut shape, mut repeats) = ([2048, 512, 32768], 3);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--backend" => backend = args.next(),
            "--step" => step = args.next(),
            "--check" => check = true,
            "--shape" => {
                let values: Vec<usize> = args
                    .next()
                    .and_then(|t| t.split(',').map(|v| v.parse().ok()).collect())
                    .expect("--shape N,D,C");
                shape = values.try_into().expect("--shape N,D,C: three numbers");
            }
            "--repeats" => {
                repeats = args
                    .next()
                    .and_then(|r| r.parse().ok())
                    .expect("--repeats K")
            }
            other => {
                panic!("unknown argument {other}: --backend, --step, --check, --shape, --repeats")
            }
        }
    }
    let backend = backend.expect("--backend wgpu|cuda");
    let device = match device(&backend) {
        Ok(device) => device,
        Err(reason) => {
            eprintln!("{backend}: {reason}");
            std::process::exit(2);
        }
    };
    if check {
        std::process::exit(if check_against_cpu(&backend, &device) {
            0
        } else {
            1
        });
    }
    let step = step.expect("--step fused|autodiff|burn_ce, or --check");
    measure(&backend, &device, &step, shape, repeats);
}

fn device(backend: &str) -> Result<Device, String> {
    match backend {
        "wgpu" => Ok(Device::wgpu(DeviceKind::DefaultDevice)),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err("this binary was built without the cuda feature".into()),
        other => Err(format!("unknown backend {other}: wgpu or cuda")),
    }
}

/// The benchmarks' seeded head and batch on `device`, in f32; every 7th row from the fourth
/// ignored when `ignore`.
fn problem(
    shape: [usize; 3],
    device: &Device,
    ignore: bool,
) -> (LinearSoftmax, Tensor<2>, Targets) {
    let (head, x, mut labels) = batch::seeded(shape, device);
    if ignore {
        labels
            .iter_mut()
            .skip(3)
            .step_by(7)
            .for_each(|label| *label = -100);
    }
    let targets = Targets::from_indices_with_ignore(&labels, shape[2], -100, device)
        .expect("labels in range");
    (head, x, targets)
}

/// One step of `step` through `.backward()`; returns the gradients, each read once.
fn train_step(step: &str, head: &LinearSoftmax, x: &Tensor<2>, targets: &Targets) -> f32 {
    let head = head.clone().train();
    let x = x.clone().autodiff().require_grad();
    let loss = match step {
        "fused" => head.loss(x.clone(), targets, &LossOptions::new()),
        "autodiff" => head.loss(
            x.clone(),
            targets,
            &LossOptions::new().with_path(LossPath::Autodiff),
        ),
        "burn_ce" => {
            let logits = head.linear.forward(x.clone());
            let labels = targets.indices().expect("class indices").clone();
            Ok(CrossEntropyLossConfig::new()
                .init(&logits.device())
                .forward(logits, labels))
        }
        other => panic!("unknown step {other}: fused, autodiff or burn_ce"),
    }
    .expect("a valid batch");
    let grads = loss.backward();
    let d_weight = head.weight().grad(&grads).expect("dW");
    let d_input = x.grad(&grads).expect("dX");
    d_weight.slice(s![0..1, 0..1]).into_scalar::<f32>()
        + d_input.slice(s![0..1, 0..1]).into_scalar::<f32>()
}

fn measure(backend: &str, device: &Device, step: &str, shape: [usize; 3], repeats: usize) {
    let (head, x, targets) = problem(shape, device, false);
    let reserved = || {
        device
            .memory_pool_usage()
            .map_or(0, |usage| usage.bytes_reserved)
    };
    device.sync().expect("the uploads finish");
    let before = reserved();
    let _ = train_step(step, &head, &x, &targets);
    device.sync().expect("the warm-up finishes");
    let after = reserved();
    let mut best = Duration::MAX;
    for _ in 0..repeats {
        let start = Instant::now();
        let _ = train_step(step, &head, &x, &targets);
        device.sync().expect("the step finishes");
        best = best.min(start.elapsed());
    }
    let [n, d, c] = shape;
    println!(
        "{{\"backend\": \"{backend}\", \"step\": \"{step}\", \"n\": {n}, \"d\": {d}, \"c\": {c}, \"best_s\": {:.6}, \"reserved_growth_mib\": {:.1}}}",
        best.as_secs_f64(),
        after.saturating_sub(before) as f64 / MIB
    );
}

/// The loss and gradients `[loss, dW, db, dX]` of one path, as host f64.
fn gradients(device: &Device, dtype: DType, path: LossPath) -> [Vec<f64>; 4] {
    let (head, x, targets) = problem([512, 128, 4096], device, true);
    let (head, x) = (head.cast(dtype), x.cast(dtype));
    let options = LossOptions::new()
        .with_label_smoothing(0.1)
        .with_z_loss(1e-4)
        .with_path(path);
    let g = head
        .gradients(x, &targets, &options)
        .expect("a valid batch");
    let read = |data: TensorData| data.convert::<f64>().try_to_vec::<f64>().expect("floats");
    [
        read(g.loss.into_data()),
        read(g.d_weight.into_data()),
        read(g.d_bias.expect("a bias").into_data()),
        read(g.d_input.into_data()),
    ]
}

/// Prints each path's largest relative difference from the CPU's f64; true when all pass.
fn check_against_cpu(backend: &str, device: &Device) -> bool {
    let reference = gradients(&Device::flex(), DType::F64, LossPath::Autodiff);
    let mut all = true;
    for path in [LossPath::Fused, LossPath::Autodiff] {
        let on_gpu = gradients(device, DType::F32, path);
        for (name, (actual, expected)) in ["loss", "dW", "db", "dX"]
            .iter()
            .zip(on_gpu.iter().zip(&reference))
        {
            assert_eq!(actual.len(), expected.len(), "{path} {name}: a shape");
            let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            // `f64::max` drops a NaN: a NaN or infinite entry counts as an infinite difference.
            let difference = actual.iter().zip(expected).fold(0.0f64, |m, (a, e)| {
                let d = (a - e).abs();
                m.max(if d.is_finite() { d } else { f64::INFINITY })
            });
            let relative = difference / scale;
            let pass = relative <= GPU_F32;
            all &= pass;
            println!(
                "{{\"backend\": \"{backend}\", \"check\": \"{path} {name}\", \"relative_difference\": {relative:.3e}, \"tolerance\": {GPU_F32:e}, \"pass\": {pass}}}"
            );
        }
    }
    all
}
