//! The page of one run directory (`report.html`): what the run did, read
//! back from the files it wrote, so the page of any finished run (and of
//! one written by an older runner, with fewer plots) can be made again.

use super::charts::{self, BarChart, Bars, Line, LineChart, ReliabilityBin};
use super::page::{self, escape, figure, grid, paragraph, table, Kind, Page, Td};
use crate::pipeline::{HeadRow, Metrics, Score};
use crate::rundir::Manifest;

pub use super::run_files::{ClassRow, RunFiles};

/// Confidence bins of the reliability diagram (and its calibration error).
const BINS: usize = 10;

/// Confidence bins of the top class against how often it was right, and
/// the expected calibration error (the bins' |accuracy - confidence|
/// weighted by their rows).
pub fn reliability(rows: &[(usize, Vec<f64>)]) -> (Vec<ReliabilityBin>, f64) {
    let mut bins: Vec<ReliabilityBin> = (0..BINS)
        .map(|b| ReliabilityBin {
            lo: b as f64 / BINS as f64,
            hi: (b + 1) as f64 / BINS as f64,
            rows: 0,
            confidence: 0.0,
            accuracy: 0.0,
        })
        .collect();
    for (label, probs) in rows {
        let (top, p) =
            probs.iter().enumerate().fold(
                (0, f64::MIN),
                |best, (i, &p)| if p > best.1 { (i, p) } else { best },
            );
        let b = ((p * BINS as f64) as usize).min(BINS - 1);
        bins[b].rows += 1;
        bins[b].confidence += p;
        bins[b].accuracy += (top == *label) as u8 as f64;
    }
    let total = rows.len().max(1) as f64;
    let mut ece = 0.0;
    for bin in bins.iter_mut().filter(|b| b.rows > 0) {
        bin.confidence /= bin.rows as f64;
        bin.accuracy /= bin.rows as f64;
        ece += bin.rows as f64 / total * (bin.accuracy - bin.confidence).abs();
    }
    (bins, ece)
}

/// The page of one run.
pub fn render(run: &RunFiles) -> anyhow::Result<String> {
    let status = run
        .manifest
        .as_ref()
        .map(|m| format!("{:?}", m.status).to_lowercase())
        .unwrap_or_else(|| "no run.json".into());
    let name = run
        .metrics
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or(&run.folder);
    let mut subtitle = format!("{} · {status}", escape(&run.folder));
    if let Some(m) = &run.manifest {
        subtitle.push_str(&format!(" · started {}", escape(&m.started_utc)));
        if let Some(f) = &m.finished {
            subtitle.push_str(&format!(" · {:.1} s", f.seconds));
        }
    }
    let mut page = Page::new(Kind::Run, name, &subtitle);
    if let Some(m) = &run.metrics {
        page.section("scores", "Scores", scores_section(m)?);
        // An ensemble has members instead of heads: its scores section
        // compares them with the blend.
        if !is_ensemble(m) {
            page.section("curves", "Learning curves", curves_section(&m.heads)?);
            page.section("folds", "Folds", folds_section(&m.heads)?);
        }
        page.section("classes", "Classes", classes_section(run, &m.classes)?);
        page.section("calibration", "Calibration", calibration_section(run, m)?);
    } else {
        page.section(
            "scores",
            "Scores",
            paragraph("This run has no scores (no metrics.json): it failed, was interrupted or is still running."),
        );
    }
    let blend = run.metrics.as_ref().is_some_and(is_ensemble);
    if let Some(m) = run.manifest.as_ref().filter(|_| !blend) {
        page.section("time", "Time", time_section(m)?);
    }
    page.section("spec", "Spec and data", spec_section(run));
    Ok(page.render())
}

/// A blend written by `runner ensemble`: members instead of heads.
fn is_ensemble(m: &Metrics) -> bool {
    m.heads.is_empty()
}

fn scores_section(m: &Metrics) -> anyhow::Result<String> {
    let has_test = m.propagation.iter().any(|s| s.test_log_loss.is_some());
    let mut series = vec![Bars {
        name: "out-of-fold".into(),
        values: m.propagation.iter().map(|s| Some(s.oof_log_loss)).collect(),
        spread: None,
    }];
    if has_test {
        series.push(Bars {
            name: "test".into(),
            values: m.propagation.iter().map(|s| s.test_log_loss).collect(),
            spread: None,
        });
    }
    let chart = BarChart {
        title: "Score propagation: log loss by stage".into(),
        x_desc: "multi-class log loss (lower is better)".into(),
        categories: m.propagation.iter().map(|s| s.stage.clone()).collect(),
        series,
        decimals: 4,
        width: 640,
    }
    .svg()?;
    let caption = if is_ensemble(m) {
        "The members' scores, then the blend's: its weights (and temperature) fitted on out-of-fold predictions, \
         its out-of-fold score by nested cross-validation; test scores need an answer key."
    } else {
        "Each stage adds to the one above: the first fold alone, every fold, every view (and a fitted temperature). \
         Out-of-fold scores are on the training images each head did not see; test scores need an answer key."
    };
    Ok(format!(
        "{}{}",
        figure("propagation", &chart, caption),
        score_table(&m.propagation)
    ))
}

fn score_table(scores: &[Score]) -> String {
    let headers = [
        "stage",
        "oof rows",
        "oof log loss",
        "oof accuracy",
        "test log loss",
        "test accuracy",
    ]
    .map(String::from);
    let rows: Vec<Vec<Td>> = scores
        .iter()
        .map(|s| {
            vec![
                Td::text(&s.stage),
                Td::number(Some(s.oof_rows as f64), 0),
                Td::number(Some(s.oof_log_loss), 4),
                Td::number(Some(s.oof_accuracy), 4),
                Td::number(s.test_log_loss, 4),
                Td::number(s.test_accuracy, 4),
            ]
        })
        .collect();
    table(&headers, &rows, false)
}

fn curves_section(heads: &[HeadRow]) -> anyhow::Result<String> {
    if heads.iter().all(|h| h.report.history.is_empty()) {
        return Ok(paragraph(
            "No per-epoch history: the heads were fitted in one piece (the logistic head), or the run was written by a runner that kept none.",
        ));
    }
    // One y range for every head, so that the small charts compare.
    let y_range = charts::bounds(heads.iter().flat_map(|h| {
        h.report
            .history
            .iter()
            .flat_map(|e| [e.train_log_loss, e.valid_log_loss])
    }));
    let mut figures = Vec::new();
    for h in heads.iter().filter(|h| !h.report.history.is_empty()) {
        let history = &h.report.history;
        let kept = history.iter().find(|e| e.epoch == h.report.best_epoch);
        let svg = LineChart {
            title: format!("fold {}, {}", h.fold, h.view.name()),
            x_desc: "epoch".into(),
            y_desc: "log loss".into(),
            lines: vec![
                Line {
                    name: "train".into(),
                    points: history
                        .iter()
                        .map(|e| (e.epoch as f64, e.train_log_loss))
                        .collect(),
                    color: charts::color(0),
                    dashed: true,
                },
                Line {
                    name: "validation".into(),
                    points: history
                        .iter()
                        .map(|e| (e.epoch as f64, e.valid_log_loss))
                        .collect(),
                    color: charts::color(1),
                    dashed: false,
                },
            ],
            marker: kept.map(|e| (e.epoch as f64, e.valid_log_loss)),
            y_range: Some(y_range),
            size: (300, 220),
        }
        .svg()?;
        let caption = format!(
            "{} epochs run, epoch {} kept: validation log loss {:.4}, accuracy {:.3}",
            h.report.epochs_run,
            h.report.best_epoch,
            h.report.valid_log_loss,
            h.report.valid_accuracy
        );
        figures.push(figure(
            &format!("curve-{}-{}", h.fold, h.view.name()),
            &svg,
            &caption,
        ));
    }
    Ok(format!(
        "{}{}",
        paragraph("Per head (fold x view): log loss on its training rows (dashed; measured without dropout after each epoch) and on its validation fold (solid); the circle marks the epoch whose weights the head keeps."),
        grid(&figures)
    ))
}

fn folds_section(heads: &[HeadRow]) -> anyhow::Result<String> {
    let mut folds: Vec<usize> = heads.iter().map(|h| h.fold).collect();
    folds.sort_unstable();
    folds.dedup();
    let mut views = Vec::new();
    for h in heads {
        if !views.contains(&h.view) {
            views.push(h.view);
        }
    }
    let series = views
        .iter()
        .map(|&v| Bars {
            name: v.name().to_string(),
            values: folds
                .iter()
                .map(|&f| {
                    heads
                        .iter()
                        .find(|h| h.fold == f && h.view == v)
                        .map(|h| h.report.valid_log_loss)
                })
                .collect(),
            spread: None,
        })
        .collect();
    let chart = BarChart {
        title: "Validation log loss per fold".into(),
        x_desc: "log loss of the kept weights on the fold's validation rows".into(),
        categories: folds.iter().map(|f| format!("fold {f}")).collect(),
        series,
        decimals: 4,
        width: 560,
    }
    .svg()?;
    let headers = [
        "fold",
        "view",
        "epochs run",
        "kept epoch",
        "valid log loss",
        "valid accuracy",
        "l2",
    ]
    .map(String::from);
    let rows: Vec<Vec<Td>> = heads
        .iter()
        .map(|h| {
            vec![
                Td::number(Some(h.fold as f64), 0),
                Td::text(h.view.name()),
                Td::number(Some(h.report.epochs_run as f64), 0),
                Td::number(Some(h.report.best_epoch as f64), 0),
                Td::number(Some(h.report.valid_log_loss), 4),
                Td::number(Some(h.report.valid_accuracy), 4),
                Td::number(h.report.l2, 6),
            ]
        })
        .collect();
    Ok(format!(
        "{}{}",
        figure(
            "fold-scores",
            &chart,
            "The spread across folds is the noise any comparison of runs has to beat."
        ),
        table(&headers, &rows, true)
    ))
}

fn classes_section(run: &RunFiles, classes: &[String]) -> anyhow::Result<String> {
    let mut figures = Vec::new();
    for (split, counts) in &run.confusion {
        let what = if split == "oof" {
            "out-of-fold"
        } else {
            split.as_str()
        };
        let svg = charts::confusion_heatmap(&format!("Confusion, {what}"), classes, counts)?;
        figures.push(figure(
            &format!("confusion-{split}"),
            &svg,
            &format!("Rows: true class; columns: the class with the highest probability ({what} predictions). Shade: share of the row."),
        ));
    }
    let splits: Vec<&str> = {
        let mut s: Vec<&str> = run.per_class.iter().map(|r| r.split.as_str()).collect();
        s.dedup();
        s
    };
    let per_class_value = |split: &str, class: &str, pick: fn(&ClassRow) -> f64| {
        run.per_class
            .iter()
            .find(|r| r.split == split && r.class == class)
            .map(pick)
    };
    if !splits.is_empty() {
        let bars = |pick: fn(&ClassRow) -> f64| -> Vec<Bars> {
            splits
                .iter()
                .map(|&split| Bars {
                    name: if split == "oof" {
                        "out-of-fold".into()
                    } else {
                        split.to_string()
                    },
                    values: classes
                        .iter()
                        .map(|c| per_class_value(split, c, pick))
                        .collect(),
                    spread: None,
                })
                .collect()
        };
        let accuracy = BarChart {
            title: "Accuracy per class".into(),
            x_desc: "accuracy".into(),
            categories: classes.to_vec(),
            series: bars(|r| r.accuracy),
            decimals: 3,
            width: 520,
        }
        .svg()?;
        let loss = BarChart {
            title: "Log loss per class".into(),
            x_desc: "mean log loss of the class's images".into(),
            categories: classes.to_vec(),
            series: bars(|r| r.log_loss),
            decimals: 3,
            width: 520,
        }
        .svg()?;
        figures.push(figure(
            "class-accuracy",
            &accuracy,
            "Share of each class's images whose top class is right.",
        ));
        figures.push(figure(
            "class-log-loss",
            &loss,
            "Where the log loss comes from: the classes the heads are least sure of.",
        ));
    }
    if figures.is_empty() {
        return Ok(paragraph(
            "No per-class tables (per_class.csv, confusion.csv) in this run directory.",
        ));
    }
    Ok(grid(&figures))
}

fn calibration_section(run: &RunFiles, m: &Metrics) -> anyhow::Result<String> {
    if run.oof.is_empty() {
        return Ok(paragraph("No out-of-fold predictions (oof.csv) to draw."));
    }
    let (bins, ece) = reliability(&run.oof);
    let svg = charts::reliability_diagram("Reliability, out-of-fold", &bins)?;
    let temperature = match m.inverse_temperature {
        Some(inv) => format!(
            " The run's probabilities are temperature-scaled (T = {:.3}).",
            1.0 / inv
        ),
        None => String::new(),
    };
    let caption = format!(
        "Expected calibration error {ece:.4} over {} rows in {BINS} confidence bins: a calibrated model's bars reach the diagonal.{temperature}",
        run.oof.len()
    );
    Ok(figure("reliability", &svg, &caption))
}

fn time_section(m: &Manifest) -> anyhow::Result<String> {
    let t = &m.timings;
    let mut categories = vec!["hash inputs".to_string(), "decode + resize".into()];
    let mut values = vec![Some(t.hash_seconds), Some(t.decode_seconds)];
    for b in &t.backbones {
        categories.push(format!("features: {}", b.backbone));
        values.push(Some(b.seconds));
    }
    categories.push("features, all (wall)".into());
    values.push(Some(t.features_seconds));
    categories.push("heads".into());
    values.push(Some(t.heads_seconds));
    let chart = BarChart {
        title: "Where the time went".into(),
        x_desc: "seconds".into(),
        categories,
        series: vec![Bars {
            name: "seconds".into(),
            values,
            spread: None,
        }],
        decimals: 2,
        width: 560,
    }
    .svg()?;
    let cache = format!(
        "{} feature stage(s) from the cache, {} computed.",
        m.feature_stages_cached, m.feature_stages_computed
    );
    Ok(figure(
        "time",
        &chart,
        &format!("Decoding runs on its own threads beside the backbones, so the parts overlap; \"features, all\" is the wall time of the features step. {cache}"),
    ))
}

fn spec_section(run: &RunFiles) -> String {
    let mut out = String::new();
    if let Some(m) = run.metrics.as_ref().filter(|m| !is_ensemble(m)) {
        out.push_str(&paragraph(&format!(
            "{} training images, {} test images, {} classes: {}.",
            m.train_images,
            m.test_images,
            m.classes.len(),
            escape(&m.classes.join(", "))
        )));
    }
    match &run.spec {
        Some(spec) => out.push_str(&page::pre(spec)),
        None => out.push_str(&paragraph("No spec.toml in this run directory.")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_error_weighs_each_bin_by_its_rows() {
        // Two rows at 0.95 confidence, one right; two at 0.55, both right.
        let rows = vec![
            (0, vec![0.95, 0.05]),
            (1, vec![0.95, 0.05]),
            (1, vec![0.45, 0.55]),
            (1, vec![0.45, 0.55]),
        ];
        let (bins, ece) = reliability(&rows);
        assert_eq!(bins[9].rows, 2);
        assert!((bins[9].accuracy - 0.5).abs() < 1e-12);
        assert_eq!(bins[5].rows, 2);
        let want = 0.5 * (0.95 - 0.5) + 0.5 * (1.0 - 0.55);
        assert!((ece - want).abs() < 1e-12, "{ece}");
    }
}
