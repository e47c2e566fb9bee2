//! `gradcheck`: centred finite differences in f64 confirm every path's gradients, through
//! the head as a module; and the check fails, naming the input and the entry, for a custom
//! op whose backward is wrong.

mod common;

// The example's op; NdArray, one of its backends, is deprecated upstream.
#[allow(deprecated)]
#[path = "../examples/custom_op_gradcheck/gate.rs"]
mod gate;

use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::DType;
use common::{FINITE_DIFFERENCE, assert_close, backends, host, problem};
use gate::{MISTAKES, Mistake, gate};
use linear_softmax::gradcheck::{
    GradcheckOptions, GradcheckReport, Position, Verdict, gradcheck, gradcheck_module, to_f64,
};
use linear_softmax::{LinearSoftmax, LinearSoftmaxConfig, LossOptions, LossPath, Targets};

/// Our own checks are tighter than PyTorch's defaults (atol 1e-5, rtol 1e-3, for any
/// function): with a step of 1e-5 in f64 the truncation error O(h^2) is ~1e-10 and the
/// round-off O(eps / h) ~1e-11 of the loss (a few units), far inside atol 1e-8.
fn strict() -> GradcheckOptions {
    GradcheckOptions::new()
        .with_eps(1e-5)
        .with_atol(1e-8)
        .with_rtol(1e-6)
}

#[test]
fn finite_differences_confirm_every_path() {
    for (backend, device) in backends() {
        let cases = [
            ([1, 1, 2], true, 0.0),
            ([1, 1, 2], false, 0.05),
            ([7, 31, 10], true, 0.05),
            ([7, 31, 10], false, 0.0),
            ([5, 3, 4], true, 0.0),
            ([47, 31, 123], true, 0.05),
        ];
        for (seed, (shape, bias, l2)) in cases.into_iter().enumerate() {
            let p = problem(shape, bias, DType::F64, &device, 100 + seed as u64);
            let (head, x) = (p.head.clone().train(), p.x.clone().autodiff());
            let options = LossOptions::new().with_l2(l2);
            let context = format!("{backend} {shape:?} bias={bias} l2={l2}");
            // The head as a module: `.backward()` through the loss as a graph node.
            let mut fused_report = None;
            for path in [LossPath::Fused, LossPath::Autodiff, LossPath::Manual] {
                let options = options.clone().with_path(path);
                let f = |head: &LinearSoftmax, x| head.loss(x, &p.targets, &options);
                let report = gradcheck_module(f, &head, x.clone(), &strict()).unwrap();
                assert!(report.passed(), "{path} {context}:\n{report}");
                fused_report.get_or_insert(report);
            }
            // The hand-derived backward as plain values, against the same differences.
            let report = fused_report.unwrap();
            let names: Vec<&str> = report.inputs.iter().map(|i| i.name.as_str()).collect();
            let expected: &[&str] = if bias {
                &["linear.weight", "linear.bias", "input 0"]
            } else {
                &["linear.weight", "input 0"]
            };
            assert_eq!(names, expected, "{context}");
            let manual = options.clone().with_path(LossPath::Manual);
            let gradients = p.head.gradients(p.x.clone(), &p.targets, &manual).unwrap();
            let numerical = |name| report.input(name).unwrap().numerical.clone();
            assert_close(
                &format!("manual dW {context}"),
                &host(&gradients.d_weight),
                &numerical("linear.weight"),
                FINITE_DIFFERENCE,
            );
            assert_close(
                &format!("manual dX {context}"),
                &host(&gradients.d_input),
                &numerical("input 0"),
                FINITE_DIFFERENCE,
            );
            if let Some(d_bias) = gradients.d_bias {
                assert_close(
                    &format!("manual db {context}"),
                    &host(&d_bias),
                    &numerical("linear.bias"),
                    FINITE_DIFFERENCE,
                );
            }
        }
    }
}

/// Two Linear layers and our head, every parameter f64.
#[derive(Module, Debug)]
struct Mlp {
    hidden_1: Linear,
    hidden_2: Linear,
    head: LinearSoftmax,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        to_f64(Self {
            hidden_1: LinearConfig::new(6, 5).init(device),
            hidden_2: LinearConfig::new(5, 4).init(device),
            head: LinearSoftmaxConfig::new(4, 3).init(device).unwrap(),
        })
    }

    fn loss(&self, x: Tensor<2>, targets: &Targets, path: LossPath) -> Tensor<1> {
        let hidden = self.hidden_1.forward(x).tanh();
        let hidden = self.hidden_2.forward(hidden).tanh();
        let options = LossOptions::new().with_path(path);
        self.head.loss(hidden, targets, &options).unwrap()
    }
}

#[test]
fn an_mlp_with_the_head_passes_in_both_modes() {
    for (backend, device) in backends() {
        let device = device.autodiff();
        let mlp = Mlp::new(&device);
        let x = common::tensor(
            common::uniform(&mut seeded(3), 4 * 6, 1.0),
            [4, 6],
            DType::F64,
            &device,
        );
        let targets = Targets::from_indices(&[0, 2, 1, 2], 3, &device).unwrap();
        for path in LossPath::ALL {
            for fast_mode in [false, true] {
                let options = GradcheckOptions::new().with_fast_mode(fast_mode);
                let f = |mlp: &Mlp, x| mlp.loss(x, &targets, path);
                let report = gradcheck_module(f, &mlp, x.clone(), &options).unwrap();
                assert!(
                    report.passed(),
                    "{backend} {path} fast={fast_mode}:\n{report}"
                );
                let names: Vec<&str> = report.inputs.iter().map(|i| i.name.as_str()).collect();
                assert_eq!(
                    names,
                    [
                        "hidden_1.weight",
                        "hidden_1.bias",
                        "hidden_2.weight",
                        "hidden_2.bias",
                        "head.linear.weight",
                        "head.linear.bias",
                        "input 0"
                    ]
                );
            }
        }
    }
}

fn seeded(seed: u64) -> rand::rngs::StdRng {
    rand::SeedableRng::seed_from_u64(seed)
}

/// `a` and `b` `[3, 4]` in f64 on `device`, away from 0 (no entry where `a`'s gradient
/// could vanish by chance).
fn gate_inputs(device: &Device) -> (Tensor<2>, Tensor<2>) {
    let values = |seed| {
        common::uniform(&mut seeded(seed), 12, 1.0)
            .into_iter()
            .map(|v| v + v.signum() * 0.5)
            .collect::<Vec<_>>()
    };
    let a = common::tensor(values(1), [3, 4], DType::F64, device);
    let b = common::tensor(values(2), [3, 4], DType::F64, device);
    (a, b)
}

fn check_gate(mistake: Mistake, fast_mode: bool, device: &Device) -> GradcheckReport {
    let (a, b) = gate_inputs(device);
    let f = |(a, b): (Tensor<2>, Tensor<2>)| gate(a, b, mistake);
    let options = GradcheckOptions::new().with_fast_mode(fast_mode);
    gradcheck(f, (a, b), &options).unwrap()
}

#[test]
fn a_correct_backward_passes() {
    for (backend, device) in backends() {
        for fast_mode in [false, true] {
            let report = check_gate(Mistake::None, fast_mode, &device.clone().autodiff());
            assert!(report.passed(), "{backend} fast={fast_mode}:\n{report}");
            assert_eq!(report.output_len, 12);
        }
    }
}

#[test]
fn every_wrong_backward_fails_naming_the_input_and_entry() {
    for (backend, device) in backends() {
        let device = device.autodiff();
        for mistake in MISTAKES {
            // Which inputs each mistake breaks.
            let wrong: &[&str] = match mistake {
                Mistake::SignFlip | Mistake::MissingTerm => &["input 1"],
                Mistake::Doubled => &["input 0"],
                Mistake::WrongInput => &["input 0", "input 1"],
                Mistake::None => unreachable!(),
            };
            for fast_mode in [false, true] {
                let report = check_gate(mistake, fast_mode, &device);
                let context = format!("{backend} {mistake:?} fast={fast_mode}:\n{report}");
                let failed: Vec<&str> = report.failures().map(|i| i.name.as_str()).collect();
                assert_eq!(failed, wrong, "{context}");
                for input in report.failures() {
                    assert_eq!(input.verdict, Verdict::Mismatch, "{context}");
                    let worst = input.worst.as_ref().unwrap();
                    assert!(!worst.passed(), "{context}");
                    match (&worst.at, fast_mode) {
                        (Position::Element(index), false) => {
                            assert!(index.len() == 2 && index[0] < 3 && index[1] < 4)
                        }
                        (Position::Direction(k), true) => assert!(*k < 3),
                        (at, _) => panic!("{context}: worst at {at:?}"),
                    }
                    let text = report.to_string();
                    assert!(
                        text.contains("MISMATCH") && text.contains(&input.name),
                        "{context}"
                    );
                }
            }
        }
    }
}

#[test]
fn missing_and_unexpected_gradients_are_named() {
    let device = Device::flex().autodiff();
    let (a, b) = gate_inputs(&device);
    // `a` reaches the output only through a detached copy: no gradient, though the output
    // depends on it.
    let detached = |(a, b): (Tensor<2>, Tensor<2>)| a.detach() * b;
    let report = gradcheck(detached, (a.clone(), b.clone()), &GradcheckOptions::new()).unwrap();
    assert_eq!(report.inputs[0].verdict, Verdict::NoGradient, "{report}");
    assert_eq!(report.inputs[1].verdict, Verdict::Passed, "{report}");
    assert!(report.to_string().contains("NO GRADIENT"), "{report}");
    // `b - b.detach()` is 0 with gradient 1: a gradient for an input the output ignores.
    let spurious = |(a, b): (Tensor<2>, Tensor<2>)| a + b.clone() - b.detach();
    let report = gradcheck(spurious, (a, b), &GradcheckOptions::new()).unwrap();
    assert_eq!(report.inputs[0].verdict, Verdict::Passed, "{report}");
    assert_eq!(
        report.inputs[1].verdict,
        Verdict::UnexpectedGradient,
        "{report}"
    );
}

#[test]
fn inputs_that_cannot_be_checked_are_refused() {
    let device = Device::flex().autodiff();
    let f32_input = Tensor::<1>::from_data([1.0, 2.0], (&device, DType::F32));
    let err = gradcheck(|x: Tensor<1>| x.exp(), f32_input, &GradcheckOptions::new()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("input 0") && message.contains("f64"),
        "{message}"
    );

    let plain = Tensor::<1>::from_data([1.0, 2.0], (&Device::flex(), DType::F64));
    let err = gradcheck(|x: Tensor<1>| x.exp(), plain, &GradcheckOptions::new()).unwrap_err();
    assert!(err.to_string().contains("autodiff"), "{err}");

    let x = Tensor::<1>::from_data([1.0, 2.0], (&device, DType::F64));
    let bad = GradcheckOptions::new().with_eps(0.0);
    let err = gradcheck(|x: Tensor<1>| x.exp(), x.clone(), &bad).unwrap_err();
    assert!(err.to_string().contains("eps"), "{err}");

    let failing = |_: Tensor<1>| -> Result<Tensor<1>, String> { Err("no loss today".into()) };
    let err = gradcheck(failing, x, &GradcheckOptions::new()).unwrap_err();
    assert!(err.to_string().contains("no loss today"), "{err}");
}
