//! The `linear-softmax` binary, run on small generated files: what it prints and writes, and
//! how it fails on bad input (one line on stderr naming the file, exit status 2).

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::cargo::cargo_bin_cmd;
use burn::prelude::*;
use linear_softmax_cli::data::{LabelColumn, load_csv_features};
use linear_softmax_cli::model;
use tempfile::TempDir;

/// Features of the generated data set.
const FEATURES: usize = 4;
/// Classes of the generated data set.
const CLASSES: usize = 3;

fn run(args: &[&str]) -> Output {
    cargo_bin_cmd!("linear-softmax")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Asserts exit status 2 and one line on stderr containing every piece of `expected`.
#[track_caller]
fn assert_input_error(output: &Output, expected: &[&str]) {
    let message = stderr(output);
    assert_eq!(output.status.code(), Some(2), "stderr: {message}");
    assert_eq!(message.lines().count(), 1, "one line: {message}");
    assert!(message.starts_with("error: "), "{message}");
    for piece in expected {
        assert!(message.contains(piece), "{message:?} lacks {piece:?}");
    }
}

/// `rows_per_class` rows of each class around well-separated centres, with a header and the
/// label in the middle column `y`; deterministic.
fn dataset_csv(rows_per_class: usize) -> String {
    let mut text = String::from("f0,f1,y,f2,f3\n");
    let mut state = 12345u64;
    let mut noise = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.6
    };
    for row in 0..rows_per_class * CLASSES {
        let class = row % CLASSES;
        let f: Vec<f64> = (0..FEATURES)
            .map(|j| if j == class { 1.0 } else { 0.0 } + noise())
            .collect();
        text += &format!("{:.4},{:.4},{class},{:.4},{:.4}\n", f[0], f[1], f[2], f[3]);
    }
    text
}

struct Fixture {
    dir: TempDir,
    data: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let data = dir.path().join("train.csv");
        std::fs::write(&data, dataset_csv(20)).unwrap();
        Self { dir, data }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Trains for `epochs` epochs into `out` with extra flags; asserts success.
    fn train(&self, out: &Path, epochs: usize, extra: &[&str]) -> Output {
        let epochs = epochs.to_string();
        let mut args = vec![
            "train",
            "--data",
            self.data.to_str().unwrap(),
            "--label-column",
            "y",
            "--epochs",
            &epochs,
            "--batch-size",
            "8",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let output = run(&args);
        assert!(output.status.success(), "stderr: {}", stderr(&output));
        output
    }
}

fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{path:?} is a PNG");
    assert!(
        bytes.len() > 2000,
        "{path:?} has content: {} bytes",
        bytes.len()
    );
}

#[test]
fn train_writes_metrics_charts_and_model() {
    let fixture = Fixture::new();
    let out = fixture.path("run");
    let output = fixture.train(
        &out,
        4,
        &["--hidden", "8", "--optimizer", "adam", "--lr", "0.02"],
    );
    let printed = stdout(&output);
    assert!(
        printed.contains("48 training rows, 12 test rows, 4 features, 3 classes"),
        "{printed}"
    );
    assert!(printed.contains("MLP 4 -> 8 -> 3"), "{printed}");
    // Before the first step: every path's gradients on 8 rows, each comparison within its
    // tolerance.
    assert!(
        printed.contains("first step: head gradients on a batch of N = 8 rows, D = 8 features"),
        "{printed}"
    );
    let verdicts: Vec<&str> = printed
        .lines()
        .filter(|l| l.starts_with("f32 ") || l.starts_with("f64 "))
        .collect();
    // Per dtype: three path pairs on loss, dW, db, dX; each path against finite differences on
    // dW, db, dX (the finite differences are of the loss itself, so no loss row).
    assert_eq!(verdicts.len(), 2 * (3 * 4 + 3 * 3), "{printed}");
    assert!(verdicts.iter().all(|l| l.ends_with("ok")), "{printed}");
    assert_eq!(
        printed.matches("\nepoch ").count(),
        4,
        "one line per epoch: {printed}"
    );

    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut lines = metrics.lines();
    assert_eq!(
        lines.next(),
        Some("epoch,train_loss,train_accuracy,test_loss,test_accuracy,seconds")
    );
    let rows: Vec<Vec<f64>> = lines
        .map(|line| line.split(',').map(|cell| cell.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 4);
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 6);
        assert_eq!(row[0], (index + 1) as f64);
        assert!(
            row[1].is_finite() && row[1] > 0.0 && row[3] > 0.0,
            "losses {row:?}"
        );
        assert!((0.0..=1.0).contains(&row[2]) && (0.0..=1.0).contains(&row[4]));
    }
    assert!(rows[3][1] < rows[0][1], "the training loss fell: {rows:?}");
    assert!(rows[3][4] >= 0.9, "separable data is learnt: {rows:?}");
    let final_line = printed.lines().last().unwrap();
    let expected = format!("test accuracy {:.2}%", 100.0 * rows[3][4]);
    assert!(
        final_line.starts_with(&expected),
        "{final_line} vs {expected}"
    );

    assert_png(&out.join("curves.png"));
    assert_png(&out.join("confusion.png"));
    let (reloaded, config) = model::load(&out, &Device::flex()).unwrap();
    assert_eq!(
        (config.d_input, config.n_classes, config.hidden.clone()),
        (4, 3, vec![8])
    );
    assert_eq!(reloaded.hidden.len(), 1);
    assert!(
        !out.join(".model.bpk.tmp").exists(),
        "no temporary file is left"
    );
}

#[test]
fn a_reloaded_model_predicts_the_same_classes_and_probabilities() {
    let fixture = Fixture::new();
    let out = fixture.path("run");
    fixture.train(&out, 2, &["--path", "autodiff"]);

    // What the saved model says in this process...
    let device = Device::flex();
    let (reloaded, _) = model::load(&out, &device).unwrap();
    let rows = load_csv_features(&fixture.data, Some(&LabelColumn::Name("y".into()))).unwrap();
    let x = Tensor::<2>::from_data(
        TensorData::new(rows.features.clone(), [rows.len(), FEATURES]),
        &device,
    );
    let probabilities = reloaded
        .probabilities(x)
        .unwrap()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();

    // ... and what `predict` prints, exactly.
    let output = run(&[
        "predict",
        "--model",
        out.to_str().unwrap(),
        "--input",
        fixture.data.to_str().unwrap(),
        "--label-column",
        "y",
        "--top-k",
        "2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let mut lines = printed.lines();
    assert_eq!(
        lines.next(),
        Some("line,class,probability,class_2,probability_2")
    );
    let lines: Vec<&str> = lines.collect();
    assert_eq!(lines.len(), rows.len());
    for (row, line) in lines.iter().enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(
            cells[0],
            (row + 2).to_string(),
            "line numbers count the header"
        );
        let row_probabilities = &probabilities[row * CLASSES..(row + 1) * CLASSES];
        for k in 0..2 {
            let class: usize = cells[1 + 2 * k].parse().unwrap();
            let probability: f32 = cells[2 + 2 * k].parse().unwrap();
            assert_eq!(probability, row_probabilities[class], "row {row}, rank {k}");
        }
        let best = row_probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0;
        assert_eq!(
            cells[1],
            best.to_string(),
            "row {row}: the most probable class"
        );
    }
}

#[test]
fn evaluate_reports_accuracy_and_every_class() {
    let fixture = Fixture::new();
    let out = fixture.path("run");
    fixture.train(&out, 3, &[]);
    let output = run(&[
        "evaluate",
        "--model",
        out.to_str().unwrap(),
        "--data",
        fixture.data.to_str().unwrap(),
        "--label-column",
        "2",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(printed.contains("train.csv: 60 rows"), "{printed}");
    let accuracy_line = printed.lines().find(|l| l.starts_with("accuracy")).unwrap();
    assert!(accuracy_line.contains("of 60 rows"), "{accuracy_line}");
    let class_rows: Vec<Vec<&str>> = printed
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("class"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(class_rows.len(), CLASSES);
    for (class, row) in class_rows.iter().enumerate() {
        assert_eq!(row[0], class.to_string());
        assert_eq!(row[3], "20", "20 rows of each class");
    }
}

#[test]
fn compare_reports_agreement_as_text_and_json() {
    let fixture = Fixture::new();
    let data = fixture.data.to_str().unwrap();
    let output = run(&[
        "compare",
        "--data",
        data,
        "--label-column",
        "y",
        "--rows",
        "7",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(
        printed.contains("N = 7 rows, D = 4 features, C = 3 classes"),
        "{printed}"
    );
    for dtype in ["f32", "f64"] {
        for pair in [
            "manual vs autodiff",
            "autodiff vs fused",
            "manual vs finite differences",
            "fused vs finite differences",
        ] {
            // The finite differences are gradients only: no loss to compare.
            let values: &[&str] = if pair.ends_with("finite differences") {
                &["dW", "db", "dX"]
            } else {
                &["loss", "dW", "db", "dX"]
            };
            for value in values {
                assert!(
                    printed.lines().any(|l| l.starts_with(dtype)
                        && l.contains(pair)
                        && l.split_whitespace().any(|w| w == *value)
                        && l.ends_with("ok")),
                    "{dtype} {pair} {value}: {printed}"
                );
            }
        }
    }

    let output = run(&[
        "compare",
        "--data",
        data,
        "--label-column",
        "y",
        "--rows",
        "5",
        "--l2",
        "0.1",
        "--json",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["rows"], 5);
    let differences = json["differences"].as_array().unwrap();
    // Per dtype: the three pairs of paths (4 quantities each), and each path vs finite
    // differences (dW, db, dX).
    assert_eq!(differences.len(), 2 * (3 * 4 + 3 * 3));
    for difference in differences {
        let max_rel = difference["max_rel"].as_f64().unwrap();
        assert!(
            max_rel <= difference["tolerance"].as_f64().unwrap(),
            "{difference}"
        );
        assert_eq!(difference["within_tolerance"], true);
    }
}

#[test]
fn compare_on_a_saved_mlp_uses_its_hidden_features() {
    let fixture = Fixture::new();
    let out = fixture.path("run");
    fixture.train(&out, 1, &["--hidden", "6"]);
    let output = run(&[
        "compare",
        "--model",
        out.to_str().unwrap(),
        "--data",
        fixture.data.to_str().unwrap(),
        "--label-column",
        "y",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("N = 16 rows, D = 6 features, C = 3 classes"));
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_last_good_model() {
    let fixture = Fixture::new();
    // Unscaled features (~1e20): the first step moves W by ~1e18, and the next logits overflow.
    let huge: String = dataset_csv(20)
        .lines()
        .enumerate()
        .map(|(line, text)| match line {
            0 => format!("{text}\n"),
            _ => {
                let cells: Vec<String> = text
                    .split(',')
                    .enumerate()
                    .map(|(column, cell)| match column {
                        2 => cell.to_string(),
                        _ => format!("{:e}", cell.parse::<f64>().unwrap() * 1e20),
                    })
                    .collect();
                cells.join(",") + "\n"
            }
        })
        .collect();
    let data = fixture.write("huge.csv", huge.as_bytes());
    let out = fixture.path("run");
    for path in ["manual", "autodiff"] {
        let output = run(&[
            "train",
            "--data",
            data.to_str().unwrap(),
            "--label-column",
            "y",
            "--epochs",
            "3",
            "--batch-size",
            "8",
            "--path",
            path,
            "--out",
            out.to_str().unwrap(),
        ]);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
        let step: usize = message
            .split("non-finite (NaN) at epoch 1, step ")
            .nth(1)
            .and_then(|rest| rest.split(':').next())
            .and_then(|step| step.parse().ok())
            .unwrap_or_else(|| panic!("{path}: {message}"));
        assert!(step >= 2, "the initial model's loss is finite: {message}");
        assert!(
            message.contains("the initial model, the last good one, is kept in"),
            "{message}"
        );
        let (kept, _) = model::load(&out, &Device::flex()).unwrap();
        let weights = kept.head.weight().into_data().try_to_vec::<f32>().unwrap();
        assert!(
            weights.iter().all(|w| w.is_finite() && w.abs() <= 0.5),
            "the initial U(-1/2, 1/2) weights: {weights:?}"
        );
    }
}

#[test]
fn every_path_trains_the_same_mlp() {
    // The three paths compute the same gradients: from the same seed, the epochs' accuracies
    // are the same and the losses agree to f32 round-off (with loss options on, which every
    // path supports).
    let fixture = Fixture::new();
    let metrics = ["manual", "autodiff", "fused"]
        .iter()
        .map(|path| {
            let out = fixture.path(path);
            let flags = [
                "--hidden",
                "6",
                "--path",
                path,
                "--label-smoothing",
                "0.1",
                "--z-loss",
                "0.001",
            ];
            fixture.train(&out, 3, &flags);
            let text = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
            text.lines()
                .skip(1)
                .map(|line| line.split(',').map(|cell| cell.parse().unwrap()).collect())
                .collect::<Vec<Vec<f64>>>()
        })
        .collect::<Vec<_>>();
    assert_eq!(metrics[0].len(), 3);
    for (path, rows) in ["autodiff", "fused"].iter().zip(&metrics[1..]) {
        for (expected, got) in metrics[0].iter().zip(rows) {
            // epoch, train loss, train accuracy, test loss, test accuracy (then seconds)
            assert_eq!(
                (got[0], got[2], got[4]),
                (expected[0], expected[2], expected[4]),
                "{path}"
            );
            for column in [1, 3] {
                let gap = (got[column] - expected[column]).abs() / expected[column];
                assert!(gap < 1e-5, "{path}: {got:?} vs manual {expected:?}");
            }
        }
    }
}

#[test]
fn bad_loss_options_are_one_line_errors() {
    let output = run(&["--label-smoothing", "1.5", "--epochs", "1"]);
    assert_input_error(
        &output,
        &["invalid label_smoothing = 1.5: a value in [0, 1]"],
    );
    let output = run(&["--class-weights", "1,2", "--epochs", "1"]);
    assert_input_error(&output, &["class weights: expected shape [10], got [2]"]);
}

#[test]
fn zero_epochs_or_a_zero_width_hidden_layer_are_one_line_errors() {
    let output = run(&["--epochs", "0"]);
    assert_input_error(&output, &["invalid epochs = 0: at least 1"]);
    for widths in ["0", "8,0"] {
        let output = run(&["--hidden", widths, "--epochs", "1"]);
        assert_input_error(&output, &["invalid hidden", "at least 1"]);
    }
}

#[test]
fn a_stray_huge_label_is_refused_before_any_head_is_made() {
    let fixture = Fixture::new();
    let path = fixture.write("huge.csv", b"1,2,0\n2,1,1\n3,3,1000000000\n");
    let output = run(&["train", "--data", path.to_str().unwrap(), "--epochs", "1"]);
    assert_input_error(
        &output,
        &[
            "huge.csv",
            "line 3: label 1000000000 would make 1000000001 classes, more than the 3 rows",
        ],
    );
}

#[test]
fn malformed_training_data_is_one_line_naming_file_and_line() {
    let fixture = Fixture::new();
    let cases: [(&str, &[u8], &[&str]); 5] = [
        (
            "ragged.csv",
            b"a,b,y\n1,2,0\n1,2\n",
            &["line 3: expected 3 columns"],
        ),
        (
            "text.csv",
            b"1,2,0\n1,x,1\n",
            &["line 2, column 2: \"x\" is not a finite number"],
        ),
        (
            "label.csv",
            b"1,2,0\n1,2,one\n",
            &["line 2, column 3: label \"one\""],
        ),
        ("empty.csv", b"", &["the file is empty"]),
        ("header_only.csv", b"a,b,y\n", &["no data rows"]),
    ];
    for (name, text, expected) in cases {
        let path = fixture.write(name, text);
        let output = run(&["train", "--data", path.to_str().unwrap(), "--epochs", "1"]);
        let mut pieces = vec![name];
        pieces.extend_from_slice(expected);
        assert_input_error(&output, &pieces);
    }
    let output = run(&[
        "train",
        "--data",
        fixture.data.to_str().unwrap(),
        "--label-column",
        "label",
    ]);
    assert_input_error(&output, &["train.csv", "line 1: no column named \"label\""]);
}

#[test]
fn malformed_idx_files_are_one_line_naming_file_and_offset() {
    let fixture = Fixture::new();
    let header = |magic: u8, dims: &[u32]| {
        let mut bytes = vec![0, 0, 8, magic];
        dims.iter()
            .for_each(|d| bytes.extend_from_slice(&d.to_be_bytes()));
        bytes
    };
    let images = fixture.write(
        "images",
        &[header(3, &[2, 1, 2]), vec![0, 9, 200, 255]].concat(),
    );
    let labels = fixture.write("labels", &[header(1, &[2]), vec![0, 1]].concat());
    let bad_magic = fixture.write("bad-magic", &[header(2, &[2, 1, 2]), vec![0; 4]].concat());
    let truncated = fixture.write("truncated", &[header(3, &[2, 1, 2]), vec![0; 3]].concat());
    let three_labels = fixture.write("three-labels", &[header(1, &[3]), vec![0, 1, 1]].concat());
    let cases = [
        (
            &bad_magic,
            &labels,
            vec!["bad-magic", "offset 0: wrong magic number 0x00000802"],
        ),
        (
            &images,
            &three_labels,
            vec!["three-labels", "3 labels", "2 images"],
        ),
        (
            &truncated,
            &labels,
            vec!["truncated", "offset 16: truncated body"],
        ),
    ];
    for (images, labels, expected) in cases {
        let output = run(&[
            "--idx-images",
            images.to_str().unwrap(),
            "--idx-labels",
            labels.to_str().unwrap(),
            "--epochs",
            "1",
        ]);
        assert_input_error(&output, &expected);
    }
}

#[test]
fn missing_or_damaged_models_are_one_line_errors() {
    let fixture = Fixture::new();
    let out = fixture.path("run");
    fixture.train(&out, 1, &[]);
    let input = fixture.write("input.csv", b"0.1,0.2,0.3,0.4\n");
    let predict = |model: &Path| {
        run(&[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
        ])
    };
    assert!(predict(&out).status.success());

    assert_input_error(
        &predict(&fixture.path("nowhere")),
        &["nowhere", "no model directory"],
    );

    let weights = out.join(model::WEIGHTS_FILE);
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_input_error(
        &predict(&out),
        &["model.bpk", "not a valid burnpack record"],
    );

    std::fs::remove_file(out.join(model::CONFIG_FILE)).unwrap();
    assert_input_error(
        &predict(&out),
        &["config.json", "cannot read the model config"],
    );
}

#[test]
fn prediction_inputs_and_evaluation_labels_are_checked_against_the_model() {
    let fixture = Fixture::new();
    let out = fixture.path("run");
    fixture.train(&out, 1, &[]);
    let model = out.to_str().unwrap();

    let narrow = fixture.write("narrow.csv", b"x,y,z\n0.1,0.2,0.3\n");
    let output = run(&[
        "predict",
        "--model",
        model,
        "--input",
        narrow.to_str().unwrap(),
    ]);
    assert_input_error(
        &output,
        &["narrow.csv", "line 2: 3 feature columns", "expects 4"],
    );

    let labels = fixture.write("labels.csv", b"1,2,3,4,0\n1,2,3,4,5\n");
    let output = run(&[
        "evaluate",
        "--model",
        model,
        "--data",
        labels.to_str().unwrap(),
    ]);
    assert_input_error(
        &output,
        &[
            "labels.csv",
            "line 2: label 5 is out of range: the model has classes 0..3",
        ],
    );

    let output = run(&[
        "predict",
        "--model",
        model,
        "--input",
        labels.to_str().unwrap(),
        "--label-column",
        "last",
        "--top-k",
        "4",
    ]);
    assert_input_error(&output, &["invalid top-k = 4"]);
}

/// `--device wgpu` trains (the MLP with its fused head on the GPU backend) and learns the
/// separable data as on Flex; the model it writes evaluates to the same accuracy on wgpu and on
/// Flex. (Each Burn backend draws its own random numbers from the seed, so the two devices start
/// from other parameters: the runs are compared by what they learn, not step by step.)
#[cfg(feature = "wgpu")]
#[test]
fn training_on_wgpu_learns_and_evaluates_as_on_flex() {
    let fixture = Fixture::new();
    let out = fixture.path("wgpu");
    let flags = [
        "--hidden",
        "8",
        "--optimizer",
        "adam",
        "--lr",
        "0.02",
        "--device",
        "wgpu",
    ];
    let printed = stdout(&fixture.train(&out, 4, &flags));
    // wgpu's f64 exp and log are wrong, so the f64 half of the check runs on Flex, and says so.
    assert!(printed.contains("(f64 on Flex: "), "{printed}");
    let verdicts = printed
        .lines()
        .filter(|l| l.starts_with("f32 ") || l.starts_with("f64 "));
    assert!(verdicts.clone().count() > 0, "{printed}");
    assert!(verdicts.clone().all(|l| l.ends_with("ok")), "{printed}");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<f64>> = metrics
        .lines()
        .skip(1)
        .map(|line| line.split(',').map(|cell| cell.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 4);
    assert!(rows[3][1] < rows[0][1], "the training loss fell: {rows:?}");
    assert!(rows[3][4] >= 0.9, "separable data is learnt: {rows:?}");

    let accuracy = |device: &str| {
        let output = run(&[
            "evaluate",
            "--model",
            out.to_str().unwrap(),
            "--data",
            fixture.data.to_str().unwrap(),
            "--label-column",
            "y",
            "--device",
            device,
        ]);
        assert!(output.status.success(), "stderr: {}", stderr(&output));
        let printed = stdout(&output);
        let line = printed.lines().find(|l| l.starts_with("accuracy"));
        line.expect("an accuracy line").to_string()
    };
    assert_eq!(accuracy("wgpu"), accuracy("flex"));
}

/// The percentage after `label` in `text` (`... label 97.21% ...`).
fn percentage_after(text: &str, label: &str) -> f64 {
    let rest = &text[text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} in {text}"))
        + label.len()..];
    let number: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().unwrap()
}

#[test]
fn distill_trains_a_linear_student_from_a_saved_teacher() {
    let fixture = Fixture::new();
    let teacher = fixture.path("teacher");
    fixture.train(&teacher, 20, &["--hidden", "6", "--report-rows", "0"]);
    let student = fixture.path("student");
    let data = fixture.data.to_str().unwrap();
    let args = [
        "distill",
        "--teacher",
        teacher.to_str().unwrap(),
        "--data",
        data,
    ];
    let mut args = args.to_vec();
    let out = student.to_str().unwrap();
    args.extend([
        "--label-column",
        "y",
        "--epochs",
        "10",
        "--batch-size",
        "8",
        "--out",
        out,
    ]);
    let output = run(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.contains("distillation beta 0 soft 0.5 hard 0.5"),
        "{text}"
    );
    // Ten epoch lines, then the two students' test accuracies on well-separated classes.
    let epoch = |line: &&str| {
        let first = line.split_whitespace().next();
        first.is_some_and(|word| word.parse::<usize>().is_ok())
    };
    let epoch_lines = text.lines().filter(epoch);
    assert_eq!(epoch_lines.count(), 10, "{text}");
    let alone = percentage_after(&text, "on labels alone");
    let distilled = percentage_after(&text, "distilled from the teacher");
    assert!(alone >= 90.0 && distilled >= 90.0, "{text}");
    // The distilled student is a linear classifier that evaluates as reported.
    let device = Device::flex();
    let (model, config) = model::load(&student, &device).unwrap();
    assert!(config.hidden.is_empty() && model.hidden.is_empty());
    let evaluation = run(&[
        "evaluate",
        "--model",
        out,
        "--data",
        data,
        "--label-column",
        "y",
    ]);
    assert!(evaluation.status.success(), "{}", stderr(&evaluation));
    assert!(
        stdout(&evaluation).contains("accuracy"),
        "{}",
        stdout(&evaluation)
    );
}

#[test]
fn distill_refuses_a_teacher_of_other_data_and_bad_options() {
    let fixture = Fixture::new();
    let teacher = fixture.path("teacher");
    fixture.train(&teacher, 1, &["--hidden", "6", "--report-rows", "0"]);
    let teacher = teacher.to_str().unwrap();
    // A teacher of the 4-feature CSV, on the embedded 64-pixel digits.
    let output = run(&["distill", "--teacher", teacher, "--epochs", "1"]);
    assert_input_error(&output, &["64 features", "expects 4"]);
    let missing = fixture.path("nothing");
    let output = run(&["distill", "--teacher", missing.to_str().unwrap()]);
    assert_input_error(&output, &["no model directory"]);
    let data = fixture.data.to_str().unwrap();
    for (flag, named) in [
        ("--beta=1.5", "beta"),
        ("--hard-weight=-1", "hard_weight"),
        ("--lr=-1", "learning rate"),
    ] {
        let output = run(&[
            "distill",
            "--teacher",
            teacher,
            "--data",
            data,
            "--label-column",
            "y",
            flag,
        ]);
        assert_input_error(&output, &[named]);
    }
}
