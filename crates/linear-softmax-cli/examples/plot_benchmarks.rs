//! Draws `benchmarks.png` for docs/BENCHMARKS_HISTORY.md: step time and peak extra memory of one
//! training step against the class count C and the batch size N, every path, log-log, with
//! plotters.
//!
//! ```text
//! cargo run --release --example plot_benchmarks -- \
//!     scripts/bench_results_ndarray.csv scripts/bench_results_pytorch.json benchmarks.png [NdArray]
//! ```
//!
//! Inputs: the CSV of `peak_memory --sweep --csv` (`backend,n,d,c,path,best_s,peak_mib,loss`) and
//! the JSON of `scripts/pytorch_bench.py --json` (optional: pass `-` to leave PyTorch out).

use std::collections::HashMap;

use linear_softmax_cli::plots::{FONT_FAMILY, register_embedded_font};
use plotters::prelude::*;

/// The paths drawn: CSV key, legend, colour.
const PATHS: [(&str, &str, RGBColor); 6] = [
    ("autodiff", "ours, autodiff", RGBColor(214, 39, 40)),
    ("burn_ce", "Burn Linear + CE", RGBColor(255, 127, 14)),
    ("fused", "fused (default R)", RGBColor(31, 119, 180)),
    ("fused_r256", "fused (R = 256)", RGBColor(23, 190, 207)),
    ("floor", "three-GEMM floor", RGBColor(0, 0, 0)),
    ("pytorch", "PyTorch, 2 threads", RGBColor(44, 160, 44)),
];

/// `(path, n, c)` -> `(seconds, MiB)`.
type Points = HashMap<(String, u64, u64), (f64, f64)>;

/// One path's line in a panel: legend, colour, `(x, y)` points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// One column of panels: the shapes `(N, C)` swept and which of the two is the x axis.
struct Sweep {
    label: &'static str,
    shapes: Vec<(u64, u64)>,
    along_n: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [rust_csv, torch_json, out_png, rest @ ..] = &args[..] else {
        return Err("usage: plot_benchmarks RUST.csv TORCH.json|- OUT.png [BACKEND]".into());
    };
    let backend = rest.first().map_or("NdArray", String::as_str);
    let points = read_points(rust_csv, torch_json, backend)?;

    register_embedded_font()?;
    let root = BitMapBackend::new(out_png, (1200, 880)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        &format!("One training step of the head, f32, {backend}, 2 cores (PyTorch: CPU eager)"),
        (FONT_FAMILY, 22),
    )?;
    let panels = root.split_evenly((2, 2));
    let sweeps = [
        Sweep {
            label: "C (N = 2048, D = 512)",
            shapes: [4096, 32768, 131072].map(|c| (2048, c)).to_vec(),
            along_n: false,
        },
        Sweep {
            label: "N (C = 32768, D = 512)",
            shapes: [512, 2048, 8192].map(|n| (n, 32768)).to_vec(),
            along_n: true,
        },
    ];
    for (column, sweep) in sweeps.iter().enumerate() {
        let Sweep {
            label,
            shapes,
            along_n,
        } = sweep;
        for (row, what) in ["step time (s)", "peak extra memory (MiB)"]
            .iter()
            .enumerate()
        {
            let series: Vec<Series> = PATHS
                .iter()
                .map(|&(key, name, color)| {
                    let line = shapes
                        .iter()
                        .filter_map(|&(n, c)| {
                            let (seconds, mib) = points.get(&(key.to_string(), n, c))?;
                            let x = if *along_n { n } else { c } as f64;
                            Some((x, if row == 0 { *seconds } else { *mib }))
                        })
                        .collect();
                    (name, color, line)
                })
                .filter(|(_, _, line): &(_, _, Vec<_>)| !line.is_empty())
                .collect();
            let xs = shapes
                .iter()
                .map(|&(n, c)| if *along_n { n } else { c } as f64);
            let x_range = xs.clone().fold(f64::MAX, f64::min) / 1.4..xs.fold(0.0, f64::max) * 1.4;
            let ys = series
                .iter()
                .flat_map(|(_, _, line)| line.iter().map(|p| p.1));
            let y_range = ys.clone().fold(f64::MAX, f64::min) / 1.5..ys.fold(0.0, f64::max) * 1.5;
            let mut chart = ChartBuilder::on(&panels[row * 2 + column])
                .margin(14)
                .x_label_area_size(40)
                .y_label_area_size(64)
                .build_cartesian_2d(x_range.log_scale(), y_range.log_scale())?;
            chart
                .configure_mesh()
                .x_desc(*label)
                .y_desc(*what)
                .label_style((FONT_FAMILY, 13))
                .x_labels(4)
                .y_labels(5)
                .light_line_style(WHITE.mix(0.0))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| {
                    if *y >= 10.0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y:.2}")
                    }
                })
                .draw()?;
            for (name, color, line) in series {
                chart
                    .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                    .label(name)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart.draw_series(line.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
            }
            if row == 0 && column == 0 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperLeft)
                    .label_font((FONT_FAMILY, 13))
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK.mix(0.3))
                    .draw()?;
            }
        }
    }
    root.present()?;
    println!("wrote {out_png}");
    Ok(())
}

/// The sweep CSV's rows of `backend`, and PyTorch's rows of the JSON.
fn read_points(
    rust_csv: &str,
    torch_json: &str,
    backend: &str,
) -> Result<Points, Box<dyn std::error::Error>> {
    let mut points = Points::new();
    let text = std::fs::read_to_string(rust_csv)?;
    for (number, line) in text.lines().enumerate().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let [row_backend, n, _d, c, path, seconds, mib, ..] = fields[..] else {
            return Err(format!("{rust_csv}:{}: expected 8 fields", number + 1).into());
        };
        if row_backend == backend {
            points.insert(
                (path.to_string(), n.parse()?, c.parse()?),
                (seconds.parse()?, mib.parse()?),
            );
        }
    }
    if torch_json != "-" {
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(torch_json)?)?;
        for row in rows.iter().filter(|r| r["path"] == "pytorch") {
            let number = |key: &str| {
                row[key]
                    .as_f64()
                    .ok_or(format!("{torch_json}: no number {key}"))
            };
            points.insert(
                ("pytorch".into(), number("n")? as u64, number("c")? as u64),
                (number("best_s")?, number("peak_mib")?),
            );
        }
    }
    Ok(points)
}
