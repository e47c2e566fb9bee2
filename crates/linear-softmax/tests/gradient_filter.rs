//! Gradient filtering (`LossOptions::gradient_filter`): on every path that filters (the manual
//! path's `gradients`, the fused path through `loss(..)?.backward()` and `gradients`, its CPU
//! kernel and its tensor kernel, several chunkings), on both CPU backends, in f64, f32 and
//! bf16, the gradients are those of `dS` with the filtered blocks zeroed, computed here on the
//! host from the definition; the error against the unfiltered gradient is within the
//! documented bound; a threshold of 0, or one below every entry, changes nothing, bit for bit;
//! where Burn's autograd would derive the gradient the filter is refused.

mod common;

use burn::prelude::*;
use burn::tensor::DType;
use common::gradient_filter::*;
use common::{BF16_VS_F32, F16_VS_F32, F32_VS_F64, assert_close, backends, host, tensor};
use linear_softmax::{
    Chunking, Error, GradientFilter, LinearSoftmax, LossOptions, LossPath, LossReduction, Targets,
};

/// Chunk sizes that the filter rounds down to whole blocks (to 16 and 32 rows).
const ROUNDED_CHUNKS: [Option<usize>; 3] = [None, Some(20), Some(40)];
/// Chunk sizes of whole blocks, which the filter leaves as they are.
const WHOLE_BLOCK_CHUNKS: [Option<usize>; 3] = [None, Some(16), Some(48)];

/// The routes that filter: (name, options, through backward?).
fn routes(
    options: &LossOptions,
    chunkings: [Option<usize>; 3],
) -> Vec<(String, LossOptions, bool)> {
    let mut routes = vec![(
        "manual gradients".to_string(),
        options.clone().with_path(LossPath::Manual),
        false,
    )];
    for chunk_rows in chunkings {
        let fused = options
            .clone()
            .with_path(LossPath::Fused)
            .with_chunking(Chunking::new().with_rows(chunk_rows));
        routes.push((
            format!("fused gradients, chunk rows {chunk_rows:?}"),
            fused.clone(),
            false,
        ));
        routes.push((
            format!("fused backward, chunk rows {chunk_rows:?}"),
            fused,
            true,
        ));
    }
    routes
}

#[test]
fn filtered_gradients_are_those_of_ds_with_the_filtered_blocks_zeroed() {
    let fixture = fixture(SEED);
    let mut checked = 0;
    for case in cases() {
        for (backend, device) in backends() {
            for (dtype, tolerance) in [(DType::F64, F64_REFERENCE), (DType::F32, F32_VS_F64)] {
                for (route, options, through_backward) in routes(&case.options, ROUNDED_CHUNKS) {
                    let expected = reference(&fixture, &case, through_backward);
                    let actual = if through_backward {
                        backward(&fixture, &case, &options, dtype, &device)
                    } else {
                        as_host(&gradients(&fixture, &case, &options, dtype, &device))
                    };
                    let what =
                        |name| format!("{}, {backend} {dtype:?}, {route}: {name}", case.name);
                    assert_close(&what("dW"), &actual[0], &expected.d_weight, tolerance);
                    assert_close(&what("db"), &actual[1], &expected.d_bias, tolerance);
                    assert_close(&what("dX"), &actual[2], &expected.d_input, tolerance);
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 5 * 7 * 2 * 2, "{checked} routes checked");
}

#[test]
fn the_fixture_filters_some_blocks_and_keeps_others_and_the_error_is_within_the_bound() {
    let fixture = fixture(SEED);
    let x_norm = fixture.x.iter().map(|v| v * v).sum::<f64>().sqrt();
    let w_norm = fixture.weight.iter().map(|v| v * v).sum::<f64>().sqrt();
    let distance = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    for case in cases() {
        let r = reference(&fixture, &case, true);
        assert!(
            (0.3..0.95).contains(&r.filtered_blocks),
            "{}: {:.2} of the blocks filtered",
            case.name,
            r.filtered_blocks
        );
        // The documented bound, and the bound in the threshold alone.
        let f_max = match case.options.reduction {
            LossReduction::Mean => 1.0 / N as f64 * 1.5,
            _ => 1.5,
        };
        let blocks = (N.div_ceil(16) * C.div_ceil(32)) as f64 * r.filtered_blocks;
        let threshold_bound = THRESHOLD * f_max * (blocks * 16.0 * 32.0).sqrt();
        assert!(
            r.dropped_norm <= threshold_bound,
            "{}: ||E|| {} > {threshold_bound}",
            case.name,
            r.dropped_norm
        );
        assert!(r.dropped_norm > 0.0, "{}: something is dropped", case.name);
        let dw_error = distance(&r.d_weight, &r.full_d_weight);
        let dx_error = distance(&r.d_input, &r.full_d_input);
        assert!(
            dw_error <= x_norm * r.dropped_norm,
            "{}: dW error {dw_error}",
            case.name
        );
        assert!(
            dx_error <= w_norm * r.dropped_norm,
            "{}: dX error {dx_error}",
            case.name
        );
        // And the library's filtered dW is that far from its own unfiltered one.
        let device = Device::flex();
        let unfiltered = case
            .options
            .clone()
            .with_gradient_filter(GradientFilter::new());
        let full = as_host(&gradients(
            &fixture,
            &case,
            &unfiltered,
            DType::F64,
            &device,
        ));
        let cut = as_host(&gradients(
            &fixture,
            &case,
            &case.options,
            DType::F64,
            &device,
        ));
        let library_error = distance(&cut[0], &full[0]);
        // gradients() seeds the upstream with 1.
        let seeded = reference(&fixture, &case, false);
        let dw_error = distance(&seeded.d_weight, &seeded.full_d_weight);
        assert!(
            (library_error - dw_error).abs() <= 1e-6 * dw_error,
            "{}: the library's filtered dW is {library_error:e} from its unfiltered one, \
             the reference's {dw_error:e}",
            case.name
        );
    }
}

#[test]
fn a_threshold_of_zero_or_below_every_entry_changes_nothing_bit_for_bit() {
    let fixture = fixture(SEED);
    for case in cases().into_iter().filter(|case| !case.weighted) {
        for (backend, device) in backends() {
            for dtype in [DType::F32, DType::F64] {
                for (route, options, _) in routes(&case.options, WHOLE_BLOCK_CHUNKS) {
                    let off = options.clone().with_gradient_filter(GradientFilter::new());
                    let baseline = gradients(&fixture, &case, &off, dtype, &device);
                    for threshold in [0.0, 1e-30] {
                        let on = options
                            .clone()
                            .with_gradient_filter(filter().with_threshold(threshold));
                        let filtered = gradients(&fixture, &case, &on, dtype, &device);
                        let what = format!(
                            "{}, {backend} {dtype:?}, {route}, threshold {threshold}",
                            case.name
                        );
                        assert_eq!(host(&filtered.loss), host(&baseline.loss), "{what}: loss");
                        assert_eq!(as_host(&filtered), as_host(&baseline), "{what}: gradients");
                    }
                }
            }
        }
    }
}

#[test]
fn bf16_heads_filter_the_blocks_the_f64_reference_filters() {
    let fixture = fixture(SEED);
    let device = Device::flex();
    for case in cases() {
        let expected = reference(&fixture, &case, false);
        for (route, options, through_backward) in routes(&case.options, ROUNDED_CHUNKS) {
            if through_backward {
                continue;
            }
            let actual = as_host(&gradients(&fixture, &case, &options, DType::BF16, &device));
            let what = |name| format!("{}, bf16, {route}: {name}", case.name);
            assert_close(&what("dW"), &actual[0], &expected.d_weight, BF16_VS_F32);
            // Sharper than bf16's tolerance: the classes filtered in every row have no dW.
            assert!(
                !expected.dead_classes.is_empty(),
                "{}",
                what("dead classes")
            );
            for &k in &expected.dead_classes {
                let column: Vec<f64> = (0..D).map(|j| actual[0][j * C + k]).collect();
                assert!(
                    column.iter().all(|v| *v == 0.0),
                    "{}: {column:?}",
                    what("dead class")
                );
            }
            assert_close(&what("dX"), &actual[2], &expected.d_input, BF16_VS_F32);
        }
    }
}

#[test]
fn the_filter_is_refused_where_burns_autograd_derives_the_gradient_and_bad_filters_are_refused() {
    let fixture = fixture(SEED);
    let case = &cases()[0];
    let on = case.options.clone();
    let refused = |result: Result<Tensor<1>, Error>, what: &str| match result {
        Err(Error::InvalidOption { name, .. }) => {
            assert_eq!(name, "gradient_filter threshold", "{what}")
        }
        other => panic!("{what}: {:?}", other.map(|loss| loss.dims())),
    };
    let device = Device::flex().autodiff();
    let head = head(&fixture, DType::F32, &device);
    let x = tensor(fixture.x.clone(), [N, D], DType::F32, &device);
    let targets = targets(&fixture, case, DType::F32, &device);
    refused(
        head.loss(
            x.clone(),
            &targets,
            &on.clone().with_path(LossPath::Autodiff),
        ),
        "autodiff path",
    );
    refused(
        head.loss(x.clone(), &targets, &on.clone().with_path(LossPath::Manual)),
        "manual loss on an autodiff device",
    );
    assert!(
        head.loss(x.clone(), &targets, &on).is_ok(),
        "the fused path filters"
    );
    let plain = Device::flex();
    let plain_head = self::head(&fixture, DType::F32, &plain);
    let plain_x = tensor(fixture.x.clone(), [N, D], DType::F32, &plain);
    let plain_targets = self::targets(&fixture, case, DType::F32, &plain);
    let manual = on.clone().with_path(LossPath::Manual);
    assert!(
        plain_head
            .loss(plain_x.clone(), &plain_targets, &manual)
            .is_ok(),
        "manual loss on a plain device: no gradient to filter"
    );
    assert!(
        plain_head
            .gradients(plain_x.clone(), &plain_targets, &manual)
            .is_ok(),
        "manual gradients filter"
    );
    for (bad, name) in [
        (
            filter().with_threshold(f64::NAN),
            "gradient_filter threshold",
        ),
        (filter().with_threshold(-1e-3), "gradient_filter threshold"),
        (
            filter().with_threshold(f64::INFINITY),
            "gradient_filter threshold",
        ),
        (filter().with_block_rows(0), "gradient_filter block_rows"),
        (
            filter().with_block_classes(0),
            "gradient_filter block_classes",
        ),
    ] {
        let options = LossOptions::new().with_gradient_filter(bad);
        match plain_head.gradients(plain_x.clone(), &plain_targets, &options) {
            Err(Error::InvalidOption { name: got, .. }) => assert_eq!(got, name),
            other => panic!("{name}: {:?}", other.map(|g| g.d_weight.dims())),
        }
    }
}

/// A classifier (`C <= 16`): with a filter the fused path leaves the few-classes pass (which
/// forms no `dS`) for the chunk loop, says so, and gives the manual path's filtered gradients.
#[test]
fn few_classes_take_the_chunk_loop_when_filtering() {
    use linear_softmax::diagnostics::{Kernel, kernel_for};
    let device = Device::flex();
    let p = common::problem([40, 5, 10], true, DType::F64, &device, 3);
    let filtering = LossOptions::new().with_gradient_filter(
        GradientFilter::new()
            .with_threshold(0.2)
            .with_block_rows(4)
            .with_block_classes(4),
    );
    let choice = kernel_for(&p.head, &p.x, &p.targets, &filtering).unwrap();
    assert_eq!(choice.kernel, Kernel::Raw, "{}", choice.reason);
    let plain = kernel_for(&p.head, &p.x, &p.targets, &LossOptions::new()).unwrap();
    assert_eq!(plain.kernel, Kernel::FewClasses);
    let run = |options: &LossOptions| {
        let g = p.head.gradients(p.x.clone(), &p.targets, options).unwrap();
        as_host(&g)
    };
    let fused = run(&filtering);
    let manual = run(&filtering.clone().with_path(LossPath::Manual));
    let unfiltered = run(&LossOptions::new());
    for (name, index) in [("dW", 0), ("db", 1), ("dX", 2)] {
        assert_close(name, &fused[index], &manual[index], F64_REFERENCE);
    }
    assert_ne!(fused[0], unfiltered[0], "the threshold filters some blocks");
}

/// A teacher's targets (distillation) with a filter: the fused path's tensor kernel and the
/// manual path zero the same blocks (f64), and the filter drops something.
#[test]
fn distillation_is_filtered_alike_on_the_fused_and_manual_paths() {
    let fixture = fixture(SEED);
    let case = &cases()[0];
    for (backend, device) in backends() {
        let student = head(&fixture, DType::F64, &device);
        // The teacher: the student's head with its weights scaled, so the two softmaxes are
        // close and their difference's tail lies below the threshold.
        let teacher =
            LinearSoftmax::from_tensors(student.weight() * 1.25, student.bias().map(|b| b * 0.9))
                .unwrap();
        let x = tensor(fixture.x.clone(), [N, D], DType::F64, &device);
        let targets = Targets::from_indices(&fixture.labels, C, &device)
            .and_then(|t| t.with_teacher(&teacher, x.clone()))
            .unwrap();
        let run = |options: &LossOptions| {
            as_host(&student.gradients(x.clone(), &targets, options).unwrap())
        };
        let filtering = case.options.clone().with_temperature(2.0);
        let fused = run(&filtering.clone().with_path(LossPath::Fused));
        let manual = run(&filtering.clone().with_path(LossPath::Manual));
        let unfiltered = run(&filtering.with_gradient_filter(GradientFilter::new()));
        for (name, index) in [("dW", 0), ("db", 1), ("dX", 2)] {
            let what = format!("{backend} distillation: {name}");
            assert_close(&what, &fused[index], &manual[index], F64_REFERENCE);
        }
        assert_ne!(
            fused[0], unfiltered[0],
            "{backend}: the threshold filters some blocks"
        );
        let what = format!("{backend}: db is never filtered");
        assert_close(&what, &fused[1], &unfiltered[1], F64_REFERENCE);
    }
}

/// f16 decides in f32: with an upstream of 2^-14 per row, `threshold |f_i|` is 2^-24 x 2^-2,
/// below f16's smallest subnormal, where a decision in f16 would filter every block (and
/// return zero gradients). The fused path's tensor kernel (f16) against its f32 run.
#[test]
fn half_precision_decides_the_blocks_in_f32() {
    let fixture = fixture(SEED);
    let case = Case {
        name: "none, f16",
        options: cases()[0]
            .options
            .clone()
            .with_reduction(LossReduction::None)
            .with_gradient_filter(filter().with_threshold(2f64.powi(-12))),
        weighted: false,
    };
    let device = Device::flex();
    let run = |dtype: DType| {
        let device = device.clone().autodiff();
        let head = head(&fixture, dtype, &device);
        let x = tensor(fixture.x.clone(), [N, D], dtype, &device).require_grad();
        let loss = head
            .loss(
                x.clone(),
                &targets(&fixture, &case, dtype, &device),
                &case.options,
            )
            .unwrap();
        let grads = (loss * 2f64.powi(-14)).sum().backward();
        host(&head.weight().grad(&grads).unwrap())
    };
    let (half, single) = (run(DType::F16), run(DType::F32));
    assert!(single.iter().any(|v| *v != 0.0));
    assert_close("f16 dW", &half, &single, F16_VS_F32);
}
