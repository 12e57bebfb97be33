//! `runner diff RUN_A RUN_B`: the parameters that differ, then every score
//! side by side with its change.

use std::path::Path;

use anyhow::bail;

use super::cells::Cell;
use super::render::{render, Format};
use super::{is_run_dir, read_run, METRICS};

/// Every score of a run: the final ones, each stage of the score
/// propagation, and the run's seconds.
fn scores(dir: &Path) -> Vec<(String, Option<f64>)> {
    let metrics: Option<serde_json::Value> = std::fs::read(dir.join("metrics.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let num = |v: Option<&serde_json::Value>, k: &str| v.and_then(|v| v.get(k)?.as_f64());
    let fin = metrics.as_ref().and_then(|m| m.get("final"));
    let mut out: Vec<(String, Option<f64>)> = METRICS
        .iter()
        .map(|m| (m.to_string(), num(fin, m)))
        .collect();
    let stages = metrics
        .as_ref()
        .and_then(|m| m.get("propagation")?.as_array().cloned())
        .unwrap_or_default();
    for stage in &stages {
        let name = stage.get("stage").and_then(|s| s.as_str()).unwrap_or("?");
        for m in METRICS {
            out.push((format!("{name}: {m}"), num(Some(stage), m)));
        }
    }
    out
}

pub fn diff(a: &Path, b: &Path, format: Format) -> anyhow::Result<String> {
    for dir in [a, b] {
        if !is_run_dir(dir) {
            bail!(
                "{} is not a run directory (no run.json or spec.toml); give folders under --runs, e.g. runs/<run>",
                dir.display()
            );
        }
    }
    let mut warnings = Vec::new();
    let (ra, rb) = (read_run(a, &mut warnings), read_run(b, &mut warnings));
    for w in warnings {
        eprintln!("warning: {w}");
    }

    let mut keys: Vec<String> = vec!["name".into(), "sweep".into()];
    for r in [&ra, &rb] {
        for (k, _) in &r.params {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let params: Vec<Vec<Cell>> = keys
        .iter()
        .filter(|k| ra.cell(k) != rb.cell(k))
        .map(|k| vec![Cell::Str(k.clone()), ra.cell(k), rb.cell(k)])
        .collect();

    let (sa, sb) = (scores(a), scores(b));
    let mut names: Vec<String> = sa.iter().map(|(k, _)| k.clone()).collect();
    for (k, _) in &sb {
        if !names.contains(k) {
            names.push(k.clone());
        }
    }
    names.push("seconds".into());
    let lookup = |s: &[(String, Option<f64>)], k: &str, secs: Option<f64>| {
        if k == "seconds" {
            return secs;
        }
        s.iter().find(|(n, _)| n == k).and_then(|(_, v)| *v)
    };
    let metrics: Vec<Vec<Cell>> = names
        .iter()
        .map(|k| {
            let (x, y) = (lookup(&sa, k, ra.seconds), lookup(&sb, k, rb.seconds));
            let change = x.zip(y).map(|(x, y)| y - x);
            vec![Cell::Str(k.clone()), x.into(), y.into(), change.into()]
        })
        .collect();

    let param_columns = ["parameter", "a", "b"].map(String::from);
    let metric_columns = ["metric", "a", "b", "change (b - a)"].map(String::from);
    if format == Format::Json {
        let table = |columns: &[String], rows: &[Vec<Cell>]| -> anyhow::Result<serde_json::Value> {
            Ok(serde_json::from_str(&render(columns, rows, Format::Json)?)?)
        };
        let doc = serde_json::json!({
            "a": a.display().to_string(),
            "b": b.display().to_string(),
            "parameters": table(&param_columns, &params)?,
            "metrics": table(&metric_columns, &metrics)?,
        });
        return Ok(serde_json::to_string_pretty(&doc)? + "\n");
    }
    let mut out = format!("a: {}\nb: {}\n", a.display(), b.display());
    if params.is_empty() {
        out.push_str("\nno parameter differs\n");
    } else {
        out.push_str("\nparameters that differ\n");
        out.push_str(&render(&param_columns, &params, format)?);
    }
    out.push_str("\nscores\n");
    out.push_str(&render(&metric_columns, &metrics, format)?);
    Ok(out)
}
