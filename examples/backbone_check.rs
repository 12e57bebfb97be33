//! Parity and speed of the shared backbones on one device, for the GPU
//! check (`bench/gpu-check.sh`, issue 5); runs on the CPU too.
//!
//! `cargo run --release --example backbone_check -- MODELS_DIR [--device cpu|cuda|cuda:N]
//! [--precision f32|bf16|f16] [--batches 32,64,128] [--seconds 5]`
//!
//! For each of Xception, InceptionV3 and EfficientNet-Lite0: the features of
//! the 4 fixture images (`*.fixture.safetensors`) against the reference
//! framework's, as `max|ours - ref| / max|ref|` (pass: <= 1e-3 in f32 on a
//! GPU, 1e-4 on the CPU, 3e-2 in bf16 / f16), then images/s of the forward pass at each batch
//! size on a device-resident input. Prints a markdown table; exits 1 if a
//! backbone fails parity or cannot run on the device (the error is in the
//! table).

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use runner::models::{self, Arch, Backbone};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BACKBONES: [(Arch, &str); 3] = [
    (Arch::Xception, "xception_imagenet_notop"),
    (Arch::InceptionV3, "inception_v3_nsfwjs_notop"),
    (Arch::EfficientnetLite0, "efficientnet_lite0_imagenet"),
];

struct Args {
    models: PathBuf,
    device: String,
    dtype: DType,
    batches: Vec<usize>,
    seconds: f64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        models: PathBuf::new(),
        device: "cpu".into(),
        dtype: DType::F32,
        batches: vec![8, 32],
        seconds: 5.0,
    };
    let mut pos = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--device" => a.device = value("--device")?,
            "--precision" => {
                a.dtype = match value("--precision")?.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    p => return Err(format!("--precision {p}: f32, bf16 or f16")),
                }
            }
            "--batches" => {
                a.batches = value("--batches")?
                    .split(',')
                    .map(|b| b.trim().parse().map_err(|e| format!("--batches: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--seconds" => {
                a.seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
            _ => pos.push(arg),
        }
    }
    let [models] = <[String; 1]>::try_from(pos).map_err(|_| {
        "usage: backbone_check MODELS_DIR [--device cpu|cuda:N] [--batches 32,64] [--seconds 5]"
    })?;
    a.models = models.into();
    Ok(a)
}

fn device(name: &str) -> Result<Device, String> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| format!("cuda:0: {e}")),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::new_cuda(n).map_err(|e| format!("{other}: {e}")),
            _ => Err(format!("--device {other}: cpu, cuda or cuda:N")),
        },
    }
}

fn max_abs(t: &Tensor) -> candle_core::Result<f32> {
    t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
}

/// `max|ours - ref| / max|ref|` on the fixture images.
fn parity(
    dir: &Path,
    stem: &str,
    net: &dyn Backbone,
    dev: &Device,
    dtype: DType,
) -> Result<f32, String> {
    let fx = candle_core::safetensors::load(
        dir.join(format!("{stem}.fixture.safetensors")),
        &Device::Cpu,
    )
    .map_err(|e| format!("fixture: {e}"))?;
    let run = || -> candle_core::Result<f32> {
        let x = fx["input_nhwc"]
            .permute((0, 3, 1, 2))?
            .contiguous()?
            .to_device(dev)?
            .to_dtype(dtype)?;
        let ours = net
            .forward_features(&x)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let want = &fx["features"];
        Ok(max_abs(&(ours - want)?)? / max_abs(want)?)
    };
    run().map_err(|e| format!("{e}"))
}

fn rate(
    net: &dyn Backbone,
    size: usize,
    dev: &Device,
    dtype: DType,
    batch: usize,
    seconds: f64,
) -> Result<f64, String> {
    let x = Tensor::randn(0f32, 1.0, (batch, 3, size, size), dev)
        .and_then(|x| x.to_dtype(dtype))
        .map_err(|e| e.to_string())?;
    let pass = || -> candle_core::Result<()> {
        // Copying the features back waits for the device to finish.
        net.forward_features(&x)?.to_device(&Device::Cpu)?;
        Ok(())
    };
    pass().map_err(|e| e.to_string())?;
    let (mut n, start) = (0usize, Instant::now());
    while start.elapsed().as_secs_f64() < seconds {
        pass().map_err(|e| e.to_string())?;
        n += batch;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    runner::alloc::keep_freed_memory();
    let dev = match device(&a.device) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("backbone_check: {e}");
            std::process::exit(1);
        }
    };
    let tol = match (a.dtype, dev.is_cpu()) {
        (DType::F32, true) => 1e-4,
        (DType::F32, false) => 1e-3,
        _ => 3e-2,
    };
    let mut failed = false;
    let head: Vec<String> = a
        .batches
        .iter()
        .map(|b| format!("images/s @ {b}"))
        .collect();
    println!(
        "| backbone | device | parity (max rel err, {:?}) | {} |",
        a.dtype,
        head.join(" | ")
    );
    println!("|---|---|---|{}", "---|".repeat(a.batches.len()));
    for (arch, stem) in BACKBONES {
        // Loaded once for the parity check and every batch size.
        let net = models::load(arch, &a.models.join(format!("{stem}.safetensors")), &dev)
            .map_err(|e| e.to_string());
        let checked = net
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|net| parity(&a.models, stem, net.as_ref(), &dev, a.dtype));
        let p = match checked {
            Ok(e) if e <= tol => format!("{e:.2e} ok"),
            Ok(e) => {
                failed = true;
                format!("{e:.2e} FAIL (> {tol:.0e})")
            }
            Err(e) => {
                failed = true;
                // First line only: candle appends a backtrace when enabled.
                let first = e.lines().next().unwrap_or_default().replace('|', "/");
                format!("error: {first}")
            }
        };
        let size = arch.pretrained_cfg().map_or(224, |c| c.input_size);
        let rates: Vec<String> = a
            .batches
            .iter()
            .map(|&b| match &net {
                Ok(net) => match rate(net.as_ref(), size, &dev, a.dtype, b, a.seconds) {
                    Ok(r) => format!("{r:.1}"),
                    Err(_) => "-".into(),
                },
                Err(_) => "-".into(),
            })
            .collect();
        println!(
            "| {} | {} | {p} | {} |",
            arch.name(),
            a.device,
            rates.join(" | ")
        );
    }
    if failed {
        std::process::exit(1);
    }
}
