//! Command line: `runner SPEC.toml`, `runner run`, `runner report`,
//! `runner extract`, `runner inspect`. Glue only: parse, set up threads and
//! device, dispatch to `pipeline` / `report` / `export` / `inspect`.

use std::path::PathBuf;

use anyhow::bail;
use candle_core::Device;
use clap::{Args, Parser, Subcommand};

use crate::cache::FeatureCache;
use crate::log::Log;
use crate::run::{preflight, Checked};
use crate::setup::{device, init_threads};
use crate::{export, features, pipeline, report};

#[derive(Debug, Parser)]
#[command(
    name = "runner",
    version,
    about = "Declarative, cached transfer-learning experiments for image classification",
    subcommand_precedence_over_arg = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Spec files to run (`runner a.toml` is `runner run a.toml`).
    specs: Vec<PathBuf>,
    #[command(flatten)]
    global: Global,
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
    #[arg(long, global = true)]
    device: Option<String>,
    /// Worker threads [default: all cores].
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Plain log lines only: no progress bars or periodic progress lines.
    #[arg(long, short, global = true)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one or more specs, each into a new run directory.
    Run {
        #[arg(required = true)]
        specs: Vec<PathBuf>,
    },
    /// Compare every run in one table.
    Report {
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

impl Global {
    fn cache(&self) -> FeatureCache {
        FeatureCache::new(
            self.cache
                .clone()
                .unwrap_or_else(|| self.runs.join(".cache")),
        )
    }

    /// The device `--device` names, else the spec's `device`, else `auto`.
    fn device(&self, checked: &Checked, log: &Log) -> anyhow::Result<Device> {
        let choice = self.device.as_deref().or(checked.spec.device.as_deref());
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
        Some(Command::Report { format }) => report(g, format),
        Some(Command::Extract { spec, out }) => {
            g.init_threads(&log)?;
            let checked = preflight(&spec)?;
            let device = g.device(&checked, &log)?;
            export::extract(&checked.run(&g.cache(), &device, &log), &out)
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
        Some(Command::Run { specs }) => run_specs(&specs, g, &log),
        None => run_specs(&cli.specs, g, &log),
    }
}

fn report(g: &Global, format: report::Format) -> anyhow::Result<()> {
    if g.runs.exists() && !g.runs.is_dir() {
        bail!(
            "--runs {} is a file, not a folder of runs",
            g.runs.display()
        );
    }
    let (report, warnings) = report::load(&g.runs)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if report.is_empty() {
        let why = if g.runs.exists() {
            ""
        } else {
            " (no such folder; pass --runs DIR)"
        };
        eprintln!("no runs under {}{why}", g.runs.display());
    }
    print!("{}", report.render(format)?);
    Ok(())
}

/// Checks every spec before running any, so a typo in the third spec does
/// not surface after an hour of the first; then runs each, going on past
/// failures, and fails naming every spec that did.
fn run_specs(paths: &[PathBuf], g: &Global, log: &Log) -> anyhow::Result<()> {
    if paths.is_empty() {
        bail!("no spec given; usage: runner SPEC.toml [SPEC.toml ...] (see --help)");
    }
    let checked = paths
        .iter()
        .map(|p| preflight(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    g.init_threads(log)?;
    let cache = g.cache();
    let mut failed = Vec::new();
    for (path, checked) in paths.iter().zip(&checked) {
        log.info(format!("spec {}", path.display()));
        // A spec that cannot run on its device fails before its run
        // directory exists.
        let device = match g.device(checked, log).and_then(|d| {
            features::check_precision(&checked.spec, &d)?;
            Ok(d)
        }) {
            Ok(d) => d,
            Err(e) => {
                failed.push(format!("{}: {e:#}", path.display()));
                continue;
            }
        };
        match pipeline::run(&checked.run(&cache, &device, log), &g.runs) {
            Ok(outcome) => log.info(format!("wrote {}", outcome.dir.display())),
            Err(e) => failed.push(format!("{}: {e:#}", path.display())),
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} spec(s) failed:\n{}",
            failed.len(),
            checked.len(),
            failed.join("\n")
        );
    }
    Ok(())
}
