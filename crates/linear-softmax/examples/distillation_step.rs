//! Step time and peak extra memory of one distillation training step (a student head learning
//! a frozen teacher head's distribution, `Targets::with_teacher`), per path, against the
//! step's four-GEMM floor.
//!
//! ```text
//! cargo run --release --example distillation_step                         # Flex and NdArray
//! cargo run --release --example distillation_step -- --backend flex --sweep 1024,2048,4096
//! ```
//!
//! The LM shape of the benchmarks: `N = 2048` rows, the student's `D = 512` features, the
//! teacher's `D_t = 512`, `C = 32768` classes, f32; the JSD (`beta = 0.5`) at temperature 2
//! mixed half and half with the hard labels. The student's `x`, `W` and `b` are tracked (as
//! when the head sits on a network); the teacher's hidden states and head are constants. One
//! step is: forward, `backward()`, and taking the three gradients out (the manual path:
//! `head.gradients(..)`, no autograd).
//!
//! The floor is the step's four GEMMs on the same backend: the teacher's logits
//! `X_t W_t`, the student's `X W`, `dW = X^T G` and `dX = G W^T` (transposes made contiguous
//! beforehand): `8 N D C` FLOP when `D_t = D`. A counting global allocator records the peak
//! number of bytes allocated during the step above what was allocated before it (the inputs
//! and parameters), so the figure includes the gradients themselves (`dW` alone is 64 MiB).
//! Times are the best of `--repeats` steps after a warm-up step.
//!
//! `--sweep N1,N2,..` runs the fused path alone at each `N`: its memory is `O(R C)`, flat in
//! `N` beyond the gradients (`dX` grows with `N`).

#[path = "peak_memory/allocator.rs"]
mod allocator;
#[path = "peak_memory/batch.rs"]
mod batch;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use allocator::{ALLOCATED, PEAK};
use burn::prelude::*;
use linear_softmax::diagnostics::kernel_for;
use linear_softmax::{
    Chunking, DistillationOptions, LinearSoftmax, LossOptions, LossPath, Targets,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const MIB: f64 = 1024.0 * 1024.0;

/// One way of computing the step.
#[derive(Clone, Copy, Debug)]
enum Method {
    /// `loss(..)?.backward()` with the path, `R` rows per chunk for the fused one (`None`:
    /// the default budget).
    Graph(LossPath, Option<usize>),
    /// `gradients(..)` with `LossPath::Manual`: the hand-derived backward, no autograd.
    Manual,
    /// The four GEMMs, nothing else.
    Floor,
}

impl Method {
    fn name(self) -> String {
        match self {
            Self::Graph(LossPath::Fused, None) => "fused, default R".into(),
            Self::Graph(LossPath::Fused, Some(rows)) => format!("fused, R = {rows}"),
            Self::Graph(path, _) => format!("{path} path"),
            Self::Manual => "manual gradients".into(),
            Self::Floor => "four-GEMM floor".into(),
        }
    }
}

/// A student, a teacher and a batch, on one device.
struct Problem {
    student: LinearSoftmax,
    x: Tensor<2>,
    targets: Targets,
    /// For the floor: `X_t`, `W_t`, and the contiguous `X^T`, `W^T`.
    teacher_hidden: Tensor<2>,
    teacher_weight: Tensor<2>,
    x_t: Tensor<2>,
    w_t: Tensor<2>,
}

impl Problem {
    fn new([n, d, c]: [usize; 3], d_teacher: usize, device: &Device) -> Self {
        let (student, x, labels) = batch::seeded([n, d, c], device);
        let mut rng = StdRng::seed_from_u64(11);
        let mut uniform = |len: usize, scale: f32| -> Vec<f32> {
            (0..len).map(|_| rng.random_range(-scale..scale)).collect()
        };
        let scale = 1.0 / (d_teacher as f32).sqrt();
        let teacher = LinearSoftmax::from_tensors(
            Tensor::from_data(
                TensorData::new(uniform(d_teacher * c, scale), [d_teacher, c]),
                device,
            ),
            Some(Tensor::from_data(
                TensorData::new(uniform(c, scale), [c]),
                device,
            )),
        )
        .expect("valid parameters");
        let hidden = TensorData::new(uniform(n * d_teacher, 1.0), [n, d_teacher]);
        let teacher_hidden = Tensor::<2>::from_data(hidden, device);
        let targets = Targets::from_indices(&labels, c, device)
            .and_then(|labels| labels.with_teacher(&teacher, teacher_hidden.clone()))
            .expect("valid targets");
        let contiguous = |t: Tensor<2>| {
            let [a, b] = t.dims();
            t.transpose().reshape([b, a])
        };
        Self {
            x_t: contiguous(x.clone()),
            w_t: contiguous(student.weight()),
            teacher_weight: teacher.weight(),
            student,
            x,
            targets,
            teacher_hidden,
        }
    }
}

fn options() -> LossOptions {
    LossOptions::new().with_temperature(2.0).with_distillation(
        DistillationOptions::new()
            .with_beta(0.5)
            .with_soft_weight(0.5)
            .with_hard_weight(0.5),
    )
}

/// One step; its gradients are read back (to the host's memory, not counted as a copy: a
/// `[D, C]` sum forces the work on a lazy backend).
fn step(method: Method, p: &Problem) {
    let forced = match method {
        Method::Graph(path, rows) => {
            let options =
                (options().with_path(path)).with_chunking(Chunking::new().with_rows(rows));
            let student = p.student.clone().train();
            let x = p.x.clone().autodiff().require_grad();
            let loss = student
                .loss(x.clone(), &p.targets, &options)
                .expect("a valid step");
            let grads = loss.backward();
            let d_weight = student.weight().grad(&grads).expect("dW");
            let d_bias = student.bias().expect("a bias").grad(&grads).expect("db");
            let d_input = x.grad(&grads).expect("dX");
            d_weight.sum() + d_bias.sum() + d_input.sum()
        }
        Method::Manual => {
            let options = options().with_path(LossPath::Manual);
            let g = p.student.gradients(p.x.clone(), &p.targets, &options);
            let g = g.expect("a valid step");
            g.d_weight.sum() + g.d_bias.expect("a bias").sum() + g.d_input.sum()
        }
        Method::Floor => {
            let teacher = p.teacher_hidden.clone().matmul(p.teacher_weight.clone());
            let logits = p.x.clone().matmul(p.student.weight());
            let d_weight = p.x_t.clone().matmul(logits.clone());
            let d_input = logits.matmul(p.w_t.clone());
            teacher.sum() + d_weight.sum() + d_input.sum()
        }
    };
    let _ = forced.into_scalar::<f32>();
}

/// The best time of `repeats` steps after a warm-up, and the peak extra bytes of the first.
fn measure(method: Method, p: &Problem, repeats: usize) -> (Duration, usize) {
    let before = ALLOCATED.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    step(method, p);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let best = (0..repeats)
        .map(|_| {
            let started = Instant::now();
            step(method, p);
            started.elapsed()
        })
        .min()
        .expect("at least one repeat");
    (best, peak)
}

struct Args {
    backends: Vec<&'static str>,
    shape: [usize; 3],
    d_teacher: usize,
    repeats: usize,
    sweep: Option<Vec<usize>>,
}

fn args() -> Args {
    let mut parsed = Args {
        backends: vec!["ndarray", "flex"],
        shape: [2048, 512, 32768],
        d_teacher: 512,
        repeats: 3,
        sweep: None,
    };
    let numbers = |text: String| -> Vec<usize> {
        text.split(',')
            .map(|v| v.parse().expect("a number"))
            .collect()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--backend" => {
                parsed.backends = match value().as_str() {
                    "flex" => vec!["flex"],
                    "ndarray" => vec!["ndarray"],
                    other => panic!("unknown backend {other}: flex or ndarray"),
                }
            }
            "--shape" => {
                let shape = numbers(value());
                parsed.shape = [shape[0], shape[1], shape[2]];
            }
            "--teacher-width" => parsed.d_teacher = value().parse().expect("a width"),
            "--repeats" => parsed.repeats = value().parse().expect("a count"),
            "--sweep" => parsed.sweep = Some(numbers(value())),
            other => panic!("unknown flag {other}"),
        }
    }
    parsed
}

#[allow(deprecated)]
fn device(name: &str) -> Device {
    match name {
        "flex" => Device::flex(),
        _ => Device::ndarray(),
    }
}

fn main() {
    let args = args();
    let [n, d, c] = args.shape;
    for backend in &args.backends {
        let device = device(backend);
        let rows = match &args.sweep {
            Some(rows) => rows.clone(),
            None => vec![n],
        };
        println!(
            "\n{backend}: D = {d}, D_t = {}, C = {c}, f32, JSD beta 0.5 at temperature 2, half hard labels",
            args.d_teacher
        );
        println!("| N | method | step (s) | / floor | peak extra (MiB) |");
        println!("|---:|---|---:|---:|---:|");
        for n in rows {
            let p = Problem::new([n, d, c], args.d_teacher, &device);
            let choice = kernel_for(&p.student, &p.x, &p.targets, &options()).expect("fused");
            eprintln!("fused kernel: {:?} ({})", choice.kernel, choice.reason);
            let methods = match args.sweep {
                Some(_) => vec![Method::Floor, Method::Graph(LossPath::Fused, None)],
                None => vec![
                    Method::Floor,
                    Method::Graph(LossPath::Fused, None),
                    Method::Graph(LossPath::Fused, Some(256)),
                    Method::Graph(LossPath::Fused, Some(64)),
                    Method::Manual,
                    Method::Graph(LossPath::Autodiff, None),
                ],
            };
            let mut floor = None;
            for method in methods {
                let (time, peak) = measure(method, &p, args.repeats);
                let floor_time = *floor.get_or_insert(time.as_secs_f64());
                println!(
                    "| {n} | {} | {:.3} | {:.2}x | {:.1} |",
                    method.name(),
                    time.as_secs_f64(),
                    time.as_secs_f64() / floor_time,
                    peak as f64 / MIB
                );
            }
        }
    }
}
