//! The embedded handwritten digits (UCI, CC BY 4.0; see `data/README.md`).

use std::io::Read;

use flate2::read::GzDecoder;

use super::Dataset;
use crate::error::{Error, Result};

/// Pixels per image (8 x 8).
pub const DIGITS_FEATURES: usize = 64;
/// Digit classes 0..=9.
pub const DIGITS_CLASSES: usize = 10;
/// Largest pixel count; features are divided by it to lie in `[0, 1]`.
const MAX_PIXEL: f32 = 16.0;

static DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// The 1,797 embedded digit images, features scaled to `[0, 1]`.
pub fn digits() -> Result<Dataset> {
    let mut text = String::new();
    GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|err| digits_error(format!("cannot decompress: {err}")))?;
    let mut dataset = Dataset {
        features: Vec::new(),
        labels: Vec::new(),
        n_features: DIGITS_FEATURES,
        n_classes: DIGITS_CLASSES,
    };
    for (line_index, line) in text.lines().enumerate() {
        let line_number = line_index + 1;
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() != DIGITS_FEATURES + 1 {
            return Err(digits_error(format!(
                "line {line_number}: expected {} columns, found {}",
                DIGITS_FEATURES + 1,
                cells.len()
            )));
        }
        for cell in &cells[..DIGITS_FEATURES] {
            let pixel: f32 = cell.trim().parse().map_err(|_| {
                digits_error(format!(
                    "line {line_number}: pixel {cell:?} is not a number"
                ))
            })?;
            dataset.features.push(pixel / MAX_PIXEL);
        }
        let label: i64 = cells[DIGITS_FEATURES].trim().parse().map_err(|_| {
            digits_error(format!(
                "line {line_number}: label {:?} is not an integer",
                cells[DIGITS_FEATURES]
            ))
        })?;
        dataset.labels.push(label);
    }
    Ok(dataset)
}

fn digits_error(message: String) -> Error {
    Error::Data {
        source_name: "embedded digits".into(),
        message,
    }
}
