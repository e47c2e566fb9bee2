//! The autodiff and manual paths agree on loss, dW, db and dX on both CPU backends, in f32 and
//! f64, over odd shapes, with and without bias and L2.

mod common;

use burn::prelude::*;
use common::{assert_close, assert_gradients_close, backends, dtypes, host, problem, shapes};
use linear_softmax::{LossOptions, LossPath};

#[test]
fn manual_matches_autodiff_on_every_backend_dtype_and_shape() {
    let mut cases = 0;
    for (backend, device) in backends() {
        for (dtype, tolerance) in dtypes() {
            for shape in shapes() {
                for bias in [true, false] {
                    for l2 in [0.0, 0.05] {
                        let seed = cases as u64;
                        let p = problem(shape, bias, dtype, &device, seed);
                        let [by_hand, by_autograd] =
                            [LossPath::Manual, LossPath::Autodiff].map(|path| {
                                let options = LossOptions::new().with_l2(l2).with_path(path);
                                p.head.gradients(p.x.clone(), &p.targets, &options).unwrap()
                            });
                        let context = format!("{backend} {dtype:?} {shape:?} bias={bias} l2={l2}");
                        assert_eq!(by_hand.d_weight.dtype(), dtype, "{context}: manual dtype");
                        assert_eq!(
                            by_autograd.d_weight.dtype(),
                            dtype,
                            "{context}: autodiff dtype"
                        );
                        assert_gradients_close(&context, &by_hand, &by_autograd, tolerance);
                        cases += 1;
                    }
                }
            }
        }
    }
    assert_eq!(cases, 2 * 2 * 18 * 2 * 2);
}

#[test]
fn graph_loss_backpropagates_into_a_tracked_head() {
    // The autodiff path's loss on a head living on an autodiff device: `.backward()` reaches
    // the module's own parameters, as in a training loop.
    for (backend, device) in backends() {
        let p = problem([7, 31, 10], true, burn::tensor::DType::F64, &device, 3);
        let by_hand = LossOptions::new().with_path(LossPath::Manual);
        let expected = p.head.gradients(p.x.clone(), &p.targets, &by_hand).unwrap();
        let tracked = p.head.clone().train();
        let options = LossOptions::new().with_path(LossPath::Autodiff);
        let loss = tracked
            .loss(p.x.clone().autodiff(), &p.targets, &options)
            .unwrap();
        let grads = loss.backward();
        let d_weight = tracked
            .linear
            .weight
            .grad(&grads)
            .expect("weight is tracked");
        assert_close(
            &format!("{backend} dW"),
            &host(&d_weight),
            &host(&expected.d_weight),
            common::F64_AGREEMENT,
        );
    }
}
