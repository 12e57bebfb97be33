//! The page across runs (`runner report --html`): every selected run in a
//! sortable table linking to its own page, and for each parameter that
//! varies, the scores against its values (mean and spread over the runs
//! that share a value, e.g. the seeds of a sweep).

use std::path::Path;

use super::charts::{BarChart, Bars};
use super::page::{escape, figure, grid, paragraph, table, Kind, Page, Td};
use crate::report::{Cell, Report, RunRecord, METRICS};

/// Parameters whose runs are repeats rather than settings: the spread
/// over them is the noise a setting's effect must exceed.
fn is_repeat_axis(key: &str) -> bool {
    key == "seed" || key.ends_with(".seed")
}

/// Mean and sample standard deviation (none for a single value).
fn mean_sd(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let sd = (values.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, sd)
}

/// One bar group per distinct value of `key(run)`: the out-of-fold and
/// test log loss over the runs with that value.
fn score_bars(
    runs: &[RunRecord],
    key: impl Fn(&RunRecord) -> String,
) -> (Vec<String>, Vec<Bars>, usize) {
    let mut values: Vec<String> = Vec::new();
    for r in runs {
        let v = key(r);
        if !values.contains(&v) {
            values.push(v);
        }
    }
    let mut most = 0;
    let series = [(0, "out-of-fold log loss"), (2, "test log loss")]
        .iter()
        .map(|&(metric, name)| {
            let (mut means, mut sds) = (Vec::new(), Vec::new());
            for v in &values {
                let scores: Vec<f64> = runs
                    .iter()
                    .filter(|r| key(r) == *v)
                    .filter_map(|r| r.metrics[metric])
                    .collect();
                most = most.max(scores.len());
                if scores.is_empty() {
                    means.push(None);
                    sds.push(None);
                } else {
                    let (m, sd) = mean_sd(&scores);
                    means.push(Some(m));
                    sds.push(sd);
                }
            }
            Bars {
                name: name.to_string(),
                values: means,
                spread: Some(sds),
            }
        })
        .filter(|b| b.values.iter().any(Option::is_some))
        .collect();
    (values, series, most)
}

/// The page for the runs of `report`, to be written at `out`: links to the
/// run pages are relative to `out`'s folder.
pub fn render(report: &Report, runs_root: &Path, out: &Path) -> anyhow::Result<String> {
    let runs = &report.runs;
    let params: Vec<&String> = report
        .columns
        .iter()
        .filter(|c| runs.iter().any(|r| r.params.iter().any(|(k, _)| k == *c)))
        .collect();
    let settings: Vec<&String> = params
        .iter()
        .copied()
        .filter(|k| !is_repeat_axis(k))
        .collect();
    let complete = runs.iter().filter(|r| r.status == "complete").count();
    let subtitle = format!(
        "{} run(s) under {} ({complete} complete){}",
        runs.len(),
        escape(&runs_root.display().to_string()),
        if params.is_empty() {
            String::new()
        } else {
            format!(
                "; varying: {}",
                escape(
                    &params
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            )
        }
    );
    let mut page = Page::new(Kind::Runs, "runner report", &subtitle);
    let scored: Vec<RunRecord> = runs
        .iter()
        .filter(|r| r.metrics[0].is_some())
        .cloned()
        .collect();

    let groups = together(&settings, &scored);
    let mut figures = Vec::new();
    if groups.len() > 1 {
        // Every combination of the varying settings: the ablation bars.
        let (categories, series, most) = score_bars(&scored, |r| {
            groups
                .iter()
                .map(|keys| keys[0])
                .map(|k| format!("{k}={}", r.cell(k).text()))
                .collect::<Vec<_>>()
                .join(", ")
        });
        figures.push(setting_figure(
            "settings",
            "Every setting",
            categories,
            series,
            most,
        )?);
    }
    for keys in &groups {
        let key = keys[0];
        let (categories, series, most) = score_bars(&scored, |r| r.cell(key).text());
        let title = match keys.len() {
            1 => format!("Log loss by {key}"),
            n => format!("Log loss by {key} (and {} more varying with it)", n - 1),
        };
        let mut fig = setting_figure(
            &format!("by-{}", slug(key)),
            &title,
            categories,
            series,
            most,
        )?;
        if groups.len() > 1 {
            fig = fig.replace(
                "</figcaption>",
                " Each bar averages over the other settings' values too.</figcaption>",
            );
        }
        figures.push(fig);
    }
    if settings.is_empty() && !scored.is_empty() {
        let (categories, series, most) = score_bars(&scored, |r| r.run.clone());
        figures.push(setting_figure(
            "by-run",
            "Log loss by run",
            categories,
            series,
            most,
        )?);
    }
    if figures.is_empty() {
        page.section(
            "effects",
            "Effects",
            paragraph("No scored runs to compare (the plots need at least one complete run)."),
        );
    } else {
        page.section("effects", "Effects", grid(&figures));
    }
    page.section("runs", "Runs", runs_table(report, runs_root, out));
    Ok(page.render())
}

/// The settings grouped by the runs they tell apart: keys that always
/// change together (a backbone's arch, weights and input size) make one
/// chart, named by the first.
fn together<'a>(settings: &[&'a String], runs: &[RunRecord]) -> Vec<Vec<&'a String>> {
    let partition = |key: &str| -> Vec<usize> {
        let mut seen: Vec<String> = Vec::new();
        runs.iter()
            .map(|r| {
                let v = r.cell(key).text();
                seen.iter().position(|s| *s == v).unwrap_or_else(|| {
                    seen.push(v);
                    seen.len() - 1
                })
            })
            .collect()
    };
    let mut groups: Vec<(Vec<usize>, Vec<&'a String>)> = Vec::new();
    for &key in settings {
        let p = partition(key);
        match groups.iter_mut().find(|(q, _)| *q == p) {
            Some((_, keys)) => keys.push(key),
            None => groups.push((p, vec![key])),
        }
    }
    groups.into_iter().map(|(_, keys)| keys).collect()
}

fn setting_figure(
    id: &str,
    title: &str,
    categories: Vec<String>,
    series: Vec<Bars>,
    most: usize,
) -> anyhow::Result<String> {
    let svg = BarChart {
        title: title.to_string(),
        x_desc: "multi-class log loss (lower is better)".into(),
        categories,
        series,
        decimals: 4,
        width: 640,
    }
    .svg()?;
    let caption = if most > 1 {
        "Mean over the runs with each value; the whisker is one standard deviation either side (e.g. across seeds)."
    } else {
        "One run per value."
    };
    Ok(figure(id, &svg, caption))
}

fn slug(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// The report's columns as a table: the run name links to its page (when it
/// has one), the best out-of-fold log loss is bold.
fn runs_table(report: &Report, runs_root: &Path, out: &Path) -> String {
    let from = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let from = std::path::absolute(from).unwrap_or_else(|_| from.to_path_buf());
    let best = report
        .runs
        .iter()
        .filter_map(|r| r.metrics[0])
        .fold(f64::INFINITY, f64::min);
    let rows: Vec<Vec<Td>> = report
        .runs
        .iter()
        .map(|r| {
            report
                .columns
                .iter()
                .map(|c| match c.as_str() {
                    "run" => {
                        let page = runs_root.join(&r.run).join("report.html");
                        let text = escape(&r.run);
                        if page.exists() {
                            let abs = std::path::absolute(&page).unwrap_or(page);
                            let href = pathdiff::diff_paths(&abs, &from).unwrap_or(abs);
                            let href = href.to_string_lossy().replace('\\', "/");
                            Td::html(format!("<a href=\"{}\">{text}</a>", escape(&href)), &r.run)
                        } else {
                            Td::text(&r.run)
                        }
                    }
                    _ => match r.cell(c) {
                        Cell::Null => Td::text(""),
                        cell => match cell.as_f64() {
                            Some(v) if METRICS.contains(&c.as_str()) => {
                                let mut td = Td::number(Some(v), 4);
                                if c == METRICS[0] && v == best {
                                    td.html = format!("<span class=\"best\">{}</span>", td.html);
                                }
                                td
                            }
                            Some(v) if c == "seconds" => Td::number(Some(v), 1),
                            Some(v) if !matches!(cell, Cell::Str(_)) => {
                                Td::html(escape(&cell.text()), &v.to_string())
                            }
                            _ => Td::text(&cell.text()),
                        },
                    },
                })
                .collect()
        })
        .collect();
    format!(
        "{}{}",
        paragraph(
            "Sorted by out-of-fold log loss, best first; click a column's header to sort by it."
        ),
        table(&report.columns, &rows, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_sample_standard_deviation() {
        let (m, sd) = mean_sd(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((sd.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(mean_sd(&[4.0]).1, None);
    }
}
