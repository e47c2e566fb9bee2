//! Check your own backward: a custom Burn op with a hand-written backward, checked by
//! `gradcheck` against finite differences, and the same op with four deliberate mistakes that
//! `gradcheck` catches; then the time of a full and of a fast check of a module (for the
//! ~1M-parameter one, the full check's time multiplied out from one evaluation's).
//!
//! ```text
//! cargo run --release --example custom_op_gradcheck
//! ```

// NdArray, one of the op's backends, is deprecated upstream (gone in burn 0.23).
#[allow(deprecated)]
mod gate;

use std::time::Instant;

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::{DType, Distribution};
use gate::{MISTAKES, Mistake, gate};
use linear_softmax::gradcheck::{GradcheckOptions, gradcheck, gradcheck_module, to_f64};
use linear_softmax::{LinearSoftmax, LinearSoftmaxConfig, LossOptions, Targets};

/// An MLP with our head on top: `tanh` keeps the loss smooth (a ReLU's kink at 0 is a point
/// where finite differences and the backward legitimately disagree).
#[derive(Module, Debug)]
struct Net {
    hidden_1: Linear,
    hidden_2: Linear,
    head: LinearSoftmax,
}

impl Net {
    fn new([d, h1, h2, c]: [usize; 4], device: &Device) -> linear_softmax::Result<Self> {
        Ok(to_f64(Self {
            hidden_1: LinearConfig::new(d, h1).init(device),
            hidden_2: LinearConfig::new(h1, h2).init(device),
            head: LinearSoftmaxConfig::new(h2, c).init(device)?,
        }))
    }

    fn loss(&self, x: Tensor<2>, targets: &Targets) -> linear_softmax::Result<Tensor<1>> {
        let hidden = self.hidden_1.forward(x).tanh();
        let hidden = self.hidden_2.forward(hidden).tanh();
        self.head.loss(hidden, targets, &LossOptions::new())
    }
}

/// Times a check of `Net` of widths `widths` on a batch of 8 rows.
fn time_check(widths: [usize; 4], fast_mode: bool, device: &Device) -> linear_softmax::Result<()> {
    let net = Net::new(widths, device)?;
    let x = Tensor::<2>::random([8, widths[0]], Distribution::Normal(0.0, 1.0), device)
        .cast(DType::F64);
    let labels: Vec<i64> = (0..8).map(|i| i % widths[3] as i64).collect();
    let targets = Targets::from_indices(&labels, widths[3], device)?;
    let options = GradcheckOptions::new().with_fast_mode(fast_mode);
    let start = Instant::now();
    let report = gradcheck_module(|net: &Net, x| net.loss(x, &targets), &net, x, &options)?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{} check of a module of {} parameters (widths {widths:?}, batch 8): {seconds:.2} s, {}",
        if fast_mode { "fast" } else { "full" },
        net.num_params(),
        if report.passed() { "passed" } else { "FAILED" },
    );
    Ok(())
}

fn main() -> linear_softmax::Result<()> {
    let device = Device::flex().autodiff();
    let a = Tensor::<2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device).cast(DType::F64);
    let b = Tensor::<2>::random([3, 4], Distribution::Normal(0.0, 1.0), &device).cast(DType::F64);

    for fast_mode in [false, true] {
        let options = GradcheckOptions::new().with_fast_mode(fast_mode);
        for mistake in [Mistake::None].into_iter().chain(MISTAKES) {
            let f = |(a, b): (Tensor<2>, Tensor<2>)| gate(a, b, mistake);
            let report = gradcheck(f, (a.clone(), b.clone()), &options)?;
            println!("gate with backward mistake {mistake:?}:\n{report}");
        }
    }

    time_check([64, 32, 16, 10], false, &device)?;
    time_check([64, 32, 16, 10], true, &device)?;
    time_check([784, 1024, 192, 10], true, &device)?;
    time_full_check_per_evaluation([784, 1024, 192, 10], &device)
}

/// A full check of the ~1M-parameter module takes two evaluations of the loss per parameter:
/// too long to run here, so this times the evaluations themselves (untracked, as the check
/// runs them) and multiplies out.
fn time_full_check_per_evaluation(
    widths: [usize; 4],
    device: &Device,
) -> linear_softmax::Result<()> {
    const EVALUATIONS: usize = 20;
    let net = Net::new(widths, device)?.no_grad();
    let x = Tensor::<2>::random([8, widths[0]], Distribution::Normal(0.0, 1.0), device)
        .cast(DType::F64);
    let labels: Vec<i64> = (0..8).map(|i| i % widths[3] as i64).collect();
    let targets = Targets::from_indices(&labels, widths[3], device)?;
    let start = Instant::now();
    for _ in 0..EVALUATIONS {
        net.loss(x.clone(), &targets)?.into_data();
    }
    let per_evaluation = start.elapsed().as_secs_f64() / EVALUATIONS as f64;
    let entries = net.num_params() + x.shape().num_elements();
    println!(
        "full check of the same module: {entries} entries x 2 evaluations x {:.2} ms measured \
         per evaluation = ~{:.0} s (multiplied out, not run)",
        per_evaluation * 1e3,
        2.0 * entries as f64 * per_evaluation,
    );
    Ok(())
}
