//! Step time and peak extra memory of one training step of an LM-sized head, per path.
//!
//! ```text
//! cargo run --release --example peak_memory
//! ```
//!
//! `N = 2048` rows, `D = 512` features, `C = 32768` classes, f32, with `x`, `W` and `b` all
//! tracked (as when the head sits on top of a network). One step is: forward, `backward()`,
//! and taking the three gradients out. A counting global allocator records the peak number of
//! bytes allocated during the step above what was allocated before it (the inputs and
//! parameters), so the figure includes the gradients themselves (`dW` alone is 64 MiB).
//!
//! Paths: ours through Burn's autograd ([`Path::Autodiff`]), Burn's own
//! `Linear` + `CrossEntropyLoss`, and the fused op at a few chunk sizes `R`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use linear_softmax::{Chunking, LinearSoftmax, LossOptions, Path, Targets, fused};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The system allocator, counting the bytes currently allocated and their peak.
struct CountingAllocator;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; the counters are only bookkeeping.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            record_allocation(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            record_allocation(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_pointer = unsafe { System.realloc(pointer, layout, new_size) };
        if !new_pointer.is_null() {
            ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
            record_allocation(new_size);
        }
        new_pointer
    }
}

fn record_allocation(size: usize) {
    let now = ALLOCATED.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const N: usize = 2048;
const D: usize = 512;
const C: usize = 32768;
const MIB: f64 = 1024.0 * 1024.0;

/// One way of computing the loss of a training step.
#[derive(Clone, Copy, Debug)]
enum Method {
    /// `LinearSoftmax::loss_with_path(.., Path::Autodiff)`.
    OurAutodiff,
    /// `Linear::forward` + `burn::nn::loss::CrossEntropyLoss`.
    BurnCrossEntropy,
    /// The fused op with `R` rows per chunk (`None`: the default from the memory budget).
    Fused(Option<usize>),
}

impl Method {
    fn name(self) -> String {
        match self {
            Self::OurAutodiff => "ours, autodiff path".into(),
            Self::BurnCrossEntropy => "burn Linear + CrossEntropyLoss".into(),
            Self::Fused(None) => {
                let rows = Chunking::new()
                    .rows_for(N, C, burn::tensor::DType::F32)
                    .expect("a valid default");
                format!("fused, default R = {rows}")
            }
            Self::Fused(Some(rows)) => format!("fused, R = {rows}"),
        }
    }

    fn loss(self, head: &LinearSoftmax, x: Tensor<2>, targets: &Targets) -> Tensor<1> {
        let options = LossOptions::new();
        match self {
            Self::OurAutodiff => head.loss_with_path(x, targets, &options, Path::Autodiff),
            Self::BurnCrossEntropy => {
                let logits = head.linear.forward(x);
                let labels = targets
                    .indices()
                    .expect("class-index targets")
                    .clone()
                    .to_device(&logits.device());
                Ok(CrossEntropyLossConfig::new()
                    .init(&logits.device())
                    .forward(logits, labels))
            }
            Self::Fused(rows) => fused::loss_with_chunking(
                head,
                x,
                targets,
                &options,
                &Chunking::new().with_rows(rows),
            ),
        }
        .expect("a valid batch")
    }
}

struct Measurement {
    time: Duration,
    peak_extra: usize,
    loss: f64,
}

/// One training step: loss, backward, and the gradients of `x`, `W` and `b` taken out.
fn step(method: Method, head: &LinearSoftmax, x: &Tensor<2>, targets: &Targets) -> Measurement {
    let before = ALLOCATED.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let start = Instant::now();

    let head = head.clone().train();
    let x = x.clone().autodiff().require_grad();
    let loss = method.loss(&head, x.clone(), targets);
    let mut grads = loss.backward();
    let d_weight = head
        .linear
        .weight
        .grad_remove(&mut grads)
        .expect("W is tracked");
    let d_bias = head
        .linear
        .bias
        .as_ref()
        .and_then(|bias| bias.grad_remove(&mut grads));
    let d_input = x.grad_remove(&mut grads).expect("x is tracked");
    // Reading one value of each gradient waits for any lazy work (none on these CPU backends).
    let loss = loss.inner().into_scalar::<f32>() as f64;
    let _ = (
        d_weight.slice(s![0..1, 0..1]).into_scalar::<f32>(),
        d_bias.map(|d_bias| d_bias.slice(s![0..1]).into_scalar::<f32>()),
        d_input.slice(s![0..1, 0..1]).into_scalar::<f32>(),
    );

    let time = start.elapsed();
    Measurement {
        time,
        peak_extra: PEAK.load(Ordering::Relaxed).saturating_sub(before),
        loss,
    }
}

fn main() {
    let methods = [
        Method::OurAutodiff,
        Method::BurnCrossEntropy,
        Method::Fused(Some(64)),
        Method::Fused(Some(128)),
        Method::Fused(None),
        Method::Fused(Some(512)),
        Method::Fused(Some(2048)),
    ];
    #[allow(deprecated)]
    let backends = [("NdArray", Device::ndarray()), ("Flex", Device::flex())];
    println!("one training step, N = {N}, D = {D}, C = {C}, f32; x, W and b tracked");
    println!("(peak extra: bytes allocated above the inputs and parameters, gradients included)");
    for (backend, device) in backends {
        let mut rng = StdRng::seed_from_u64(7);
        let mut uniform = |len: usize, scale: f32| -> Vec<f32> {
            (0..len).map(|_| rng.random_range(-scale..scale)).collect()
        };
        let x = Tensor::<2>::from_data(TensorData::new(uniform(N * D, 1.0), [N, D]), &device);
        let scale = 1.0 / (D as f32).sqrt();
        let head = LinearSoftmax::from_tensors(
            Tensor::from_data(TensorData::new(uniform(D * C, scale), [D, C]), &device),
            Some(Tensor::from_data(
                TensorData::new(uniform(C, scale), [C]),
                &device,
            )),
        )
        .expect("valid parameters");
        let labels: Vec<i64> = (0..N).map(|i| ((i * 7919) % C) as i64).collect();
        let targets = Targets::from_indices(&labels, C, &device).expect("labels in range");

        println!("\n{backend}:");
        println!(
            "  {:<32} {:>9} {:>17} {:>10} {:>10} {:>9}",
            "path", "step (s)", "peak extra (MiB)", "time/burn", "mem/burn", "loss"
        );
        let mut results = Vec::new();
        for method in methods {
            // A warm-up step (thread pools, first-touch page faults), then the best of two.
            let _ = step(method, &head, &x, &targets);
            let first = step(method, &head, &x, &targets);
            let second = step(method, &head, &x, &targets);
            let measurement = Measurement {
                time: first.time.min(second.time),
                peak_extra: first.peak_extra.max(second.peak_extra),
                loss: second.loss,
            };
            results.push((method, measurement));
        }
        let burn = results
            .iter()
            .find(|(method, _)| matches!(method, Method::BurnCrossEntropy))
            .map(|(_, m)| (m.time, m.peak_extra))
            .expect("the Burn path is measured");
        for (method, m) in &results {
            println!(
                "  {:<32} {:>9.3} {:>17.1} {:>10.2} {:>10.2} {:>9.5}",
                method.name(),
                m.time.as_secs_f64(),
                m.peak_extra as f64 / MIB,
                m.time.as_secs_f64() / burn.0.as_secs_f64(),
                m.peak_extra as f64 / burn.1 as f64,
                m.loss,
            );
        }
    }
}
