//! The report's plots, drawn by plotters' SVG backend into strings that the
//! pages inline: line charts (learning curves), horizontal bars (scores by
//! stage, fold, parameter value; seconds by step), a heat map (confusion)
//! and a reliability diagram.
//!
//! Category labels are drawn beside the plotting area in pixels rather
//! than as axis ticks: plotters places ticks at "nice" numbers, and a
//! category axis needs one label per bar whatever its length.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Tableau's ten colours: distinct, and readable when printed in grey.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

const FONT: &str = "sans-serif";

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e:?}")
}

/// Draws on a white `width` x `height` SVG and returns its text.
fn svg(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    Ok(out)
}

/// `lo..hi` widened so that no point sits on the frame; a flat series
/// still gets a visible range.
fn padded(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let span = if hi > lo { hi - lo } else { hi.abs().max(1.0) };
    (lo - 0.05 * span)..(hi + 0.05 * span)
}

/// One line of a [`LineChart`].
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    pub dashed: bool,
}

/// Lines over a shared x axis, with an optional marked point (a head's
/// kept epoch).
pub struct LineChart {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub lines: Vec<Line>,
    pub marker: Option<(f64, f64)>,
    /// The y range, when several charts must share one.
    pub y_range: Option<(f64, f64)>,
    pub size: (u32, u32),
}

impl LineChart {
    pub fn svg(&self) -> anyhow::Result<String> {
        let points = || self.lines.iter().flat_map(|l| l.points.iter());
        let (x_lo, x_hi) = bounds(points().map(|p| p.0));
        let (y_lo, y_hi) = self
            .y_range
            .unwrap_or_else(|| bounds(points().map(|p| p.1)));
        svg(self.size.0, self.size.1, |root| {
            let mut chart = ChartBuilder::on(root)
                .caption(&self.title, (FONT, 14))
                .margin(8)
                .x_label_area_size(32)
                .y_label_area_size(44)
                .build_cartesian_2d(padded(x_lo, x_hi), padded(y_lo, y_hi))
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc(&self.x_desc)
                .y_desc(&self.y_desc)
                .x_labels(6)
                .y_labels(5)
                .label_style((FONT, 11))
                .light_line_style(RGBColor(238, 238, 238))
                .draw()
                .map_err(draw_err)?;
            for line in &self.lines {
                let style = line.color.stroke_width(2);
                let series = if line.dashed {
                    chart.draw_series(DashedLineSeries::new(line.points.clone(), 5, 3, style))
                } else {
                    chart.draw_series(LineSeries::new(line.points.clone(), style))
                };
                let color = line.color;
                series
                    .map_err(draw_err)?
                    .label(&line.name)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                    });
            }
            if let Some(at) = self.marker {
                chart
                    .draw_series([Circle::new(at, 5, BLACK.stroke_width(2))])
                    .map_err(draw_err)?
                    .label("kept")
                    .legend(|(x, y)| Circle::new((x + 8, y), 4, BLACK.stroke_width(2)));
            }
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
        })
    }
}

/// The series' legend in a box, the same on every chart.
fn draw_legend<'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .label_font((FONT, 11))
        .background_style(WHITE.mix(0.8))
        .border_style(RGBColor(200, 200, 200))
        .position(position)
        .draw()
        .map_err(draw_err)
}

/// The smallest and largest finite value (0..1 when there is none).
pub fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc: Option<(f64, f64)>, v| {
            Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
        })
        .unwrap_or((0.0, 1.0))
}

/// One series of a [`BarChart`]: a value per category (missing ones are
/// left out), with an optional spread drawn as a whisker (mean ± sd).
pub struct Bars {
    pub name: String,
    pub values: Vec<Option<f64>>,
    pub spread: Option<Vec<Option<f64>>>,
}

/// Horizontal bars, a group per category, a bar per series in each group.
/// Horizontal so that long category names (stages, parameter values,
/// class names) stay readable.
pub struct BarChart {
    pub title: String,
    pub x_desc: String,
    pub categories: Vec<String>,
    pub series: Vec<Bars>,
    /// Each bar's value written at its end, with this many decimals.
    pub decimals: usize,
    pub width: u32,
}

impl BarChart {
    pub fn svg(&self) -> anyhow::Result<String> {
        let n = self.categories.len().max(1);
        let per_group = self.series.len().max(1);
        let bar_px = 16;
        let height = (n * (per_group * bar_px + 12)) as u32 + 112;
        let label_px = self
            .categories
            .iter()
            .map(|c| c.chars().count())
            .max()
            .unwrap_or(4)
            .min(40) as u32
            * 7
            + 12;
        let values = || {
            self.series.iter().flat_map(|s| {
                s.values.iter().enumerate().filter_map(move |(i, v)| {
                    let sd = s.spread.as_ref().and_then(|sp| sp[i]).unwrap_or(0.0);
                    v.map(|v| v + sd)
                })
            })
        };
        let x_hi = bounds(values()).1.max(0.0);
        let x_hi = if x_hi > 0.0 { x_hi * 1.18 } else { 1.0 };
        svg(self.width, height, |root| {
            let legend_row = if self.series.len() > 1 { 22 } else { 0 };
            let mut chart = ChartBuilder::on(root)
                .caption(&self.title, (FONT, 14))
                .margin(8)
                // The legend row goes below the axis description.
                .margin_bottom(8 + legend_row)
                .x_label_area_size(32)
                .y_label_area_size(label_px)
                .build_cartesian_2d(0f64..x_hi, 0f64..n as f64)
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc(&self.x_desc)
                .x_labels(6)
                .y_labels(0)
                .disable_y_mesh()
                .label_style((FONT, 11))
                .light_line_style(RGBColor(238, 238, 238))
                .draw()
                .map_err(draw_err)?;
            // Category i occupies y in (n - i - 1, n - i): the first on top.
            let slot = 0.8 / per_group as f64;
            for (j, s) in self.series.iter().enumerate() {
                let fill = color(j);
                let bars = s.values.iter().enumerate().filter_map(|(i, v)| {
                    let top = (n - i) as f64 - 0.1 - j as f64 * slot;
                    v.map(|v| Rectangle::new([(0.0, top - slot * 0.9), (v, top)], fill.filled()))
                });
                chart
                    .draw_series(bars)
                    .map_err(draw_err)?
                    .label(&s.name)
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 5), (x + 12, y + 5)], fill.filled())
                    });
                for (i, v) in s.values.iter().enumerate() {
                    let Some(v) = v else { continue };
                    let mid = (n - i) as f64 - 0.1 - j as f64 * slot - slot * 0.45;
                    let sd = s.spread.as_ref().and_then(|sp| sp[i]);
                    if let Some(sd) = sd.filter(|sd| *sd > 0.0) {
                        chart
                            .draw_series([PathElement::new(
                                [(v - sd, mid), (v + sd, mid)],
                                BLACK.stroke_width(1),
                            )])
                            .map_err(draw_err)?;
                    }
                    let end = v + sd.unwrap_or(0.0);
                    let (px, py) = chart.backend_coord(&(end, mid));
                    let text = format!("{v:.prec$}", prec = self.decimals);
                    root.draw(&Text::new(
                        text,
                        (px + 4, py),
                        (FONT, 10)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Left, VPos::Center)),
                    ))
                    .map_err(draw_err)?;
                }
            }
            for (i, name) in self.categories.iter().enumerate() {
                let (px, py) = chart.backend_coord(&(0.0, (n - i) as f64 - 0.5));
                root.draw(&Text::new(
                    ellipsis(name, 40),
                    (px - 6, py),
                    (FONT, 11)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Right, VPos::Center)),
                ))
                .map_err(draw_err)?;
            }
            if self.series.len() > 1 {
                // The legend in a row of its own under the axis: inside
                // the plotting area it would cover the longest bars.
                let mut x = label_px as i32;
                let y = height as i32 - 14;
                for (j, s) in self.series.iter().enumerate() {
                    root.draw(&Rectangle::new(
                        [(x, y - 5), (x + 12, y + 5)],
                        color(j).filled(),
                    ))
                    .map_err(draw_err)?;
                    root.draw(&Text::new(
                        s.name.clone(),
                        (x + 16, y),
                        (FONT, 11)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Left, VPos::Center)),
                    ))
                    .map_err(draw_err)?;
                    x += 30 + 7 * s.name.chars().count() as i32;
                }
            }
            Ok(())
        })
    }
}

/// `text` cut to `max` characters with an ellipsis.
fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(max - 1).collect();
        cut.push('…');
        cut
    }
}

/// A confusion matrix as a heat map: rows true classes, columns predicted,
/// each cell shaded by its share of the row and labelled with its count.
pub fn confusion_heatmap(
    title: &str,
    classes: &[String],
    counts: &[Vec<u64>],
) -> anyhow::Result<String> {
    let k = classes.len().max(1);
    let cell = (360 / k).clamp(14, 40) as i32;
    let label_px = classes
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(4)
        .min(28) as i32
        * 7
        + 10;
    let (left, top) = (label_px + 30, 40);
    let width = (left + cell * k as i32 + 20) as u32;
    let height = (top + cell * k as i32 + label_px + 30) as u32;
    svg(width, height, |root| {
        let font = |size| (FONT, size).into_font().color(&BLACK);
        root.draw(&Text::new(
            title.to_string(),
            (left, 8),
            font(14).pos(Pos::new(HPos::Left, VPos::Top)),
        ))
        .map_err(draw_err)?;
        for (r, row) in counts.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (c, &n) in row.iter().enumerate() {
                let share = if total > 0 {
                    n as f64 / total as f64
                } else {
                    0.0
                };
                let (x, y) = (left + c as i32 * cell, top + r as i32 * cell);
                // Diagonal cells in blue, errors in red: where the mass
                // is off the diagonal is what the matrix is for.
                let base = if r == c { color(0) } else { color(3) };
                let shade = mix(WHITE, base, share);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    shade.filled(),
                ))
                .map_err(draw_err)?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    RGBColor(220, 220, 220),
                ))
                .map_err(draw_err)?;
                if n > 0 && cell >= 18 {
                    let ink = if share > 0.55 { WHITE } else { BLACK };
                    root.draw(&Text::new(
                        n.to_string(),
                        (x + cell / 2, y + cell / 2),
                        (FONT, 10)
                            .into_font()
                            .color(&ink)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    ))
                    .map_err(draw_err)?;
                }
            }
        }
        for (i, name) in classes.iter().enumerate() {
            let mid = i as i32 * cell + cell / 2;
            root.draw(&Text::new(
                ellipsis(name, 28),
                (left - 6, top + mid),
                font(11).pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(draw_err)?;
            root.draw(&Text::new(
                ellipsis(name, 28),
                (left + mid, top + cell * k as i32 + 6),
                font(11)
                    .transform(FontTransform::Rotate90)
                    .pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(draw_err)?;
        }
        root.draw(&Text::new(
            "true class".to_string(),
            (12, top + cell * k as i32 / 2),
            font(12)
                .transform(FontTransform::Rotate270)
                .pos(Pos::new(HPos::Center, VPos::Center)),
        ))
        .map_err(draw_err)?;
        root.draw(&Text::new(
            "predicted class".to_string(),
            (left + cell * k as i32 / 2, height as i32 - 8),
            font(12).pos(Pos::new(HPos::Center, VPos::Bottom)),
        ))
        .map_err(draw_err)?;
        Ok(())
    })
}

fn mix(a: RGBColor, b: RGBColor, t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let m = |x: u8, y: u8| (x as f64 + (y as f64 - x as f64) * t).round() as u8;
    RGBColor(m(a.0, b.0), m(a.1, b.1), m(a.2, b.2))
}

/// One confidence bin of a reliability diagram.
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub rows: usize,
    pub confidence: f64,
    pub accuracy: f64,
}

/// Accuracy against confidence per bin (bars), the diagonal a calibrated
/// model follows, and each bin's mean confidence (dots).
pub fn reliability_diagram(title: &str, bins: &[ReliabilityBin]) -> anyhow::Result<String> {
    svg(420, 360, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 14))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("confidence (top class probability)")
            .y_desc("accuracy")
            .label_style((FONT, 11))
            .light_line_style(RGBColor(238, 238, 238))
            .draw()
            .map_err(draw_err)?;
        let used = bins.iter().filter(|b| b.rows > 0);
        chart
            .draw_series(used.clone().map(|b| {
                Rectangle::new(
                    [(b.lo, 0.0), (b.hi, b.accuracy)],
                    color(0).mix(0.75).filled(),
                )
            }))
            .map_err(draw_err)?
            .label("accuracy per bin")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], color(0).mix(0.75).filled())
            });
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                5,
                3,
                BLACK.stroke_width(1),
            ))
            .map_err(draw_err)?
            .label("calibrated")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.stroke_width(1)));
        chart
            .draw_series(
                used.map(|b| Circle::new((b.confidence, b.confidence), 3, color(1).filled())),
            )
            .map_err(draw_err)?
            .label("mean confidence")
            .legend(|(x, y)| Circle::new((x + 8, y), 3, color(1).filled()));
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drawn(svg: &str) -> usize {
        ["<path", "<rect", "<polyline", "<line", "<circle", "<text"]
            .iter()
            .map(|tag| svg.matches(tag).count())
            .sum()
    }

    #[test]
    fn every_chart_is_an_svg_with_its_labels() {
        let lines = LineChart {
            title: "fold 1, original".into(),
            x_desc: "epoch".into(),
            y_desc: "log loss".into(),
            lines: vec![Line {
                name: "valid".into(),
                points: vec![(1.0, 0.9), (2.0, 0.5), (3.0, 0.6)],
                color: color(0),
                dashed: false,
            }],
            marker: Some((2.0, 0.5)),
            y_range: None,
            size: (300, 220),
        }
        .svg()
        .unwrap();
        assert!(lines.starts_with("<svg") && lines.contains("fold 1, original"));
        assert!(lines.contains("<polyline"), "{lines}");

        let bars = BarChart {
            title: "scores".into(),
            x_desc: "log loss".into(),
            categories: vec!["5 folds, original + hflip".into(), "1 fold".into()],
            series: vec![Bars {
                name: "oof".into(),
                values: vec![Some(0.22), None],
                spread: Some(vec![Some(0.01), None]),
            }],
            decimals: 3,
            width: 500,
        }
        .svg()
        .unwrap();
        assert!(bars.contains("5 folds, original + hflip") && bars.contains("0.220"));

        let heat = confusion_heatmap(
            "confusion",
            &["a".into(), "b".into()],
            &[vec![3, 1], vec![0, 4]],
        )
        .unwrap();
        assert!(
            heat.contains("predicted class") && heat.contains("\n3\n"),
            "{heat}"
        );

        let rel = reliability_diagram(
            "reliability",
            &[ReliabilityBin {
                lo: 0.9,
                hi: 1.0,
                rows: 5,
                confidence: 0.95,
                accuracy: 0.8,
            }],
        )
        .unwrap();
        for svg in [&lines, &bars, &heat, &rel] {
            assert!(drawn(svg) > 5);
        }
    }
}
