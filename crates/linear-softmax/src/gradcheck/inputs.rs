//! What [`gradcheck`](super::gradcheck) differentiates with respect to, and what it reads off
//! the checked function's result: [`GradcheckInputs`] (tensors, tuples and `Vec`s of them, a
//! module's float parameters) and [`GradcheckOutput`] (a tensor of any rank, or a `Result` of
//! one).

use std::fmt::Display;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::DType;

use crate::error::{Error, Result};

/// Rewrites the float tensors of a [`GradcheckInputs`] one at a time, in a fixed order (the
/// order in which [`gradcheck`](super::gradcheck) reports them). Burn's
/// [`ModuleMapper`](burn::module::ModuleMapper), for tensors that are not parameters.
pub trait TensorMapper {
    /// Returns the tensor to use in place of `tensor`; `name` is the parameter's path in its
    /// module (`"layers.0.weight"`) or `None` for a positional input.
    fn map<const D: usize>(&mut self, tensor: Tensor<D>, name: Option<&str>) -> Tensor<D>;
}

/// The tensors a gradient check perturbs and differentiates with respect to: a float
/// [`Tensor`] of any rank, `()`, tuples of up to four inputs and `Vec`s of them (PyTorch's
/// tuple of inputs). [`gradcheck_module`](super::gradcheck_module) adds a module's float
/// parameters in front of them.
///
/// Implement it for a struct of your own tensors by mapping each field in turn.
pub trait GradcheckInputs: Clone {
    /// Maps every float tensor through `mapper`, in order, and returns the rebuilt inputs.
    fn map_tensors<M: TensorMapper>(self, mapper: &mut M) -> Self;
}

impl<const D: usize> GradcheckInputs for Tensor<D> {
    fn map_tensors<M: TensorMapper>(self, mapper: &mut M) -> Self {
        mapper.map(self, None)
    }
}

impl GradcheckInputs for () {
    fn map_tensors<M: TensorMapper>(self, _mapper: &mut M) -> Self {}
}

impl<T: GradcheckInputs> GradcheckInputs for Vec<T> {
    fn map_tensors<M: TensorMapper>(self, mapper: &mut M) -> Self {
        self.into_iter()
            .map(|input| input.map_tensors(mapper))
            .collect()
    }
}

macro_rules! tuple_inputs {
    ($($name:ident),+) => {
        impl<$($name: GradcheckInputs),+> GradcheckInputs for ($($name,)+) {
            #[allow(non_snake_case)]
            fn map_tensors<M: TensorMapper>(self, mapper: &mut M) -> Self {
                let ($($name,)+) = self;
                ($($name.map_tensors(mapper),)+)
            }
        }
    };
}

tuple_inputs!(A);
tuple_inputs!(A, B);
tuple_inputs!(A, B, C);
tuple_inputs!(A, B, C, E);

/// A module's float parameters as gradient-check inputs, named by their path in the module.
#[derive(Clone)]
pub(super) struct Parameters<M>(pub(super) M);

impl<M: Module> GradcheckInputs for Parameters<M> {
    fn map_tensors<T: TensorMapper>(self, mapper: &mut T) -> Self {
        let mut adapter = ParameterMapper {
            mapper,
            path: Vec::new(),
        };
        Self(self.0.map(&mut adapter))
    }
}

/// A [`TensorMapper`] seen as Burn's [`ModuleMapper`], keeping the path of the module it is in.
struct ParameterMapper<'a, T> {
    mapper: &'a mut T,
    path: Vec<String>,
}

impl<T: TensorMapper> ModuleMapper for ParameterMapper<'_, T> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        param.map(|tensor| self.mapper.map(tensor, Some(&name)))
    }
}

/// Casts each float parameter to `f64`, a leaf again, requiring a gradient if it did.
pub(super) struct CastToF64;

impl ModuleMapper for CastToF64 {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|tensor| {
            let require_grad = tensor.is_require_grad();
            let cast = tensor.cast(DType::F64).detach();
            if require_grad {
                cast.require_grad()
            } else {
                cast
            }
        })
    }
}

/// What a checked function returns: a float tensor of any rank (a scalar loss is `[1]`), or a
/// `Result` of one whose error is reported as [`Error::CheckedFunction`].
pub trait GradcheckOutput {
    /// The output as one row-major vector.
    fn into_flat(self) -> Result<Tensor<1>>;
}

impl<const D: usize> GradcheckOutput for Tensor<D> {
    fn into_flat(self) -> Result<Tensor<1>> {
        let elements = self.shape().num_elements();
        Ok(self.reshape([elements]))
    }
}

impl<T: GradcheckOutput, E: Display> GradcheckOutput for Result<T, E> {
    fn into_flat(self) -> Result<Tensor<1>> {
        self.map_err(|err| Error::CheckedFunction(err.to_string()))?
            .into_flat()
    }
}
