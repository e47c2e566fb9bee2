//! Step time and peak extra memory of one training step of the head, per path.
//!
//! ```text
//! cargo run --release --example peak_memory                          # LM head, NdArray and Flex
//! cargo run --release --example peak_memory -- --sweep --backend ndarray --csv sweep.csv
//! cargo run --release --example peak_memory -- --backend ndarray --shape 2048,512,131072 --rows 128,256
//! cargo run --release --example peak_memory -- --backend flex --dtype bf16     # bf16 (Flex only)
//! ```
//!
//! Without `--sweep`: `N = 2048` rows, `D = 512` features, `C = 32768` classes, every path and
//! several chunk sizes. With `--sweep`: the classifier (`N = 256, D = 784, C = 10`) and the LM
//! head swept over `C` in {4096, 32768, 131072} (N = 2048) and `N` in {512, 2048, 8192}
//! (C = 32768), for our autodiff and manual paths, Burn's CE, the fused op (default chunking
//! and `R = 256`) and the three-GEMM floor. f32 (or `--dtype bf16`), with `x`, `W` and `b` all
//! tracked (as when the head sits on top of a network). One step is: forward, `backward()`,
//! and taking the three gradients out. A counting global allocator records the peak number of
//! bytes allocated during the step above what was allocated before it (the inputs and
//! parameters), so the figure includes the gradients themselves (`dW` alone is 64 MiB).
//!
//! Paths: ours through Burn's autograd ([`LossPath::Autodiff`]), our hand-derived gradients
//! (`head.gradients(..)` with [`LossPath::Manual`], no autograd), Burn's own `Linear` +
//! `CrossEntropyLoss`, the fused op at a few chunk sizes `R` (`LossOptions::chunking`), and the
//! floor: the step's three GEMMs `S = XW`, `X^T G`, `G W^T` on the same backend (transposes
//! made contiguous beforehand; its memory is its two `[N, C]` / `[D, C]` / `[N, D]` products).
//! Times are the best of `--repeats` steps after a warm-up step; the machine is shared, so
//! repeat runs and compare within one run.
//! `time/ref` and `mem/ref` are ratios to Burn's `Linear` + `CrossEntropyLoss`, or to the floor
//! when `--rows` leaves Burn's path out.
//!
//! `--rss PATH` (`fused`, `autodiff`, `manual`, `burn_ce` or `floor`, one backend, one shape)
//! measures that path alone the way `scripts/pytorch_bench.py --rss` measures PyTorch: in this
//! fresh process, after a warm-up step on a small batch, the first step's peak resident-memory
//! growth (`rss.rs`), then the best of `--repeats` steps; it prints one JSON line for
//! `scripts/head_to_head.py`, with the machine's measured peak.
//!
//! `GFLOP/s` is the step's three GEMMs (`6 N D C` FLOP) over its time, and `of peak` that rate
//! over the machine's measured peak (`peak.rs`: every core running f32 FMAs, or bf16 dot
//! products, in its widest vector registers).

mod allocator;
mod batch;
mod peak;
mod rss;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use allocator::{ALLOCATED, PEAK};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::DType;
use linear_softmax::diagnostics::{self, Kernel};
use linear_softmax::{Chunking, LinearSoftmax, LossOptions, LossPath, Targets};
use peak::Peak;

const MIB: f64 = 1024.0 * 1024.0;

/// One way of computing a training step.
#[derive(Clone, Copy, Debug)]
enum Method {
    /// `LinearSoftmax::loss` with `LossPath::Autodiff`.
    OurAutodiff,
    /// `LinearSoftmax::gradients` with `LossPath::Manual`: the hand-derived gradients, no
    /// autograd.
    Manual,
    /// `Linear::forward` + `burn::nn::loss::CrossEntropyLoss`.
    BurnCrossEntropy,
    /// The fused op (`LinearSoftmax::loss` with the default path) with `R` rows per chunk
    /// (`None`: the default from the memory budget).
    Fused(Option<usize>),
    /// The three GEMMs of a step, nothing else.
    Floor,
}

/// A head and a batch of shape `[N, D, C]`, and the contiguous transposes the floor uses.
struct Problem {
    shape: [usize; 3],
    head: LinearSoftmax,
    x: Tensor<2>,
    targets: Targets,
    x_t: Tensor<2>,
    w_t: Tensor<2>,
}

impl Method {
    fn name(self, [n, d, c]: [usize; 3], device: &Device, dtype: DType) -> String {
        match self {
            Self::OurAutodiff => "ours, autodiff path".into(),
            Self::Manual => "ours, manual gradients".into(),
            Self::BurnCrossEntropy => "burn Linear + CrossEntropyLoss".into(),
            Self::Fused(None) => {
                let rows = Chunking::new()
                    .rows_on(device, [n, d], c, dtype)
                    .expect("a valid default");
                format!("fused, default R = {rows}")
            }
            Self::Fused(Some(rows)) => format!("fused, R = {rows}"),
            Self::Floor => "three-GEMM floor".into(),
        }
    }

    /// A short name for the CSV output.
    fn key(self) -> String {
        match self {
            Self::OurAutodiff => "autodiff".into(),
            Self::Manual => "manual".into(),
            Self::BurnCrossEntropy => "burn_ce".into(),
            Self::Fused(None) => "fused".into(),
            Self::Fused(Some(rows)) => format!("fused_r{rows}"),
            Self::Floor => "floor".into(),
        }
    }

    fn loss(self, head: &LinearSoftmax, x: Tensor<2>, targets: &Targets) -> Tensor<1> {
        let options = LossOptions::new();
        match self {
            Self::OurAutodiff => head.loss(x, targets, &options.with_path(LossPath::Autodiff)),
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
            Self::Fused(rows) => {
                let options = options.with_chunking(Chunking::new().with_rows(rows));
                head.loss(x, targets, &options)
            }
            Self::Manual | Self::Floor => unreachable!("no loss graph"),
        }
        .expect("a valid batch")
    }
}

struct Measurement {
    time: Duration,
    peak_extra: usize,
    loss: f64,
}

fn first(t: Tensor<2>) -> f32 {
    t.slice(s![0..1, 0..1]).into_scalar::<f32>()
}

/// One training step: loss, gradients of `x`, `W` and `b` taken out (through `backward()`
/// except for the manual path and the floor).
fn step(method: Method, p: &Problem) -> Measurement {
    let before = ALLOCATED.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let start = Instant::now();

    let loss = match method {
        Method::Floor => {
            let logits = p.x.clone().matmul(p.head.weight());
            let d_weight = p.x_t.clone().matmul(logits.clone());
            let d_input = logits.matmul(p.w_t.clone());
            let _ = (first(d_weight), first(d_input));
            f64::NAN
        }
        Method::Manual => {
            let options = LossOptions::new().with_path(LossPath::Manual);
            let g = p
                .head
                .gradients(p.x.clone(), &p.targets, &options)
                .expect("a valid batch");
            let _ = (first(g.d_weight), first(g.d_input));
            g.loss.into_scalar::<f32>() as f64
        }
        _ => {
            let head = p.head.clone().train();
            let x = p.x.clone().autodiff().require_grad();
            let loss = method.loss(&head, x.clone(), &p.targets);
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
            // Reading one value of each gradient waits for any lazy work (none on these CPU
            // backends).
            let loss = loss.inner().into_scalar::<f32>() as f64;
            let _ = (
                first(d_weight),
                d_bias.map(|d_bias| d_bias.slice(s![0..1]).into_scalar::<f32>()),
                first(d_input),
            );
            loss
        }
    };

    let time = start.elapsed();
    Measurement {
        time,
        peak_extra: PEAK.load(Ordering::Relaxed).saturating_sub(before),
        loss,
    }
}

/// The fused kernel's three GEMMs on one chunk of `rows` rows, each alone: time, GFLOP/s
/// (`2 R D C` each) and the fraction of the measured peak.
fn print_chunk_gemms([rows, d, c]: [usize; 3], dtype: DType, repeats: usize, peak: Option<&Peak>) {
    let times = diagnostics::chunk_gemm_times(rows, d, c, dtype, repeats).expect("f32 or bf16");
    println!(
        "  the fused kernel's GEMMs on one chunk of R = {rows} rows, each alone (best of {repeats}):"
    );
    let names = ["S_r = X_r W", "dW += X_r^T dS_r", "dX_r = dS_r W^T"];
    for (name, time) in names.iter().zip(times) {
        let gflops = 2.0 * (rows * d * c) as f64 / time.as_secs_f64() / 1e9;
        let of_peak = peak.map_or("-".into(), |peak| {
            format!("{:.0}%", 100.0 * gflops / peak.gflops)
        });
        println!(
            "    {name:<28} {:>9.3} ms {:>9.1} GFLOP/s {:>6} of peak",
            time.as_secs_f64() * 1e3,
            gflops,
            of_peak
        );
    }
}

fn problem(shape: [usize; 3], device: &Device, dtype: DType) -> Problem {
    let [n, d, c] = shape;
    let (head, x, labels) = batch::seeded(shape, device);
    let (head, x) = (head.cast(dtype), x.cast(dtype));
    let targets = Targets::from_indices(&labels, c, device).expect("labels in range");
    // Reshaping a transposed view to its own shape makes it contiguous.
    let x_t = x.clone().transpose().reshape([d, n]);
    let w_t = head.weight().transpose().reshape([c, d]);
    Problem {
        shape,
        head,
        x,
        targets,
        x_t,
        w_t,
    }
}

struct Args {
    backends: Vec<(&'static str, Device)>,
    sweep: bool,
    repeats: usize,
    csv: Option<String>,
    /// `--shape N,D,C`: one shape instead of the defaults.
    shape: Option<[usize; 3]>,
    /// `--rows R,R,...`: the fused op at these chunk sizes only (plus the floor).
    rows: Option<Vec<usize>>,
    /// `--dtype f32|bf16`.
    dtype: DType,
    /// `--rss PATH`: that path alone, measured by resident memory (`rss.rs`).
    rss: Option<Method>,
}

/// A comma-separated list of numbers.
fn numbers(text: Option<String>, what: &str) -> Vec<usize> {
    text.and_then(|t| t.split(',').map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| panic!("{what}: comma-separated numbers"))
}

fn args() -> Args {
    let mut parsed = Args {
        backends: Vec::new(),
        sweep: false,
        repeats: 2,
        csv: None,
        shape: None,
        rows: None,
        dtype: DType::F32,
        rss: None,
    };
    let mut backend = "both".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--sweep" => parsed.sweep = true,
            "--backend" => backend = args.next().expect("--backend ndarray|flex|both"),
            "--repeats" => {
                parsed.repeats = args
                    .next()
                    .and_then(|r| r.parse().ok())
                    .expect("--repeats COUNT")
            }
            "--csv" => parsed.csv = Some(args.next().expect("--csv PATH")),
            "--shape" => {
                let shape = numbers(args.next(), "--shape N,D,C");
                parsed.shape = Some(shape.try_into().expect("--shape N,D,C: three numbers"));
            }
            "--rows" => parsed.rows = Some(numbers(args.next(), "--rows R,R,...")),
            "--dtype" => {
                parsed.dtype = match args.next().as_deref() {
                    Some("f32") => DType::F32,
                    Some("bf16") => DType::BF16,
                    _ => panic!("--dtype f32|bf16"),
                }
            }
            "--rss" => {
                parsed.rss = Some(match args.next().as_deref() {
                    Some("fused") => Method::Fused(None),
                    Some("autodiff") => Method::OurAutodiff,
                    Some("manual") => Method::Manual,
                    Some("burn_ce") => Method::BurnCrossEntropy,
                    Some("floor") => Method::Floor,
                    _ => panic!("--rss fused|autodiff|manual|burn_ce|floor"),
                })
            }
            other => panic!(
                "unknown argument {other}: --sweep, --backend, --repeats, --csv, --shape, --rows, --dtype, --rss"
            ),
        }
    }
    #[allow(deprecated)]
    let all = [("NdArray", Device::ndarray()), ("Flex", Device::flex())];
    parsed.backends = all
        .into_iter()
        .filter(|(name, _)| backend == "both" || name.eq_ignore_ascii_case(&backend))
        .collect();
    parsed
}

fn main() {
    let args = args();
    if let Some(method) = args.rss {
        measure_rss(method, &args);
        return;
    }
    let (mut shapes, mut methods): (Vec<[usize; 3]>, Vec<Method>) = if args.sweep {
        (
            vec![
                [256, 784, 10],
                [2048, 512, 4096],
                [2048, 512, 32768],
                [2048, 512, 131072],
                [512, 512, 32768],
                [8192, 512, 32768],
            ],
            vec![
                Method::OurAutodiff,
                Method::Manual,
                Method::BurnCrossEntropy,
                Method::Fused(None),
                Method::Fused(Some(256)),
                Method::Floor,
            ],
        )
    } else {
        (
            vec![[2048, 512, 32768]],
            vec![
                Method::OurAutodiff,
                Method::Manual,
                Method::BurnCrossEntropy,
                Method::Fused(Some(64)),
                Method::Fused(Some(128)),
                Method::Fused(None),
                Method::Fused(Some(512)),
                Method::Fused(Some(2048)),
                Method::Floor,
            ],
        )
    };
    if let Some(shape) = args.shape {
        shapes = vec![shape];
    }
    if let Some(rows) = &args.rows {
        methods = rows.iter().map(|&r| Method::Fused(Some(r))).collect();
        methods.extend([Method::Fused(None), Method::Floor]);
    }
    let dtype = args.dtype;
    let mut csv = String::from("backend,n,d,c,path,best_s,peak_mib,loss\n");
    println!(
        "one training step, {dtype:?}; x, W and b tracked (best of {} after a warm-up)",
        args.repeats
    );
    let isa = match diagnostics::cpu_isa() {
        Ok(isa) => isa,
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(2);
        }
    };
    println!(
        "CPU kernels: {isa} (this CPU: {}; {} caps it)",
        diagnostics::CpuIsa::detected(),
        diagnostics::MAX_CPU_ISA_VAR
    );
    let peak = match dtype {
        DType::BF16 => peak::bf16_peak(isa),
        _ => peak::f32_peak(isa),
    };
    match &peak {
        Some(peak) => println!(
            "measured peak: {:.0} GFLOP/s ({} on every core at once)",
            peak.gflops, peak.instruction
        ),
        None => println!("no peak measured on this CPU"),
    }
    println!("(peak extra: bytes allocated above the inputs and parameters, gradients included)");
    let mut probed = Vec::new();
    for (backend, device) in &args.backends {
        if let Err(err) = linear_softmax::check_dtype(device, dtype) {
            println!("\n{backend}: skipped ({err})");
            continue;
        }
        for &shape in &shapes {
            let p = problem(shape, device, dtype);
            let [n, d, c] = shape;
            // Millisecond steps get more repeats than the LM-sized ones.
            let repeats = if n * c < 1 << 20 {
                args.repeats.max(30)
            } else {
                args.repeats
            };
            println!("\n{backend}, N = {n}, D = {d}, C = {c}:");
            let choice = diagnostics::kernel_for(&p.head, &p.x, &p.targets, &LossOptions::new())
                .expect("the fused path");
            println!("  fused kernel: {:?} ({})", choice.kernel, choice.reason);
            println!(
                "  {:<32} {:>9} {:>17} {:>10} {:>10} {:>9} {:>8} {:>9}",
                "path",
                "step (ms)",
                "peak extra (MiB)",
                "time/ref",
                "mem/ref",
                "GFLOP/s",
                "of peak",
                "loss"
            );
            let mut results = Vec::new();
            for &method in &methods {
                let _ = step(method, &p);
                let mut best: Option<Measurement> = None;
                for _ in 0..repeats.max(1) {
                    let m = step(method, &p);
                    best = Some(match best {
                        None => m,
                        Some(b) => Measurement {
                            time: b.time.min(m.time),
                            peak_extra: b.peak_extra.max(m.peak_extra),
                            loss: m.loss,
                        },
                    });
                }
                results.push((method, best.expect("at least one repeat")));
            }
            // Ratios against Burn's CE when it was measured, else against the floor.
            let burn = results
                .iter()
                .find(|(method, _)| matches!(method, Method::BurnCrossEntropy))
                .or_else(|| {
                    results
                        .iter()
                        .find(|(method, _)| matches!(method, Method::Floor))
                })
                .map(|(_, m)| (m.time, m.peak_extra))
                .expect("the Burn path or the floor is measured");
            for (method, m) in &results {
                let gflops = 6.0 * (n * d * c) as f64 / m.time.as_secs_f64() / 1e9;
                let of_peak = peak.as_ref().map_or("-".into(), |peak| {
                    format!("{:.0}%", 100.0 * gflops / peak.gflops)
                });
                println!(
                    "  {:<32} {:>9.3} {:>17.1} {:>10.2} {:>10.2} {:>9.1} {:>8} {:>9.5}",
                    method.name(p.shape, device, dtype),
                    m.time.as_secs_f64() * 1e3,
                    m.peak_extra as f64 / MIB,
                    m.time.as_secs_f64() / burn.0.as_secs_f64(),
                    m.peak_extra as f64 / burn.1 as f64,
                    gflops,
                    of_peak,
                    m.loss,
                );
                csv.push_str(&format!(
                    "{backend},{n},{d},{c},{},{:.6},{:.2},{:.6}\n",
                    method.key(),
                    m.time.as_secs_f64(),
                    m.peak_extra as f64 / MIB,
                    m.loss
                ));
            }
            // The raw kernel's GEMMs are the same on every CPU backend: shown once per shape.
            if choice.kernel == Kernel::Raw && !probed.contains(&shape) {
                probed.push(shape);
                let rows = Chunking::new()
                    .rows_on(device, [n, d], c, dtype)
                    .expect("a valid default");
                print_chunk_gemms([rows, d, c], dtype, repeats, peak.as_ref());
            }
        }
    }
    if let Some(path) = args.csv {
        std::fs::write(&path, csv).expect("writable CSV path");
        println!("\nwrote {path}");
    }
}

/// `--rss PATH`: one path on one backend and shape, in this fresh process: a warm-up step on a
/// small batch (thread pools, first-use allocations), then the first step at full size with
/// its peak resident growth, then the best of `--repeats` steps; one JSON line.
fn measure_rss(method: Method, args: &Args) {
    let [(backend, device)] = args.backends.as_slice() else {
        panic!("--rss takes one backend: --backend flex|ndarray");
    };
    let dtype = args.dtype;
    let shape = args.shape.unwrap_or([2048, 512, 32768]);
    let isa = diagnostics::cpu_isa().expect("a CPU kernel level");
    let peak = match dtype {
        DType::BF16 => peak::bf16_peak(isa),
        _ => peak::f32_peak(isa),
    };
    let _ = step(method, &problem([64, 64, 256], device, dtype));
    let p = problem(shape, device, dtype);
    let before = rss::reset_high_water().expect("Linux's /proc/self/clear_refs");
    let first = step(method, &p);
    let after = rss::high_water().expect("Linux's /proc/self/status");
    let mut best = first.time;
    for _ in 0..args.repeats {
        best = best.min(step(method, &p).time);
    }
    let [n, d, c] = shape;
    let dtype_name = if dtype == DType::BF16 { "bf16" } else { "f32" };
    println!(
        "{{\"side\": \"ours\", \"backend\": \"{}\", \"dtype\": \"{dtype_name}\", \"n\": {n}, \"d\": {d}, \"c\": {c}, \"path\": \"{}\", \"best_s\": {:.6}, \"rss_peak_mib\": {:.2}, \"alloc_peak_mib\": {:.2}, \"peak_gflops\": {:.1}, \"loss\": {:.6}}}",
        backend.to_lowercase(),
        method.key(),
        best.as_secs_f64(),
        after.saturating_sub(before) as f64 / MIB,
        first.peak_extra as f64 / MIB,
        peak.map_or(f64::NAN, |peak| peak.gflops),
        first.loss,
    );
}
