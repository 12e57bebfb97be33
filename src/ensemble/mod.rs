//! `runner ensemble RUN...`: blends finished runs that share data and
//! folds into a run directory of its own.
//!
//! The blend's parameters (weights, temperature) are fitted on the
//! members' out-of-fold predictions only, and scored honestly by nested
//! cross-validation: each fold's out-of-fold rows are blended with
//! parameters fitted on the other folds' rows. The submission blends the
//! members' test predictions with parameters fitted on every out-of-fold
//! row.

pub mod blend;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::data::Dataset;
use crate::npy::Matrix;
use crate::pipeline::Score;
use crate::rundir::{utc_stamp, Finished, Manifest, Status, Timings};
use crate::spec::Spec;
use crate::train::FoldPlan;
pub use blend::{Blend, Method};

/// One finished run's predictions, rows in the dataset's order.
struct Member {
    dir: PathBuf,
    spec: Spec,
    /// A row per validated training image (in training order).
    oof: Matrix,
    test: Option<Matrix>,
}

/// `id -> probabilities` of a run's CSV whose probability columns start
/// at `skip`, checking the class columns.
fn read_probabilities(
    path: &Path,
    skip: usize,
    classes: &[String],
) -> anyhow::Result<HashMap<String, Vec<f32>>> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header: Vec<String> = reader.headers()?.iter().map(String::from).collect();
    let columns: Vec<usize> = classes
        .iter()
        .map(|c| {
            header
                .iter()
                .skip(skip)
                .position(|h| h == c)
                .map(|p| p + skip)
                .with_context(|| format!("{}: no column for class `{c}`", path.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut rows = HashMap::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{} line {}", path.display(), line + 2))?;
        let probs = columns
            .iter()
            .map(|&c| record[c].parse::<f32>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} line {}: not a probability", path.display(), line + 2))?;
        rows.insert(record[0].to_string(), probs);
    }
    Ok(rows)
}

/// Rows of `by_id` in the order of `ids`.
fn in_order(
    by_id: &HashMap<String, Vec<f32>>,
    ids: &[&str],
    k: usize,
    path: &Path,
) -> anyhow::Result<Matrix> {
    let mut data = Vec::with_capacity(ids.len() * k);
    for id in ids {
        let row = by_id
            .get(*id)
            .with_context(|| format!("{}: no row for `{id}`", path.display()))?;
        data.extend_from_slice(row);
    }
    Ok(Matrix::new(ids.len(), k, data))
}

fn load_member(
    dir: &Path,
    data: &Dataset,
    oof_ids: &[&str],
) -> anyhow::Result<(Matrix, Option<Matrix>)> {
    let k = data.classes.len();
    let oof_path = dir.join("oof.csv");
    let oof = in_order(
        &read_probabilities(&oof_path, 2, &data.classes)?,
        oof_ids,
        k,
        &oof_path,
    )?;
    let test = if data.test.is_empty() {
        None
    } else {
        let path = dir.join("submission.csv");
        let ids: Vec<&str> = data.test.iter().map(|i| i.id.as_str()).collect();
        Some(in_order(
            &read_probabilities(&path, 1, &data.classes)?,
            &ids,
            k,
            &path,
        )?)
    };
    Ok((oof, test))
}

/// What a run must share with the first member to be blended with it.
fn check_compatible(first: &Member, other: &Spec, dir: &Path) -> anyhow::Result<()> {
    let a = &first.spec;
    let differs = if a.data != other.data {
        Some("[data]")
    } else if a.cv.folds != other.cv.folds || a.cv.stratified != other.cv.stratified {
        Some("[cv]")
    } else if a.seed != other.seed {
        Some("seed (it draws the folds)")
    } else {
        None
    };
    if let Some(what) = differs {
        bail!(
            "{} and {} differ in {what}: an ensemble blends runs on the same images and folds (its weights are fitted out of fold)",
            first.dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Options of `runner ensemble`.
pub struct Options {
    pub method: Method,
    pub temperature: bool,
    pub name: String,
}

#[derive(Serialize)]
struct MemberRecord {
    run: String,
    weight: f64,
    #[serde(rename = "final")]
    score: Score,
}

#[derive(Serialize)]
struct EnsembleMetrics {
    name: String,
    classes: Vec<String>,
    method: Method,
    /// Fitted on every out-of-fold row (what the submission uses).
    blend: Blend,
    members: Vec<MemberRecord>,
    /// The members' final scores, then the blend's (nested, honest).
    propagation: Vec<Score>,
    #[serde(rename = "final")]
    final_score: Score,
}

fn score(
    stage: String,
    data: &Dataset,
    rows: usize,
    oof: &Matrix,
    oof_labels: &[usize],
    test: Option<&Matrix>,
) -> Score {
    let test_scores = match (test, &data.test_labels) {
        (Some(t), Some(labels)) => Some((
            crate::metrics::log_loss(t, labels),
            crate::metrics::accuracy(t, labels),
        )),
        _ => None,
    };
    Score {
        stage,
        oof_rows: rows,
        oof_log_loss: crate::metrics::log_loss(oof, oof_labels),
        oof_accuracy: crate::metrics::accuracy(oof, oof_labels),
        test_log_loss: test_scores.map(|s| s.0),
        test_accuracy: test_scores.map(|s| s.1),
    }
}

/// Blends the runs in `dirs` into a new run directory under `runs_root`;
/// returns it and the scores table to print.
pub fn ensemble(
    dirs: &[PathBuf],
    runs_root: &Path,
    options: &Options,
) -> anyhow::Result<(PathBuf, String)> {
    if dirs.len() < 2 {
        bail!("an ensemble needs at least two runs");
    }
    let spec_of = |dir: &Path| -> anyhow::Result<Spec> {
        let path = dir.join("spec.toml");
        if !path.is_file() {
            bail!("{} is not a run directory (no spec.toml)", dir.display());
        }
        Ok(crate::spec::load(&path)?)
    };
    let first_spec = spec_of(&dirs[0])?;
    let data = Dataset::load(&first_spec.data)
        .with_context(|| format!("{}: [data]", dirs[0].display()))?;
    let folds: FoldPlan = crate::pipeline::fold_plan(&first_spec, &data)?;
    let rows = folds.validated_rows();
    let oof_ids: Vec<&str> = rows.iter().map(|&r| data.train[r].id.as_str()).collect();
    let oof_labels: Vec<usize> = rows.iter().map(|&r| data.labels[r]).collect();

    let mut members: Vec<Member> = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let spec = if i == 0 {
            first_spec.clone()
        } else {
            spec_of(dir)?
        };
        if let Some(first) = members.first() {
            check_compatible(first, &spec, dir)?;
        }
        let manifest: Manifest = serde_json::from_slice(
            &std::fs::read(dir.join("run.json"))
                .with_context(|| format!("{} has no run.json", dir.display()))?,
        )?;
        if manifest.status != Status::Complete {
            bail!("{} is not complete", dir.display());
        }
        let (oof, test) = load_member(dir, &data, &oof_ids)?;
        members.push(Member {
            dir: dir.clone(),
            spec,
            oof,
            test,
        });
    }

    // Positions (within the OOF rows) of each fold's validation rows.
    let position: HashMap<usize, usize> = rows.iter().enumerate().map(|(p, &r)| (r, p)).collect();
    let fitted_on_all_folds = options.method != Method::Mean || options.temperature;
    if fitted_on_all_folds && folds.folds.len() < 2 {
        bail!("fitting a blend honestly needs cv.folds >= 2 (nested cross-validation over the folds); use --method mean without --calibrate");
    }
    let oofs: Vec<&Matrix> = members.iter().map(|m| &m.oof).collect();
    let k = data.classes.len();
    let mut nested = Matrix::new(rows.len(), k, vec![0.0; rows.len() * k]);
    let all_positions: Vec<usize> = (0..rows.len()).collect();
    for fold in &folds.folds {
        let held: Vec<usize> = fold.valid.iter().map(|r| position[r]).collect();
        let held_set: std::collections::HashSet<usize> = held.iter().copied().collect();
        let fit_rows: Vec<usize> = all_positions
            .iter()
            .copied()
            .filter(|p| !held_set.contains(p))
            .collect();
        let blend = Blend::fit(
            options.method,
            &oofs,
            &oof_labels,
            &fit_rows,
            options.temperature,
        );
        let blended = blend.apply(&oofs);
        for &p in &held {
            nested.data[p * k..(p + 1) * k].copy_from_slice(blended.row(p));
        }
    }
    let blend = Blend::fit(
        options.method,
        &oofs,
        &oof_labels,
        &all_positions,
        options.temperature,
    );
    let test = members
        .iter()
        .map(|m| m.test.as_ref())
        .collect::<Option<Vec<&Matrix>>>()
        .map(|tests| blend.apply(&tests));

    let mut propagation = Vec::new();
    let mut records = Vec::new();
    for (m, &w) in members.iter().zip(&blend.weights) {
        let name = m
            .dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let s = score(
            name.clone(),
            &data,
            rows.len(),
            &m.oof,
            &oof_labels,
            m.test.as_ref(),
        );
        propagation.push(s.clone());
        records.push(MemberRecord {
            run: name,
            weight: w,
            score: s,
        });
    }
    let stage = format!(
        "ensemble ({}{}, nested CV)",
        serde_json::to_value(options.method)?
            .as_str()
            .unwrap_or("?"),
        if options.temperature {
            " + temperature"
        } else {
            ""
        }
    );
    let final_score = score(
        stage,
        &data,
        rows.len(),
        &nested,
        &oof_labels,
        test.as_ref(),
    );
    propagation.push(final_score.clone());
    let table = crate::pipeline::propagation_table(&propagation);

    let results = EnsembleResults {
        data: &data,
        rows: &rows,
        oof: &nested,
        test: test.as_ref(),
        metrics: EnsembleMetrics {
            name: options.name.clone(),
            classes: data.classes.clone(),
            method: options.method,
            blend,
            members: records,
            propagation,
            final_score,
        },
    };
    let dir = write_run(runs_root, options, dirs, results)?;
    Ok((dir, table))
}

/// What an ensemble's run directory holds besides its spec: the blend's
/// predictions and its metrics.
struct EnsembleResults<'a> {
    data: &'a Dataset,
    /// The training rows `oof` holds, in its order.
    rows: &'a [usize],
    /// The blend of the members' out-of-fold rows, nested over the folds.
    oof: &'a Matrix,
    test: Option<&'a Matrix>,
    metrics: EnsembleMetrics,
}

/// Writes the ensemble of the runs in `dirs` as a new run directory under
/// `runs_root`; returns it.
fn write_run(
    runs_root: &Path,
    options: &Options,
    dirs: &[PathBuf],
    results: EnsembleResults<'_>,
) -> anyhow::Result<PathBuf> {
    let EnsembleResults {
        data,
        rows,
        oof,
        test,
        metrics,
    } = results;
    let started = std::time::Instant::now();
    let member_dirs: Vec<String> = dirs
        .iter()
        .map(|d| {
            std::fs::canonicalize(d)
                .unwrap_or_else(|_| d.clone())
                .display()
                .to_string()
        })
        .collect();
    let mut spec = toml::Table::new();
    spec.insert("name".into(), options.name.clone().into());
    let mut table = toml::Table::new();
    table.insert(
        "method".into(),
        serde_json::to_value(options.method)?
            .as_str()
            .unwrap_or("?")
            .into(),
    );
    table.insert(
        "calibrate".into(),
        if options.temperature {
            "temperature"
        } else {
            "none"
        }
        .into(),
    );
    table.insert(
        "members".into(),
        toml::Value::Array(member_dirs.iter().map(|d| d.clone().into()).collect()),
    );
    spec.insert("ensemble".into(), toml::Value::Table(table));
    let spec_text = toml::to_string_pretty(&spec)?;
    let hash = blake3::hash(spec_text.as_bytes()).to_hex()[..8].to_string();
    std::fs::create_dir_all(runs_root)
        .with_context(|| format!("cannot create {}", runs_root.display()))?;
    let now = chrono::Utc::now();
    let base = format!("{}-{}-{hash}", utc_stamp(now, true), options.name);
    let mut path = runs_root.join(&base);
    let mut n = 2;
    while let Err(e) = std::fs::create_dir(&path) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e).with_context(|| format!("cannot create {}", path.display()));
        }
        path = runs_root.join(format!("{base}.{n}"));
        n += 1;
    }
    let write = |name: &str, bytes: &[u8]| crate::cache::write_atomic(&path.join(name), bytes);
    write("spec.toml", spec_text.as_bytes())?;
    write("metrics.json", &serde_json::to_vec_pretty(&metrics)?)?;
    // oof.csv: id, label, probabilities, as a run writes it.
    let header: Vec<String> = ["id", "label"]
        .into_iter()
        .map(String::from)
        .chain(data.classes.iter().cloned())
        .collect();
    let records = rows.iter().enumerate().map(|(p, &r)| {
        let sum: f64 = oof.row(p).iter().map(|&v| v as f64).sum();
        [
            data.train[r].id.clone(),
            data.classes[data.labels[r]].clone(),
        ]
        .into_iter()
        .chain(oof.row(p).iter().map(|&v| (v as f64 / sum).to_string()))
        .collect::<Vec<_>>()
    });
    write(
        "oof.csv",
        &crate::pipeline::csv_bytes(std::iter::once(header).chain(records))?,
    )?;
    if let Some(test) = test {
        write(
            "submission.csv",
            &crate::pipeline::submission_csv(data, test)?,
        )?;
    }
    let manifest = Manifest {
        status: Status::Complete,
        runner_version: env!("CARGO_PKG_VERSION").to_string(),
        started_utc: utc_stamp(now, false),
        finished: Some(Finished {
            finished_utc: utc_stamp(chrono::Utc::now(), false),
            seconds: started.elapsed().as_secs_f64(),
            error: None,
        }),
        feature_stages_cached: 0,
        feature_stages_computed: 0,
        timings: Timings::default(),
        stage: None,
        sweep: None,
        feature_stages: Vec::new(),
    };
    write("run.json", &serde_json::to_vec_pretty(&manifest)?)?;
    // The blend is written whatever happens to its page.
    if let Err(e) = crate::report::html::write_run_page(&path) {
        eprintln!("warning: {e:#}");
    }
    Ok(path)
}
