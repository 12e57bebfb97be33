//! `runner report` and `runner diff`: run directories as a table that
//! compares them.
//!
//! Every run becomes a [`RunRecord`]: its folder name, every resolved
//! parameter of its `spec.toml` as a dotted column (`cells`), its sweep,
//! final scores, cache use, time and status. `select` picks and orders the
//! runs; this module chooses the columns (by default the parameters that
//! differ between the listed runs); `render` prints through polars; `group`
//! aggregates seeds; `diff` sets two runs side by side.

mod cells;
mod diff;
mod group;
pub mod html;
mod render;
mod select;

use std::path::Path;

use crate::rundir::{Manifest, Status};
pub use cells::Cell;
pub use diff::diff;
pub use render::Format;
pub use select::Selection;

/// The scores every run reports, in column order.
pub const METRICS: [&str; 4] = [
    "oof_log_loss",
    "oof_accuracy",
    "test_log_loss",
    "test_accuracy",
];

/// One run directory as the report reads it.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    /// The folder name.
    pub run: String,
    pub name: Option<String>,
    pub started: Option<String>,
    pub sweep: Option<String>,
    /// Every resolved parameter, dotted, in the spec's order.
    pub params: Vec<(String, Cell)>,
    pub metrics: [Option<f64>; 4],
    pub features: Option<String>,
    pub seconds: Option<f64>,
    pub status: String,
}

impl RunRecord {
    /// The value of any column: metadata, parameter or metric.
    pub fn cell(&self, column: &str) -> Cell {
        match column {
            "run" => Cell::Str(self.run.clone()),
            "name" => self.name.clone().into(),
            "sweep" => self.sweep.clone().into(),
            "features" => self.features.clone().into(),
            "seconds" => self.seconds.into(),
            "status" => Cell::Str(self.status.clone()),
            _ => match METRICS.iter().position(|m| *m == column) {
                Some(i) => self.metrics[i].into(),
                None => self
                    .params
                    .iter()
                    .find(|(k, _)| k == column)
                    .map_or(Cell::Null, |(_, v)| v.clone()),
            },
        }
    }

    pub fn has_column(&self, column: &str) -> bool {
        ["run", "name", "sweep", "features", "seconds", "status"].contains(&column)
            || METRICS.contains(&column)
            || self.params.iter().any(|(k, _)| k == column)
    }

    /// Every column this run has, in report order.
    pub fn column_names(&self) -> Vec<String> {
        let mut names = vec!["run".to_string(), "name".into(), "sweep".into()];
        names.extend(self.params.iter().map(|(k, _)| k.clone()));
        names.extend(METRICS.iter().map(|m| m.to_string()));
        names.extend(["features", "seconds", "status"].map(String::from));
        names
    }
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

/// Reads one run directory. The spec is read as a plain TOML table, so
/// runs written by other versions still show every key they have.
pub fn read_run(dir: &Path, warnings: &mut Vec<String>) -> RunRecord {
    let mut row = RunRecord {
        run: dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        ..RunRecord::default()
    };
    let spec: Option<toml::Table> = read_file(
        dir,
        "spec.toml",
        |b| {
            let text = std::str::from_utf8(b).map_err(|e| e.to_string())?;
            toml::from_str(text).map_err(|e| e.to_string())
        },
        warnings,
    );
    if let Some(spec) = spec {
        row.name = spec.get("name").and_then(|n| n.as_str()).map(String::from);
        row.params = cells::flatten_spec(&spec);
    }
    let manifest: Option<Manifest> = read_file(dir, "run.json", json, warnings);
    row.status = match &manifest {
        Some(m) => match m.status {
            Status::Complete => "complete",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
            // A live process holds the lock; a dead one left `running`.
            Status::Running if crate::rundir::is_live(dir) => "running",
            Status::Running => "interrupted",
        },
        None => "unreadable",
    }
    .to_string();
    if let Some(m) = &manifest {
        row.started = Some(m.started_utc.clone());
        row.sweep = m.sweep.as_ref().map(|s| s.id.clone());
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
        for (slot, key) in row.metrics.iter_mut().zip(METRICS) {
            *slot = fin.get(key).and_then(serde_json::Value::as_f64);
        }
    }
    row
}

/// Whether `dir` is a run directory (holds `run.json` or `spec.toml`).
pub fn is_run_dir(dir: &Path) -> bool {
    dir.is_dir() && (dir.join("run.json").exists() || dir.join("spec.toml").exists())
}

/// Every run directory under `runs_root` (the hidden cache folder
/// skipped), with a warning for every file of a run that cannot be read.
pub fn load_runs(runs_root: &Path) -> anyhow::Result<(Vec<RunRecord>, Vec<String>)> {
    let mut runs = Vec::new();
    let mut warnings = Vec::new();
    if runs_root.is_dir() {
        for entry in std::fs::read_dir(runs_root)? {
            let path = entry?.path();
            let hidden = path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !hidden && is_run_dir(&path) {
                runs.push(read_run(&path, &mut warnings));
            }
        }
    }
    Ok((runs, warnings))
}

/// How to show the selected runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Every parameter column, not only those that differ.
    pub all_columns: bool,
    /// A column to sort by (`-KEY`: descending); default out-of-fold log
    /// loss, best first.
    pub sort: Option<String>,
    /// Columns to group by: one row per value, metrics' mean and spread.
    pub group_by: Vec<String>,
}

/// The selected runs, sorted, with the columns to show.
pub struct Report {
    pub runs: Vec<RunRecord>,
    pub columns: Vec<String>,
    group_by: Vec<String>,
}

impl Report {
    /// Loads, selects and sorts the runs under `runs_root`.
    pub fn build(
        runs_root: &Path,
        selection: &Selection,
        options: &Options,
    ) -> anyhow::Result<(Report, Vec<String>)> {
        let (runs, warnings) = load_runs(runs_root)?;
        let mut runs = selection.apply(runs)?;
        select::sort(&mut runs, options.sort.as_deref().unwrap_or("oof_log_loss"))?;
        let columns = columns(&runs, options.all_columns);
        for key in &options.group_by {
            if !runs.is_empty() && runs.iter().all(|r| !r.has_column(key)) {
                anyhow::bail!(
                    "--group-by {key}: no listed run has that column; parameters: {}",
                    parameter_names(&runs).join(", ")
                );
            }
        }
        let report = Report {
            runs,
            columns,
            group_by: options.group_by.clone(),
        };
        Ok((report, warnings))
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// The report in `format`: a row per run, or per group with
    /// `--group-by`.
    pub fn render(&self, format: Format) -> anyhow::Result<String> {
        if self.group_by.is_empty() {
            render::render(&self.columns, &self.rows(), format)
        } else {
            let (columns, rows) = group::aggregate(&self.runs, &self.group_by)?;
            render::render(&columns, &rows, format)
        }
    }

    fn rows(&self) -> Vec<Vec<Cell>> {
        self.runs
            .iter()
            .map(|r| self.columns.iter().map(|c| r.cell(c)).collect())
            .collect()
    }
}

/// Every parameter any run has, in order of first appearance.
fn parameter_names(runs: &[RunRecord]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in runs {
        for (k, _) in &r.params {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
    }
    names
}

/// `run`, the parameters (those whose values differ between the runs, or
/// all), the scores, then cache use, time and status.
fn columns(runs: &[RunRecord], all: bool) -> Vec<String> {
    let differs = |column: &str| {
        let first = runs.first().map(|r| r.cell(column));
        runs.iter().any(|r| Some(r.cell(column)) != first)
    };
    let mut out = vec!["run".to_string()];
    if all {
        out.push("name".into());
    }
    if all && runs.iter().any(|r| r.sweep.is_some()) || differs("sweep") {
        out.push("sweep".into());
    }
    out.extend(
        parameter_names(runs)
            .into_iter()
            .filter(|k| all || differs(k)),
    );
    out.extend(METRICS.iter().map(|m| m.to_string()));
    out.extend(["features", "seconds", "status"].map(String::from));
    out
}

#[cfg(test)]
mod tests;
