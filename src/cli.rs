//! Command line: `runner SPEC.toml`, `runner run`, `runner rerun`,
//! `runner resume`, `runner report`, `runner diff`, `runner predict`,
//! `runner export`, `runner ensemble`, `runner extract`, `runner cache`,
//! `runner inspect`. Glue only: parse, set up threads and device, dispatch
//! to `experiment` / `report` / `predict` / `export` / `extract` / ...

use std::path::PathBuf;

use anyhow::bail;
use candle_core::Device;
use clap::{Args, Parser, Subcommand};

use crate::cache::FeatureCache;
use crate::experiment::{self, Context};
use crate::log::Log;
use crate::run::{preflight, Datasets};
use crate::setup::{device, init_threads};
use crate::spec::sweep::Mode;
use crate::spec::Overrides;
use crate::{export, extract, report};

#[derive(Debug, Parser)]
#[command(
    name = "runner",
    version,
    about = "Declarative, cached transfer-learning experiments for image classification",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Spec files to run (`runner a.toml` is `runner run a.toml`).
    specs: Vec<PathBuf>,
    #[command(flatten)]
    changes: SpecChanges,
    #[command(flatten)]
    global: Global,
}

/// What the command line changes in the specs it runs.
#[derive(Debug, Args)]
struct SpecChanges {
    /// Set a spec key for this run: KEY=VALUE, the value in TOML
    /// (`head.lr=0.005`, `views='["original"]'`, `head.optimizer=adam`).
    /// Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Sweep a key over values: KEY=V1,V2,... (`head.dropout=0.3,0.5,0.7`,
    /// `seed=1,2,3`); added to the spec's [sweep]. Repeatable: several keys
    /// make a grid.
    #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
    sweep: Vec<String>,
    /// How swept keys combine: grid (every combination) or zip (the i-th
    /// values together) [default: the spec's sweep.mode, else grid]
    #[arg(long, value_enum, value_name = "MODE")]
    sweep_mode: Option<Mode>,
}

impl SpecChanges {
    fn overrides(&self) -> Overrides {
        Overrides {
            set: self.set.clone(),
            sweep: self.sweep.clone(),
            sweep_mode: self.sweep_mode,
        }
    }
}

#[derive(Debug, Args)]
struct Global {
    /// Folder holding run directories.
    #[arg(long, global = true, default_value = "runs")]
    runs: PathBuf,
    /// Feature cache folder [default: <runs>/.cache].
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N [default: the spec's `device`, else auto]
    #[arg(long, global = true, value_parser = parse_device)]
    device: Option<String>,
    /// Worker threads, 1 or more [default: all cores].
    #[arg(long, global = true, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    threads: Option<usize>,
    /// Plain log lines only: no progress bars or periodic progress lines.
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one or more specs, each into a new run directory (a sweep into
    /// one per member).
    Run {
        #[arg(required = true)]
        specs: Vec<PathBuf>,
        #[command(flatten)]
        changes: SpecChanges,
    },
    /// Run a run directory's saved spec again into a new run directory and
    /// say whether its tables came out identical.
    Rerun {
        #[arg(required = true, value_name = "RUN_DIR")]
        run_dirs: Vec<PathBuf>,
        #[command(flatten)]
        changes: SpecChanges,
    },
    /// Continue an unfinished (interrupted or failed) run in its own
    /// directory: every feature chunk it cached is reused.
    Resume {
        #[arg(required = true, value_name = "RUN_DIR")]
        run_dirs: Vec<PathBuf>,
    },
    /// Compare runs in one table: the scores and the parameters that
    /// differ between the listed runs.
    Report {
        #[arg(long, value_enum, default_value = "table")]
        format: report::Format,
        /// Show every parameter column, not only those that differ.
        #[arg(long)]
        all_columns: bool,
        /// Sort by a column (`-KEY`: descending) [default: oof_log_loss]
        #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
        sort: Option<String>,
        /// Keep runs where a column compares true: KEY=VALUE, KEY!=VALUE,
        /// KEY<VALUE, KEY<=VALUE, KEY>VALUE, KEY>=VALUE. Repeatable (all hold).
        #[arg(long = "where", value_name = "EXPR")]
        wheres: Vec<String>,
        /// Only the runs of one sweep (its id, or a prefix of it).
        #[arg(long = "sweep", value_name = "ID")]
        sweep_id: Option<String>,
        /// Only runs whose spec name matches a glob (`'ablations*'`).
        #[arg(long = "name", value_name = "GLOB")]
        name_glob: Option<String>,
        /// Only the N most recently started runs.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        /// One row per value of these columns, with each score's mean and
        /// standard deviation (`--group-by head.dropout`).
        #[arg(long, value_name = "KEY", value_delimiter = ',')]
        group_by: Vec<String>,
    },
    /// Two runs side by side: the parameters that differ, every score and
    /// its change.
    Diff {
        run_a: PathBuf,
        run_b: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: report::Format,
    },
    /// Compute (or fetch from the cache) a spec's features and write each
    /// backbone x view x split as float32 .npy with ids in CSV.
    Extract {
        spec: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Classify images with a finished run's model (its heads averaged
    /// over folds and views, as for its submission).
    Predict {
        run_dir: PathBuf,
        /// Image files, or folders of .jpg / .jpeg / .png files.
        #[arg(required = true, value_name = "IMAGE_OR_DIR")]
        images: Vec<PathBuf>,
        /// Also write every class's probability per image here (CSV, a
        /// submission's layout).
        #[arg(long, value_name = "FILE.csv")]
        out: Option<PathBuf>,
        /// How many classes to print per image.
        #[arg(long, default_value_t = 3, value_name = "K")]
        top: usize,
        #[arg(long, value_enum, default_value = "table")]
        format: crate::predict::Format,
    },
    /// Write a finished run's model as one ONNX graph: from resized images
    /// (backbones included) or from features to class probabilities.
    Export {
        run_dir: PathBuf,
        #[arg(long, value_name = "FILE.onnx")]
        out: PathBuf,
        /// What the graph takes: `image` (N, 3, S, S) RGB 0..255 resized
        /// as the run resized, or `features` (N, views, features).
        #[arg(long, value_enum, default_value = "image")]
        from: export::Source,
    },
    /// Blend finished runs that share data and folds: weights (and a
    /// temperature) fitted out of fold, scored by nested cross-validation,
    /// written as a run directory of its own.
    Ensemble {
        #[arg(required = true, num_args = 2.., value_name = "RUN_DIR")]
        run_dirs: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "weights")]
        method: crate::ensemble::Method,
        /// Calibrate the blend: `temperature` fits one temperature.
        #[arg(long, value_enum)]
        calibrate: Option<Calibrate>,
        /// Names the ensemble's run directory.
        #[arg(long, default_value = "ensemble")]
        name: String,
    },
    /// Check or clean the feature cache (--cache, default <runs>/.cache).
    Cache {
        #[command(subcommand)]
        action: CacheCommand,
    },
    /// Show what a weights file holds and what runner would run from it:
    /// format, architecture, tensors or graph nodes, input size, features.
    Inspect {
        weights: PathBuf,
        /// List every tensor / node.
        #[arg(long)]
        all: bool,
        /// ONNX: the value to take features from (the spec's `output`).
        #[arg(long)]
        output: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Calibrate {
    Temperature,
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Check every cached entry and chunk against its checksum; exits 1
    /// when any is corrupt.
    Verify {
        /// Remove the corrupt files (the next run recomputes them).
        #[arg(long)]
        remove_corrupt: bool,
    },
    /// Remove feature stages that no run under --runs (or --also-runs)
    /// reads and that nobody touched for N days; locks of dead processes
    /// and stale temporary files go too.
    Gc {
        /// Keep anything written or used in the last N days.
        #[arg(long, value_name = "N")]
        keep_days: u64,
        /// More run folders whose runs read this cache.
        #[arg(long, value_name = "DIR")]
        also_runs: Vec<PathBuf>,
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// A device name the command line may give (a usage error otherwise, before
/// anything runs).
fn parse_device(s: &str) -> Result<String, String> {
    if crate::spec::is_device_name(s) {
        Ok(s.to_string())
    } else {
        Err("not a device; allowed: auto, cpu, cuda, cuda:N".into())
    }
}

impl Global {
    fn cache(&self) -> FeatureCache {
        FeatureCache::new(
            self.cache
                .clone()
                .unwrap_or_else(|| self.runs.join(".cache")),
        )
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
            report(g, &selection, &options, format)
        }
        Some(Command::Diff {
            run_a,
            run_b,
            format,
        }) => {
            print!("{}", report::diff(&run_a, &run_b, format)?);
            Ok(())
        }
        Some(Command::Extract { spec, out }) => {
            g.init_threads(&log)?;
            let origin = spec.display().to_string();
            let checked = preflight(
                crate::spec::load(&spec)?,
                &origin,
                &mut Datasets::new(g.cache()),
            )?;
            let device = g.device(&checked.spec, &log)?;
            extract::extract(&checked.run(&g.cache(), &device, &log), &out)
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
                _ => g.cache(),
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
    let experiments = experiment::check_all(paths, &changes.overrides(), g.cache())?;
    note_dead_runs(g, log);
    let cache = g.cache();
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
    let cache = g.cache();
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
fn note_dead_runs(g: &Global, log: &Log) {
    crate::cache::remove_stale_temp_files(
        &g.cache().root().join("memo"),
        crate::cache::STALE_TEMP_AGE,
    );
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
    note_dead_runs(g, log);
    g.init_threads(log)?;
    let mut datasets = Datasets::new(g.cache());
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
    let cache = g.cache();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_global_options_are_usage_errors() {
        for args in [
            ["runner", "--device", "tpu", "a.toml"],
            ["runner", "--threads", "0", "a.toml"],
            ["runner", "--device", "cuda:x", "a.toml"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
        assert!(
            Cli::try_parse_from(["runner", "--device", "cuda:1", "--threads", "2", "a.toml"])
                .is_ok()
        );
    }

    #[test]
    fn a_folder_named_like_a_subcommand_is_a_value() {
        let cli = Cli::try_parse_from(["runner", "--cache", "cache", "a.toml"]).unwrap();
        assert_eq!(cli.global.cache, Some(PathBuf::from("cache")));
        assert_eq!(cli.specs, [PathBuf::from("a.toml")]);
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["runner", "--runs", "report", "report"]).unwrap();
        assert_eq!(cli.global.runs, PathBuf::from("report"));
        assert!(matches!(cli.command, Some(Command::Report { .. })));
    }
}
