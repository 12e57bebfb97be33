//! The files of a run directory that its page shows, read back as the run
//! wrote them: a missing file leaves its part of the page out, an
//! unreadable one is an error naming it.

use std::path::Path;

use anyhow::Context;

use crate::pipeline::Metrics;
use crate::rundir::Manifest;

/// One row of `per_class.csv`.
pub struct ClassRow {
    pub split: String,
    pub class: String,
    pub accuracy: f64,
    pub log_loss: f64,
}

/// Everything the page shows, as the run directory holds it.
pub struct RunFiles {
    pub folder: String,
    pub manifest: Option<Manifest>,
    pub metrics: Option<Metrics>,
    pub spec: Option<String>,
    pub per_class: Vec<ClassRow>,
    /// `confusion.csv` by split: the predicted-class counts per true class.
    pub confusion: Vec<(String, Vec<Vec<u64>>)>,
    /// `oof.csv`: each scored row's true class and probabilities.
    pub oof: Vec<(usize, Vec<f64>)>,
}

impl RunFiles {
    /// Reads what there is; a missing file leaves its part of the page out
    /// (a failed run has no scores), an unreadable one is an error naming it.
    pub fn read(dir: &Path) -> anyhow::Result<RunFiles> {
        let folder = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let manifest = read_optional(dir, "run.json", |b| Ok(serde_json::from_slice(b)?))?;
        let metrics: Option<Metrics> =
            read_optional(dir, "metrics.json", |b| Ok(serde_json::from_slice(b)?))?;
        let spec = read_optional(dir, "spec.toml", |b| {
            Ok(String::from_utf8_lossy(b).into_owned())
        })?;
        let classes = metrics
            .as_ref()
            .map(|m| m.classes.clone())
            .unwrap_or_default();
        let per_class = read_optional(dir, "per_class.csv", parse_per_class)?.unwrap_or_default();
        let confusion = read_optional(dir, "confusion.csv", |b| parse_confusion(b, classes.len()))?
            .unwrap_or_default();
        let oof = read_optional(dir, "oof.csv", |b| parse_oof(b, &classes))?.unwrap_or_default();
        Ok(RunFiles {
            folder,
            manifest,
            metrics,
            spec,
            per_class,
            confusion,
            oof,
        })
    }
}

fn read_optional<T>(
    dir: &Path,
    name: &str,
    parse: impl FnOnce(&[u8]) -> anyhow::Result<T>,
) -> anyhow::Result<Option<T>> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => parse(&bytes)
            .map(Some)
            .with_context(|| format!("{}: cannot be read for the report", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}: cannot be read", path.display())),
    }
}

fn records(bytes: &[u8]) -> anyhow::Result<Vec<csv::StringRecord>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    Ok(reader.records().collect::<Result<_, _>>()?)
}

fn number<T: std::str::FromStr>(record: &csv::StringRecord, i: usize) -> anyhow::Result<T> {
    let text = record.get(i).unwrap_or("");
    text.parse().map_err(|_| {
        anyhow::anyhow!(
            "line {}: column {} is {text:?}, not a number",
            line(record),
            i + 1
        )
    })
}

fn line(record: &csv::StringRecord) -> u64 {
    record.position().map_or(0, |p| p.line())
}

fn parse_per_class(bytes: &[u8]) -> anyhow::Result<Vec<ClassRow>> {
    records(bytes)?
        .iter()
        .map(|r| {
            Ok(ClassRow {
                split: r.get(0).unwrap_or("").to_string(),
                class: r.get(1).unwrap_or("").to_string(),
                accuracy: number(r, 3)?,
                log_loss: number(r, 4)?,
            })
        })
        .collect()
}

fn parse_confusion(bytes: &[u8], classes: usize) -> anyhow::Result<Vec<(String, Vec<Vec<u64>>)>> {
    let mut out: Vec<(String, Vec<Vec<u64>>)> = Vec::new();
    for r in records(bytes)? {
        let split = r.get(0).unwrap_or("").to_string();
        let row = (2..2 + classes)
            .map(|i| number(&r, i))
            .collect::<anyhow::Result<Vec<u64>>>()?;
        match out.iter_mut().find(|(s, _)| *s == split) {
            Some((_, rows)) => rows.push(row),
            None => out.push((split, vec![row])),
        }
    }
    Ok(out)
}

fn parse_oof(bytes: &[u8], classes: &[String]) -> anyhow::Result<Vec<(usize, Vec<f64>)>> {
    records(bytes)?
        .iter()
        .filter_map(|r| {
            // Rows outside every validation fold (a one-fold run) have no
            // label to score against.
            let label = classes.iter().position(|c| Some(c.as_str()) == r.get(1))?;
            let probs = (2..2 + classes.len())
                .map(|i| number(r, i))
                .collect::<anyhow::Result<Vec<f64>>>();
            Some(probs.map(|p| (label, p)))
        })
        .collect()
}
