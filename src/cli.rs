//! Command line: `runner SPEC.toml`, `runner run`, `runner report`,
//! `runner extract`, `runner inspect` (and the hidden `runner dev` checks). Glue only: parse, set up threads and device, call
//! `pipeline` / `report` / `features`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};

use crate::cache::FeatureCache;
use crate::data::Dataset;
use crate::log::Log;
use crate::pipeline::csv_field;
use crate::plan::{Plan, Split};
use crate::{features, npy, pipeline, report, spec};

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
    /// Developer checks that `tools/gpu/gpu-check.sh` runs (not for users).
    #[command(hide = true, subcommand)]
    Dev(DevCommand),
}

#[derive(Debug, Subcommand)]
enum DevCommand {
    /// Parity with the fixtures and images/s of the shared backbones.
    Backbones {
        /// Folder with the shared models and their fixtures.
        models: PathBuf,
        #[arg(long, default_value = "f32")]
        precision: String,
        /// Batch sizes to time, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "8,32")]
        batches: Vec<usize>,
        /// Seconds of timing per batch size.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// A Kaggle-sized dataset from the woof-dev photos.
    BigWoof {
        woof_dev: PathBuf,
        out: PathBuf,
        #[arg(long, default_value_t = 10_222)]
        train: usize,
        #[arg(long, default_value_t = 10_357)]
        test: usize,
    },
}

/// Picks the compute device: `auto` is CUDA when built with it and a GPU is
/// present, the CPU otherwise.
pub fn device(choice: &str, log: &Log) -> anyhow::Result<Device> {
    let cuda_index = match choice {
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
                    log.info("device: cuda:0 (auto)");
                    return Ok(d);
                }
            }
            log.info("device: cpu (auto)");
            return Ok(Device::Cpu);
        }
        "cpu" => {
            log.info("device: cpu");
            return Ok(Device::Cpu);
        }
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("--device {other:?} is not a device; allowed: auto, cpu, cuda, cuda:N"),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        bail!("device cuda:{cuda_index}: this build of runner has no CUDA support; build it with `--features cuda` (tools/gpu/cuda-toolchain.sh installs the toolkit) or use --device cpu (or auto)");
    }
    let d =
        Device::new_cuda(cuda_index).with_context(|| format!("cannot open cuda:{cuda_index}"))?;
    log.info(format!("device: cuda:{cuda_index}"));
    Ok(d)
}

/// `--device` if given, else the spec's `device`, else `auto`.
fn device_choice(g: &Global, spec_device: Option<&str>) -> String {
    g.device
        .clone()
        .or_else(|| spec_device.map(str::to_string))
        .unwrap_or_else(|| "auto".into())
}

/// Sets up the thread pools before anything touches rayon or candle: one
/// rayon pool of `threads` workers, and candle's separate elementwise pool
/// kept at one thread so the two never spin against each other (DESIGN.md).
fn init_threads(threads: Option<usize>) -> anyhow::Result<usize> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = threads
        .or_else(|| {
            std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or(cores)
        .max(1);
    // The work is CPU-bound: far more threads than cores only costs memory
    // and start-up time (5,000 took over 30 s to start doing anything).
    let most = (4 * cores).max(64);
    if n > most {
        bail!("--threads {n} (or RAYON_NUM_THREADS) is far more than the {cores} cores here: use at most {most}");
    }
    // SAFETY: main thread, before any other thread exists.
    unsafe_set_env("RAYON_NUM_THREADS", &n.to_string());
    unsafe_set_env("CANDLE_NUM_THREADS", "1");
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .context("cannot start the thread pool")?;
    Ok(n)
}

fn unsafe_set_env(key: &str, value: &str) {
    std::env::set_var(key, value);
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    let log = Log::new(g.quiet);
    let cache_dir = g.cache.clone().unwrap_or_else(|| g.runs.join(".cache"));
    let cache = FeatureCache::new(cache_dir);
    match cli.command {
        Some(Command::Report { format }) => {
            if g.runs.exists() && !g.runs.is_dir() {
                bail!(
                    "--runs {} is a file, not a folder of runs",
                    g.runs.display()
                );
            }
            let (mut df, warnings) = report::load(&g.runs)?;
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            if df.height() == 0 {
                let why = if g.runs.exists() {
                    ""
                } else {
                    " (no such folder; pass --runs DIR)"
                };
                eprintln!("no runs under {}{why}", g.runs.display());
            }
            print!("{}", report::render(&mut df, format)?);
            Ok(())
        }
        Some(Command::Extract { spec, out }) => {
            let threads = init_threads(g.threads)?;
            log.info(format!(
                "threads: {threads}, GEMM kernel: {}",
                runner_kernels::best().name
            ));
            let spec_device = spec::load(&spec).ok().and_then(|s| s.device);
            let device = device(&device_choice(g, spec_device.as_deref()), &log)?;
            extract(&spec, &out, &cache, &device, &log)
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
        Some(Command::Dev(dev)) => {
            init_threads(g.threads)?;
            run_dev(dev, g, &log)
        }
        Some(Command::Run { specs }) => run_specs(&specs, g, &cache, &log),
        None => run_specs(&cli.specs, g, &cache, &log),
    }
}

fn run_dev(command: DevCommand, g: &Global, log: &Log) -> anyhow::Result<()> {
    match command {
        DevCommand::Backbones {
            models,
            precision,
            batches,
            seconds,
        } => {
            let choice = device_choice(g, None);
            let device = device(&choice, log)?;
            let dtype = match precision.as_str() {
                "f32" => candle_core::DType::F32,
                "bf16" => candle_core::DType::BF16,
                "f16" => candle_core::DType::F16,
                p => bail!("--precision {p}: f32, bf16 or f16"),
            };
            if !crate::devcheck::backbones(&models, &device, &choice, dtype, &batches, seconds) {
                bail!("a backbone failed its parity check or could not run (see the table)");
            }
            Ok(())
        }
        DevCommand::BigWoof {
            woof_dev,
            out,
            train,
            test,
        } => crate::devcheck::big_woof(&woof_dev, &out, train, test).map_err(anyhow::Error::msg),
    }
}

fn run_specs(paths: &[PathBuf], g: &Global, cache: &FeatureCache, log: &Log) -> anyhow::Result<()> {
    // Check every spec before running any, so a typo in the third spec does
    // not surface after an hour of the first.
    if paths.is_empty() {
        bail!("no spec given; usage: runner SPEC.toml [SPEC.toml ...] (see --help)");
    }
    let specs = paths
        .iter()
        .map(|p| preflight(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let threads = init_threads(g.threads)?;
    log.info(format!(
        "threads: {threads}, GEMM kernel: {}",
        runner_kernels::best().name
    ));
    let mut failed = Vec::new();
    for (path, spec) in paths.iter().zip(&specs) {
        log.info(format!("spec {}", path.display()));
        // A spec that cannot run on its device fails before its run
        // directory exists.
        let device = match device(&device_choice(g, spec.device.as_deref()), log).and_then(|d| {
            features::check_precision(spec, &d)?;
            Ok(d)
        }) {
            Ok(d) => d,
            Err(e) => {
                failed.push(format!("{}: {e:#}", path.display()));
                continue;
            }
        };
        match pipeline::run(spec, &g.runs, cache, &device, log) {
            Ok(outcome) => log.info(format!("wrote {}", outcome.dir.display())),
            Err(e) => failed.push(format!("{}: {e:#}", path.display())),
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} spec(s) failed:\n{}",
            failed.len(),
            specs.len(),
            failed.join("\n")
        );
    }
    Ok(())
}

/// Loads a spec and checks what can fail cheaply (weights present, every
/// listed image present, labels valid) before any work starts.
fn preflight(path: &Path) -> anyhow::Result<spec::Spec> {
    let spec = spec::load(path)?;
    for (i, b) in spec.backbones.iter().enumerate() {
        if !b.weights.is_file() {
            bail!(
                "{}: backbone[{i}].weights = {} does not exist; point it at a weights file (see models/README.md)",
                path.display(),
                b.weights.display()
            );
        }
        if b.arch == runner_models::Arch::ONNX {
            // Parse and lower the graph now: an unsupported op or a missing
            // output is reported before any image is read.
            let model = runner_models::onnx::read_model(&b.weights)?;
            runner_models::onnx::Program::lower(
                &model,
                b.output.as_deref(),
                &b.weights.display().to_string(),
            )
            .with_context(|| format!("{}: backbone[{i}]", path.display()))?;
        }
    }
    let data = &spec.data;
    for (key, given) in [
        ("labels", data.labels.as_ref()),
        ("train_dir", Some(&data.train_dir)),
    ] {
        if let Some(p) = given.filter(|p| !p.exists()) {
            bail!(
                "{}: [data] {key} = {} does not exist; set data.root to the folder holding labels.csv, train/ and test/ (or data.{key} itself); relative paths are relative to the spec file",
                path.display(),
                p.display()
            );
        }
    }
    Dataset::load(data).with_context(|| format!("{}: [data]", path.display()))?;
    Ok(spec)
}

fn extract(
    spec_path: &Path,
    out: &Path,
    cache: &FeatureCache,
    device: &Device,
    log: &Log,
) -> anyhow::Result<()> {
    let spec = preflight(spec_path)?;
    let data = Dataset::load(&spec.data)?;
    let plan = Plan::new(&spec, &data, Some(cache))?;
    let feats = features::ensure(&spec, &data, &plan, cache, device, log)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (split, items) in [(Split::Train, &data.train), (Split::Test, &data.test)] {
        if items.is_empty() {
            continue;
        }
        let mut ids = String::from(if split == Split::Train {
            "id,label\n"
        } else {
            "id\n"
        });
        for (i, item) in items.iter().enumerate() {
            ids.push_str(&csv_field(&item.id));
            if split == Split::Train {
                ids.push(',');
                ids.push_str(&csv_field(&data.classes[data.labels[i]]));
            }
            ids.push('\n');
        }
        crate::cache::write_atomic(
            &out.join(format!("{}_ids.csv", split.name())),
            ids.as_bytes(),
        )?;
        for (b, bb) in spec.backbones.iter().enumerate() {
            let arch = bb.arch.name();
            let dup = spec.backbones.iter().filter(|o| o.arch == bb.arch).count() > 1;
            let stem = if dup {
                format!("{arch}_{b}")
            } else {
                arch.to_string()
            };
            for &view in &spec.views {
                let path = out.join(format!("{}_{stem}_{}.npy", split.name(), view.name()));
                npy::write(&path, feats.get(plan.stage(b, view, split)))?;
                log.info(format!("wrote {}", path.display()));
            }
        }
    }
    Ok(())
}
