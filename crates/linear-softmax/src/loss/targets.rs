//! Validated targets: class indices, class probabilities (soft targets) or multi-hot rows.
//!
//! Targets are checked once, where they enter (host data, or an Int/Float tensor read back
//! once), so the loss paths never need a per-step host round trip to know they are valid. The
//! ignore index is part of the targets (it says which labels mark padding, and the labels are
//! validated against it), stated nowhere else.

use burn::prelude::*;
use burn::tensor::DType;

use crate::error::{Error, Result};
use crate::host::{to_host_f64, to_host_i64};
use crate::loss::options::LossOptions;
use crate::loss::teacher::Teacher;
use crate::loss::validation::{check_class_count, validate_labels, validate_probabilities};

/// How far a probability row's sum may stray from 1 (f32 data summed over many classes).
pub const PROBABILITY_SUM_TOLERANCE: f64 = 1e-4;

/// What the loss compares the logits with.
///
/// # Shapes
/// Targets have the leading shape of the input `x` `[.., D]` they go with (`[N]` for `[N, D]`,
/// `[B, T]` for `[B, T, D]`), stored as `N` rows in row-major order:
/// - class indices: `[..]` (Int)
/// - probabilities: `[.., C]`
///
/// # Example
/// ```
/// use burn::prelude::*;
/// use linear_softmax::Targets;
///
/// let device = Device::flex();
/// let targets = Targets::from_indices(&[0, 2, 1], 3, &device).unwrap();
/// assert_eq!(targets.len(), 3);
/// let err = Targets::from_indices(&[0, 3], 3, &device).unwrap_err();
/// assert!(err.to_string().contains("label 3 at index 1"));
///
/// // PyTorch's ignore_index: -100 marks rows that do not count.
/// let padded = Targets::from_indices_with_ignore(&[0, -100, 1], 3, -100, &device).unwrap();
/// assert_eq!(padded.len(), 3);
/// ```
#[derive(Clone, Debug)]
pub struct Targets {
    pub(super) kind: TargetKind,
    pub(super) n_classes: usize,
    /// The leading shape (`[N]`, `[B, T]`, ...), whose product is the number of rows.
    pub(super) shape: Vec<usize>,
    /// Per-row loss weights `rho_i` `[N]`, finite and `>= 0` (absent: all 1).
    pub(super) row_weights: Option<Tensor<1>>,
}

/// The kinds of targets.
// One value per batch: the size difference between the variants (a teacher holds three
// tensors) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum TargetKind {
    /// One class index per row, `[N]`; labels equal to `ignore_index` (which may lie outside
    /// `0..C`) were accepted as ignored rows.
    Classes {
        /// The labels.
        indices: Tensor<1, Int>,
        /// The out-of-range label value accepted as "ignored", if any.
        ignore_index: Option<i64>,
    },
    /// A class distribution per row, `[N, C]`: non-negative, each row summing to 1.
    Probabilities(Tensor<2>),
    /// A frozen teacher's distribution, its logits formed from its hidden states `[N, D_t]`
    /// (distillation: [`Targets::from_teacher`], [`Targets::with_teacher`]), with the labels
    /// `[N]` of the hard term and of the ignored rows when given.
    Teacher {
        /// The teacher's head and hidden states.
        teacher: Teacher,
        /// The labels, when given ([`Targets::with_teacher`]).
        labels: Option<Tensor<1, Int>>,
        /// The labels' ignore index, if any.
        ignore_index: Option<i64>,
    },
}

impl Targets {
    /// Validates host class labels and puts them on `device`.
    ///
    /// Returns [`Error::LabelOutOfRange`] naming the first label outside `0..n_classes`.
    pub fn from_indices(labels: &[i64], n_classes: usize, device: &Device) -> Result<Self> {
        Self::classes(labels, n_classes, None, device)
    }

    /// Like [`from_indices`](Self::from_indices), but labels equal to `ignore_index` (e.g.
    /// PyTorch's -100, which may lie outside `0..n_classes`) mark ignored rows: they count in
    /// neither the loss nor the mean's denominator (PyTorch's `ignore_index`).
    pub fn from_indices_with_ignore(
        labels: &[i64],
        n_classes: usize,
        ignore_index: i64,
        device: &Device,
    ) -> Result<Self> {
        Self::classes(labels, n_classes, Some(ignore_index), device)
    }

    fn classes(
        labels: &[i64],
        n_classes: usize,
        ignore_index: Option<i64>,
        device: &Device,
    ) -> Result<Self> {
        validate_labels(labels, n_classes, ignore_index)?;
        let indices =
            Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [labels.len()]), device);
        Ok(Self {
            kind: TargetKind::Classes {
                indices,
                ignore_index,
            },
            n_classes,
            shape: vec![labels.len()],
            row_weights: None,
        })
    }

    /// Validates an Int tensor of labels of any shape (`[N]`, or `[B, T]` for a sequence
    /// batch), one read back to the host, here and only here; `ignore_index` as in
    /// [`from_indices_with_ignore`](Self::from_indices_with_ignore). The rows are the labels
    /// in row-major order, as `x.reshape([B * T, D])` orders the rows of `x` `[B, T, D]`.
    ///
    /// ```
    /// use burn::prelude::*;
    /// use linear_softmax::Targets;
    ///
    /// let device = Device::flex();
    /// // Two sequences of 3 tokens; the second ends in padding (-100).
    /// let labels = Tensor::<2, Int>::from_data([[3, 1, 4], [1, -100, -100]], &device);
    /// let targets = Targets::from_tensor(labels, 5, Some(-100))?;
    /// assert_eq!((targets.len(), targets.shape()), (6, &[2, 3][..]));
    /// # Ok::<(), linear_softmax::Error>(())
    /// ```
    pub fn from_tensor<const K: usize>(
        labels: Tensor<K, Int>,
        n_classes: usize,
        ignore_index: Option<i64>,
    ) -> Result<Self> {
        let shape = labels.dims().to_vec();
        let rows = shape.iter().product::<usize>();
        let labels = if rows == 0 {
            // Burn's `reshape` reads a 0 as "keep this dimension": build the empty labels.
            Tensor::from_data(TensorData::new(Vec::<i64>::new(), [0]), &labels.device())
        } else {
            labels.reshape([rows])
        };
        validate_labels(&to_host_i64(&labels)?, n_classes, ignore_index)?;
        Ok(Self {
            kind: TargetKind::Classes {
                indices: labels,
                ignore_index,
            },
            n_classes,
            shape,
            row_weights: None,
        })
    }

    /// Validates class probabilities `[N, C]` given row-major on the host: every entry finite
    /// and `>= 0`, every row summing to 1 within [`PROBABILITY_SUM_TOLERANCE`]. Stored in f64;
    /// the loss casts them to the logits' float type.
    pub fn from_probabilities(
        values: &[f64],
        [rows, n_classes]: [usize; 2],
        device: &Device,
    ) -> Result<Self> {
        if rows.checked_mul(n_classes) != Some(values.len()) {
            return Err(Error::ShapeMismatch {
                what: "probability targets",
                expected: vec![rows, n_classes],
                got: vec![values.len()],
            });
        }
        validate_probabilities(values, n_classes)?;
        let probabilities = Tensor::<2>::from_data(
            TensorData::new(values.to_vec(), [rows, n_classes]),
            (device, DType::F64),
        );
        Ok(Self {
            kind: TargetKind::Probabilities(probabilities),
            n_classes,
            shape: vec![rows],
            row_weights: None,
        })
    }

    /// Validates a probability tensor `[.., C]` (`[N, C]`, or `[B, T, C]` for a sequence
    /// batch; one read back to the host).
    pub fn from_probability_tensor<const K: usize>(probabilities: Tensor<K>) -> Result<Self> {
        let dims = probabilities.dims();
        let n_classes = dims[K - 1];
        let shape = dims[..K - 1].to_vec();
        let rows = shape.iter().product::<usize>();
        if rows == 0 || n_classes == 0 {
            // Burn's `reshape` reads a 0 as "keep this dimension"; no row to validate either.
            check_class_count(n_classes)?;
            let empty = TensorData::new(Vec::<f64>::new(), [0, n_classes]);
            let dtype = probabilities.dtype();
            let probabilities = Tensor::from_data(empty, (&probabilities.device(), dtype));
            let kind = TargetKind::Probabilities(probabilities);
            return Ok(Self {
                kind,
                n_classes,
                shape,
                row_weights: None,
            });
        }
        let probabilities = probabilities.reshape([rows, n_classes]);
        validate_probabilities(&to_host_f64(&probabilities)?, n_classes)?;
        Ok(Self {
            kind: TargetKind::Probabilities(probabilities),
            n_classes,
            shape,
            row_weights: None,
        })
    }

    /// Multi-hot targets: a row with `m` classes set becomes the distribution
    /// `multi_hot / m`, so the loss is the mean of `-log p_k` over the row's set classes (a
    /// softmax shared by the set classes, not `m` independent sigmoids). Every row needs at
    /// least one class.
    pub fn from_multi_hot(
        multi_hot: &[bool],
        [rows, n_classes]: [usize; 2],
        device: &Device,
    ) -> Result<Self> {
        check_class_count(n_classes)?;
        if rows.checked_mul(n_classes) != Some(multi_hot.len()) {
            return Err(Error::ShapeMismatch {
                what: "multi-hot targets",
                expected: vec![rows, n_classes],
                got: vec![multi_hot.len()],
            });
        }
        let mut values = Vec::with_capacity(multi_hot.len());
        for (row, hot) in multi_hot.chunks(n_classes).enumerate() {
            let set = hot.iter().filter(|&&h| h).count();
            if set == 0 {
                return Err(Error::InvalidTarget {
                    row,
                    message: "a multi-label row has no class set".into(),
                });
            }
            values.extend(hot.iter().map(|&h| if h { 1.0 / set as f64 } else { 0.0 }));
        }
        Self::from_probabilities(&values, [rows, n_classes], device)
    }

    /// The leading shape the targets were given in (`[N]`, `[B, T]`, ...): the loss checks
    /// it against the leading dimensions of `x`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The label that marks ignored rows, given to the constructor, if any.
    pub fn ignore_index(&self) -> Option<i64> {
        match &self.kind {
            TargetKind::Classes { ignore_index, .. } | TargetKind::Teacher { ignore_index, .. } => {
                *ignore_index
            }
            TargetKind::Probabilities(_) => None,
        }
    }

    /// Number of targets (rows).
    pub fn len(&self) -> usize {
        self.kind.rows()
    }

    /// Whether there are no targets.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes the targets were validated against.
    pub fn n_classes(&self) -> usize {
        self.n_classes
    }

    /// The kind of targets and their tensor.
    pub fn kind(&self) -> &TargetKind {
        &self.kind
    }

    /// The denominator reduction mean divides these targets' summed loss by under `options`:
    /// `sum_i rho_i v_i w_{y_i}` (the non-ignored rows, weighted by their class weights and row
    /// weights) for class indices, `sum_i rho_i` (`N` without row weights) for probabilities,
    /// `sum_i rho_i v_i` for a teacher's (its labels, when given, say which rows count).
    /// Summed over the micro-batches of an optimiser step, it is the
    /// [`LossOptions::mean_denominator`] that makes their accumulated gradients those of the
    /// whole batch's mean (Hugging Face's `num_items_in_batch`).
    ///
    /// It is this batch's own denominator: the options' `mean_denominator`, if set, is not
    /// consulted. A step whose micro-batches are all ignored has a total of 0, which
    /// `mean_denominator` refuses: skip the step (its loss and gradients would be 0).
    ///
    /// Reads the labels (and row weights) back to the host once (exact in f64): call it once per micro-batch
    /// when the step is assembled, or count on the host where the batches are made.
    ///
    /// ```
    /// use burn::prelude::*;
    /// use linear_softmax::{LinearSoftmaxConfig, LossOptions, Targets};
    ///
    /// let device = Device::flex().autodiff();
    /// let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
    /// let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [1.0, 1.0, 0.0]], &device);
    /// // Two micro-batches of one optimiser step; -100 marks padding.
    /// let micro = [
    ///     (x.clone().slice([0..2]), Targets::from_indices_with_ignore(&[3, -100], 4, -100, &device)?),
    ///     (x.slice([2..3]), Targets::from_indices_with_ignore(&[1], 4, -100, &device)?),
    /// ];
    /// let step_total: f64 = micro
    ///     .iter()
    ///     .map(|(_, targets)| targets.mean_denominator(&LossOptions::new()))
    ///     .sum::<Result<f64, _>>()?;
    /// assert_eq!(step_total, 2.0);
    /// let options = LossOptions::new().with_mean_denominator(Some(step_total));
    /// for (x, targets) in micro {
    ///     let _grads = head.loss(x, &targets, &options)?.backward();
    ///     // ... accumulate the gradients, then one optimiser step
    /// }
    /// # Ok::<(), linear_softmax::Error>(())
    /// ```
    pub fn mean_denominator(&self, options: &LossOptions) -> Result<f64> {
        options.validate_for(self.n_classes)?;
        self.check_options(options)?;
        if options.shift > 0 {
            // The positions the shift leaves out count for nothing.
            let shifted = self.shifted(options.shift);
            return shifted.mean_denominator(&options.clone().with_shift(0));
        }
        let rows = self.len();
        let row_weights = match &self.row_weights {
            Some(weights) => to_host_f64(weights)?,
            None => vec![1.0; rows],
        };
        match &self.kind {
            TargetKind::Classes {
                indices,
                ignore_index,
            } => {
                let weight = |label: i64| {
                    let weights = options.weights.as_ref();
                    weights.map_or(1.0, |weights| weights[label as usize])
                };
                Ok(to_host_i64(indices)?
                    .into_iter()
                    .zip(row_weights)
                    .filter(|&(label, _)| !options.ignores(*ignore_index, label))
                    .map(|(label, r)| r * weight(label))
                    .sum())
            }
            // A teacher's rows: the labels say which are ignored; class weights are refused.
            TargetKind::Teacher {
                labels: Some(labels),
                ignore_index,
                ..
            } => Ok(to_host_i64(labels)?
                .into_iter()
                .zip(row_weights)
                .filter(|&(label, _)| !options.ignores(*ignore_index, label))
                .map(|(_, r)| r)
                .sum()),
            TargetKind::Probabilities(_) | TargetKind::Teacher { labels: None, .. } => {
                Ok(row_weights.into_iter().sum())
            }
        }
    }

    /// The same targets with per-row loss weights `rho_i` (per-token weights for a sequence
    /// batch), of the targets' leading shape (`[N]`, `[B, T]`), finite and `>= 0`; validated
    /// here (one read back to the host) and moved to the targets' device.
    ///
    /// Row `i`'s loss (every term of it: the cross-entropy, label smoothing's share, the
    /// z-loss) is multiplied by `rho_i`, and reduction mean divides by the weighted count:
    ///
    /// ```text
    /// l'_i = rho_i l_i
    /// mean: L = sum_i rho_i l_i / sum_i rho_i v_i w_{y_i}     (sum_i rho_i for probability targets)
    /// ```
    ///
    /// so all-ones weights give the unweighted loss, and a row with `rho_i = 0` contributes
    /// nothing to the loss or the gradients. The statistics ([`LossStats`](crate::LossStats))
    /// are not weighted. `rho_i` is data, not a parameter: no gradient flows to it. The loss
    /// uses the weights in the input's float type (in bf16 a weight keeps 8 significant bits,
    /// and [`mean_denominator`](Self::mean_denominator) sums them as given).
    ///
    /// ```
    /// use burn::prelude::*;
    /// use linear_softmax::host::to_host_f64;
    /// use linear_softmax::{LinearSoftmaxConfig, LossOptions, LossReduction, Targets};
    ///
    /// let device = Device::flex().autodiff();
    /// let head = LinearSoftmaxConfig::new(3, 4).init(&device)?;
    /// let x = Tensor::<3>::from_data(
    ///     [[[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], [[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]],
    ///     &device,
    /// );
    /// // Two sequences of two tokens: the third token weighs double, the last one nothing.
    /// let labels = Tensor::<2, Int>::from_data([[3, 1], [0, 2]], &device);
    /// let weights = Tensor::<2>::from_data([[1.0, 1.0], [2.0, 0.0]], &device);
    /// let targets = Targets::from_tensor(labels, 4, None)?.with_row_weights(weights)?;
    /// let loss = head.loss(x.clone(), &targets, &LossOptions::new())?;
    ///
    /// // The weighted mean of the tokens' losses (reduction none gives them weighted).
    /// let none = LossOptions::new().with_reduction(LossReduction::None);
    /// let rows = to_host_f64(&head.loss(x, &targets, &none)?)?;
    /// assert_eq!(rows[3], 0.0);
    /// let expected = (rows[0] + rows[1] + rows[2]) / 4.0;
    /// assert!((loss.into_scalar::<f32>() as f64 - expected).abs() < 1e-6);
    /// # Ok::<(), linear_softmax::Error>(())
    /// ```
    pub fn with_row_weights<const K: usize>(self, weights: Tensor<K>) -> Result<Self> {
        if weights.dims()[..] != self.shape[..] {
            return Err(Error::ShapeMismatch {
                what: "row weights",
                expected: self.shape.clone(),
                got: weights.dims().to_vec(),
            });
        }
        let rows = self.len();
        let weights = if rows == 0 {
            // Burn's `reshape` reads a 0 as "keep this dimension".
            let empty = TensorData::new(Vec::<f64>::new(), [0]);
            Tensor::from_data(empty, (&weights.device(), weights.dtype()))
        } else {
            weights.reshape([rows])
        };
        if let Some((row, value)) = to_host_f64(&weights)?
            .into_iter()
            .enumerate()
            .find(|(_, r)| !(r.is_finite() && *r >= 0.0))
        {
            return Err(Error::InvalidTarget {
                row,
                message: format!("row weight {value} is not a finite value >= 0"),
            });
        }
        let device = match &self.kind {
            TargetKind::Classes { indices, .. } => indices.device(),
            TargetKind::Probabilities(probabilities) => probabilities.device(),
            TargetKind::Teacher { teacher, .. } => teacher.hidden.device(),
        };
        // Data, not a parameter: no gradient flows to them, on any path.
        Ok(Self {
            row_weights: Some(weights.detach().to_device(&device)),
            ..self
        })
    }

    /// The per-row loss weights `rho_i` `[N]`, when given
    /// ([`with_row_weights`](Self::with_row_weights)).
    pub fn row_weights(&self) -> Option<&Tensor<1>> {
        self.row_weights.as_ref()
    }

    /// The class indices `[N]`, for class-index targets (and a teacher's labels, when given).
    pub fn indices(&self) -> Option<&Tensor<1, Int>> {
        match &self.kind {
            TargetKind::Classes { indices, .. } => Some(indices),
            TargetKind::Teacher { labels, .. } => labels.as_ref(),
            TargetKind::Probabilities(_) => None,
        }
    }

    /// The same targets with probabilities, a teacher's tensors and row weights stored as
    /// `dtype` (to avoid a cast at every step).
    pub fn cast(self, dtype: DType) -> Self {
        let kind = match self.kind {
            TargetKind::Probabilities(p) => TargetKind::Probabilities(p.cast(dtype)),
            TargetKind::Teacher {
                teacher,
                labels,
                ignore_index,
            } => TargetKind::Teacher {
                teacher: teacher.to(&teacher.hidden.device(), dtype),
                labels,
                ignore_index,
            },
            classes => classes,
        };
        let row_weights = self.row_weights.map(|rho| rho.cast(dtype));
        Self {
            kind,
            row_weights,
            ..self
        }
    }

    /// The same targets on another device.
    pub fn to_device(self, device: &Device) -> Self {
        let kind = match self.kind {
            TargetKind::Classes {
                indices,
                ignore_index,
            } => TargetKind::Classes {
                indices: indices.to_device(device),
                ignore_index,
            },
            TargetKind::Probabilities(p) => TargetKind::Probabilities(p.to_device(device)),
            TargetKind::Teacher {
                teacher,
                labels,
                ignore_index,
            } => TargetKind::Teacher {
                teacher: teacher.to(device, teacher.hidden.dtype()),
                labels: labels.map(|labels| labels.to_device(device)),
                ignore_index,
            },
        };
        let row_weights = self.row_weights.map(|r| r.to_device(device));
        Self {
            kind,
            row_weights,
            ..self
        }
    }

    /// Targets made of already validated parts (the fused kernel rebuilding them from its
    /// backend's primitives).
    pub(crate) fn trusted(
        kind: TargetKind,
        n_classes: usize,
        row_weights: Option<Tensor<1>>,
    ) -> Self {
        let rows = kind.rows();
        Self {
            kind,
            n_classes,
            shape: vec![rows],
            row_weights,
        }
    }

    /// Checks that these targets can be used with `options` (no per-row work).
    pub(crate) fn check_options(&self, options: &LossOptions) -> Result<()> {
        match &self.kind {
            TargetKind::Probabilities(_) if options.ignores_rows(None) => {
                return Err(Error::TargetKind {
                    option: "pad_tokens",
                    expected: "class-index targets",
                });
            }
            _ => {}
        }
        self.check_teacher(options)?;
        self.check_shift(options)
    }
}

impl TargetKind {
    /// The number of rows.
    fn rows(&self) -> usize {
        match self {
            TargetKind::Classes { indices, .. } => indices.dims()[0],
            TargetKind::Probabilities(probabilities) => probabilities.dims()[0],
            TargetKind::Teacher { teacher, .. } => teacher.hidden.dims()[0],
        }
    }
}
