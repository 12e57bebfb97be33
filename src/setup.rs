//! Process setup shared by the `runner` and `runner-dev` binaries: the
//! thread pools and the compute device.

use anyhow::{bail, Context};
use candle_core::Device;

use crate::log::Log;

/// Sets up the thread pools before anything touches rayon or candle: one
/// rayon pool of `threads` workers (default: `RAYON_NUM_THREADS`, else
/// every core), and candle's separate elementwise pool kept at one thread so
/// the two never spin against each other. Returns the worker count.
pub fn init_threads(threads: Option<usize>) -> anyhow::Result<usize> {
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
    // The main thread, before any other thread exists: nothing reads the
    // environment concurrently.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .context("cannot start the thread pool")?;
    Ok(n)
}

/// Picks the compute device from `auto | cpu | cuda | cuda:N`: `auto` is
/// CUDA when built with it and a GPU is present, the CPU otherwise.
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
