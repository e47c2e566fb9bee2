//! Sequence batches (an LM head): `x` `[B, T, D]` with `[B, T]` labels, padding marked by the
//! ignore label, through every path's `loss` and `.backward()`, give the loss and gradients of
//! the same rows passed flat as `[B * T, D]`; `dX` comes back in `x`'s shape.

mod common;

use burn::prelude::*;
use common::cases::IGNORE;
use common::{assert_close, backends, dtypes, host, tensor, uniform};
use linear_softmax::{LinearSoftmax, LossOptions, LossPath, LossReduction, Targets};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// `[B, T]` labels in `0..C` where sequence `b` is `lengths[b]` long and padded after.
fn padded_labels(lengths: &[usize], time: usize, c: usize, seed: u64) -> Vec<i64> {
    let mut labels = Vec::new();
    for (b, &length) in lengths.iter().enumerate() {
        for t in 0..time {
            labels.push(if t < length {
                ((b * 7 + t * 3 + seed as usize) % c) as i64
            } else {
                IGNORE
            });
        }
    }
    labels
}

/// `.backward()` of `loss` (reduction none: of `(loss * upstream).sum()`).
fn backward(
    loss: &Tensor<1>,
    options: &LossOptions,
    upstream: &Tensor<1>,
) -> burn::tensor::Gradients {
    match options.reduction {
        LossReduction::None => (loss.clone() * upstream.clone()).sum().backward(),
        _ => loss.clone().backward(),
    }
}

/// How a batch is passed.
#[derive(Clone, Copy)]
enum Form {
    /// `x` `[B, T, D]` with `[B, T]` targets.
    Sequence,
    /// `x` `[B * T, D]` with `[B * T]` targets.
    Rows,
}

/// The loss, `dW`, `db` and `dX` (row-major) of one call on `x` `[B * T, D]` passed in `form`.
#[allow(clippy::too_many_arguments)]
fn run(
    head: &LinearSoftmax,
    x: &Tensor<2>,
    [batch, time, d]: [usize; 3],
    targets: &Targets,
    options: &LossOptions,
    path: LossPath,
    upstream: &Tensor<1>,
    form: Form,
) -> [Vec<f64>; 4] {
    let options = &options.clone().with_path(path);
    let (loss, grads, d_input) = match form {
        Form::Sequence => {
            let x = x.clone().reshape([batch, time, d]).require_grad();
            let loss = head.loss(x.clone(), targets, options).unwrap();
            let grads = backward(&loss, options, upstream);
            let d_input = x.grad(&grads).unwrap();
            assert_eq!(d_input.dims(), [batch, time, d], "dX in x's shape");
            (loss, grads, host(&d_input))
        }
        Form::Rows => {
            let x = x.clone().require_grad();
            let loss = head.loss(x.clone(), targets, options).unwrap();
            let grads = backward(&loss, options, upstream);
            let d_input = host(&x.grad(&grads).unwrap());
            (loss, grads, d_input)
        }
    };
    [
        host(&loss),
        host(&head.weight().grad(&grads).unwrap()),
        host(&head.bias().unwrap().grad(&grads).unwrap()),
        d_input,
    ]
}

#[test]
fn a_sequence_batch_is_its_rows_on_every_path() {
    let (batch, time, d, c) = (3, 5, 6, 11);
    let lengths = [5, 2, 4];
    let option_cases = [
        LossOptions::new(),
        LossOptions::new().with_reduction(LossReduction::None),
        LossOptions::new()
            .with_reduction(LossReduction::Sum)
            .with_label_smoothing(0.1)
            .with_z_loss(1e-3)
            .with_weights(Some((0..c).map(|k| 0.5 + (k % 3) as f64).collect())),
    ];
    for (backend, plain) in backends() {
        let device = plain.autodiff();
        for (dtype, tolerance) in dtypes() {
            let mut rng = StdRng::seed_from_u64(3);
            let head = LinearSoftmax::from_tensors(
                tensor(uniform(&mut rng, d * c, 1.0), [d, c], dtype, &device),
                Some(tensor(uniform(&mut rng, c, 0.5), [c], dtype, &device)),
            )
            .unwrap();
            let x = tensor(
                uniform(&mut rng, batch * time * d, 2.0),
                [batch * time, d],
                dtype,
                &device,
            );
            let labels = padded_labels(&lengths, time, c, 1);
            let upstream = tensor(
                uniform(&mut rng, batch * time, 1.0),
                [batch * time],
                dtype,
                &device,
            );
            // The sequence constructor on the model's device, and the flat one.
            let sequence_targets = Targets::from_tensor(
                Tensor::<2, Int>::from_data(
                    TensorData::new(labels.clone(), [batch, time]),
                    &device,
                ),
                c,
                Some(IGNORE),
            )
            .unwrap();
            let flat_targets =
                Targets::from_indices_with_ignore(&labels, c, IGNORE, &device).unwrap();
            for options in &option_cases {
                for path in LossPath::ALL {
                    let shape = [batch, time, d];
                    let sequence = run(
                        &head,
                        &x,
                        shape,
                        &sequence_targets,
                        options,
                        path,
                        &upstream,
                        Form::Sequence,
                    );
                    let flat = run(
                        &head,
                        &x,
                        shape,
                        &flat_targets,
                        options,
                        path,
                        &upstream,
                        Form::Rows,
                    );
                    for ((name, s), f) in
                        ["loss", "dW", "db", "dX"].iter().zip(&sequence).zip(&flat)
                    {
                        assert_close(
                            &format!("{backend} {dtype:?} {path} {} {name}", options.summary()),
                            s,
                            f,
                            tolerance,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_head_defaults_to_the_fused_path_for_sequences() {
    let device = Device::flex().autodiff();
    let head = linear_softmax::LinearSoftmaxConfig::new(4, 7)
        .init(&device)
        .unwrap();
    let x = Tensor::<3>::random([2, 3, 4], burn::tensor::Distribution::Default, &device);
    let labels = Tensor::<2, Int>::from_data([[1, 2, 3], [4, IGNORE, IGNORE]], &device);
    let targets = Targets::from_tensor(labels, 7, Some(IGNORE)).unwrap();
    let options = LossOptions::new();
    assert_eq!(LossPath::default(), LossPath::Fused);
    assert_eq!(options.path, LossPath::Fused);
    // A [B, T, D] batch takes a fused kernel, not the autodiff path's fallback.
    let choice = linear_softmax::diagnostics::kernel_for(&head, &x, &targets, &options)
        .expect("the default path is the fused one");
    assert_eq!(
        choice.kernel,
        linear_softmax::diagnostics::Kernel::FewClasses
    );
    let loss = head.loss(x, &targets, &options).unwrap();
    assert!(host(&loss)[0].is_finite());
}
