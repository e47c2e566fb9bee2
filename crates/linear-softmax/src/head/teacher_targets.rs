//! The targets of a distillation from a teacher head: [`Targets::from_teacher`] and
//! [`Targets::with_teacher`], here because they take the teacher's [`LinearSoftmax`] (the
//! targets themselves, `loss/teacher.rs`, know only its tensors).

use burn::prelude::*;

use crate::error::Result;
use crate::head::LinearSoftmax;
use crate::loss::Targets;

impl Targets {
    /// A frozen teacher's distribution as the target (distillation, without labels): the loss
    /// is the divergence of [`DistillationOptions`](crate::DistillationOptions) between the
    /// student's softmax and that of the teacher's logits `T = X_t W_t + b_t`, for the
    /// teacher's `head` and its hidden states `hidden` `[.., D_t]` (the leading shape of the
    /// student's input `x`). Everything of the teacher is detached: no gradient flows to it.
    /// Metadata only: nothing is read back.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the last dimension of `hidden` is not the teacher head's
    /// input width.
    ///
    /// ```
    /// use burn::prelude::*;
    /// use linear_softmax::{DistillationOptions, LinearSoftmaxConfig, LossOptions, Targets};
    ///
    /// let device = Device::flex().autodiff();
    /// // A teacher of hidden width 6 and a student of width 3, over 4 classes.
    /// let teacher = LinearSoftmaxConfig::new(6, 4).init(&device)?.no_grad();
    /// let student = LinearSoftmaxConfig::new(3, 4).init(&device)?;
    /// let teacher_hidden = Tensor::<2>::random([2, 6], burn::tensor::Distribution::Default, &device);
    /// let x = Tensor::<2>::from_data([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], &device);
    ///
    /// let targets = Targets::from_teacher(&teacher, teacher_hidden)?;
    /// let options = LossOptions::new()
    ///     .with_temperature(2.0)
    ///     .with_distillation(DistillationOptions::new().with_beta(0.0)); // forward KL
    /// let grads = student.loss(x, &targets, &options)?.backward();
    /// assert!(student.linear.weight.grad(&grads).is_some());
    /// assert!(teacher.linear.weight.grad(&grads).is_none());
    /// # Ok::<(), linear_softmax::Error>(())
    /// ```
    pub fn from_teacher<const K: usize>(head: &LinearSoftmax, hidden: Tensor<K>) -> Result<Self> {
        Self::teacher(head.weight(), head.bias(), hidden)
    }

    /// These class-index targets with a frozen teacher (distillation with labels): the labels'
    /// ignore index marks the rows that count nowhere, and the hard-label cross-entropy of
    /// [`DistillationOptions::hard_weight`](crate::DistillationOptions::hard_weight) is taken
    /// on them. `head` and `hidden` as for [`from_teacher`](Self::from_teacher); row weights
    /// are kept.
    ///
    /// # Errors
    /// [`Error::TargetKind`](crate::Error::TargetKind) for probability targets, [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `hidden`'s
    /// leading shape is not the labels' or its width not the teacher's,
    /// [`Error::ClassCountMismatch`](crate::Error::ClassCountMismatch) when the teacher has another class count.
    ///
    /// ```
    /// use burn::prelude::*;
    /// use linear_softmax::{DistillationOptions, LinearSoftmaxConfig, LossOptions, Targets};
    ///
    /// let device = Device::flex();
    /// let teacher = LinearSoftmaxConfig::new(6, 4).init(&device)?;
    /// let student = LinearSoftmaxConfig::new(3, 4).init(&device)?;
    /// let teacher_hidden = Tensor::<2>::random([3, 6], burn::tensor::Distribution::Default, &device);
    /// let x = Tensor::<2>::random([3, 3], burn::tensor::Distribution::Default, &device);
    /// // The second row is padding: it counts nowhere.
    /// let targets = Targets::from_indices_with_ignore(&[3, -100, 1], 4, -100, &device)?
    ///     .with_teacher(&teacher, teacher_hidden)?;
    /// let mix = DistillationOptions::new().with_hard_weight(0.5).with_soft_weight(0.5);
    /// let gradients = student.gradients(x, &targets, &LossOptions::new().with_distillation(mix))?;
    /// assert_eq!(gradients.d_input.dims(), [3, 3]);
    /// # Ok::<(), linear_softmax::Error>(())
    /// ```
    pub fn with_teacher<const K: usize>(
        self,
        head: &LinearSoftmax,
        hidden: Tensor<K>,
    ) -> Result<Self> {
        self.and_teacher(head.weight(), head.bias(), hidden)
    }
}
