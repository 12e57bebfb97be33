//! `runner report`: every run directory in one polars DataFrame, sorted by
//! out-of-fold log loss (best first; runs without scores last).

use std::path::Path;

use polars::prelude::*;

use crate::rundir::{Manifest, Status};
use crate::spec::Spec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Markdown,
    Json,
}

/// One run, as the report shows it.
#[derive(Debug, Default)]
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
        row.seconds = m.seconds;
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

/// Loads every run directory under `runs_root` (folders holding `run.json`
/// or `spec.toml`; the cache folder is skipped) into a DataFrame, with a
/// warning for every file of a run that exists but cannot be read.
pub fn load(runs_root: &Path) -> anyhow::Result<(DataFrame, Vec<String>)> {
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
    let col = |name: &str, values: Vec<Option<String>>| Column::new(name.into(), values);
    let df = DataFrame::new_infer_height(vec![
        Column::new(
            "run".into(),
            rows.iter().map(|r| r.run.clone()).collect::<Vec<_>>(),
        ),
        col("name", rows.iter().map(|r| r.name.clone()).collect()),
        col(
            "backbones",
            rows.iter().map(|r| r.backbones.clone()).collect(),
        ),
        col("views", rows.iter().map(|r| r.views.clone()).collect()),
        Column::new(
            "folds".into(),
            rows.iter().map(|r| r.folds).collect::<Vec<_>>(),
        ),
        Column::new(
            "dropout".into(),
            rows.iter().map(|r| r.dropout).collect::<Vec<_>>(),
        ),
        Column::new(
            "epochs".into(),
            rows.iter().map(|r| r.epochs).collect::<Vec<_>>(),
        ),
        col(
            "optimizer",
            rows.iter().map(|r| r.optimizer.clone()).collect(),
        ),
        Column::new(
            "oof_log_loss".into(),
            rows.iter().map(|r| r.oof_log_loss).collect::<Vec<_>>(),
        ),
        Column::new(
            "oof_accuracy".into(),
            rows.iter().map(|r| r.oof_accuracy).collect::<Vec<_>>(),
        ),
        Column::new(
            "test_log_loss".into(),
            rows.iter().map(|r| r.test_log_loss).collect::<Vec<_>>(),
        ),
        Column::new(
            "test_accuracy".into(),
            rows.iter().map(|r| r.test_accuracy).collect::<Vec<_>>(),
        ),
        col(
            "features",
            rows.iter().map(|r| r.features.clone()).collect(),
        ),
        Column::new(
            "seconds".into(),
            rows.iter().map(|r| r.seconds).collect::<Vec<_>>(),
        ),
        Column::new(
            "status".into(),
            rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>(),
        ),
    ])?;
    let df = df.sort(
        ["oof_log_loss"],
        SortMultipleOptions::default()
            .with_nulls_last(true)
            .with_maintain_order(true),
    )?;
    Ok((df, warnings))
}

/// Renders the report in `format`.
pub fn render(df: &mut DataFrame, format: Format) -> anyhow::Result<String> {
    match format {
        Format::Table | Format::Markdown => {
            // polars reads its table settings from the environment; this
            // runs on the main thread before anything else reads it.
            let style = if format == Format::Markdown {
                "ASCII_MARKDOWN"
            } else {
                "UTF8_FULL_CONDENSED"
            };
            unsafe_set_env("POLARS_FMT_TABLE_FORMATTING", style);
            unsafe_set_env("POLARS_FMT_MAX_ROWS", "-1");
            unsafe_set_env("POLARS_FMT_MAX_COLS", "-1");
            unsafe_set_env("POLARS_FMT_STR_LEN", "120");
            // Never wrap cells to the terminal: one line per run.
            unsafe_set_env("POLARS_TABLE_WIDTH", "65535");
            unsafe_set_env("POLARS_FMT_TABLE_HIDE_COLUMN_DATA_TYPES", "1");
            unsafe_set_env("POLARS_FMT_TABLE_HIDE_DATAFRAME_SHAPE_INFORMATION", "1");
            Ok(format!("{df}\n"))
        }
        Format::Csv => {
            let mut buf = Vec::new();
            CsvWriter::new(&mut buf).finish(df)?;
            Ok(String::from_utf8(buf)?)
        }
        Format::Json => {
            let names: Vec<String> = df
                .get_column_names()
                .iter()
                .map(|s| s.to_string())
                .collect();
            let mut out = Vec::with_capacity(df.height());
            for i in 0..df.height() {
                let row = df.get_row(i)?;
                let obj: serde_json::Map<String, serde_json::Value> = names
                    .iter()
                    .zip(row.0)
                    .map(|(n, v)| (n.clone(), any_to_json(v)))
                    .collect();
                out.push(serde_json::Value::Object(obj));
            }
            Ok(serde_json::to_string_pretty(&out)? + "\n")
        }
    }
}

fn any_to_json(v: AnyValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Bool(b),
        AnyValue::UInt32(x) => x.into(),
        AnyValue::UInt64(x) => x.into(),
        AnyValue::Int32(x) => x.into(),
        AnyValue::Int64(x) => x.into(),
        AnyValue::Float64(x) => serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number),
        AnyValue::String(s) => Value::String(s.to_string()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        other => Value::String(other.to_string()),
    }
}

fn unsafe_set_env(key: &str, value: &str) {
    // SAFETY (edition 2024 semantics): called from the single thread that
    // renders the report; no other thread reads the environment meanwhile.
    std::env::set_var(key, value);
}
