//! With the `cuda` feature: compiles `src/cuda/ops.cu` to PTX
//! (`$OUT_DIR/ops.ptx`, embedded by `src/cuda/mod.rs`). Without it,
//! nothing: CPU builds need no CUDA toolkit.
//!
//! nvcc is `$NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on the PATH
//! (tools/gpu/cuda-toolchain.sh sets up all three on machines without CUDA).
//! The PTX targets `compute_$CUDA_COMPUTE_CAP` like candle's own kernels
//! (tools/gpu/cuda-toolchain.sh sets 90: H100/H200, native bf16 conversions),
//! else compute_75, the oldest architecture CUDA 13 supports; the driver
//! JIT-compiles it for the GPU at hand. PTX from nvcc 13.0 is ISA 9.0,
//! which needs a CUDA 13.0 driver (580) or newer: a newer toolkit makes PTX
//! an older driver refuses, hence the 13.0 pin in the toolchain script.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cuda/ops.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var_os("NVCC")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CUDA_HOME")
                .map(|home| PathBuf::from(home).join("bin/nvcc"))
                .filter(|p| p.exists())
        })
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let out =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("ops.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|c| c.trim().parse::<u32>().ok())
        .filter(|&c| c >= 75)
        .unwrap_or(75);
    let arch = format!("-arch=compute_{cap}");
    let status = Command::new(&nvcc)
        .args(["--ptx", &arch, "-O3", "src/cuda/ops.cu", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} to compile src/cuda/ops.cu ({e}); set NVCC or CUDA_HOME, \
                 or run tools/gpu/cuda-toolchain.sh (see its header)",
                nvcc.display()
            )
        });
    assert!(
        status.success(),
        "{} failed on src/cuda/ops.cu",
        nvcc.display()
    );
}
