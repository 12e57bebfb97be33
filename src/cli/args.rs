//! The command line's grammar: clap's commands, arguments and their
//! checks (a bad value is a usage error before anything runs).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::spec::sweep::Mode;
use crate::spec::Overrides;
use crate::{export, report};

#[derive(Debug, Parser)]
#[command(
    name = "runner",
    version,
    about = "Declarative, cached transfer-learning experiments for image classification",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub(super) command: Option<Command>,
    /// Spec files to run (`runner a.toml` is `runner run a.toml`).
    pub(super) specs: Vec<PathBuf>,
    #[command(flatten)]
    pub(super) changes: SpecChanges,
    #[command(flatten)]
    pub(super) global: Global,
}

/// What the command line changes in the specs it runs.
#[derive(Debug, Args)]
pub(super) struct SpecChanges {
    /// Set a spec key for this run: KEY=VALUE, the value in TOML
    /// (`head.lr=0.005`, `views='["original"]'`, `head.optimizer=adam`).
    /// Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub(super) set: Vec<String>,
    /// Sweep a key over values: KEY=V1,V2,... (`head.dropout=0.3,0.5,0.7`,
    /// `seed=1,2,3`); added to the spec's [sweep]. Repeatable: several keys
    /// make a grid.
    #[arg(long = "sweep", value_name = "KEY=V1,V2,...")]
    pub(super) sweep: Vec<String>,
    /// How swept keys combine: grid (every combination) or zip (the i-th
    /// values together) [default: the spec's sweep.mode, else grid]
    #[arg(long, value_enum, value_name = "MODE")]
    pub(super) sweep_mode: Option<Mode>,
}

impl SpecChanges {
    pub(super) fn overrides(&self) -> Overrides {
        Overrides {
            set: self.set.clone(),
            sweep: self.sweep.clone(),
            sweep_mode: self.sweep_mode,
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct Global {
    /// Folder holding run directories.
    #[arg(long, global = true, default_value = "runs")]
    pub(super) runs: PathBuf,
    /// Feature cache: a folder, or s3://BUCKET/PREFIX in any S3-compatible
    /// store (credentials and AWS_ENDPOINT_URL from the environment or
    /// ~/.aws; a local copy is kept under <runs>/.cache-s3) [default:
    /// <runs>/.cache].
    #[arg(long, global = true, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub(super) cache: Option<PathBuf>,
    /// auto | cpu | cuda | cuda:N [default: the spec's `device`, else auto]
    #[arg(long, global = true, value_parser = parse_device)]
    pub(super) device: Option<String>,
    /// Worker threads, 1 or more [default: all cores].
    #[arg(long, global = true, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub(super) threads: Option<usize>,
    /// Plain log lines only: no progress bars or periodic progress lines.
    #[arg(long, short, global = true)]
    pub(super) quiet: bool,
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
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
        /// Write the selected runs as one self-contained HTML page with
        /// plots [default FILE: <runs>/report.html], linking each run's
        /// own report.html.
        #[arg(long, value_name = "FILE")]
        html: Option<Option<PathBuf>>,
    },
    /// Two runs side by side: the parameters that differ, every score and
    /// its change.
    Diff {
        run_a: PathBuf,
        run_b: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: report::Format,
    },
    /// Compute a spec's features into the cache (or one shard's share of
    /// them, on many machines at once); with --out, also write each
    /// backbone x view x split as float32 .npy with ids in CSV.
    Extract {
        spec: PathBuf,
        #[arg(long, conflicts_with = "shard")]
        out: Option<PathBuf>,
        /// Compute only shard I of N (0-based) of every stage's chunks
        /// [default: RUNNER_SHARD=I/N, a Slurm array task
        /// (SLURM_ARRAY_TASK_ID/COUNT) or a Kubernetes Indexed Job
        /// (JOB_COMPLETION_INDEX with RUNNER_SHARD_COUNT), where set].
        #[arg(long, value_name = "I/N")]
        shard: Option<crate::shard::Shard>,
        /// Compute everything, even where the environment names a shard.
        #[arg(long, conflicts_with = "shard")]
        all: bool,
        /// Compute nothing: say which stages the cache holds, finished or
        /// in chunks (and leave the image hashes in the cache's memo, for
        /// shards started next).
        #[arg(long, conflicts_with_all = ["shard", "out"])]
        status: bool,
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
pub(super) enum Calibrate {
    Temperature,
}

#[derive(Debug, Subcommand)]
pub(super) enum CacheCommand {
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
