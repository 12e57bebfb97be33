//! `runner-dev`: the developer checks `tools/gpu/gpu-check.sh` runs besides
//! the recipe, kept out of the user's `runner`: backbone parity and speed on
//! a device, and a Kaggle-sized dataset from the woof-dev photos.

use std::path::PathBuf;

use anyhow::bail;
use candle_core::DType;
use clap::{Parser, Subcommand};

use runner::log::Log;
use runner::{devcheck, setup};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "runner-dev",
    version,
    about = "Developer checks of runner (not for users)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, global = true, default_value = "auto")]
    device: String,
    /// Worker threads [default: all cores].
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parity with the fixtures and images/s of the shared backbones.
    Backbones {
        /// Folder with the shared models and their fixtures.
        models: PathBuf,
        /// f32, bf16 or f16.
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

fn run(cli: Cli) -> anyhow::Result<()> {
    setup::init_threads(cli.threads)?;
    match cli.command {
        Command::Backbones {
            models,
            precision,
            batches,
            seconds,
        } => {
            let device = setup::device(&cli.device, &Log::new(false))?;
            let dtype = match precision.as_str() {
                "f32" => DType::F32,
                "bf16" => DType::BF16,
                "f16" => DType::F16,
                p => bail!("--precision {p}: f32, bf16 or f16"),
            };
            if !devcheck::backbones(&models, &device, &cli.device, dtype, &batches, seconds) {
                bail!("a backbone failed its parity check or could not run (see the table)");
            }
            Ok(())
        }
        Command::BigWoof {
            woof_dev,
            out,
            train,
            test,
        } => devcheck::big_woof(&woof_dev, &out, train, test).map_err(anyhow::Error::msg),
    }
}

fn main() {
    runner::alloc::keep_freed_memory();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
