//! The catalogue of bad input: one table of every input a user can get wrong, the entry point it
//! goes through and the text its error must contain (the bad value first). Each row runs under
//! `catch_unwind`; the test fails on a panic, on an input that is accepted, and on a message
//! that does not name the bad value, and lists every such row at once.
//!
//! The rows: the head's API on every path (labels, shapes, dtypes, devices, options, targets,
//! configs), the data loaders (CSV, IDX), model directories, and the command line run in
//! process (`cli::run`, as the binary does).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::DType;
use clap::Parser;
use linear_softmax::{
    Chunking, LinearSoftmax, LinearSoftmaxConfig, LossOptions, LossPath, LossReduction, Targets,
};
use linear_softmax_cli::cli::{self, Cli, Failure};
use linear_softmax_cli::data::{LabelColumn, load_csv, load_idx};
use linear_softmax_cli::model::{self, ClassifierConfig};
use linear_softmax_cli::to_host_f64;
use tempfile::TempDir;

/// A result as the catalogue reads it: `Err` carries the message the user sees.
trait Outcome {
    fn outcome(self) -> Result<(), String>;
}

impl<T, E: std::fmt::Display> Outcome for Result<T, E> {
    fn outcome(self) -> Result<(), String> {
        self.map(|_| ()).map_err(|err| err.to_string())
    }
}

/// One row of the catalogue.
struct Case {
    /// What is wrong with the input.
    input: String,
    /// The entry point (and path) it goes through.
    entry: String,
    /// Pieces the error message must contain; the first names the bad value.
    expected: Vec<String>,
    /// Runs the entry point: `Err` carries the message the user sees.
    run: Box<dyn Fn() -> Result<(), String>>,
}

fn case(
    input: impl Into<String>,
    entry: impl Into<String>,
    expected: &[&str],
    run: impl Fn() -> Result<(), String> + 'static,
) -> Case {
    Case {
        input: input.into(),
        entry: entry.into(),
        expected: expected.iter().map(|piece| piece.to_string()).collect(),
        run: Box::new(run),
    }
}

/// The head's device: Flex with autodiff, as a model being trained has.
fn device() -> Device {
    Device::flex().autodiff()
}

/// A batch for the head of [`head`]: 3 rows of 4 features and their class-index targets.
struct Batch {
    head: LinearSoftmax,
    x: Tensor<2>,
    targets: Targets,
    options: LossOptions,
}

fn batch() -> Batch {
    let device = device();
    Batch {
        head: LinearSoftmaxConfig::new(4, 3).init(&device).unwrap(),
        x: Tensor::<2>::ones([3, 4], &device),
        targets: Targets::from_indices(&[0, 1, 2], 3, &device).unwrap(),
        options: LossOptions::new(),
    }
}

/// A row for each path, through the route users take: `head.loss(..)?` then `.backward()` on
/// the model's autodiff device; and a row for each path's plain `head.gradients(..)`.
fn head_cases(
    input: &str,
    expected: &[&str],
    make: impl Fn() -> Result<Batch, String> + Clone + 'static,
) -> Vec<Case> {
    let mut cases = Vec::new();
    for path in LossPath::ALL {
        let make_graph = make.clone();
        cases.push(case(
            input,
            format!("{path}: head.loss(..)?.backward()"),
            expected,
            move || {
                let b = make_graph()?;
                let options = b.options.with_path(path);
                let loss = b
                    .head
                    .loss(b.x, &b.targets, &options)
                    .map_err(|err| err.to_string())?;
                loss.sum().backward();
                Ok(())
            },
        ));
        let make_plain = make.clone();
        cases.push(case(
            input,
            format!("{path}: head.gradients(..)"),
            expected,
            move || {
                let b = make_plain()?;
                let options = b.options.with_path(path);
                b.head
                    .valid()
                    .gradients(b.x.inner(), &b.targets, &options)
                    .outcome()
            },
        ));
    }
    cases
}

fn head_rows() -> Vec<Case> {
    let options = |options: LossOptions| {
        move || {
            Ok(Batch {
                options: options.clone(),
                ..batch()
            })
        }
    };
    let mut rows = Vec::new();
    rows.extend(head_cases(
        "targets with 4 rows for 3 inputs",
        &["4 rows", "3 rows"],
        || {
            Ok(Batch {
                targets: Targets::from_indices(&[0, 1, 2, 0], 3, &device()).unwrap(),
                ..batch()
            })
        },
    ));
    rows.extend(head_cases(
        "targets for 5 classes, head of 3",
        &["5 classes", "3 classes"],
        || {
            Ok(Batch {
                targets: Targets::from_indices(&[0, 1, 4], 5, &device()).unwrap(),
                ..batch()
            })
        },
    ));
    rows.extend(head_cases(
        "input of 5 features, head of 4",
        &["5 features", "expects 4"],
        || {
            Ok(Batch {
                x: Tensor::<2>::ones([3, 5], &device()),
                ..batch()
            })
        },
    ));
    rows.extend(head_cases("empty batch [0, 4]", &["empty batch"], || {
        Ok(Batch {
            x: Tensor::<2>::ones([0, 4], &device()),
            targets: Targets::from_indices(&[], 3, &device()).unwrap(),
            ..batch()
        })
    }));
    rows.extend(head_cases(
        "f64 input, f32 head",
        &["input is F64", "F32"],
        || {
            let b = batch();
            Ok(Batch {
                x: b.x.clone().cast(DType::F64),
                ..b
            })
        },
    ));
    #[cfg(feature = "ndarray")]
    rows.extend(head_cases(
        "input on NdArray, head on Flex",
        &["NdArray", "Flex"],
        || {
            #[allow(deprecated)]
            let x = Tensor::<2>::ones([3, 4], &Device::ndarray().autodiff());
            Ok(Batch { x, ..batch() })
        },
    ));
    let bad_options = [
        (
            "label_smoothing 1.5",
            LossOptions::new().with_label_smoothing(1.5),
            "label_smoothing = 1.5",
        ),
        (
            "label_smoothing NaN",
            LossOptions::new().with_label_smoothing(f64::NAN),
            "label_smoothing = NaN",
        ),
        (
            "z_loss -1",
            LossOptions::new().with_z_loss(-1.0),
            "z_loss = -1",
        ),
        (
            "softcap 0",
            LossOptions::new().with_softcap(Some(0.0)),
            "softcap = 0",
        ),
        (
            "softcap inf",
            LossOptions::new().with_softcap(Some(f64::INFINITY)),
            "softcap = inf",
        ),
        (
            "temperature 0",
            LossOptions::new().with_temperature(0.0),
            "temperature = 0",
        ),
        (
            "temperature NaN",
            LossOptions::new().with_temperature(f64::NAN),
            "temperature = NaN",
        ),
        ("l2 -0.5", LossOptions::new().with_l2(-0.5), "l2 = -0.5"),
        (
            "l2 with reduction none",
            LossOptions::new()
                .with_l2(0.1)
                .with_reduction(LossReduction::None),
            "l2 = 0.1",
        ),
        (
            "class weight -2",
            LossOptions::new().with_weights(Some(vec![1.0, -2.0, 1.0])),
            "class weight = -2",
        ),
        (
            "class weight NaN",
            LossOptions::new().with_weights(Some(vec![1.0, f64::NAN, 1.0])),
            "class weight = NaN",
        ),
        (
            "2 class weights for 3 classes",
            LossOptions::new().with_weights(Some(vec![1.0, 1.0])),
            "got [2]",
        ),
        (
            "pad token 7 of 3 classes",
            LossOptions::new().with_pad_tokens(Some(vec![7])),
            "pad token = 7",
        ),
        (
            "chunk rows 0",
            LossOptions::new().with_chunking(Chunking::new().with_rows(Some(0))),
            "chunk rows = 0",
        ),
    ];
    for (input, options_value, expected) in bad_options {
        rows.extend(head_cases(input, &[expected], options(options_value)));
    }
    rows.extend(head_cases(
        "probability targets with pad_tokens",
        &["pad_tokens", "class-index targets"],
        || {
            Ok(Batch {
                targets: Targets::from_probabilities(&[1.0 / 3.0; 9], [3, 3], &device()).unwrap(),
                options: LossOptions::new().with_pad_tokens(Some(vec![0])),
                ..batch()
            })
        },
    ));
    rows
}

fn construction_rows() -> Vec<Case> {
    let d = Device::flex;
    vec![
        case(
            "label 7 of 3 classes",
            "Targets::from_indices",
            &["label 7", "index 1", "0..3"],
            move || Targets::from_indices(&[0, 7, 1], 3, &d()).outcome(),
        ),
        case(
            "label -1",
            "Targets::from_indices",
            &["label -1", "index 0"],
            move || Targets::from_indices(&[-1], 3, &d()).outcome(),
        ),
        case(
            "label -100 without ignore",
            "Targets::from_indices",
            &["label -100"],
            move || Targets::from_indices(&[0, -100], 3, &d()).outcome(),
        ),
        case(
            "probability -0.2",
            "Targets::from_probabilities",
            &["probability -0.2", "row 1"],
            move || {
                Targets::from_probabilities(&[0.5, 0.5, 0.0, 1.2, -0.2, 0.0], [2, 3], &d())
                    .outcome()
            },
        ),
        case(
            "probability NaN",
            "Targets::from_probabilities",
            &["probability NaN", "row 0"],
            move || Targets::from_probabilities(&[f64::NAN, 1.0], [1, 2], &d()).outcome(),
        ),
        case(
            "a row summing to 0.9",
            "Targets::from_probabilities",
            &["sum to 0.8999", "row 1"],
            move || {
                Targets::from_probabilities(&[0.5, 0.5, 0.0, 0.3, 0.3, 0.3], [2, 3], &d()).outcome()
            },
        ),
        case(
            "2 values for [2, 3]",
            "Targets::from_probabilities",
            &["got [2]", "[2, 3]"],
            move || Targets::from_probabilities(&[0.5, 0.5], [2, 3], &d()).outcome(),
        ),
        case(
            "shape [2^63, 4] (its size overflows)",
            "Targets::from_probabilities",
            &["9223372036854775808"],
            move || Targets::from_probabilities(&[0.5, 0.5], [1 << 63, 4], &d()).outcome(),
        ),
        case(
            "shape [2^62, 8] (its size overflows)",
            "Targets::from_multi_hot",
            &["4611686018427387904"],
            move || Targets::from_multi_hot(&[true, false], [1 << 62, 8], &d()).outcome(),
        ),
        case(
            "a multi-hot row with no class",
            "Targets::from_multi_hot",
            &["row 1", "no class set"],
            move || Targets::from_multi_hot(&[true, false, false, false], [2, 2], &d()).outcome(),
        ),
        #[cfg(feature = "ndarray")]
        case(
            "bf16 on NdArray",
            "linear_softmax::check_dtype",
            &["BF16", "NdArray"],
            move || {
                #[allow(deprecated)]
                let device = Device::ndarray();
                linear_softmax::check_dtype(&device, DType::BF16).outcome()
            },
        ),
        case(
            "labels for 0 classes",
            "Targets::from_indices_with_ignore",
            &["n_classes = 0"],
            move || Targets::from_indices_with_ignore(&[-100], 0, -100, &d()).outcome(),
        ),
        case(
            "probabilities [4, 0]",
            "Targets::from_probabilities",
            &["n_classes = 0"],
            move || Targets::from_probabilities(&[], [4, 0], &d()).outcome(),
        ),
        case(
            "sequence input [2, 0, 4]",
            "LinearSoftmax::loss ([B, T, D])",
            &["empty batch"],
            move || {
                let head = LinearSoftmaxConfig::new(4, 3).init(&d()).unwrap();
                let labels = Tensor::<2, Int>::zeros([2, 0], &d());
                let targets = Targets::from_tensor(labels, 3, None).unwrap();
                let x = Tensor::<3>::zeros([2, 0, 4], &d());
                head.loss(x, &targets, &LossOptions::new()).outcome()
            },
        ),
        case(
            "sequence input [2, 3, 0]",
            "LinearSoftmax::loss ([B, T, D])",
            &["0 features", "expects 4"],
            move || {
                let head = LinearSoftmaxConfig::new(4, 3).init(&d()).unwrap();
                let targets =
                    Targets::from_tensor(Tensor::<2, Int>::zeros([2, 3], &d()), 3, None).unwrap();
                let x = Tensor::<3>::zeros([2, 3, 0], &d());
                head.loss(x, &targets, &LossOptions::new()).outcome()
            },
        ),
        case(
            "flat targets [6] for input [2, 3, 4]",
            "LinearSoftmax::loss ([B, T, D])",
            &["got [6]", "[2, 3]"],
            move || {
                let head = LinearSoftmaxConfig::new(4, 3).init(&d()).unwrap();
                let targets = Targets::from_indices(&[0, 1, 2, 0, 1, 2], 3, &d()).unwrap();
                let x = Tensor::<3>::zeros([2, 3, 4], &d());
                head.loss(x, &targets, &LossOptions::new()).outcome()
            },
        ),
        case(
            "n_classes 0",
            "LinearSoftmaxConfig::init",
            &["n_classes = 0"],
            move || LinearSoftmaxConfig::new(3, 0).init(&d()).outcome(),
        ),
        case(
            "d_input 0",
            "LinearSoftmaxConfig::init",
            &["d_input = 0"],
            move || LinearSoftmaxConfig::new(0, 3).init(&d()).outcome(),
        ),
        case(
            "bias [4] for weight [3, 5]",
            "LinearSoftmax::from_tensors",
            &["got [4]", "bias"],
            move || {
                LinearSoftmax::from_tensors(
                    Tensor::<2>::zeros([3, 5], &d()),
                    Some(Tensor::<1>::zeros([4], &d())),
                )
                .outcome()
            },
        ),
        case(
            "x[1, 2] = NaN",
            "LinearSoftmax::check_finite",
            &["x[1, 2]"],
            move || {
                let head = LinearSoftmaxConfig::new(4, 3).init(&d()).unwrap();
                let mut values = vec![0.0f32; 12];
                values[6] = f32::NAN;
                let x = Tensor::<2>::from_data(TensorData::new(values, [3, 4]), &d());
                head.check_finite(&x).outcome()
            },
        ),
        case(
            "bias[2] = inf",
            "LinearSoftmax::check_finite",
            &["bias[2]"],
            move || {
                let bias = Tensor::<1>::from_data(
                    TensorData::new(vec![0.0f32, 0.0, f32::INFINITY], [3]),
                    &d(),
                );
                let head =
                    LinearSoftmax::from_tensors(Tensor::<2>::zeros([4, 3], &d()), Some(bias))
                        .unwrap();
                head.check_finite(&Tensor::<2>::zeros([2, 4], &d()))
                    .outcome()
            },
        ),
        case(
            "chunk rows 0",
            "Chunking::rows_for",
            &["rows = 0"],
            move || {
                Chunking::new()
                    .with_rows(Some(0))
                    .rows_for(10, 3, DType::F32)
                    .outcome()
            },
        ),
    ]
}

/// Files written for the loader and model rows; kept for the whole test.
struct Files {
    dir: TempDir,
}

impl Files {
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

fn csv_case(files: &Files, name: &str, text: &[u8], label: LabelColumn, expected: &[&str]) -> Case {
    let path = files.write(name, text);
    let mut pieces = expected.to_vec();
    pieces.push(name);
    case(
        format!("{name}: {:?}", String::from_utf8_lossy(text)),
        "data::load_csv",
        &pieces,
        move || load_csv(&path, &label, None).outcome(),
    )
}

fn idx(dims: &[u32], body: &[u8], magic: u8) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, magic];
    dims.iter()
        .for_each(|d| bytes.extend_from_slice(&d.to_be_bytes()));
    bytes.extend_from_slice(body);
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// An IDX row: what is wrong, the images file, the labels file, the model's class count, the
/// expected pieces.
type IdxCase = (
    &'static str,
    Vec<u8>,
    Vec<u8>,
    Option<usize>,
    Vec<&'static str>,
);

fn loader_rows(files: &Files) -> Vec<Case> {
    let last = || LabelColumn::Last;
    let mut rows = vec![
        csv_case(
            files,
            "ragged.csv",
            b"a,b,label\n1,2,0\n3,1\n",
            last(),
            &["found 2", "line 3"],
        ),
        csv_case(
            files,
            "text.csv",
            b"1,2,0\n1,abc,1\n",
            last(),
            &["\"abc\"", "line 2, column 2"],
        ),
        csv_case(
            files,
            "nan.csv",
            b"a,b,label\n1,NaN,1\n",
            last(),
            &["\"NaN\"", "line 2"],
        ),
        csv_case(
            files,
            "inf.csv",
            b"1,2,0\n1,inf,1\n",
            last(),
            &["\"inf\"", "line 2"],
        ),
        csv_case(
            files,
            "huge-value.csv",
            b"1,2,0\n1,1e39,1\n",
            last(),
            &["\"1e39\"", "line 2"],
        ),
        csv_case(
            files,
            "negative.csv",
            b"1,2,0\n\n1,2,-1\n",
            last(),
            &["\"-1\"", "line 3"],
        ),
        csv_case(
            files,
            "fraction.csv",
            b"1,2,0\n1,2,1.5\n",
            last(),
            &["\"1.5\"", "line 2"],
        ),
        csv_case(
            files,
            "huge-label.csv",
            b"1,2,0\n2,1,1\n3,3,1000000000\n",
            last(),
            &["label 1000000000", "line 3"],
        ),
        csv_case(
            files,
            "one-class.csv",
            b"1,2,0\n3,4,0\n",
            last(),
            &["all labels are 0"],
        ),
        csv_case(
            files,
            "empty.csv",
            b"\n  \n",
            last(),
            &["the file is empty"],
        ),
        csv_case(
            files,
            "header-only.csv",
            b"a,b,y\n",
            last(),
            &["no data rows", "line 1"],
        ),
        csv_case(
            files,
            "label-only.csv",
            b"0\n1\n",
            last(),
            &["only the label column"],
        ),
        csv_case(
            files,
            "not-utf8.csv",
            b"1,2,0\n\xff\xfe,1,1\n",
            last(),
            &["offset 6", "not UTF-8"],
        ),
        csv_case(
            files,
            "no-such-column.csv",
            b"a,b,label\n1,2,0\n",
            LabelColumn::Name("class".into()),
            &["\"class\"", "line 1"],
        ),
        csv_case(
            files,
            "index-out.csv",
            b"1,2,0\n",
            LabelColumn::Index(3),
            &["label column 3", "3 columns"],
        ),
        csv_case(
            files,
            "name-no-header.csv",
            b"1,2,0\n",
            LabelColumn::Name("label".into()),
            &["\"label\"", "needs a header"],
        ),
    ];
    let missing = files.dir.path().join("missing.csv");
    rows.push(case(
        "a missing file",
        "data::load_csv",
        &["missing.csv", "cannot read"],
        move || load_csv(&missing, &LabelColumn::Last, None).outcome(),
    ));

    let images = idx(&[2, 1, 2], &[0, 9, 200, 255], 3);
    let labels = idx(&[2], &[0, 1], 1);
    let idx_cases: Vec<IdxCase> = vec![
        (
            "wrong magic",
            idx(&[2, 1, 2], &[0; 4], 2),
            labels.clone(),
            None,
            vec!["0x00000802", "offset 0"],
        ),
        (
            "labels' magic",
            images.clone(),
            idx(&[2], &[0, 1], 3),
            None,
            vec!["0x00000803", "offset 0"],
        ),
        (
            "3 labels for 2 images",
            images.clone(),
            idx(&[3], &[0, 1, 1], 1),
            None,
            vec!["3 labels", "2 images"],
        ),
        (
            "truncated body",
            idx(&[2, 1, 2], &[0; 3], 3),
            labels.clone(),
            None,
            vec!["found 3", "offset 16"],
        ),
        (
            "trailing bytes",
            idx(&[2, 1, 2], &[0; 6], 3),
            labels.clone(),
            None,
            vec!["2 unexpected bytes", "offset 20"],
        ),
        (
            "truncated header",
            vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0],
            labels.clone(),
            None,
            vec!["found 6 bytes", "offset 4"],
        ),
        (
            "no bytes",
            vec![],
            labels.clone(),
            None,
            vec!["0 bytes", "offset 0"],
        ),
        (
            "count 0",
            idx(&[0, 1, 2], &[], 3),
            labels.clone(),
            None,
            vec!["count is 0"],
        ),
        (
            "images of 0 pixels",
            idx(&[2, 0, 5], &[], 3),
            labels.clone(),
            None,
            vec!["0 x 5 pixels", "offset 8"],
        ),
        (
            "dimensions that overflow",
            idx(&[u32::MAX, u32::MAX, u32::MAX], &[], 3),
            labels.clone(),
            None,
            vec!["overflow", "4294967295"],
        ),
        (
            "label 9 of a 3-class model",
            images.clone(),
            idx(&[2], &[0, 9], 1),
            Some(3),
            vec!["label 9", "offset 9"],
        ),
        (
            "one class",
            images.clone(),
            idx(&[2], &[0, 0], 1),
            None,
            vec!["at least two classes"],
        ),
        (
            // Decompressed no further than the header: the sizes overflow, so nothing follows.
            "gzipped sizes that overflow",
            gzip(&[idx(&[u32::MAX, u32::MAX, u32::MAX], &[], 3), vec![0; 4096]].concat()),
            labels.clone(),
            None,
            vec!["overflow", "decompressed"],
        ),
        (
            "corrupt gzip",
            [&gzip(&images)[..20], &[0xde, 0xad, 0xbe, 0xef]].concat(),
            labels.clone(),
            None,
            vec!["not a valid gzip stream"],
        ),
        (
            "truncated gzip body",
            gzip(&idx(&[2, 1, 2], &[0; 3], 3)),
            labels.clone(),
            None,
            vec!["found 3", "offset 16", "decompressed"],
        ),
    ];
    for (input, image_bytes, label_bytes, n_classes, expected) in idx_cases {
        let image_path = files.write(&format!("{input}.images"), &image_bytes);
        let label_path = files.write(&format!("{input}.labels"), &label_bytes);
        rows.push(case(input, "data::load_idx", &expected, move || {
            load_idx(&image_path, &label_path, n_classes).outcome()
        }));
    }
    rows
}

/// A saved model directory (4 features, 3 classes, one hidden layer of 5) to damage.
fn saved_model(files: &Files, name: &str) -> PathBuf {
    let dir = files.dir.path().join(name);
    let config = ClassifierConfig::new(4, 3).with_hidden(vec![5]);
    model::save(&config.init(&Device::flex()).unwrap(), &config, &dir).unwrap();
    dir
}

fn load_case(input: &str, dir: PathBuf, expected: &[&str]) -> Case {
    case(input, "model::load", expected, move || {
        model::load(&dir, &Device::flex()).outcome()
    })
}

fn model_rows(files: &Files) -> Vec<Case> {
    let mut rows = vec![load_case(
        "no model directory",
        files.dir.path().join("nowhere"),
        &["nowhere", "no model directory"],
    )];

    let truncated = saved_model(files, "truncated");
    let weights = truncated.join(model::WEIGHTS_FILE);
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    rows.push(load_case(
        "model.bpk cut in half",
        truncated,
        &["model.bpk", "not a valid burnpack record"],
    ));

    let empty = saved_model(files, "empty-weights");
    std::fs::write(empty.join(model::WEIGHTS_FILE), b"").unwrap();
    rows.push(load_case(
        "an empty model.bpk",
        empty,
        &["model.bpk", "0 bytes"],
    ));

    let other_shape = saved_model(files, "other-shape");
    let wide = ClassifierConfig::new(4, 3).with_hidden(vec![6]);
    std::fs::write(other_shape.join(model::CONFIG_FILE), wide.to_string()).unwrap();
    rows.push(load_case(
        "config.json of another shape (hidden [6], record [5])",
        other_shape,
        &["hidden: [6]", "do not fit"],
    ));

    let huge = saved_model(files, "huge-config");
    let giant = ClassifierConfig::new(1 << 20, 1 << 20);
    std::fs::write(huge.join(model::CONFIG_FILE), giant.to_string()).unwrap();
    rows.push(load_case(
        "config.json of a [2^20, 2^20] head beside a small model.bpk",
        huge,
        &["1048576", "parameters", "config.json"],
    ));

    let overflow = saved_model(files, "overflowing-config");
    let overflowing = ClassifierConfig::new(usize::MAX, 2);
    std::fs::write(overflow.join(model::CONFIG_FILE), overflowing.to_string()).unwrap();
    rows.push(load_case(
        "config.json whose parameter count overflows",
        overflow,
        &["18446744073709551615", "too many"],
    ));

    let zero_width = saved_model(files, "zero-width");
    std::fs::write(
        zero_width.join(model::CONFIG_FILE),
        ClassifierConfig::new(4, 3).with_hidden(vec![0]).to_string(),
    )
    .unwrap();
    rows.push(load_case(
        "config.json with a hidden layer of width 0",
        zero_width,
        &["hidden layer width = 0"],
    ));

    let garbage = saved_model(files, "garbage-config");
    std::fs::write(garbage.join(model::CONFIG_FILE), b"{\"d_input\": \"four\"}").unwrap();
    rows.push(load_case(
        "config.json that is not the config",
        garbage,
        &["config.json", "not a valid model config"],
    ));

    let no_config = saved_model(files, "no-config");
    std::fs::remove_file(no_config.join(model::CONFIG_FILE)).unwrap();
    rows.push(load_case(
        "no config.json",
        no_config,
        &["config.json", "cannot read the model config"],
    ));

    let no_weights = saved_model(files, "no-weights");
    std::fs::remove_file(no_weights.join(model::WEIGHTS_FILE)).unwrap();
    rows.push(load_case(
        "no model.bpk",
        no_weights,
        &["model.bpk", "cannot read the parameters"],
    ));
    rows
}

/// The command line, parsed and run in this process as the binary runs it.
fn cli_case(files: &Files, input: &str, args: Vec<String>, expected: &[&str]) -> Case {
    let out = files
        .dir
        .path()
        .join(format!("out-{}", input.replace(' ', "-")));
    let entry = format!("linear-softmax {}", args.join(" "));
    let mut argv = vec!["linear-softmax".to_string()];
    let trains = args.first().is_some_and(|command| command == "train");
    argv.extend(args);
    if trains {
        argv.extend(["--out".into(), out.display().to_string()]);
    }
    case(input, entry, expected, move || {
        let cli = Cli::try_parse_from(&argv).map_err(|err| err.to_string())?;
        match cli::run(cli) {
            Ok(_) => Ok(()),
            Err(Failure::Input(err)) => Err(err.to_string()),
            Err(Failure::Run(message)) => {
                Err(format!("(a run failure, not an input error) {message}"))
            }
        }
    })
}

fn cli_rows(files: &Files) -> Vec<Case> {
    let data = files.write("train.csv", b"0,1,0\n1,0,1\n0,1,0\n1,0,1\n0,1,0\n1,0,1\n");
    let data = data.to_str().unwrap().to_string();
    let model = saved_model(files, "for-predict").display().to_string();
    let args = |args: &[&str]| args.iter().map(|arg| arg.to_string()).collect::<Vec<_>>();
    let train = |extra: &[&str]| {
        let mut all = args(&["train", "--data", &data]);
        all.extend(args(extra));
        all
    };
    vec![
        cli_case(
            files,
            "epochs 0",
            train(&["--epochs", "0"]),
            &["epochs = 0"],
        ),
        cli_case(
            files,
            "hidden 0",
            train(&["--hidden", "0", "--epochs", "1"]),
            &["hidden = [0]"],
        ),
        cli_case(
            files,
            "hidden 8,0",
            train(&["--hidden", "8,0", "--epochs", "1"]),
            &["hidden = [8, 0]"],
        ),
        cli_case(
            files,
            "label smoothing 1.5",
            train(&["--label-smoothing", "1.5", "--epochs", "1"]),
            &["label_smoothing = 1.5"],
        ),
        cli_case(
            files,
            "class weights for 3 classes",
            train(&["--class-weights", "1,2,3", "--epochs", "1"]),
            &["got [3]", "[2]"],
        ),
        cli_case(
            files,
            "softcap -1",
            train(&["--softcap=-1", "--epochs", "1"]),
            &["softcap = -1"],
        ),
        cli_case(
            files,
            "temperature -2",
            train(&["--temperature=-2", "--epochs", "1"]),
            &["temperature = -2"],
        ),
        cli_case(
            files,
            "test fraction 1.5",
            train(&["--test-fraction", "1.5", "--epochs", "1"]),
            &["test fraction = 1.5"],
        ),
        cli_case(
            files,
            "batch size 0",
            train(&["--batch-size", "0", "--epochs", "1"]),
            &["batch size = 0"],
        ),
        cli_case(
            files,
            "learning rate -1",
            train(&["--lr=-1", "--epochs", "1"]),
            &["learning rate = -1"],
        ),
        cli_case(
            files,
            "learning rate NaN",
            train(&["--lr", "NaN", "--epochs", "1"]),
            &["learning rate = NaN"],
        ),
        cli_case(
            files,
            "momentum 1.5",
            train(&["--momentum", "1.5", "--epochs", "1"]),
            &["momentum = 1.5"],
        ),
        cli_case(
            files,
            "top-k 0",
            args(&[
                "predict", "--model", &model, "--input", &data, "--top-k", "0",
            ]),
            &["top-k = 0"],
        ),
        cli_case(
            files,
            "a model that is not there",
            args(&["evaluate", "--model", "nowhere"]),
            &["nowhere", "no model directory"],
        ),
    ]
}

#[test]
fn every_bad_input_is_an_error_naming_it_never_a_panic() {
    let files = Files {
        dir: TempDir::new().unwrap(),
    };
    let mut cases = head_rows();
    cases.extend(construction_rows());
    cases.extend(loader_rows(&files));
    cases.extend(model_rows(&files));
    cases.extend(cli_rows(&files));

    let mut failures = Vec::new();
    for case in &cases {
        let outcome = catch_unwind(AssertUnwindSafe(|| (case.run)()));
        let problem = match outcome {
            Err(_) => Some("panicked".to_string()),
            Ok(Ok(())) => Some("was accepted".to_string()),
            Ok(Err(message)) => {
                let missing: Vec<_> = case
                    .expected
                    .iter()
                    .filter(|piece| !message.contains(piece.as_str()))
                    .collect();
                (!missing.is_empty()).then(|| format!("message {message:?} lacks {missing:?}"))
            }
        };
        if let Some(problem) = problem {
            failures.push(format!("{} through {}: {problem}", case.input, case.entry));
        }
    }
    println!("{} bad inputs, {} failures", cases.len(), failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} rows:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// A save killed halfway leaves the previous model whole: the parameters go to a temporary file
/// that is renamed over `model.bpk` only once complete, so a truncated temporary file (the
/// state a kill leaves) is never read, and the next save replaces it.
#[test]
fn a_save_killed_halfway_leaves_the_previous_model_loadable() {
    let files = Files {
        dir: TempDir::new().unwrap(),
    };
    let dir = saved_model(&files, "model");
    let device = Device::flex();
    let (before, _) = model::load(&dir, &device).unwrap();
    let x = Tensor::<2>::ones([2, 4], &device);
    let probabilities =
        |model: &model::Classifier| to_host_f64(&model.probabilities(x.clone()).unwrap()).unwrap();

    // What a save killed during its write leaves: half of a new record in the temporary file.
    let config = ClassifierConfig::new(4, 3).with_hidden(vec![5]);
    let other = config.init(&device).unwrap();
    let other_dir = files.dir.path().join("other");
    model::save(&other, &config, &other_dir).unwrap();
    let new_bytes = std::fs::read(other_dir.join(model::WEIGHTS_FILE)).unwrap();
    let temporary = temporary_file(&dir, model::WEIGHTS_FILE);
    std::fs::write(&temporary, &new_bytes[..new_bytes.len() / 2]).unwrap();

    let (after, _) = model::load(&dir, &device).unwrap();
    assert_eq!(
        probabilities(&after),
        probabilities(&before),
        "the old model, whole"
    );

    // The next save completes over the leftover.
    model::save(&other, &config, &dir).unwrap();
    let (saved, _) = model::load(&dir, &device).unwrap();
    assert_eq!(probabilities(&saved), probabilities(&other));
    assert!(
        !temporary.exists(),
        "the leftover temporary file was replaced and renamed"
    );
}

/// The temporary file `model::save` writes `name` through.
fn temporary_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.tmp"))
}

/// Loading while another thread saves models of two shapes into the same directory: each load
/// gives a whole model of one of the two shapes, or (config and parameters from two saves) the
/// one-line "do not fit" error; never a half-written file, never a panic.
#[test]
fn loading_while_saving_gives_a_whole_model_or_a_clean_error() {
    let files = Files {
        dir: TempDir::new().unwrap(),
    };
    let dir = saved_model(&files, "busy");
    let device = Device::flex();
    let shapes = [
        ClassifierConfig::new(4, 3).with_hidden(vec![5]),
        ClassifierConfig::new(4, 3).with_hidden(vec![9]),
    ];
    let models: Vec<_> = shapes.iter().map(|c| c.init(&device).unwrap()).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for round in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let which = round % 2;
                model::save(&models[which], &shapes[which], &dir).unwrap();
            }
        });
        let (mut whole, mut mismatched) = (0, 0);
        for _ in 0..200 {
            match catch_unwind(AssertUnwindSafe(|| model::load(&dir, &device))) {
                Err(_) => panic!("load panicked during a save"),
                Ok(Ok((_, config))) => {
                    assert!(shapes.contains(&config));
                    whole += 1;
                }
                Ok(Err(err)) => {
                    let message = err.to_string();
                    assert!(message.contains("do not fit"), "{message}");
                    assert_eq!(message.lines().count(), 1);
                    mismatched += 1;
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        println!("{whole} whole models, {mismatched} config/parameter pairs from two saves");
        assert!(whole > 0);
    });
}
