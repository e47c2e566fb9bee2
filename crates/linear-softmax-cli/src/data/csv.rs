//! Numeric CSV files: one row per example, one column of class labels, an optional header.
//!
//! The format is deliberately small: cells are separated by commas, every cell of a feature
//! column is a finite number, and the label column holds class indices `0, 1, 2, ...`. The first
//! non-blank line is a header when none of its cells is a number (so a header can name the label
//! column); otherwise it is data. Blank lines are skipped. Every error names the file, the line
//! (1-based, as an editor shows it) and, where there is one, the column.

use std::path::Path;
use std::str::FromStr;

use super::{Dataset, data_error, read_text};
use crate::error::{Error, Result};

/// Which column of a CSV file holds the labels.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LabelColumn {
    /// The last column (the default).
    #[default]
    Last,
    /// A 0-based column index.
    Index(usize),
    /// The column whose header cell is this name.
    Name(String),
}

impl FromStr for LabelColumn {
    type Err = std::convert::Infallible;

    /// `last`, a 0-based index, or a header name.
    fn from_str(text: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match text.trim() {
            "last" => Self::Last,
            text => match text.parse::<usize>() {
                Ok(index) => Self::Index(index),
                Err(_) => Self::Name(text.to_string()),
            },
        })
    }
}

/// The rows of a CSV file: features, and labels when a label column was asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvRows {
    /// `rows * n_features` values, row-major.
    pub features: Vec<f32>,
    /// One label per row (when a label column was given).
    pub labels: Option<Vec<i64>>,
    /// Feature columns per row.
    pub n_features: usize,
    /// The 1-based line of each row in the file, for error messages downstream.
    pub lines: Vec<usize>,
}

impl CsvRows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// Loads a labelled data set from a CSV file.
///
/// `n_classes`: the number of classes the labels must lie in (a trained model's); `None` infers
/// it as the largest label + 1.
pub fn load_csv(path: &Path, label: &LabelColumn, n_classes: Option<usize>) -> Result<Dataset> {
    parse_labelled_csv(
        &read_text(path)?,
        &path.display().to_string(),
        label,
        n_classes,
    )
}

/// Parses a labelled data set from CSV `text` read from `source` (the name errors carry);
/// `n_classes` as in [`load_csv`].
pub fn parse_labelled_csv(
    text: &str,
    source: &str,
    label: &LabelColumn,
    n_classes: Option<usize>,
) -> Result<Dataset> {
    let rows = parse_csv(text, source, Some(label))?;
    let labels = rows.labels.expect("a label column was asked for");
    let n_classes = check_classes(&labels, &rows.lines, n_classes, source)?;
    Ok(Dataset {
        features: rows.features,
        labels,
        n_features: rows.n_features,
        n_classes,
    })
}

/// Loads the feature rows of a CSV file, skipping the label column if one is given.
pub fn load_csv_features(path: &Path, label: Option<&LabelColumn>) -> Result<CsvRows> {
    parse_csv(&read_text(path)?, &path.display().to_string(), label)
}

/// Parses CSV `text` read from `source` (the name errors carry).
pub fn parse_csv(text: &str, source: &str, label: Option<&LabelColumn>) -> Result<CsvRows> {
    let error = |message: String| data_error(source, message);
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim_end_matches('\r')))
        .filter(|(_, line)| !line.trim().is_empty());
    let Some((first_number, first_line)) = lines.next() else {
        return Err(error(
            "the file is empty: expected rows of comma-separated numbers, after an optional header"
                .into(),
        ));
    };
    let first_cells = split(first_line);
    let header = first_cells
        .iter()
        .all(|cell| cell.parse::<f64>().is_err())
        .then(|| first_cells.clone());
    let n_columns = first_cells.len();
    let label_index = match label {
        None => None,
        Some(label) => Some(label_index(
            label,
            header.as_deref(),
            n_columns,
            first_number,
            &error,
        )?),
    };
    let n_features = n_columns - usize::from(label_index.is_some());
    if n_features == 0 {
        return Err(error(format!(
            "line {first_number}: only the label column: expected at least one feature column"
        )));
    }
    let column_name = |column: usize| match &header {
        Some(names) => format!("column {} ({:?})", column + 1, names[column]),
        None => format!("column {}", column + 1),
    };

    let mut rows = CsvRows {
        features: Vec::new(),
        labels: label_index.map(|_| Vec::new()),
        n_features,
        lines: Vec::new(),
    };
    let data_lines = header
        .is_none()
        .then_some((first_number, first_line))
        .into_iter()
        .chain(lines);
    for (line_number, line) in data_lines {
        let cells = split(line);
        if cells.len() != n_columns {
            return Err(error(format!(
                "line {line_number}: expected {n_columns} columns (as on line {first_number}), \
                 found {}",
                cells.len()
            )));
        }
        for (column, cell) in cells.iter().enumerate() {
            if Some(column) == label_index {
                let label = parse_label(cell).ok_or_else(|| {
                    error(format!(
                        "line {line_number}, {}: label {cell:?} is not a class index \
                         (an integer >= 0)",
                        column_name(column)
                    ))
                })?;
                rows.labels
                    .as_mut()
                    .expect("labels are collected")
                    .push(label);
            } else {
                let value = cell
                    .parse::<f32>()
                    .ok()
                    .filter(|value| value.is_finite())
                    .ok_or_else(|| {
                        error(format!(
                            "line {line_number}, {}: {cell:?} is not a finite number",
                            column_name(column)
                        ))
                    })?;
                rows.features.push(value);
            }
        }
        rows.lines.push(line_number);
    }
    if rows.is_empty() {
        return Err(error(format!(
            "no data rows: line {first_number} is a header and nothing follows it"
        )));
    }
    Ok(rows)
}

/// Checks the labels against `n_classes` (or infers it), naming the line of a bad label.
fn check_classes(
    labels: &[i64],
    lines: &[usize],
    n_classes: Option<usize>,
    source: &str,
) -> Result<usize> {
    let inferred = n_classes.is_none();
    let n_classes = match n_classes {
        Some(n_classes) => n_classes,
        None => labels
            .iter()
            .copied()
            .max()
            .map_or(0, |max| max as usize + 1),
    };
    if let Some((row, label)) = labels
        .iter()
        .enumerate()
        .find(|(_, label)| **label as usize >= n_classes)
    {
        return Err(data_error(
            source,
            format!(
                "line {}: label {label} is out of range: the model has classes 0..{n_classes}",
                lines[row]
            ),
        ));
    }
    // Inferred from the largest label: a stray large label must not make a head of that many
    // classes (a label of 1e9 would allocate [D, 1e9]). A model's own count is trusted.
    if inferred && n_classes > labels.len() {
        let (row, max) = labels
            .iter()
            .enumerate()
            .max_by_key(|&(_, label)| *label)
            .expect("more classes than rows means at least one label");
        return Err(data_error(
            source,
            format!(
                "line {}: label {max} would make {n_classes} classes, more than the {} rows: \
                 labels must be 0..C",
                lines[row],
                labels.len()
            ),
        ));
    }
    if n_classes < 2 {
        return Err(data_error(
            source,
            format!(
                "all labels are {}: expected at least two classes",
                n_classes.saturating_sub(1)
            ),
        ));
    }
    Ok(n_classes)
}

fn split(line: &str) -> Vec<String> {
    line.split(',')
        .map(|cell| cell.trim().to_string())
        .collect()
}

/// A class index: an integer >= 0, written as `3` or `3.0`.
fn parse_label(cell: &str) -> Option<i64> {
    match cell.parse::<i64>() {
        Ok(label) => (label >= 0).then_some(label),
        Err(_) => {
            let value = cell.parse::<f64>().ok()?;
            (value >= 0.0 && value.fract() == 0.0 && value < i64::MAX as f64)
                .then_some(value as i64)
        }
    }
}

fn label_index(
    label: &LabelColumn,
    header: Option<&[String]>,
    n_columns: usize,
    first_line: usize,
    error: &impl Fn(String) -> Error,
) -> Result<usize> {
    match label {
        LabelColumn::Last => Ok(n_columns - 1),
        LabelColumn::Index(index) if *index < n_columns => Ok(*index),
        LabelColumn::Index(index) => Err(error(format!(
            "line {first_line}: label column {index} is out of range: \
             the file has {n_columns} columns (0..{n_columns})"
        ))),
        LabelColumn::Name(name) => match header {
            None => Err(error(format!(
                "line {first_line}: label column {name:?} needs a header, \
                 but the first line is data; give the column's index instead"
            ))),
            Some(names) => names.iter().position(|cell| cell == name).ok_or_else(|| {
                error(format!(
                    "line {first_line}: no column named {name:?} in the header \
                     (columns: {})",
                    names.join(", ")
                ))
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_detected_and_label_found_by_name() {
        let rows = parse_csv(
            "a,label,b\n1,0,2\n\n3,1,4\n",
            "t.csv",
            Some(&"label".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(rows.features, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(rows.labels, Some(vec![0, 1]));
        assert_eq!(rows.lines, [2, 4]);
    }

    #[test]
    fn label_column_syntax() {
        assert_eq!("last".parse(), Ok(LabelColumn::Last));
        assert_eq!("2".parse(), Ok(LabelColumn::Index(2)));
        assert_eq!("y".parse(), Ok(LabelColumn::Name("y".into())));
    }
}
