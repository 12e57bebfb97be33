//! Experiments: a spec file with the command line's overrides, run as one
//! run or as the members of a sweep.
//!
//! Every member of every experiment is resolved and checked before the
//! first runs. A sweep then prepares its members one after another, so each
//! feature stage is computed (or read from the cache) once and shared in
//! memory, and trains all members' heads side by side on the one thread
//! pool; at the end it prints the comparison of its runs.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use candle_core::Device;
use rayon::prelude::*;

use crate::cache::FeatureCache;
use crate::features::{self, Loaded};
use crate::log::Log;
use crate::pipeline::{self, Prepared, RunOutcome};
use crate::run::{preflight, Checked, Datasets};
use crate::rundir::{utc_stamp, SweepRecord};
use crate::spec::overrides::Assignment;
use crate::spec::{self, Experiment, Overrides};

/// An experiment whose every member passed its checks.
pub struct CheckedExperiment {
    pub experiment: Experiment,
    pub members: Vec<Checked>,
}

/// Loads, expands and checks every experiment before any of them runs, so a
/// typo in the third spec (or the ninth member of a sweep) does not surface
/// after an hour of the first.
pub fn check_all(
    paths: &[PathBuf],
    overrides: &Overrides,
    cache: FeatureCache,
) -> anyhow::Result<Vec<CheckedExperiment>> {
    let mut datasets = Datasets::new(cache);
    paths
        .iter()
        .map(|path| {
            let experiment = spec::load_experiment(path, overrides)?;
            let members = experiment
                .members
                .iter()
                .map(|m| preflight(m.spec.clone(), &m.origin, &mut datasets))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(CheckedExperiment {
                experiment,
                members,
            })
        })
        .collect()
}

/// Where runs go and what they run on.
pub struct Context<'a> {
    pub runs_root: &'a Path,
    pub cache: &'a FeatureCache,
    /// `--device`, else each spec's `device`, else `auto`.
    pub device: Option<&'a str>,
    pub log: &'a Log,
}

impl Context<'_> {
    fn device(&self, checked: &Checked) -> anyhow::Result<Device> {
        let choice = self.device.or(checked.spec.device.as_deref());
        let device = crate::setup::device(choice.unwrap_or("auto"), self.log)?;
        features::check_precision(&checked.spec, &device)?;
        Ok(device)
    }
}

/// What became of an experiment's runs: each finished run, and a line per
/// member that failed.
#[derive(Default)]
pub struct Outcome {
    pub runs: Vec<RunOutcome>,
    pub failed: Vec<String>,
    /// The sweep's id, when the experiment is a sweep.
    pub sweep_id: Option<String>,
}

/// Runs one checked experiment: its only run, or its sweep.
pub fn run(checked: &CheckedExperiment, ctx: &Context<'_>) -> Outcome {
    let experiment = &checked.experiment;
    if experiment.sweep.is_none() {
        let mut outcome = Outcome::default();
        let member = &checked.members[0];
        // A spec that cannot run on its device fails before its run
        // directory exists.
        match ctx.device(member).and_then(|device| {
            pipeline::run(&member.run(ctx.cache, &device, ctx.log), ctx.runs_root)
        }) {
            Ok(run) => outcome.runs.push(run),
            Err(e) => outcome.failed.push(format!("{}: {e:#}", experiment.origin)),
        }
        return outcome;
    }
    run_sweep(checked, ctx)
}

/// A member with its device, prepared (run directory made, features in
/// memory) and waiting for its heads.
struct Ready<'c> {
    checked: &'c Checked,
    label: String,
    device: Device,
    prepared: Prepared,
}

fn run_sweep(checked: &CheckedExperiment, ctx: &Context<'_>) -> Outcome {
    let experiment = &checked.experiment;
    let n = checked.members.len();
    let id = sweep_id(checked);
    let sweep = experiment.sweep.as_ref().expect("a sweep");
    let keys: Vec<&str> = sweep.axes.iter().map(|a| a.key.as_str()).collect();
    ctx.log.info(format!(
        "sweep {id}: {n} runs of {} ({} over {})",
        experiment.origin,
        sweep.mode.name(),
        keys.join(", ")
    ));
    let mut outcome = Outcome {
        sweep_id: Some(id.clone()),
        ..Outcome::default()
    };

    // One by one: each feature stage is computed or read once, then shared.
    let mut loaded = Loaded::new();
    let mut ready = Vec::new();
    for (i, (member, checked)) in experiment.members.iter().zip(&checked.members).enumerate() {
        if let Err(stop) = crate::interrupt::check() {
            outcome
                .failed
                .push(format!("{}: {stop}", experiment.origin));
            break;
        }
        let label = member
            .values
            .iter()
            .map(Assignment::to_arg)
            .collect::<Vec<_>>()
            .join(" ");
        ctx.log.info(format!("sweep member {}/{n}: {label}", i + 1));
        let record = SweepRecord {
            id: id.clone(),
            member: i,
            members: n,
            values: member
                .values
                .iter()
                .map(|a| {
                    let value = serde_json::to_value(&a.value).unwrap_or_default();
                    (a.key.clone(), value)
                })
                .collect(),
        };
        let prepared = ctx.device(checked).and_then(|device| {
            let run = checked.run(ctx.cache, &device, ctx.log);
            let prepared = pipeline::prepare(&run, ctx.runs_root, Some(record), &loaded)?;
            Ok((device, prepared))
        });
        match prepared {
            Ok((device, prepared)) => {
                for (key, m) in &prepared.features().by_key {
                    loaded.entry(key.clone()).or_insert_with(|| m.clone());
                }
                ready.push(Ready {
                    checked,
                    label,
                    device,
                    prepared,
                });
            }
            Err(e) => outcome.failed.push(format!("{}: {e:#}", member.origin)),
        }
    }
    // The features of runs still to train are held by their `Prepared`.
    drop(loaded);

    ctx.log.info(format!(
        "sweep {id}: training the heads of {} runs",
        ready.len()
    ));
    let results: Vec<(String, anyhow::Result<RunOutcome>)> = ready
        .into_par_iter()
        .map(|r| {
            let log = ctx.log.member(&r.label);
            let run = r.checked.run(ctx.cache, &r.device, &log);
            let result = pipeline::finish(&run, r.prepared);
            (r.label, result)
        })
        .collect();
    for (label, result) in results {
        match result {
            Ok(run) => outcome.runs.push(run),
            Err(e) => outcome
                .failed
                .push(format!("{} ({label}): {e:#}", experiment.origin)),
        }
    }
    outcome
}

/// The spec's name and a hash of when and what: unique per invocation, and
/// short enough to type (`runner report --sweep ablations-3f2a`).
fn sweep_id(checked: &CheckedExperiment) -> String {
    let mut hasher = blake3::Hasher::new();
    let now = chrono::Utc::now();
    hasher.update(utc_stamp(now, false).as_bytes());
    hasher.update(&now.timestamp_subsec_nanos().to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    for m in &checked.members {
        hasher.update(m.spec.short_hash().as_bytes());
    }
    format!(
        "{}-{}",
        checked.experiment.name,
        &hasher.finalize().to_hex()[..8]
    )
}

/// Runs `RUN_DIR/spec.toml` again and says whether the new run's tables
/// equal the old run's byte for byte.
pub fn compare_with_original(original: &Path, rerun: &Path) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for file in ["oof.csv", "submission.csv", "folds.csv"] {
        let (a, b) = (original.join(file), rerun.join(file));
        if !a.exists() {
            continue;
        }
        let same = std::fs::read(&a).with_context(|| format!("cannot read {}", a.display()))?
            == std::fs::read(&b).unwrap_or_default();
        lines.push(format!(
            "{file}: {}",
            if same {
                "identical to the original run".to_string()
            } else {
                format!("differs from {}", a.display())
            }
        ));
    }
    Ok(lines)
}
