//! PNG charts of a training run, drawn with plotters' bitmap backend: the loss and accuracy
//! curves and the test-set confusion matrix.
//!
//! Text uses an embedded ASCII subset of DejaVu Sans (`assets/`), so no system font library is
//! needed.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::error::{Error, Result};
use crate::metrics::ConfusionMatrix;
use crate::train::EpochMetrics;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-ascii.ttf");
/// The family every text style below names: the embedded font, after
/// [`register_embedded_font`].
pub const FONT_FAMILY: &str = "sans-serif";
const FAMILY: &str = FONT_FAMILY;

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const TEST_COLOR: RGBColor = RGBColor(255, 127, 14);

/// Draws `curves.png`-style charts: loss per epoch (left) and accuracy per epoch (right).
pub fn draw_curves(path: &Path, epochs: &[EpochMetrics]) -> Result<()> {
    register_embedded_font()?;
    let fail = |err: String| plot_error(path, err);
    if epochs.is_empty() {
        return Err(fail("no epochs to plot".into()));
    }
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let (left, right) = root.split_horizontally(500);
    let last = epochs.len() as f64;
    // One epoch still needs a non-empty x range.
    let x_range = 1.0..last.max(2.0);

    let max_loss = epochs
        .iter()
        .flat_map(|m| [m.train_loss, m.test_loss])
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-3);
    let loss_series = [
        (
            "train loss",
            TRAIN_COLOR,
            epochs.iter().map(|m| m.train_loss).collect::<Vec<_>>(),
        ),
        (
            "test loss",
            TEST_COLOR,
            epochs.iter().map(|m| m.test_loss).collect(),
        ),
    ];
    draw_panel(
        &left,
        "loss",
        x_range.clone(),
        0.0..max_loss * 1.05,
        &loss_series,
    )
    .map_err(fail)?;

    let min_accuracy = epochs
        .iter()
        .flat_map(|m| [m.train_accuracy, m.test_accuracy])
        .fold(1.0, f64::min);
    let percent = |v: f64| 100.0 * v;
    let accuracy_series = [
        (
            "train accuracy",
            TRAIN_COLOR,
            epochs
                .iter()
                .map(|m| percent(m.train_accuracy))
                .collect::<Vec<_>>(),
        ),
        (
            "test accuracy",
            TEST_COLOR,
            epochs.iter().map(|m| percent(m.test_accuracy)).collect(),
        ),
    ];
    let floor = (percent(min_accuracy) - 2.0).clamp(0.0, 98.0);
    draw_panel(
        &right,
        "accuracy (%)",
        x_range,
        floor..100.5,
        &accuracy_series,
    )
    .map_err(fail)?;
    root.present().map_err(|e| fail(e.to_string()))
}

/// One line chart with a legend; `series` are per-epoch values starting at epoch 1.
fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_range: std::ops::Range<f64>,
    y_range: std::ops::Range<f64>,
    series: &[(&str, RGBColor, Vec<f64>)],
) -> std::result::Result<(), String> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(x_range, y_range)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .label_style((FAMILY, 13))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(|e| e.to_string())?;
    for (name, color, values) in series {
        let points = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| ((i + 1) as f64, v));
        let color = *color;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|e| e.to_string())
}

/// Draws a confusion matrix: one cell per (true, predicted) pair, shaded by the share of the
/// true class's rows it holds, with the count written in it.
pub fn draw_confusion(path: &Path, confusion: &ConfusionMatrix, title: &str) -> Result<()> {
    register_embedded_font()?;
    let fail = |err: String| plot_error(path, err);
    let classes = confusion.n_classes as i32;
    let cell = (480 / classes.max(1)).clamp(16, 48);
    let (left, top) = (70, 60);
    let size = (
        (left + cell * classes + 30) as u32,
        (top + cell * classes + 60) as u32,
    );
    let root = BitMapBackend::new(path, size).into_drawing_area();
    let draw = |result: std::result::Result<(), DrawingAreaErrorKind<_>>| {
        result.map_err(|e| fail(e.to_string()))
    };
    draw(root.fill(&WHITE))?;
    let text = |size: i32| TextStyle::from((FAMILY, size)).color(&BLACK);
    let centred = |size: i32| {
        text(size).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ))
    };
    draw(root.draw(&Text::new(title.to_string(), (left, 12), text(18))))?;
    let grid_bottom = top + cell * classes;
    draw(root.draw(&Text::new(
        "predicted class",
        (left + cell * classes / 2, grid_bottom + 40),
        centred(14),
    )))?;
    draw(root.draw(&Text::new(
        "true",
        (22, top + cell * classes / 2),
        centred(14),
    )))?;
    let font_size = (cell / 3).clamp(9, 16);
    for actual in 0..classes {
        let support = confusion.support(actual as usize).max(1) as f64;
        let y = top + actual * cell;
        draw(root.draw(&Text::new(
            actual.to_string(),
            (left - 14, y + cell / 2),
            centred(font_size),
        )))?;
        for predicted in 0..classes {
            let count = confusion.count(actual as usize, predicted as usize);
            let share = count as f64 / support;
            let x = left + predicted * cell;
            // White for 0, deep blue for the whole class.
            let shade = |full: u8| (255.0 - share * (255.0 - full as f64)) as u8;
            let fill = RGBColor(shade(8), shade(48), shade(107));
            draw(root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                fill.filled(),
            )))?;
            draw(root.draw(&Rectangle::new(
                [(x, y), (x + cell, y + cell)],
                BLACK.mix(0.15),
            )))?;
            if count > 0 {
                let ink = if share > 0.5 { WHITE } else { BLACK };
                draw(root.draw(&Text::new(
                    count.to_string(),
                    (x + cell / 2, y + cell / 2),
                    centred(font_size).color(&ink),
                )))?;
            }
        }
    }
    for predicted in 0..classes {
        draw(root.draw(&Text::new(
            predicted.to_string(),
            (left + predicted * cell + cell / 2, grid_bottom + 14),
            centred(font_size),
        )))?;
    }
    draw(root.present())
}

/// Registers the embedded font (an ASCII subset of DejaVu Sans) with plotters once per process,
/// under the family name [`FONT_FAMILY`], so that charts need no system font library.
pub fn register_embedded_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(plot_error(
            Path::new("assets/DejaVuSans-ascii.ttf"),
            "the embedded font does not parse".into(),
        ))
    }
}

fn plot_error(path: &Path, message: String) -> Error {
    Error::Data {
        source_name: path.display().to_string(),
        message: format!("cannot draw the chart: {message}"),
    }
}
