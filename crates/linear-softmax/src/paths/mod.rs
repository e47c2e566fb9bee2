//! The one door: [`LinearSoftmax::loss`], [`LinearSoftmax::loss_output`] and
//! [`LinearSoftmax::gradients`], and the one place that dispatches on
//! [`LossOptions::path`](crate::LossOptions::path).
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | the entry points: checks, rows of `x`, dispatch on the path |
//! | `autodiff.rs` | path 1, the reference: ordinary tensor ops, Burn's autograd |
//! | `manual.rs` | path 2: [`crate::math`]'s pairs composed, the hand-derived backward |
//!
//! Path 3, the fused op, is [`crate::fused`].

mod autodiff;
mod manual;

use std::borrow::Cow;

use burn::prelude::*;

use crate::error::{Error, Result};
use crate::fused;
use crate::head::LinearSoftmax;
use crate::loss::{HeadGradients, LossOptions, LossOutput, LossPath, Targets};

impl LinearSoftmax {
    /// The training loss as a node of the caller's graph, by the path
    /// [`options.path`](LossOptions::path) chooses (the fused op by default).
    ///
    /// Without options `L = (1/N) sum_i (lse_i - S_{i, y_i})`, with `S = X W + b` and
    /// `lse_i = log sum_k exp(S_ik)`; [`LossOptions`] has the rest. On an autodiff device
    /// (`head.train()`, or `x` produced by tracked layers), `loss.backward()` gives every
    /// tracked tensor its gradient, `x` included, in `x`'s shape.
    ///
    /// `x` may have any leading dimensions, as PyTorch's `linear` takes them: `[N, D]`, or
    /// `[B, T, D]` for a language-model head, whose rows are `x.reshape([B * T, D])` (a view
    /// of a contiguous `x`, no copy); the targets have the same leading shape.
    ///
    /// # Shapes
    /// - `x`: `[.., D]`, `targets`: `[..]` labels or `[.., C]` probabilities, result: `[1]`
    ///   (`[N]` with reduction none, `N` the product of the leading dimensions: `.reshape`
    ///   gives the grid)
    ///
    /// # Errors
    /// A bad shape, float type, device or option, checked from metadata before anything runs.
    ///
    /// # Example
    /// ```
    /// use burn::prelude::*;
    /// use linear_softmax::{LinearSoftmaxConfig, LossOptions, Targets};
    ///
    /// let device = Device::flex().autodiff();
    /// let head = LinearSoftmaxConfig::new(8, 50).init(&device)?;
    /// // Two sequences of 4 tokens; the second is padded after 2 tokens (label -100).
    /// let hidden = Tensor::<3>::random([2, 4, 8], burn::tensor::Distribution::Default, &device)
    ///     .require_grad();
    /// let labels = Tensor::<2, Int>::from_data([[3, 14, 15, 9], [2, 6, -100, -100]], &device);
    /// let targets = Targets::from_tensor(labels, 50, Some(-100))?;
    /// let loss = head.loss(hidden.clone(), &targets, &LossOptions::new())?;
    /// let grads = loss.backward();
    /// assert_eq!(hidden.grad(&grads).unwrap().dims(), [2, 4, 8]);
    /// # Ok::<(), linear_softmax::Error>(())
    /// ```
    pub fn loss<const K: usize>(
        &self,
        x: Tensor<K>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<Tensor<1>> {
        self.check_loss_inputs(&x, targets, options)?;
        check_gradient_filter(options, &x.device(), Graph::Autograd)?;
        let x = self.rows(x);
        let targets = &targets.shifted(options.shift);
        // Nothing but the loss: the statistics are not computed, and the autodiff path (alone
        // in not getting `lse` for free) skips it.
        let options = if options.stats {
            Cow::Owned(options.clone().with_stats(false))
        } else {
            Cow::Borrowed(options)
        };
        Ok(match options.path {
            LossPath::Manual => manual::loss_output(self, x, targets, &options, false).loss,
            LossPath::Fused if fused::is_available(&x.device()) => {
                fused::loss_output(self, x, targets, &options)?.loss
            }
            LossPath::Autodiff | LossPath::Fused => autodiff::loss(self, x, targets, &options),
        })
    }

    /// [`loss`](Self::loss), and what the same pass computed on the way: the per-row
    /// log-sum-exp `lse_i` and, when [`options.stats`](LossOptions::stats), the per-row
    /// [`LossStats`](crate::LossStats) (predictions, accuracy counts, target
    /// log-probabilities). No second forward pass; on the fused path no `[N, C]` tensor.
    ///
    /// # Shapes
    /// - as [`loss`](Self::loss); see [`LossOutput`] for the rest
    ///
    /// # Example
    /// ```
    /// use burn::prelude::*;
    /// use linear_softmax::{LinearSoftmaxConfig, LossOptions, Targets};
    ///
    /// let device = Device::flex().autodiff();
    /// let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
    /// let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], &device);
    /// let targets = Targets::from_indices(&[3, 0], 4, &device)?;
    /// let options = LossOptions::new().with_z_loss(1e-4).with_stats(true);
    ///
    /// let output = head.loss_output(x, &targets, &options)?;
    /// let grads = output.loss.backward();
    /// assert!(head.linear.weight.grad(&grads).is_some());
    /// assert_eq!(output.log_sum_exp.dims(), [2]);
    /// let stats = output.stats.expect("asked for");
    /// assert_eq!(stats.counted.into_scalar::<i64>(), 2);
    /// # Ok::<(), linear_softmax::Error>(())
    /// ```
    pub fn loss_output<const K: usize>(
        &self,
        x: Tensor<K>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<LossOutput> {
        self.check_loss_inputs(&x, targets, options)?;
        check_gradient_filter(options, &x.device(), Graph::Autograd)?;
        let x = self.rows(x);
        let targets = &targets.shifted(options.shift);
        let stats = options.stats;
        Ok(match options.path {
            LossPath::Autodiff => autodiff::loss_output(self, x, targets, options, stats),
            LossPath::Manual => manual::loss_output(self, x, targets, options, stats),
            LossPath::Fused if fused::is_available(&x.device()) => {
                fused::loss_output(self, x, targets, options)?
            }
            LossPath::Fused => autodiff::loss_output(self, x, targets, options, stats),
        })
    }

    /// The loss and its gradients `dW, db, dX` as plain values, no graph (the upstream
    /// gradient 1 for every entry of the loss, as `loss.backward()` seeds it), and the
    /// statistics when [`options.stats`](LossOptions::stats): the hand-derived gradients with
    /// [`LossPath::Manual`] and [`LossPath::Fused`], Burn's autograd's with
    /// [`LossPath::Autodiff`]. For side-by-side comparisons, and training by hand on a plain
    /// device.
    ///
    /// # Shapes
    /// - `x`: `[.., D]` and `targets` as for [`loss`](Self::loss); `d_input` comes as the rows
    ///   `[N, D]` of `x` (`.reshape(x.dims())` gives `x`'s shape); see [`HeadGradients`]
    ///
    /// # Example
    /// ```
    /// use burn::prelude::*;
    /// use linear_softmax::{LinearSoftmaxConfig, LossOptions, LossPath, Targets};
    ///
    /// let device = Device::flex();
    /// let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
    /// let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], &device);
    /// let targets = Targets::from_indices(&[3, 0], 4, &device)?;
    ///
    /// let by_hand = LossOptions::new().with_path(LossPath::Manual);
    /// let by_autograd = LossOptions::new().with_path(LossPath::Autodiff);
    /// let by_hand = head.gradients(x.clone(), &targets, &by_hand)?;
    /// let by_autograd = head.gradients(x, &targets, &by_autograd)?;
    /// let difference = (by_hand.d_weight - by_autograd.d_weight).abs().max();
    /// assert!(difference.into_scalar::<f32>() < 1e-6);
    /// # Ok::<(), linear_softmax::Error>(())
    /// ```
    pub fn gradients<const K: usize>(
        &self,
        x: Tensor<K>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Result<HeadGradients> {
        self.check_loss_inputs(&x, targets, options)?;
        check_gradient_filter(options, &x.device(), Graph::Values)?;
        let x = self.rows(x);
        let targets = &targets.shifted(options.shift);
        Ok(match options.path {
            LossPath::Autodiff => autodiff::gradients(self, x, targets, options),
            LossPath::Manual => manual::gradients(self, x, targets, options),
            LossPath::Fused if fused::is_available(&x.device()) => {
                fused::gradients(self, x, targets, options)?
            }
            LossPath::Fused => autodiff::gradients(self, x, targets, options),
        })
    }

    /// The rows `[N, D]` of a checked input `[.., D]`.
    fn rows<const K: usize>(&self, x: Tensor<K>) -> Tensor<2> {
        let dims = x.dims();
        let rows = dims[..K - 1].iter().product::<usize>();
        x.reshape([rows, dims[K - 1]])
    }
}

/// What an entry point returns: a node of the caller's graph, or plain gradients.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Graph {
    /// `loss`, `loss_output`: on an autodiff device the loss is a graph node.
    Autograd,
    /// `gradients`: the gradients as values, by the path's own backward.
    Values,
}

/// Refuses a gradient filter where Burn's autograd would derive the gradient, which cannot
/// filter it (the autodiff path is refused by `LossOptions::validate`): the manual path's
/// loss on an autodiff device, and the fused path on a backend without the fused op.
fn check_gradient_filter(options: &LossOptions, device: &Device, graph: Graph) -> Result<()> {
    if !options.gradient_filter.is_on() {
        return Ok(());
    }
    let expected = match options.path {
        LossPath::Manual if graph == Graph::Autograd && device.is_autodiff() => {
            "0 for the manual path's loss on an autodiff device (Burn's autograd \
             differentiates it and cannot filter: use the fused path, or the manual path's \
             gradients())"
        }
        LossPath::Fused if !fused::is_available(device) => {
            "0 on a backend without the fused op (Burn's autograd differentiates the loss \
             there and cannot filter)"
        }
        _ => return Ok(()),
    };
    Err(Error::InvalidOption {
        name: "gradient_filter threshold",
        value: options.gradient_filter.threshold.to_string(),
        expected,
    })
}
