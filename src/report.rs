//! `runner report`: every run directory in one polars DataFrame, sorted by
//! out-of-fold log loss (best first; runs without scores last).

use std::cmp::Ordering;
use std::path::Path;

use polars::prelude::*;
use serde::Serialize;

use crate::rundir::{Manifest, Status};
use crate::spec::Spec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Markdown,
    Json,
}

/// One run, as the report shows it: a column per field, in this order.
#[derive(Debug, Default, Serialize)]
struct Row {
    run: String,
    name: Option<String>,
    backbones: Option<String>,
    views: Option<String>,
    folds: Option<u32>,
    dropout: Option<f64>,
    epochs: Option<u32>,
    optimizer: Option<String>,
    oof_log_loss: Option<f64>,
    oof_accuracy: Option<f64>,
    test_log_loss: Option<f64>,
    test_accuracy: Option<f64>,
    features: Option<String>,
    seconds: Option<f64>,
    status: String,
}

/// Parses `dir/file` if it exists; a file that exists but does not parse is
/// reported in `warnings` (the report still shows the run).
fn read_file<T>(
    dir: &Path,
    file: &str,
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
    warnings: &mut Vec<String>,
) -> Option<T> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).ok()?;
    parse(&bytes)
        .map_err(|e| warnings.push(format!("{}: cannot parse ({e})", path.display())))
        .ok()
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

fn read_row(dir: &Path, warnings: &mut Vec<String>) -> Row {
    let mut row = Row {
        run: dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        ..Row::default()
    };
    let spec: Option<Spec> = read_file(
        dir,
        "spec.toml",
        |b| {
            let text = std::str::from_utf8(b).map_err(|e| e.to_string())?;
            toml::from_str(text).map_err(|e| e.to_string())
        },
        warnings,
    );
    if let Some(spec) = spec {
        row.name = Some(spec.name.clone());
        row.backbones = Some(
            spec.backbones
                .iter()
                .map(|b| match b.arch {
                    // Which graph, not just "onnx".
                    arch if arch == runner_models::Arch::ONNX => format!(
                        "onnx:{}",
                        b.weights.file_stem().unwrap_or_default().to_string_lossy()
                    ),
                    arch => arch.name().to_string(),
                })
                .collect::<Vec<_>>()
                .join("+"),
        );
        row.views = Some(
            spec.views
                .iter()
                .map(|v| v.name())
                .collect::<Vec<_>>()
                .join("+"),
        );
        row.folds = Some(spec.cv.folds as u32);
        row.dropout = Some(spec.head.dropout);
        row.epochs = Some(spec.head.epochs as u32);
        row.optimizer = Some(format!("{:?}", spec.head.optimizer).to_lowercase());
    }
    let manifest: Option<Manifest> = read_file(dir, "run.json", json, warnings);
    row.status = match &manifest {
        Some(m) => match m.status {
            Status::Complete => "complete",
            Status::Failed => "failed",
            Status::Running => "incomplete",
        },
        None => "unreadable",
    }
    .to_string();
    if let Some(m) = &manifest {
        row.seconds = m.finished.as_ref().map(|f| f.seconds);
        let total = m.feature_stages_cached + m.feature_stages_computed;
        row.features = (total > 0).then(|| {
            match (m.feature_stages_cached, m.feature_stages_computed) {
                (_, 0) => "cache",
                (0, _) => "computed",
                _ => "partly cached",
            }
            .to_string()
        });
    }
    let metrics: Option<serde_json::Value> = read_file(dir, "metrics.json", json, warnings);
    let fin = metrics.as_ref().and_then(|m| m.get("final"));
    let complete = manifest
        .as_ref()
        .is_some_and(|m| m.status == Status::Complete);
    if complete && fin.is_none() {
        warnings.push(format!(
            "{}: the run is complete but metrics.json has no final scores",
            dir.display()
        ));
    }
    if let Some(fin) = fin {
        let num = |k: &str| fin.get(k).and_then(serde_json::Value::as_f64);
        row.oof_log_loss = num("oof_log_loss");
        row.oof_accuracy = num("oof_accuracy");
        row.test_log_loss = num("test_log_loss");
        row.test_accuracy = num("test_accuracy");
    }
    row
}

/// Every run under a runs folder, best out-of-fold log loss first (runs
/// without scores last, in name order).
pub struct Report {
    rows: Vec<Row>,
}

/// Loads every run directory under `runs_root` (folders holding `run.json`
/// or `spec.toml`; the cache folder is skipped), with a warning for every
/// file of a run that exists but cannot be read.
pub fn load(runs_root: &Path) -> anyhow::Result<(Report, Vec<String>)> {
    let mut rows = Vec::new();
    let mut warnings = Vec::new();
    if runs_root.is_dir() {
        for entry in std::fs::read_dir(runs_root)? {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if path.is_dir()
                && !hidden
                && (path.join("run.json").exists() || path.join("spec.toml").exists())
            {
                rows.push(read_row(&path, &mut warnings));
            }
        }
    }
    rows.sort_by(|a, b| a.run.cmp(&b.run));
    // Stable: runs with equal (or no) loss stay in name order.
    rows.sort_by(|a, b| match (a.oof_log_loss, b.oof_log_loss) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    });
    Ok((Report { rows }, warnings))
}

/// One column of the report: `value` of every row.
fn column<T>(rows: &[Row], name: &str, value: impl Fn(&Row) -> T) -> Column
where
    Series: NamedFrom<Vec<T>, [T]>,
{
    Column::new(name.into(), rows.iter().map(value).collect::<Vec<T>>())
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The report as a DataFrame, a column per [`Row`] field in its order.
    pub fn frame(&self) -> PolarsResult<DataFrame> {
        let rows = &self.rows;
        DataFrame::new_infer_height(vec![
            column(rows, "run", |r| r.run.clone()),
            column(rows, "name", |r| r.name.clone()),
            column(rows, "backbones", |r| r.backbones.clone()),
            column(rows, "views", |r| r.views.clone()),
            column(rows, "folds", |r| r.folds),
            column(rows, "dropout", |r| r.dropout),
            column(rows, "epochs", |r| r.epochs),
            column(rows, "optimizer", |r| r.optimizer.clone()),
            column(rows, "oof_log_loss", |r| r.oof_log_loss),
            column(rows, "oof_accuracy", |r| r.oof_accuracy),
            column(rows, "test_log_loss", |r| r.test_log_loss),
            column(rows, "test_accuracy", |r| r.test_accuracy),
            column(rows, "features", |r| r.features.clone()),
            column(rows, "seconds", |r| r.seconds),
            column(rows, "status", |r| r.status.clone()),
        ])
    }

    /// Renders the report in `format`.
    pub fn render(&self, format: Format) -> anyhow::Result<String> {
        match format {
            Format::Table | Format::Markdown => {
                // polars reads its table settings from the environment; this
                // runs on the main thread before anything else reads it.
                let style = if format == Format::Markdown {
                    "ASCII_MARKDOWN"
                } else {
                    "UTF8_FULL_CONDENSED"
                };
                for (key, value) in [
                    ("POLARS_FMT_TABLE_FORMATTING", style),
                    ("POLARS_FMT_MAX_ROWS", "-1"),
                    ("POLARS_FMT_MAX_COLS", "-1"),
                    ("POLARS_FMT_STR_LEN", "120"),
                    // Never wrap cells to the terminal: one line per run.
                    ("POLARS_TABLE_WIDTH", "65535"),
                    ("POLARS_FMT_TABLE_HIDE_COLUMN_DATA_TYPES", "1"),
                    ("POLARS_FMT_TABLE_HIDE_DATAFRAME_SHAPE_INFORMATION", "1"),
                ] {
                    std::env::set_var(key, value);
                }
                Ok(format!("{}\n", self.frame()?))
            }
            Format::Csv => {
                let mut buf = Vec::new();
                CsvWriter::new(&mut buf).finish(&mut self.frame()?)?;
                Ok(String::from_utf8(buf)?)
            }
            Format::Json => Ok(serde_json::to_string_pretty(&self.rows)? + "\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(run: &str, oof_log_loss: Option<f64>) -> Row {
        Row {
            run: run.into(),
            oof_log_loss,
            status: "complete".into(),
            ..Row::default()
        }
    }

    #[test]
    fn json_rows_keep_the_tables_column_order() {
        let report = Report {
            rows: vec![row("a", Some(0.5))],
        };
        let json = report.render(Format::Json).unwrap();
        let frame = report.frame().unwrap();
        let position = |key: &PlSmallStr| json.find(&format!("\"{key}\":")).expect(key);
        let order: Vec<usize> = frame.get_column_names().into_iter().map(position).collect();
        assert_eq!(order.len(), 15);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{json}");
    }

    #[test]
    fn runs_sort_by_loss_then_name_with_unscored_runs_last() {
        let dir = tempfile::tempdir().unwrap();
        for (name, loss) in [
            ("c", Some(0.2)),
            ("a", None),
            ("b", Some(0.2)),
            ("d", Some(0.1)),
        ] {
            let run = dir.path().join(name);
            std::fs::create_dir(&run).unwrap();
            std::fs::write(run.join("run.json"), "{}").unwrap();
            if let Some(loss) = loss {
                let metrics = serde_json::json!({ "final": { "oof_log_loss": loss } });
                std::fs::write(run.join("metrics.json"), metrics.to_string()).unwrap();
            }
        }
        let (report, _) = load(dir.path()).unwrap();
        let runs: Vec<&str> = report.rows.iter().map(|r| r.run.as_str()).collect();
        assert_eq!(runs, ["d", "b", "c", "a"]);
    }
}
