//! The CSV and IDX loaders: what they read, and every malformed input named by file and line or
//! byte offset.

use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use linear_softmax_cli::Error;
use linear_softmax_cli::data::{LabelColumn, load_csv, load_csv_features, load_idx};
use tempfile::TempDir;

fn write(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The message of an `Error::Data`, checking that it names `path`.
#[track_caller]
fn data_message(err: Error, path: &Path) -> String {
    match err {
        Error::Data {
            source_name,
            message,
        } => {
            assert!(
                source_name.starts_with(&path.display().to_string()),
                "{source_name} names {path:?}"
            );
            assert!(!message.contains('\n'), "one line: {message}");
            message
        }
        other => panic!("expected a data error, got {other:?}"),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// An IDX file of unsigned bytes with the given dimensions and body.
fn idx(dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for dim in dims {
        bytes.extend_from_slice(&dim.to_be_bytes());
    }
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn csv_with_header_and_named_label_column() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "d.csv", b"x1,y,x2\n0.5,1,2\r\n\n-1e-3,0,4\n3,2.0,5\n");
    let data = load_csv(&path, &LabelColumn::Name("y".into()), None).unwrap();
    assert_eq!(data.features, [0.5, 2.0, -1e-3, 4.0, 3.0, 5.0]);
    assert_eq!(data.labels, [1, 0, 2]);
    assert_eq!((data.n_features, data.n_classes), (2, 3));

    let data = load_csv(&path, &LabelColumn::Index(1), Some(5)).unwrap();
    assert_eq!(data.n_classes, 5, "a model's class count is kept");
}

#[test]
fn csv_without_header_takes_the_last_column_by_default() {
    let dir = TempDir::new().unwrap();
    let path = write(&dir, "d.csv", b"1,2,0\n3,4,1\n");
    let data = load_csv(&path, &LabelColumn::Last, None).unwrap();
    assert_eq!(data.features, [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(data.labels, [0, 1]);

    let rows = load_csv_features(&path, None).unwrap();
    assert_eq!(rows.n_features, 3);
    assert_eq!(rows.labels, None);
    assert_eq!(rows.lines, [1, 2]);
}

type CsvCase = (
    &'static str,
    &'static [u8],
    LabelColumn,
    Option<usize>,
    &'static str,
);

#[test]
fn malformed_csv_files_are_named_with_their_line() {
    let dir = TempDir::new().unwrap();
    // (file, contents, label column, the model's class count, expected message)
    let cases: [CsvCase; 9] = [
        (
            "ragged.csv",
            b"a,b,label\n1,2,0\n3,1\n",
            LabelColumn::Last,
            None,
            "line 3: expected 3 columns (as on line 1), found 2",
        ),
        (
            "text.csv",
            b"1,2,0\n1,abc,1\n",
            LabelColumn::Last,
            None,
            "line 2, column 2: \"abc\" is not a finite number",
        ),
        (
            "nan.csv",
            b"a,b,label\n1,NaN,1\n",
            LabelColumn::Last,
            None,
            "line 2, column 2 (\"b\"): \"NaN\" is not a finite number",
        ),
        (
            "no_such_column.csv",
            b"a,b,label\n1,2,0\n",
            LabelColumn::Name("class".into()),
            None,
            "line 1: no column named \"class\" in the header (columns: a, b, label)",
        ),
        (
            "index_out.csv",
            b"1,2,0\n",
            LabelColumn::Index(3),
            None,
            "line 1: label column 3 is out of range: the file has 3 columns (0..3)",
        ),
        (
            "name_no_header.csv",
            b"1,2,0\n",
            LabelColumn::Name("label".into()),
            None,
            "line 1: label column \"label\" needs a header",
        ),
        (
            "negative.csv",
            b"1,2,0\n\n1,2,-1\n",
            LabelColumn::Last,
            None,
            "line 3, column 3: label \"-1\" is not a class index (an integer >= 0)",
        ),
        (
            "beyond.csv",
            b"1,2,0\n1,2,7\n",
            LabelColumn::Last,
            Some(3),
            "line 2: label 7 is out of range: the model has classes 0..3",
        ),
        (
            "empty.csv",
            b"\n  \n",
            LabelColumn::Last,
            None,
            "the file is empty",
        ),
    ];
    for (name, text, label, n_classes, expected) in cases {
        let path = write(&dir, name, text);
        let message = data_message(load_csv(&path, &label, n_classes).unwrap_err(), &path);
        assert!(message.contains(expected), "{name}: {message:?}");
    }
    let missing = dir.path().join("missing.csv");
    let message = data_message(
        load_csv(&missing, &LabelColumn::Last, None).unwrap_err(),
        &missing,
    );
    assert!(message.starts_with("cannot read:"), "{message}");
}

#[test]
fn idx_images_and_labels_plain_and_gzipped() {
    let dir = TempDir::new().unwrap();
    let pixels: Vec<u8> = (0..12).map(|i| i * 20).collect();
    let images = write(&dir, "images.idx", &idx(&[3, 2, 2], &pixels));
    let labels = write(&dir, "labels.idx.gz", &gzip(&idx(&[3], &[2, 0, 1])));
    let data = load_idx(&images, &labels, None).unwrap();
    assert_eq!((data.len(), data.n_features, data.n_classes), (3, 4, 3));
    assert_eq!(data.labels, [2, 0, 1]);
    assert_eq!(data.features[1], 20.0 / 255.0);
    assert_eq!(data.features[11], 220.0 / 255.0);
}

#[test]
fn malformed_idx_files_are_named_with_their_offset() {
    let dir = TempDir::new().unwrap();
    let good_images = write(&dir, "good-images", &idx(&[2, 2, 2], &[0; 8]));
    let good_labels = write(&dir, "good-labels", &idx(&[2], &[0, 1]));
    let cases: [(&str, Vec<u8>, bool, &str); 6] = [
        (
            "magic",
            {
                let mut bytes = idx(&[2, 2, 2], &[0; 8]);
                bytes[3] = 1;
                bytes
            },
            true,
            "offset 0: wrong magic number 0x00000801: expected 0x00000803",
        ),
        (
            "truncated",
            idx(&[2, 2, 2], &[0; 5]),
            true,
            "offset 16: truncated body: expected 8 bytes (2 x 2 x 2), found 5",
        ),
        (
            "truncated.gz",
            gzip(&idx(&[2, 2, 2], &[0; 5])),
            true,
            "offset 16: truncated body",
        ),
        (
            "short-header",
            vec![0, 0, 8, 3, 0, 0],
            true,
            "offset 4: truncated header: expected 3 dimension sizes (12 bytes), found 2 bytes",
        ),
        ("count", idx(&[3], &[0, 1, 1]), false, "3 labels, but"),
        (
            "labels-magic",
            idx(&[2, 2, 2], &[0; 8]),
            false,
            "offset 0: wrong magic number 0x00000803: expected 0x00000801",
        ),
    ];
    for (name, bytes, is_images, expected) in cases {
        let path = write(&dir, name, &bytes);
        let result = if is_images {
            load_idx(&path, &good_labels, None)
        } else {
            load_idx(&good_images, &path, None)
        };
        let message = data_message(result.unwrap_err(), &path);
        assert!(message.contains(expected), "{name}: {message:?}");
    }
    let out_of_range = write(&dir, "range", &idx(&[2], &[0, 9]));
    let message = data_message(
        load_idx(&good_images, &out_of_range, Some(3)).unwrap_err(),
        &out_of_range,
    );
    assert_eq!(
        message,
        "offset 9: label 9 is out of range: the model has classes 0..3"
    );
}
