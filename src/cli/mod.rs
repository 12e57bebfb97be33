//! Command line: `runner SPEC.toml`, `runner run`, `runner rerun`,
//! `runner resume`, `runner report`, `runner diff`, `runner predict`,
//! `runner export`, `runner ensemble`, `runner extract`, `runner cache`,
//! `runner inspect`. Glue only: parse (the grammar is `args`), set up
//! threads and device, dispatch to `experiment` / `report` / `predict` /
//! `export` / `extract` / ...

mod args;

use std::path::PathBuf;

use anyhow::bail;
use candle_core::Device;

use crate::cache::FeatureCache;
use crate::experiment::{self, Context};
use crate::log::Log;
use crate::run::{preflight, Datasets};
use crate::setup::{device, init_threads};
use crate::{export, extract, report};
pub use args::Cli;
use args::{CacheCommand, Calibrate, Command, Global, SpecChanges};

impl Global {
    /// The feature cache `--cache` names: a folder, or an `s3://` prefix
    /// read through a local copy under `<runs>/.cache-s3` (opened once per
    /// command: it checks that the store answers).
    fn cache(&self) -> anyhow::Result<FeatureCache> {
        let Some(given) = &self.cache else {
            return Ok(FeatureCache::new(self.runs.join(".cache")));
        };
        let text = given.to_string_lossy();
        if text.contains("://") {
            let remote = crate::cache::Remote::open(&text)?;
            return Ok(FeatureCache::with_remote(
                remote,
                &self.runs.join(".cache-s3"),
            ));
        }
        Ok(FeatureCache::new(given.clone()))
    }

    /// The device `--device` names, else the spec's `device`, else `auto`.
    fn device(&self, spec: &crate::spec::Spec, log: &Log) -> anyhow::Result<Device> {
        let choice = self.device.as_deref().or(spec.device.as_deref());
        device(choice.unwrap_or("auto"), log)
    }

    /// Starts the thread pools and logs what the backbones will run on.
    fn init_threads(&self, log: &Log) -> anyhow::Result<()> {
        let threads = init_threads(self.threads)?;
        log.info(format!(
            "threads: {threads}, GEMM kernel: {}",
            runner_kernels::best().name
        ));
        Ok(())
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    let log = Log::new(g.quiet);
    match cli.command {
        Some(Command::Report {
            format,
            all_columns,
            sort,
            wheres,
            sweep_id,
            name_glob,
            last,
            group_by,
            html,
        }) => {
            let selection = report::Selection {
                sweep: sweep_id,
                name: name_glob,
                last,
                wheres,
            };
            let options = report::Options {
                all_columns,
                sort,
                group_by,
            };
            match html {
                Some(out) => report_html(g, &selection, &options, out),
                None => report(g, &selection, &options, format),
            }
        }
        Some(Command::Diff {
            run_a,
            run_b,
            format,
        }) => {
            print!("{}", report::diff(&run_a, &run_b, format)?);
            Ok(())
        }
        Some(Command::Extract {
            spec,
            out,
            shard,
            all,
            status,
        }) => {
            let shard = match (shard, all || status || out.is_some()) {
                (Some(shard), _) => Some(shard),
                (None, true) => None,
                (None, false) => match crate::shard::Shard::from_env(|k| std::env::var(k).ok())
                    .map_err(anyhow::Error::msg)?
                {
                    Some((shard, from)) => {
                        log.info(format!("shard {shard} (from {from})"));
                        Some(shard)
                    }
                    None => None,
                },
            };
            g.init_threads(&log)?;
            let cache = g.cache()?;
            let origin = spec.display().to_string();
            let checked = preflight(
                crate::spec::load(&spec)?,
                &origin,
                &mut Datasets::new(cache.clone()),
            )?;
            let device = g.device(&checked.spec, &log)?;
            let run = checked.run(&cache, &device, &log);
            match shard {
                _ if status => extract::status(&run).map(|table| print!("{table}")),
                Some(shard) => extract::extract_shard(&run, shard),
                None => extract::extract(&run, out.as_deref()),
            }
        }
        Some(Command::Export { run_dir, out, from }) => {
            let e = export::export(&run_dir, from, &out)?;
            log.info(format!(
                "wrote {} ({:.1} MB): input `{}` {}, output `probabilities` (N, classes), {} heads averaged",
                out.display(),
                e.bytes as f64 / 1e6,
                e.input,
                e.input_dims,
                e.heads
            ));
            Ok(())
        }
        Some(Command::Cache { action }) => cache_command(g, action),
        Some(Command::Ensemble {
            run_dirs,
            method,
            calibrate,
            name,
        }) => {
            let options = crate::ensemble::Options {
                method,
                temperature: calibrate == Some(Calibrate::Temperature),
                name,
            };
            let (dir, table) = crate::ensemble::ensemble(&run_dirs, &g.runs, &options)?;
            log.info(table);
            log.info(format!("wrote {}", dir.display()));
            Ok(())
        }
        Some(Command::Predict {
            run_dir,
            images,
            out,
            top,
            format,
        }) => {
            g.init_threads(&log)?;
            let spec = crate::spec::load(&run_dir.join("spec.toml")).ok();
            let device = match &spec {
                Some(spec) => g.device(spec, &log)?,
                None => device(g.device.as_deref().unwrap_or("auto"), &log)?,
            };
            // The cache the run used: beside it in its runs folder, unless
            // --cache names one.
            let cache = match (&g.cache, run_dir.parent()) {
                (None, Some(runs)) => FeatureCache::new(runs.join(".cache")),
                _ => g.cache()?,
            };
            let preds = crate::predict::predict(&run_dir, &images, &cache, &device, &log)?;
            if let Some(out) = out {
                crate::cache::write_atomic(&out, &preds.csv()?)?;
                log.info(format!("wrote {}", out.display()));
            }
            print!("{}", preds.render(top, format)?);
            Ok(())
        }
        Some(Command::Inspect {
            weights,
            all,
            output,
        }) => {
            init_threads(g.threads)?;
            print!(
                "{}",
                crate::inspect::inspect(&weights, all, output.as_deref())?
            );
            Ok(())
        }
        Some(Command::Run { specs, changes }) => run_specs(&specs, &changes, g, &log).map(drop),
        Some(Command::Rerun { run_dirs, changes }) => rerun(&run_dirs, &changes, g, &log),
        Some(Command::Resume { run_dirs }) => resume(&run_dirs, g, &log),
        None => run_specs(&cli.specs, &cli.changes, g, &log).map(drop),
    }
}

fn report(
    g: &Global,
    selection: &report::Selection,
    options: &report::Options,
    format: report::Format,
) -> anyhow::Result<()> {
    if g.runs.exists() && !g.runs.is_dir() {
        bail!(
            "--runs {} is a file, not a folder of runs",
            g.runs.display()
        );
    }
    crate::rundir::mark_dead_runs(&g.runs);
    let (report, warnings) = report::Report::build(&g.runs, selection, options)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if report.is_empty() {
        let why = if g.runs.exists() {
            ""
        } else {
            " (no such folder; pass --runs DIR)"
        };
        eprintln!("no runs selected under {}{why}", g.runs.display());
    }
    print!("{}", report.render(format)?);
    Ok(())
}

/// `runner report --html`: the selected runs' page, and the page of any
/// selected run directory that has none yet (runs written before runs
/// wrote their own).
fn report_html(
    g: &Global,
    selection: &report::Selection,
    options: &report::Options,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let out = out.unwrap_or_else(|| g.runs.join("report.html"));
    crate::rundir::mark_dead_runs(&g.runs);
    let (report, warnings) = report::Report::build(&g.runs, selection, options)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    for run in &report.runs {
        let dir = g.runs.join(&run.run);
        if run.status == "complete" && !dir.join(report::html::RUN_PAGE).exists() {
            if let Err(e) = report::html::write_run_page(&dir) {
                eprintln!("warning: {e:#}");
            }
        }
    }
    let html = report::html::runs_page(&report, &g.runs, &out)?;
    crate::cache::write_atomic(&out, html.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: cannot be written: {e}", out.display()))?;
    eprintln!("wrote {} ({} runs)", out.display(), report.runs.len());
    Ok(())
}

/// Checks every spec (and every sweep member) before running any; then
/// runs each, going on past failures, and fails naming every run that did.
/// Returns the finished runs in order.
fn run_specs(
    paths: &[PathBuf],
    changes: &SpecChanges,
    g: &Global,
    log: &Log,
) -> anyhow::Result<Vec<PathBuf>> {
    if paths.is_empty() {
        bail!("no spec given; usage: runner SPEC.toml [SPEC.toml ...] (see --help)");
    }
    // Threads first: the checks hash weights on the pool.
    g.init_threads(log)?;
    let cache = g.cache()?;
    let experiments = experiment::check_all(paths, &changes.overrides(), cache.clone())?;
    note_dead_runs(g, &cache, log);
    let ctx = Context {
        runs_root: &g.runs,
        cache: &cache,
        device: g.device.as_deref(),
        log,
    };
    let mut failed = Vec::new();
    let mut finished = Vec::new();
    let mut total = 0;
    for checked in &experiments {
        // A stop request ends the command after the run it stopped.
        crate::interrupt::check()?;
        log.info(format!("spec {}", checked.experiment.origin));
        total += checked.members.len();
        let outcome = experiment::run(checked, &ctx);
        for run in &outcome.runs {
            log.info(format!("wrote {}", run.dir.display()));
        }
        if let Some(id) = &outcome.sweep_id {
            print_sweep(g, id)?;
        }
        finished.extend(outcome.runs.into_iter().map(|r| r.dir));
        failed.extend(outcome.failed);
    }
    crate::interrupt::check()?;
    if !failed.is_empty() {
        bail!(
            "{} of {total} run(s) failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    Ok(finished)
}

/// `runner cache verify` / `runner cache gc`.
fn cache_command(g: &Global, action: CacheCommand) -> anyhow::Result<()> {
    let cache = g.cache()?;
    if cache.is_remote() {
        eprintln!(
            "{}: checking its local copy {} (objects in the store are checked as they are read; expire unused ones with the bucket's lifecycle rules)",
            cache.location(),
            cache.root().display()
        );
    }
    if !cache.root().is_dir() {
        bail!(
            "{} is not a feature cache folder (pass --cache DIR, or --runs DIR for <runs>/.cache)",
            cache.root().display()
        );
    }
    let human = crate::disk::human;
    match action {
        CacheCommand::Verify { remove_corrupt } => {
            let found = cache.verify(remove_corrupt);
            println!(
                "{}: {} file(s), {} verified against their checksums",
                cache.root().display(),
                found.files,
                human(found.bytes)
            );
            for why in &found.corrupt {
                println!("corrupt: {why}");
            }
            if !found.corrupt.is_empty() {
                bail!(
                    "{} corrupt file(s){}",
                    found.corrupt.len(),
                    if remove_corrupt {
                        "; removed, the next run recomputes them"
                    } else {
                        "; `runner cache verify --remove-corrupt` removes them (a run also does, on reading one)"
                    }
                );
            }
            Ok(())
        }
        CacheCommand::Gc {
            keep_days,
            also_runs,
            dry_run,
        } => {
            let mut roots = vec![g.runs.clone()];
            roots.extend(also_runs);
            for root in &roots {
                crate::rundir::mark_dead_runs(root);
            }
            let refs = crate::rundir::referenced_stages(&roots);
            if refs.unrecorded > 0 {
                eprintln!(
                    "warning: {} run(s) do not record their feature stages (made by an older runner); only --keep-days protects theirs",
                    refs.unrecorded
                );
            }
            let keep = std::time::Duration::from_secs(keep_days.saturating_mul(86_400));
            let done = cache.gc(&refs.keys, keep, dry_run);
            println!(
                "{} stage(s), {} {}; kept {} stage(s), {} (read by {} run(s) or newer than {keep_days} day(s))",
                done.removed,
                human(done.removed_bytes),
                if dry_run { "would be removed" } else { "removed" },
                done.kept,
                human(done.kept_bytes),
                refs.runs
            );
            Ok(())
        }
    }
}

/// The comparison of a sweep's runs, printed when the sweep ends.
fn print_sweep(g: &Global, id: &str) -> anyhow::Result<()> {
    let selection = report::Selection::sweep(id);
    let (report, _) = report::Report::build(&g.runs, &selection, &report::Options::default())?;
    print!("{}", report.render(report::Format::Table)?);
    Ok(())
}

/// Runs whose process died without a word (kill -9, a power cut) are
/// marked `interrupted`, so nothing shows them as running forever.
/// Temporary memo files that no write will finish (a kill mid-write) go
/// too, once old enough not to be another machine's write in progress.
fn note_dead_runs(g: &Global, cache: &FeatureCache, log: &Log) {
    crate::cache::remove_stale_temp_files(&cache.root().join("memo"), crate::cache::STALE_TEMP_AGE);
    for dir in crate::rundir::mark_dead_runs(&g.runs) {
        log.info(format!(
            "{}: its process is gone; marked interrupted (`runner resume` continues it)",
            dir.display()
        ));
    }
}

/// A run directory's saved spec, or an error saying it is not a run
/// directory.
fn saved_spec(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let spec = dir.join("spec.toml");
    if !spec.is_file() {
        bail!(
            "{} is not a run directory (it has no spec.toml); give a folder under --runs, e.g. runs/<run>",
            dir.display()
        );
    }
    Ok(spec)
}

/// `runner resume RUN_DIR...`: each unfinished run, continued in place.
fn resume(run_dirs: &[PathBuf], g: &Global, log: &Log) -> anyhow::Result<()> {
    let cache = g.cache()?;
    note_dead_runs(g, &cache, log);
    g.init_threads(log)?;
    let mut datasets = Datasets::new(cache.clone());
    let mut checked = Vec::new();
    for dir in run_dirs {
        let spec_path = saved_spec(dir)?;
        let origin = spec_path.display().to_string();
        checked.push(preflight(
            crate::spec::load(&spec_path)?,
            &origin,
            &mut datasets,
        )?);
    }
    for (dir, checked) in run_dirs.iter().zip(&checked) {
        crate::interrupt::check()?;
        let device = g.device(&checked.spec, log)?;
        let outcome = crate::pipeline::resume(&checked.run(&cache, &device, log), dir)?;
        log.info(format!("wrote {}", outcome.dir.display()));
    }
    Ok(())
}

/// `runner rerun RUN_DIR...`: each run's saved spec, run again.
fn rerun(runs: &[PathBuf], changes: &SpecChanges, g: &Global, log: &Log) -> anyhow::Result<()> {
    let mut specs = Vec::new();
    for dir in runs {
        specs.push(saved_spec(dir)?);
    }
    let finished = run_specs(&specs, changes, g, log)?;
    let changed = !changes.set.is_empty() || !changes.sweep.is_empty();
    if !changed && finished.len() == runs.len() {
        for (original, new) in runs.iter().zip(&finished) {
            for line in experiment::compare_with_original(original, new)? {
                log.info(format!("{}: {line}", new.display()));
            }
        }
    }
    Ok(())
}
