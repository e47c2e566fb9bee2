//! The check itself: the analytic `v^T J` from one `.backward()`, the numerical one from
//! centred differences of the same function, compared entry by entry or along random
//! directions.

use burn::prelude::*;
use burn::tensor::{DType, Gradients, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::GradcheckOptions;
use super::inputs::{GradcheckInputs, GradcheckOutput, TensorMapper};
use super::report::{Comparison, GradcheckReport, InputCheck, Position, Verdict};
use crate::error::{Error, Result};
use crate::head::check_dtype;
use crate::host::to_host_f64;

/// One checked tensor as it was given.
struct Checked {
    name: String,
    shape: Vec<usize>,
    device: Device,
    values: Vec<f64>,
}

/// Reads every tensor once: its name, shape, device and values; refuses what cannot be
/// checked.
#[derive(Default)]
struct Describe {
    found: Vec<Result<Checked>>,
    positional: usize,
}

impl TensorMapper for Describe {
    fn map<const D: usize>(&mut self, tensor: Tensor<D>, name: Option<&str>) -> Tensor<D> {
        let name = name.map(str::to_string).unwrap_or_else(|| {
            self.positional += 1;
            format!("input {}", self.positional - 1)
        });
        self.found.push(describe(name, &tensor));
        tensor
    }
}

fn describe<const D: usize>(name: String, tensor: &Tensor<D>) -> Result<Checked> {
    let refuse = |problem: String| Error::GradcheckInput {
        input: name.clone(),
        problem,
    };
    let device = tensor.device();
    if tensor.dtype() != DType::F64 {
        return Err(refuse(format!(
            "it is {:?}; finite differences need f64 (in f32 their round-off swamps the \
             derivative): cast it with .cast(DType::F64)",
            tensor.dtype()
        )));
    }
    if !device.is_autodiff() {
        return Err(refuse(
            "it is on a plain device; create it on device.autodiff() so that .backward() \
             reaches it"
                .to_string(),
        ));
    }
    check_dtype(&device, DType::F64)?;
    Ok(Checked {
        shape: tensor.dims().to_vec(),
        values: to_host_f64(tensor)?,
        device,
        name,
    })
}

/// Every tensor tracked afresh: detached from whatever made it, gradient required.
struct Track;

impl TensorMapper for Track {
    fn map<const D: usize>(&mut self, tensor: Tensor<D>, _name: Option<&str>) -> Tensor<D> {
        tensor.detach().require_grad()
    }
}

/// Reads each tracked tensor's gradient (`None`: it got none).
struct ReadGradients<'a> {
    grads: &'a Gradients,
    found: Vec<Result<Option<Vec<f64>>>>,
}

impl TensorMapper for ReadGradients<'_> {
    fn map<const D: usize>(&mut self, tensor: Tensor<D>, _name: Option<&str>) -> Tensor<D> {
        let gradient = tensor.grad(self.grads);
        self.found
            .push(gradient.as_ref().map(to_host_f64).transpose());
        tensor
    }
}

/// Every tensor untracked, tensor `index` replaced by `values`.
struct Perturb<'a> {
    index: usize,
    seen: usize,
    checked: &'a Checked,
    values: &'a [f64],
}

impl TensorMapper for Perturb<'_> {
    fn map<const D: usize>(&mut self, tensor: Tensor<D>, _name: Option<&str>) -> Tensor<D> {
        self.seen += 1;
        if self.seen - 1 != self.index {
            return tensor.detach();
        }
        let data = TensorData::new(self.values.to_vec(), self.checked.shape.clone());
        Tensor::from_data(data, (&self.checked.device, DType::F64))
    }
}

/// The function, its inputs as given and the projection `v` of its output.
struct Problem<'a, I, F> {
    function: &'a F,
    inputs: I,
    projection: Vec<f64>,
}

impl<I, O, F> Problem<'_, I, F>
where
    I: GradcheckInputs,
    O: GradcheckOutput,
    F: Fn(I) -> O,
{
    /// `v^T f` at the inputs with tensor `index` replaced by `values`.
    fn evaluate(&self, index: usize, checked: &Checked, values: &[f64]) -> Result<f64> {
        let mut perturb = Perturb {
            index,
            seen: 0,
            checked,
            values,
        };
        let output = (self.function)(self.inputs.clone().map_tensors(&mut perturb)).into_flat()?;
        let output = to_host_f64(&output)?;
        if output.len() != self.projection.len() {
            return Err(Error::CheckedFunction(format!(
                "its output has {} entries at one point and {} at another",
                self.projection.len(),
                output.len()
            )));
        }
        Ok(output
            .iter()
            .zip(&self.projection)
            .map(|(y, v)| y * v)
            .sum())
    }

    /// The centred difference of `v^T f` along `direction` (entries of tensor `index`).
    fn centred(
        &self,
        index: usize,
        checked: &Checked,
        eps: f64,
        direction: impl Fn(&mut [f64], f64),
    ) -> Result<f64> {
        let mut values = checked.values.clone();
        direction(&mut values, eps);
        let plus = self.evaluate(index, checked, &values)?;
        values.copy_from_slice(&checked.values);
        direction(&mut values, -eps);
        let minus = self.evaluate(index, checked, &values)?;
        Ok((plus - minus) / (2.0 * eps))
    }
}

/// A random unit vector with entries drawn from `U[0, 1)` (PyTorch's fast-mode vectors).
fn unit_vector(rng: &mut StdRng, len: usize) -> Vec<f64> {
    let mut vector: Vec<f64> = (0..len).map(|_| rng.random::<f64>()).collect();
    let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// The row-major index of entry `flat` of a tensor of `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (position, &size) in index.iter_mut().zip(shape).rev() {
        *position = flat % size.max(1);
        flat /= size.max(1);
    }
    index
}

pub(super) fn run<I, O, F>(
    function: &F,
    inputs: I,
    options: &GradcheckOptions,
) -> Result<GradcheckReport>
where
    I: GradcheckInputs,
    O: GradcheckOutput,
    F: Fn(I) -> O,
{
    options.validate()?;
    let mut describe = Describe::default();
    let inputs = inputs.map_tensors(&mut describe);
    let checked = describe.found.into_iter().collect::<Result<Vec<_>>>()?;
    if checked.is_empty() {
        return Err(Error::CheckedFunction(
            "it has no float tensor to check (give one, or a module with parameters)".into(),
        ));
    }

    // The analytic side: one backward of v^T f.
    let tracked = inputs.clone().map_tensors(&mut Track);
    let output = function(tracked.clone()).into_flat()?;
    let output_len = output.dims()[0];
    if output_len == 0 {
        return Err(Error::CheckedFunction("its output is empty".into()));
    }
    let mut rng = StdRng::seed_from_u64(options.seed);
    let projection = if output_len == 1 {
        vec![1.0]
    } else {
        unit_vector(&mut rng, output_len)
    };
    let v = Tensor::<1>::from_data(
        TensorData::new(projection.clone(), [output_len]),
        (&output.device(), output.dtype()),
    );
    let projected = (output * v).sum();
    let gradients = if projected.is_tracked() {
        let grads = projected.backward();
        let mut read = ReadGradients {
            grads: &grads,
            found: Vec::new(),
        };
        tracked.map_tensors(&mut read);
        read.found.into_iter().collect::<Result<Vec<_>>>()?
    } else {
        vec![None; checked.len()]
    };

    let problem = Problem {
        function,
        inputs,
        projection,
    };
    let sum_v: f64 = problem.projection.iter().sum();
    let mut reports = Vec::with_capacity(checked.len());
    for (index, (input, gradient)) in checked.iter().zip(gradients).enumerate() {
        let got_gradient = gradient.is_some();
        let gradient = gradient.unwrap_or_else(|| vec![0.0; input.values.len()]);
        let mut comparisons = Vec::new();
        if options.fast_mode {
            for k in 0..options.directions {
                let u = unit_vector(&mut rng, input.values.len());
                let numerical = problem.centred(index, input, options.eps, |values, step| {
                    values.iter_mut().zip(&u).for_each(|(x, u)| *x += step * u)
                })?;
                let analytic = gradient.iter().zip(&u).map(|(g, u)| g * u).sum();
                // PyTorch's scaling: atol per entry, summed over the projections u and v.
                let atol = options.atol * u.iter().sum::<f64>() * sum_v;
                comparisons.push(Comparison::new(
                    Position::Direction(k),
                    analytic,
                    numerical,
                    atol,
                    options.rtol,
                ));
            }
        } else {
            for (entry, &analytic) in gradient.iter().enumerate() {
                let numerical = problem.centred(index, input, options.eps, |values, step| {
                    values[entry] += step
                })?;
                comparisons.push(Comparison::new(
                    Position::Element(unravel(entry, &input.shape)),
                    analytic,
                    numerical,
                    options.atol,
                    options.rtol,
                ));
            }
        }
        reports.push(judge(input, got_gradient, comparisons));
    }
    Ok(GradcheckReport {
        options: options.clone(),
        output_len,
        inputs: reports,
    })
}

/// The verdict on one input from its comparisons.
fn judge(input: &Checked, got_gradient: bool, comparisons: Vec<Comparison>) -> InputCheck {
    let verdict = if comparisons.iter().all(Comparison::passed) {
        Verdict::Passed
    } else if !got_gradient {
        Verdict::NoGradient
    } else if comparisons.iter().all(|c| c.numerical.abs() <= c.allowed) {
        // The finite differences are 0 to within the tolerance: the function does not depend
        // on this input, yet the backward wrote to it.
        Verdict::UnexpectedGradient
    } else {
        Verdict::Mismatch
    };
    InputCheck {
        name: input.name.clone(),
        shape: input.shape.clone(),
        verdict,
        analytic: comparisons.iter().map(|c| c.analytic).collect(),
        numerical: comparisons.iter().map(|c| c.numerical).collect(),
        worst: Comparison::worst(comparisons),
    }
}
