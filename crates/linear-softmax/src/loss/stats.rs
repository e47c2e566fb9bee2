//! What a loss pass knows about each row besides its loss: the predicted class, whether it is
//! right, the log-probability of the target ([`LossStats`]).

use burn::prelude::*;

use crate::error::Result;
use crate::host::to_host_i64;
use crate::loss::options::LossOptions;
use crate::loss::resolved::{ResolvedLoss, ResolvedTargets, ignored_rows};
use crate::loss::targets::{TargetKind, Targets};

/// Per-row statistics computed alongside a loss, by the same pass, when
/// [`LossOptions::stats`] asks for them: for the fused path, by its
/// chunks' row pass (the row maximum is already there), so neither a second forward pass nor
/// (on a backend with the fused op) an `[N, C]` tensor is needed. Every tensor is on the loss's
/// device, detached from any graph, its Int tensors of the device's Int type (as `argmax`'s);
/// nothing is read back to the host until [`accuracy`](Self::accuracy) is called.
///
/// With logits `S = X W + b` (`S'` after the softcap, when that option is on),
/// `lse_i = log sum_k exp(S'_ik)` and targets `T` (one-hot rows for class indices):
///
/// ```text
/// predictions_i            = argmax_k S_ik                       (the class `predict` gives)
/// correct                  = #{ i counted : predictions_i is a right answer }
/// counted                  = #{ i : row i is not ignored }
/// target_log_probability_i = sum_k T_ik (S'_ik - lse_i)          (0 for ignored rows)
/// entropy_i                = - sum_k A_ik log A_ik,  A = softmax(S')   (0 for ignored rows)
/// ```
///
/// For class indices a prediction is right when it is the label, and ignored rows (the
/// `ignore_index`, `pad_tokens`) are not counted. For probability targets a prediction is
/// right when the target gives it the row's largest probability (for one-hot rows, the
/// label; with several tied classes, as multi-hot targets have, any of them), and every row
/// counts. `argmax` takes the first maximum, and a NaN as the largest value, as Burn's
/// `argmax` on the CPU backends and PyTorch's do. The fused kernels compute the logits with
/// their own GEMMs, whose sums run in another order than `forward`'s: two classes within a few
/// ulps of each other may rank the other way than in `predict`. The target log-probability ignores label
/// smoothing, class weights and the z-loss: it is `log p(y_i | x_i)` for class indices (the
/// token log-likelihood of an LM head) and the negative plain cross-entropy for probabilities.
///
/// # Shapes
/// - `predictions`: `[N]` (Int), `correct`: `[1]` (Int), `counted`: `[1]` (Int),
///   `target_log_probability`, `entropy`: `[N]` (`lse` is [`LossOutput::log_sum_exp`](crate::LossOutput::log_sum_exp))
///
/// # Example
/// ```
/// use burn::prelude::*;
/// use linear_softmax::{LinearSoftmaxConfig, LossOptions, Targets};
///
/// let device = Device::flex().autodiff();
/// let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
/// let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [0.0, 1.0, 0.0]], &device);
/// // The last row is padding (label -100): it is neither correct nor counted.
/// let targets = Targets::from_indices_with_ignore(&[3, 0, -100], 4, -100, &device)?;
/// let options = LossOptions::new().with_stats(true);
///
/// let output = head.loss_output(x.clone(), &targets, &options)?;
/// let grads = output.loss.backward();
/// let stats = output.stats.expect("asked for");
/// assert!(head.linear.weight.grad(&grads).is_some());
///
/// assert_eq!(stats.predictions.to_data(), head.predict(x)?.to_data());
/// assert_eq!(stats.counted.clone().into_scalar::<i64>(), 2);
/// let accuracy = stats.accuracy()?.expect("two rows count");
/// assert!((0.0..=1.0).contains(&accuracy));
/// # Ok::<(), linear_softmax::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LossStats {
    /// `argmax_k S_ik`, `[N]` (Int): the class [`LinearSoftmax::predict`](crate::LinearSoftmax::predict)
    /// gives for the same logits.
    pub predictions: Tensor<1, Int>,
    /// How many counted rows were predicted right, `[1]` (Int).
    pub correct: Tensor<1, Int>,
    /// How many rows count (those not ignored), `[1]` (Int): the accuracy's denominator.
    pub counted: Tensor<1, Int>,
    /// `sum_k T_ik log softmax(S')_ik`, `[N]`; 0 for ignored rows.
    pub target_log_probability: Tensor<1>,
    /// The entropy `H_i = -sum_k A_ik log A_ik` of the row's softmax `A = softmax(S')` (of the
    /// capped, tempered logits: the distribution a sampler draws from), `[N]`, in nats; 0 for
    /// ignored rows. The entropy of RL fine-tuning's monitoring (and, as
    /// [`LossOptions::entropy_bonus`], its bonus).
    pub entropy: Tensor<1>,
}

impl LossStats {
    /// `correct / counted`, read back to the host (one read of each count); `None` when no row
    /// counts. In a training loop, sum `correct` and `counted` over the steps on the device and
    /// read them once per epoch instead: on a GPU every read waits for the device.
    pub fn accuracy(&self) -> Result<Option<f64>> {
        let correct = to_host_i64(&self.correct)?[0];
        let counted = to_host_i64(&self.counted)?[0];
        Ok((counted > 0).then(|| correct as f64 / counted as f64))
    }

    /// The statistics from a pass's per-row results: `predictions` `[N]`, the target
    /// log-probabilities and the entropies `[N]` (any value for ignored rows), from
    /// [`target_log_probabilities`] and [`entropies`] or a kernel's row pass.
    pub(crate) fn from_rows(
        predictions: Tensor<1, Int>,
        target_log_probability: Tensor<1>,
        entropy: Tensor<1>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Self {
        let device = target_log_probability.device();
        let rows = target_log_probability.dims()[0];
        let (correct, counted, target_log_probability, entropy) = match targets.kind() {
            TargetKind::Classes { indices, .. } => {
                let labels = indices.clone().to_device(&device);
                let ignored = ignored_rows(&labels, targets.ignore_index(), options);
                // The labels may be of a narrower Int type than the predictions.
                let labels = labels.cast(predictions.dtype());
                let right = predictions.clone().equal(labels);
                match ignored {
                    None => (
                        right.int().sum(),
                        Tensor::from_data([rows as i64], &device),
                        target_log_probability,
                        entropy,
                    ),
                    Some(ignored) => (
                        right.bool_and(ignored.clone().bool_not()).int().sum(),
                        ignored.clone().bool_not().int().sum(),
                        target_log_probability.mask_fill(ignored.clone(), 0.0),
                        entropy.mask_fill(ignored, 0.0),
                    ),
                }
            }
            TargetKind::Probabilities(probabilities) => {
                let probabilities = probabilities.clone().to_device(&device);
                let predicted = probabilities
                    .clone()
                    .gather(1, predictions.clone().unsqueeze_dim(1));
                let largest = probabilities.max_dim(1);
                let right = predicted.equal(largest).squeeze_dim::<1>(1);
                (
                    right.int().sum(),
                    Tensor::from_data([rows as i64], &device),
                    target_log_probability,
                    entropy,
                )
            }
            TargetKind::Teacher { .. } => {
                unreachable!("statistics with a teacher are refused (Targets::check_teacher)")
            }
        };
        Self {
            predictions,
            correct,
            counted,
            target_log_probability,
            entropy,
        }
    }

    /// The statistics from the full logits `S` and capped logits `S'` `[N, C]` (the same
    /// tensor without a softcap), as the autodiff path has them.
    pub(crate) fn from_logits(
        logits: Tensor<2>,
        capped: Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Self {
        let capped = capped.detach();
        let row_max = capped.clone().max_dim(1);
        let log_sum = (capped.clone() - row_max.clone()).exp().sum_dim(1).log();
        Self::from_shifted(logits, capped, row_max, log_sum, targets, options)
    }

    /// [`from_logits`](Self::from_logits) given the rows' maxima `m` and
    /// `log sum_k exp(S'_ik - m_i)` `[N, 1]` that a forward pass already formed (the manual
    /// path's cache), so no second pass over the logits is made for them.
    pub(crate) fn from_shifted(
        logits: Tensor<2>,
        capped: Tensor<2>,
        row_max: Tensor<2>,
        log_sum: Tensor<2>,
        targets: &Targets,
        options: &LossOptions,
    ) -> Self {
        let (logits, capped) = (logits.detach(), capped.detach());
        let (row_max, log_sum) = (row_max.detach(), log_sum.detach());
        let predictions = logits.argmax(1).squeeze_dim(1);
        let resolved = ResolvedLoss::new(targets, options, &capped.device(), capped.dtype());
        let log_probability =
            target_log_probabilities(&capped, &row_max, &log_sum, &resolved.targets);
        let entropy = entropies(&capped, &row_max, &log_sum);
        Self::from_rows(predictions, log_probability, entropy, targets, options)
    }
}

/// `H_i = -sum_k A_ik log A_ik = log sum_k exp(S'_ik - m_i) - sum_k A_ik (S'_ik - m_i)` of each
/// row of the (capped) logits `[R, C]`, `[R]`, from their row maxima `m` and log-sums `[R, 1]`:
/// the shifted form keeps a confident row's small entropy free of `m_i`'s rounding.
pub(crate) fn entropies(logits: &Tensor<2>, row_max: &Tensor<2>, log_sum: &Tensor<2>) -> Tensor<1> {
    let shifted = logits.clone() - row_max.clone();
    let probabilities = (shifted.clone() - log_sum.clone()).exp();
    (log_sum.clone() - (probabilities * shifted).sum_dim(1)).squeeze_dim(1)
}

/// `log A_{i, y_i}` for class indices (of class 0 for ignored rows), `sum_k T_ik log A_ik` for
/// probabilities (their rows' sums as given, 1 within the constructors' tolerance), `[R]`,
/// with `A = softmax(S')` of the (capped) logits `[R, C]`, from their row maxima `m` `[R, 1]`
/// and `log sum_k exp(S'_ik - m_i)` `[R, 1]`.
///
/// Formed from `S' - m` and that log-sum, as the loss is (see
/// [`softmax_cross_entropy_forward`](crate::math::softmax_cross_entropy_forward)): a confident
/// row's log-probability keeps the precision of `log_softmax`, not that of `m_i`.
pub(crate) fn target_log_probabilities(
    logits: &Tensor<2>,
    row_max: &Tensor<2>,
    log_sum: &Tensor<2>,
    targets: &ResolvedTargets,
) -> Tensor<1> {
    match targets {
        ResolvedTargets::Classes { labels, .. } => {
            let shifted = logits.clone().gather(1, labels.clone()) - row_max.clone();
            (shifted - log_sum.clone()).squeeze_dim(1)
        }
        ResolvedTargets::Probabilities(probabilities) => {
            let shifted = (probabilities.clone() * (logits.clone() - row_max.clone())).sum_dim(1);
            let mass = probabilities.clone().sum_dim(1);
            (shifted - log_sum.clone() * mass).squeeze_dim(1)
        }
        ResolvedTargets::Teacher { .. } => {
            unreachable!("statistics with a teacher are refused (Targets::check_teacher)")
        }
    }
}
