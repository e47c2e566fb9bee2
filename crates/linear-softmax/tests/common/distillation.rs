//! The distillation fixtures (`tests/fixtures/distillation/`, written by
//! `scripts/pytorch_distillation_reference.py`): a student, a frozen teacher, their inputs and
//! PyTorch's loss and student gradients in float64.

use std::path::Path;

use burn::prelude::*;
use burn::tensor::DType;
use linear_softmax::{DistillationOptions, LinearSoftmax, LossOptions, LossReduction, Targets};
use serde_json::Value;

use super::{assert_close, host, tensor};

/// f64 against PyTorch's f64: different summation orders and `log_softmax` formulations.
pub const PYTORCH_F64: f64 = 1e-10;
/// f32 computation against PyTorch's f64 result on the same (f32-representable) inputs.
pub const PYTORCH_F32: f64 = 1e-5;
/// The script writes nine cases.
pub const CASES: usize = 9;

fn floats(value: &Value) -> Option<Vec<f64>> {
    value
        .as_array()
        .map(|a| a.iter().map(|v| v.as_f64().expect("a number")).collect())
}

/// One fixture on a device in a float type: the student, the teacher and their inputs.
pub struct Fixture {
    pub name: String,
    pub student: LinearSoftmax,
    pub teacher: LinearSoftmax,
    pub x: Tensor<2>,
    pub teacher_hidden: Tensor<2>,
    pub labels: Option<Vec<i64>>,
    pub ignore_index: Option<i64>,
    pub row_weights: Option<Vec<f64>>,
    pub upstream: Option<Vec<f64>>,
    pub options: LossOptions,
    pub loss: Vec<f64>,
    pub d_weight: Vec<f64>,
    pub d_bias: Option<Vec<f64>>,
    pub d_input: Vec<f64>,
}

pub fn load(path: &Path, device: &Device, dtype: DType) -> Fixture {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(json["torch_version"].as_str().unwrap().starts_with("2."));
    let shape: Vec<usize> = json["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let [n, d, c] = [shape[0], shape[1], shape[2]];
    let d_teacher = json["teacher_features"].as_u64().unwrap() as usize;
    let o = &json["options"];
    let distillation = DistillationOptions::new()
        .with_beta(o["beta"].as_f64().unwrap())
        .with_hard_weight(o["hard_weight"].as_f64().unwrap())
        .with_soft_weight(o["soft_weight"].as_f64().unwrap());
    let options = LossOptions::new()
        .with_reduction(match o["reduction"].as_str().unwrap() {
            "mean" => LossReduction::Mean,
            "sum" => LossReduction::Sum,
            _ => LossReduction::None,
        })
        .with_temperature(o["temperature"].as_f64().unwrap())
        .with_distillation(distillation);
    let parameter =
        |key: &str, shape: [usize; 2]| tensor(floats(&json[key]).unwrap(), shape, dtype, device);
    Fixture {
        name: json["name"].as_str().unwrap().to_string(),
        student: LinearSoftmax::from_tensors(
            parameter("weight", [d, c]),
            floats(&json["bias"]).map(|b| tensor(b, [c], dtype, device)),
        )
        .unwrap(),
        teacher: LinearSoftmax::from_tensors(
            parameter("teacher_weight", [d_teacher, c]),
            floats(&json["teacher_bias"]).map(|b| tensor(b, [c], dtype, device)),
        )
        .unwrap(),
        x: parameter("x", [n, d]),
        teacher_hidden: parameter("teacher_hidden", [n, d_teacher]),
        labels: json["labels"]
            .as_array()
            .map(|labels| labels.iter().map(|v| v.as_i64().unwrap()).collect()),
        ignore_index: o["ignore_index"].as_i64(),
        row_weights: floats(&json["row_weights"]),
        upstream: floats(&json["upstream"]),
        options,
        loss: floats(&json["loss"]).unwrap(),
        d_weight: floats(&json["d_weight"]).unwrap(),
        d_bias: floats(&json["d_bias"]),
        d_input: floats(&json["d_input"]).unwrap(),
    }
}

impl Fixture {
    /// The targets as a user builds them on the model's device: the teacher alone, or the
    /// labels (with their ignore index) and the teacher; the row weights when the case has
    /// them.
    pub fn targets(&self, teacher_hidden: Tensor<2>) -> Targets {
        let device = self.x.device();
        let c = self.student.n_classes();
        let targets = match &self.labels {
            None => Targets::from_teacher(&self.teacher, teacher_hidden),
            Some(labels) => match self.ignore_index {
                Some(ignore) => Targets::from_indices_with_ignore(labels, c, ignore, &device),
                None => Targets::from_indices(labels, c, &device),
            }
            .unwrap()
            .with_teacher(&self.teacher, teacher_hidden),
        }
        .unwrap();
        match &self.row_weights {
            Some(rho) => {
                let rho = tensor(rho.clone(), [rho.len()], self.x.dtype(), &device);
                targets.with_row_weights(rho).unwrap()
            }
            None => targets,
        }
    }

    /// Checks the loss, `dW`, `dX` and `db` (present exactly when the student has a bias).
    pub fn check(
        &self,
        context: &str,
        got: [Vec<f64>; 3],
        d_bias: Option<Vec<f64>>,
        tolerance: f64,
    ) {
        let expected = [&self.loss, &self.d_weight, &self.d_input];
        for ((what, got), expected) in ["loss", "dW", "dX"].iter().zip(got).zip(expected) {
            assert_close(&format!("{context} {what}"), &got, expected, tolerance);
        }
        assert_eq!(d_bias.is_some(), self.d_bias.is_some(), "{context} db");
        if let (Some(got), Some(expected)) = (d_bias, &self.d_bias) {
            assert_close(&format!("{context} db"), &got, expected, tolerance);
        }
    }
}

impl Fixture {
    /// The route users take, checked against PyTorch within `tolerance`: the student's
    /// `loss(..)?` with `options` on the fixture's (autodiff) device, then `.backward()`
    /// (reduction none: of `sum_i g_i l_i` with the fixture's upstream `g`); and the teacher,
    /// its head and its hidden states (tracked here), gets no gradient.
    pub fn check_backward(&self, context: &str, options: &LossOptions, tolerance: f64) {
        let teacher_hidden = self.teacher_hidden.clone().require_grad();
        let targets = self.targets(teacher_hidden.clone());
        let x = self.x.clone().require_grad();
        let loss = self.student.loss(x.clone(), &targets, options).unwrap();
        let seeded = match &self.upstream {
            Some(g) => {
                let g = tensor(g.clone(), [g.len()], x.dtype(), &x.device());
                (loss.clone() * g).sum()
            }
            None => loss.clone(),
        };
        let grads = seeded.backward();
        let student = &self.student;
        let got = [
            host(&loss),
            host(&student.weight().grad(&grads).unwrap()),
            host(&x.grad(&grads).unwrap()),
        ];
        let d_bias = student.bias().map(|b| host(&b.grad(&grads).unwrap()));
        self.check(context, got, d_bias, tolerance);
        assert!(
            self.teacher.weight().grad(&grads).is_none() && teacher_hidden.grad(&grads).is_none(),
            "{context}: the teacher got a gradient"
        );
    }
}

/// The fixtures, sorted by name.
pub fn fixtures() -> Vec<std::path::PathBuf> {
    super::json_fixtures("tests/fixtures/distillation")
}
