//! Every error the crate reports, produced on purpose, with its message checked.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::{backends, problem};
use linear_softmax::{
    Error, LinearSoftmax, LinearSoftmaxConfig, LossOptions, LossPath, LossReduction, Targets,
};

fn device() -> Device {
    Device::flex()
}

#[test]
fn labels_out_of_range_name_the_first_bad_index_and_value() {
    let err = Targets::from_indices(&[0, 1, 5, 7], 3, &device()).unwrap_err();
    assert_eq!(
        err,
        Error::LabelOutOfRange {
            index: 2,
            value: 5,
            n_classes: 3
        }
    );
    assert_eq!(
        err.to_string(),
        "label 5 at index 2 is out of range: expected a class in 0..3"
    );

    let err = Targets::from_indices(&[0, -1], 3, &device()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "label -1 at index 1 is out of range: expected a class in 0..3"
    );

    let tensor = Tensor::<1, Int>::from_data(TensorData::new(vec![2i64, 3], [2]), &device());
    let err = Targets::from_tensor(tensor, 3, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "label 3 at index 1 is out of range: expected a class in 0..3"
    );
}

/// Each path must reject the same bad batch with the same error, as gradients and as a graph
/// node.
fn for_each_path(
    head: &LinearSoftmax,
    x: Tensor<2>,
    targets: &Targets,
    options: &LossOptions,
    expected: &str,
) {
    for path in LossPath::ALL {
        let options = options.clone().with_path(path);
        let gradients = head.gradients(x.clone(), targets, &options).map(|_| ());
        let graph = head.loss(x.clone(), targets, &options).map(|_| ());
        for (what, result) in [("gradients", gradients), ("graph", graph)] {
            let err = result.expect_err(&format!("{path} {what}"));
            assert_eq!(err.to_string(), expected, "{path} {what}");
        }
    }
}

#[test]
fn wrong_number_of_targets() {
    let p = problem([4, 3, 5], true, DType::F32, &device(), 1);
    let targets = Targets::from_indices(&[0, 1, 2], 5, &device()).unwrap();
    for_each_path(
        &p.head,
        p.x,
        &targets,
        &LossOptions::new(),
        "targets have 3 rows but the input has 4 rows",
    );
}

#[test]
fn targets_for_another_class_count() {
    let p = problem([2, 3, 5], true, DType::F32, &device(), 1);
    let targets = Targets::from_indices(&[0, 1], 4, &device()).unwrap();
    for_each_path(
        &p.head,
        p.x,
        &targets,
        &LossOptions::new(),
        "targets are for 4 classes but the head has 5 classes",
    );
}

#[test]
fn input_width_mismatch() {
    let p = problem([2, 3, 5], true, DType::F32, &device(), 1);
    let x = Tensor::<2>::ones([2, 4], &device());
    for_each_path(
        &p.head,
        x.clone(),
        &p.targets,
        &LossOptions::new(),
        "input has 4 features per row but the head expects 3",
    );
    assert_eq!(
        p.head.forward(x).unwrap_err().to_string(),
        "input has 4 features per row but the head expects 3"
    );
}

#[test]
fn empty_batch() {
    let p = problem([2, 3, 5], true, DType::F32, &device(), 1);
    let x = Tensor::<2>::zeros([0, 3], &device());
    let targets = Targets::from_indices(&[], 5, &device()).unwrap();
    for_each_path(
        &p.head,
        x.clone(),
        &targets,
        &LossOptions::new(),
        "empty batch: the input has no rows",
    );
    assert_eq!(p.head.predict(x).unwrap_err(), Error::EmptyBatch);
}

/// The policy on NaN and infinity, on every path and backend: they propagate to the loss and
/// the gradients (`Ok`, nothing read back), and `check_finite` names the first bad entry.
#[test]
fn non_finite_values_propagate_and_check_finite_names_them() {
    for (backend, device) in backends() {
        let p = problem([4, 3, 5], true, DType::F32, &device, 1);
        let mut values = vec![0.5f32; 12];
        values[7] = f32::NAN; // row 2, column 1
        values[10] = f32::INFINITY; // row 3
        let x = Tensor::<2>::from_data(TensorData::new(values, [4, 3]), &device);
        for path in LossPath::ALL {
            let options = LossOptions::new().with_path(path);
            let gradients = p.head.gradients(x.clone(), &p.targets, &options);
            let gradients = gradients.unwrap_or_else(|err| panic!("{backend} {path}: {err}"));
            let loss = gradients.loss.into_scalar::<f32>();
            assert!(loss.is_nan(), "{backend} {path}: loss {loss}");
            let graph = p.head.loss(x.clone(), &p.targets, &options);
            assert!(
                graph.unwrap().into_scalar::<f32>().is_nan(),
                "{backend} {path}"
            );
        }
        let err = p.head.check_finite(&x).unwrap_err();
        assert_eq!(
            err,
            Error::NonFiniteInput { row: 2, column: 1 },
            "{backend}"
        );
        assert_eq!(err.to_string(), "input x[2, 1] is NaN or infinite");
        assert_eq!(p.head.check_finite(&p.x), Ok(()), "{backend}");

        let mut weight = common::host(&p.head.weight());
        weight[5 * 2 + 3] = f64::NEG_INFINITY;
        let weight = common::tensor(weight, [3, 5], DType::F32, &device);
        let head = LinearSoftmax::from_tensors(weight, p.head.bias()).unwrap();
        let err = head.check_finite(&p.x).unwrap_err();
        assert_eq!(err.to_string(), "parameter weight[2, 3] is NaN or infinite");
        let bias = Tensor::<1>::from_data([0.0, 0.0, 0.0, f32::NAN, 0.0], &device);
        let head = LinearSoftmax::from_tensors(p.head.weight(), Some(bias)).unwrap();
        let err = head.check_finite(&p.x).unwrap_err();
        assert_eq!(err.to_string(), "parameter bias[3] is NaN or infinite");
    }
}

#[test]
fn bad_options_and_configs() {
    let p = problem([2, 3, 5], true, DType::F32, &device(), 1);
    for l2 in [-0.5, f64::NAN] {
        let options = LossOptions::new().with_l2(l2);
        for_each_path(
            &p.head,
            p.x.clone(),
            &p.targets,
            &options,
            &format!("invalid l2 = {l2}: a finite coefficient >= 0"),
        );
    }
    let err = LinearSoftmaxConfig::new(3, 0).init(&device()).unwrap_err();
    assert_eq!(err.to_string(), "invalid n_classes = 0: at least 1");
    let err = LinearSoftmaxConfig::new(0, 3).init(&device()).unwrap_err();
    assert_eq!(err.to_string(), "invalid d_input = 0: at least 1");
}

#[test]
fn parameters_of_mismatched_shapes() {
    let err = LinearSoftmax::from_tensors(
        Tensor::<2>::zeros([3, 5], &device()),
        Some(Tensor::<1>::zeros([4], &device())),
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "bias: expected shape [5], got [4]");
}

#[test]
fn bad_loss_options_name_the_value() {
    let p = problem([2, 3, 5], true, DType::F32, &device(), 1);
    let cases = [
        (
            LossOptions::new().with_label_smoothing(1.5),
            "invalid label_smoothing = 1.5: a value in [0, 1]",
        ),
        (
            LossOptions::new().with_label_smoothing(-0.1),
            "invalid label_smoothing = -0.1: a value in [0, 1]",
        ),
        (
            LossOptions::new().with_z_loss(-1.0),
            "invalid z_loss = -1: a finite coefficient >= 0",
        ),
        (
            LossOptions::new().with_softcap(Some(0.0)),
            "invalid softcap = 0: a finite cap > 0",
        ),
        (
            LossOptions::new().with_softcap(Some(-3.0)),
            "invalid softcap = -3: a finite cap > 0",
        ),
        (
            LossOptions::new().with_weights(Some(vec![1.0, -2.0, 1.0, 1.0, 1.0])),
            "invalid class weight = -2: finite weights >= 0",
        ),
        (
            LossOptions::new().with_weights(Some(vec![1.0, f64::INFINITY, 1.0, 1.0, 1.0])),
            "invalid class weight = inf: finite weights >= 0",
        ),
        (
            LossOptions::new().with_weights(Some(vec![1.0; 4])),
            "class weights: expected shape [5], got [4]",
        ),
        (
            LossOptions::new().with_pad_tokens(Some(vec![7])),
            "invalid pad token = 7: a class index below the number of classes",
        ),
        (
            LossOptions::new()
                .with_l2(0.1)
                .with_reduction(LossReduction::None),
            "invalid l2 = 0.1: 0 with reduction none (the penalty is a scalar: use mean or sum)",
        ),
    ];
    for (options, expected) in cases {
        for_each_path(&p.head, p.x.clone(), &p.targets, &options, expected);
    }
}

#[test]
fn bad_probability_targets_name_the_row() {
    let err = Targets::from_probabilities(&[0.5, 0.5, 0.0, 1.2, -0.2, 0.0], [2, 3], &device())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "target row 1: probability -0.2 of class 1 is not a finite value >= 0"
    );
    let err = Targets::from_probabilities(&[0.5, 0.5, 0.0, 0.3, 0.3, 0.3], [2, 3], &device())
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("target row 1: probabilities sum to 0.8999"),
        "{err}"
    );
    let err = Targets::from_probabilities(&[0.5, 0.5], [2, 3], &device()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "probability targets: expected shape [2, 3], got [2]"
    );
    let err = Targets::from_multi_hot(&[true, false, false, false], [2, 2], &device()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "target row 1: a multi-label row has no class set"
    );
}

#[test]
fn targets_of_the_wrong_kind_for_the_options() {
    let p = problem([2, 3, 3], true, DType::F32, &device(), 1);
    let soft =
        Targets::from_probabilities(&[0.5, 0.5, 0.0, 0.2, 0.3, 0.5], [2, 3], &device()).unwrap();
    let options = LossOptions::new().with_pad_tokens(Some(vec![1]));
    for_each_path(
        &p.head,
        p.x.clone(),
        &soft,
        &options,
        "pad_tokens needs class-index targets",
    );

    // -100 is only a label when the targets were built to accept it.
    let err = Targets::from_indices(&[0, -100], 3, &device()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "label -100 at index 1 is out of range: expected a class in 0..3"
    );
}

#[test]
fn an_input_of_another_float_type_is_an_error_on_every_path() {
    let p = problem([2, 3, 5], true, DType::F32, &device(), 1);
    let x = p.x.clone().cast(DType::F64);
    let expected = "input is F64 but the head's parameters are F32: cast one to the other";
    for path in LossPath::ALL {
        let options = LossOptions::new().with_path(path);
        let err = p
            .head
            .gradients(x.clone(), &p.targets, &options)
            .unwrap_err();
        assert_eq!(err.to_string(), expected, "{path}");
        let err = p.head.loss(x.clone(), &p.targets, &options).unwrap_err();
        assert_eq!(err.to_string(), expected, "{path} graph");
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn an_input_on_another_backend_is_an_error_on_every_path() {
    let p = problem([2, 3, 5], true, DType::F32, &device(), 1);
    #[allow(deprecated)]
    let x = p.x.clone().to_device(&Device::ndarray());
    for path in LossPath::ALL {
        let options = LossOptions::new().with_path(path);
        let err = p
            .head
            .gradients(x.clone(), &p.targets, &options)
            .unwrap_err();
        assert!(matches!(err, Error::DeviceMismatch { .. }), "{path}: {err}");
        let message = err.to_string();
        assert!(
            message.contains("NdArray") && message.contains("Flex"),
            "{path}: {message}"
        );
        let err = p.head.loss(x.clone(), &p.targets, &options).unwrap_err();
        assert!(
            matches!(err, Error::DeviceMismatch { .. }),
            "{path} graph: {err}"
        );
    }
    // The autodiff device of the same backend is the same hardware: no error.
    let autodiff_x = p.x.clone().to_device(&device().autodiff());
    let loss = p.head.loss(autodiff_x, &p.targets, &LossOptions::new());
    assert!(loss.is_ok(), "{loss:?}");
}
