//! `--plot`: an SVG chart of latency by percentile, the picture of
//! HdrHistogram's plotter.
//!
//! The x axis is the percentile on the usual logarithmic scale of
//! 1/(1−p), labelled `50%`, `90%`, `99%`, `99.9%`, … as far as the data
//! reaches (at least `99%`, at most `99.9999%`). The y axis is latency in
//! milliseconds on a **logarithmic** scale, so that corrected and
//! uncorrected figures that differ by orders of magnitude both stay
//! readable. One line per series with data, one color per metric: corrected
//! solid, uncorrected dashed and lighter. An outcome without data gives a
//! chart that says "no data".

use std::fmt::Display;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::{RunInfo, model_name, protocol_name, series_with_data};
use crate::outcome::{Correction, Metric, Outcome, Series};

const SIZE: (u32, u32) = (1000, 600);
const FONT: &str = "sans-serif";
/// Rightmost decade of the x axis: 99.9999%.
const MAX_DECADES: f64 = 6.0;
const MIN_DECADES: f64 = 2.0;

/// Why the chart could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("plot: drawing failed: {0}")]
    Draw(String),
    #[error("plot: writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn draw_failed(e: impl Display) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// Writes the chart to `path` (SVG).
pub fn write_plot(path: &Path, outcome: &Outcome, info: &RunInfo) -> Result<(), PlotError> {
    let svg = render(outcome, info)?;
    fs::write(path, svg).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// One series as (log10(1/(1−p)), ms) points, p < 1.
struct Line {
    series: Series,
    points: Vec<(f64, f64)>,
}

fn lines(outcome: &Outcome) -> Vec<Line> {
    series_with_data(outcome)
        .map(|(series, h)| Line {
            series,
            points: h
                .iter_quantiles(5)
                .filter(|v| v.quantile_iterated_to() < 1.0)
                .map(|v| {
                    let x = (1.0 / (1.0 - v.quantile_iterated_to())).log10();
                    (x, v.value_iterated_to().max(1) as f64 / 1000.0)
                })
                .collect(),
        })
        .filter(|l| !l.points.is_empty())
        .collect()
}

fn color(metric: Metric) -> RGBColor {
    match metric {
        Metric::Connect => RGBColor(0x1f, 0x77, 0xb4),
        Metric::Register => RGBColor(0xff, 0x7f, 0x0e),
        Metric::Login => RGBColor(0x2c, 0xa0, 0x2c),
        Metric::SendAck => RGBColor(0x94, 0x67, 0xbd),
        Metric::Delivery => RGBColor(0xd6, 0x27, 0x28),
        Metric::History => RGBColor(0x8c, 0x56, 0x4b),
        Metric::MarkRead => RGBColor(0xe3, 0x77, 0xc2),
    }
}

/// The x axis: decades of 1/(1−p) from 0 to `decades`, with grid lines and
/// labels at `keys` only.
struct PercentileAxis {
    decades: f64,
    keys: Vec<f64>,
}

impl Ranged for PercentileAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let share = value / self.decades;
        limit.0 + (share * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.keys.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        0.0..self.decades
    }
}

/// `50%`, `99.9%` for the decade positions of the x axis.
fn percentile_label(x: f64) -> String {
    if x < 0.15 {
        return "0%".into();
    }
    if (x - 2f64.log10()).abs() < 0.05 {
        return "50%".into();
    }
    let decades = x.round() as i32;
    let nines = decades - 2;
    if nines <= 0 {
        return format!("{}%", 100 - 10i32.pow((2 - decades).max(0) as u32));
    }
    format!("99.{}%", "9".repeat(nines as usize))
}

/// `0.25`, `3`, `120`: milliseconds without trailing zeros.
fn ms_label(ms: f64) -> String {
    let text = format!("{ms:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn render(outcome: &Outcome, info: &RunInfo) -> Result<String, PlotError> {
    let c = info.config;
    let title = format!(
        "{} ({}, {} model): offered {:.0}/s, achieved {:.0}/s",
        c.scenario.name(),
        protocol_name(c.protocol),
        model_name(c.model),
        outcome.offered_rate,
        outcome.achieved_rate()
    );
    let lines = lines(outcome);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_failed)?;
        if lines.is_empty() {
            let root = root.titled(&title, (FONT, 22)).map_err(draw_failed)?;
            let (w, h) = root.dim_in_pixel();
            root.draw(&Text::new(
                "no data",
                (w as i32 / 2 - 40, h as i32 / 2),
                (FONT, 28).into_font().color(&BLACK),
            ))
            .map_err(draw_failed)?;
            root.present().map_err(draw_failed)?;
        } else {
            draw_chart(&root, &title, &lines)?;
        }
    }
    Ok(svg)
}

fn draw_chart(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    lines: &[Line],
) -> Result<(), PlotError> {
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let x_reach = points().map(|p| p.0).fold(0.0, f64::max);
    let x_max = x_reach.ceil().clamp(MIN_DECADES, MAX_DECADES);
    let y_low = points().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_high = points().map(|p| p.1).fold(0.0, f64::max);
    let (y_low, y_high) = (y_low / 1.5, (y_high * 1.5).max(y_low * 2.0));

    let mut x_keys = vec![0.0, 2f64.log10()];
    x_keys.extend((1..=x_max as i32).map(f64::from));

    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            PercentileAxis {
                decades: x_max,
                keys: x_keys,
            },
            (y_low..y_high).log_scale(),
        )
        .map_err(draw_failed)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| ms_label(*y))
        .draw()
        .map_err(draw_failed)?;

    for line in lines {
        let base = color(line.series.metric);
        let points = line
            .points
            .iter()
            .copied()
            .filter(|&(x, _)| x <= x_max)
            .collect::<Vec<_>>();
        let label = line.series.tag();
        match line.series.correction {
            Correction::Corrected => {
                let style = base.stroke_width(2);
                chart
                    .draw_series(LineSeries::new(points, style))
                    .map_err(draw_failed)?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
            }
            Correction::Uncorrected => {
                let style = base.mix(0.55).stroke_width(2);
                chart
                    .draw_series(DashedLineSeries::new(points, 6, 4, style))
                    .map_err(draw_failed)?
                    .label(label)
                    .legend(move |(x, y)| {
                        DashedPathElement::new(vec![(x, y), (x + 24, y)], 6, 4, style)
                    });
            }
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw_failed)?;
    root.present().map_err(draw_failed)
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    fn info_for(config: &crate::config::RunConfig) -> RunInfo<'_> {
        fixture::info(config, &[])
    }

    #[test]
    fn writes_an_svg_with_a_legend_entry_per_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.svg");
        let config = fixture::config();
        write_plot(&path, &fixture::outcome(), &info_for(&config)).unwrap();
        let svg = fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg"));
        let texts: Vec<&str> = svg.lines().map(str::trim).collect();
        for tag in [
            "send_ack.corrected",
            "send_ack.uncorrected",
            "delivery.corrected",
            "delivery.uncorrected",
        ] {
            assert!(texts.contains(&tag), "legend has no {tag}");
        }
        assert!(
            !svg.contains("login.corrected"),
            "series without data are left out"
        );
        for label in ["50%", "90%", "99%", "99.9%", "99.99%"] {
            assert!(texts.contains(&label), "no x label {label}");
        }
        assert!(texts.contains(&"direct (fb, open model): offered 1000/s, achieved 998/s"));
    }

    #[test]
    fn an_empty_outcome_says_no_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.svg");
        let config = fixture::config();
        write_plot(&path, &Outcome::default(), &info_for(&config)).unwrap();
        let svg = fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg") && svg.contains("no data"));
    }

    #[test]
    fn an_unwritable_path_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("latency.svg");
        let config = fixture::config();
        let err = write_plot(&path, &fixture::outcome(), &info_for(&config)).unwrap_err();
        assert!(matches!(err, PlotError::Io { .. }), "{err}");
    }

    #[test]
    fn x_labels_name_the_percentile_of_each_decade() {
        let labels: Vec<String> = [0.0, 2f64.log10(), 1.0, 2.0, 3.0, 4.0, 5.0]
            .into_iter()
            .map(percentile_label)
            .collect();
        assert_eq!(
            labels,
            ["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        );
    }
}
