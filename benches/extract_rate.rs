//! Images per second of one backbone's forward pass in `runner`, on real
//! images: the runner side of `tools/compare/side_by_side.py`, which runs this and
//! onnxruntime alternately on the same images and prints the ratios.
//!
//! `cargo bench --bench extract_rate -- ARCH WEIGHTS IMAGES_DIR [--batch 8]
//! [--seconds 10] [--threads 2]`; ARCH `onnx` also takes `--input-size N`
//! `--preprocess P`, `--output NAME` and `--pool cls|mean|cls+mean` as the
//! spec's keys.
//!
//! The first `batch` JPEGs of `IMAGES_DIR` (sorted by name) are decoded and
//! resized (Pillow BOX, as `runner` does by default) once, untimed; then one
//! warm-up pass and as many timed passes as fit in `--seconds`. Prints one
//! JSON line (and with `RUNNER_PROFILE=1` the per-op table on stderr).

use std::alloc::{GlobalAlloc, Layout};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use runner::data::image::{decode_rgb, resize};
use runner::features::input_tensor;
use runner::spec::{BackboneSpec, View};
use runner_models::{self as models, profile, registry, Arch, Preprocess};

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

/// mimalloc, counting the bytes allocated and not yet freed: the peak of
/// that count (`peak_live_mb`) is what the activations need, to set against
/// the process's resident memory (what the allocator keeps on top).
struct LiveBytes;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to mimalloc with the same arguments; the
// counters only observe sizes.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = mimalloc::MiMalloc.alloc(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        mimalloc::MiMalloc.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = mimalloc::MiMalloc.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            let now = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

struct Args {
    arch: Arch,
    images: PathBuf,
    batch: usize,
    seconds: f64,
    threads: usize,
    backbone: BackboneSpec,
}

fn parse() -> Result<Args, String> {
    // `cargo bench` adds `--bench`; every other `--name` takes a value.
    let mut pos = Vec::new();
    let (mut batch, mut seconds, mut threads) = (8usize, 10f64, 2usize);
    let (mut input_size, mut preprocess, mut output, mut pool) = (None, None, None, None);
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--batch" => {
                batch = value("--batch")?
                    .parse()
                    .map_err(|e| format!("--batch: {e}"))?
            }
            "--seconds" => {
                seconds = value("--seconds")?
                    .parse()
                    .map_err(|e| format!("--seconds: {e}"))?
            }
            "--threads" => {
                threads = value("--threads")?
                    .parse()
                    .map_err(|e| format!("--threads: {e}"))?
            }
            "--input-size" => {
                input_size = Some(
                    value("--input-size")?
                        .parse()
                        .map_err(|e| format!("--input-size: {e}"))?,
                )
            }
            "--preprocess" => {
                let v = value("--preprocess")?;
                preprocess = Some(
                    serde_json::from_value::<Preprocess>(serde_json::Value::String(v.clone()))
                        .map_err(|_| {
                            format!("--preprocess {v}: inception | efficientnet_lite | imagenet")
                        })?,
                )
            }
            "--output" => output = Some(value("--output")?),
            "--pool" => {
                let v = value("--pool")?;
                pool = Some(
                    serde_json::from_value(serde_json::Value::String(v.clone()))
                        .map_err(|_| format!("--pool {v}: cls | mean | cls+mean"))?,
                )
            }
            _ if a.starts_with("--") => return Err(format!("unknown option {a}")),
            _ => pos.push(a),
        }
    }
    let [arch, weights, images] = <[String; 3]>::try_from(pos).map_err(|_| {
        "usage: extract_rate ARCH WEIGHTS IMAGES_DIR [--batch N] [--seconds S] [--threads T]"
    })?;
    let Some(arch) = Arch::from_name(&arch) else {
        let known: Vec<&str> = registry::all().map(|e| e.name).collect();
        return Err(format!(
            "unknown arch {arch}; registered: {}",
            known.join(", ")
        ));
    };
    let (size, pre) = match arch.pretrained_cfg() {
        Some(cfg) => (cfg.input_size, cfg.preprocess),
        None => (
            input_size.ok_or("onnx needs --input-size")?,
            preprocess.ok_or("onnx needs --preprocess")?,
        ),
    };
    let backbone = BackboneSpec {
        arch,
        weights: weights.clone().into(),
        input_size: input_size.unwrap_or(size),
        preprocess: preprocess.unwrap_or(pre),
        resize: models::Resize::Box,
        output,
        input_layout: None,
        pool,
        prefix_tokens: pool.map(|_| 1),
        crop_pct: None,
    };
    Ok(Args {
        arch,
        backbone,
        images: images.into(),
        batch: batch.max(1),
        seconds,
        threads: threads.max(1),
    })
}

/// The first `n` JPEGs of `dir`, decoded, resized and preprocessed as NCHW
/// exactly as `runner` feeds them (`features::input_tensor`).
fn input(dir: &Path, n: usize, a: &Args) -> Result<Tensor, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    files.sort();
    if files.len() < n {
        return Err(format!(
            "{}: {} JPEGs, need {n}",
            dir.display(),
            files.len()
        ));
    }
    let backbone = &a.backbone;
    let s = backbone.input_size;
    let images = files[..n]
        .iter()
        .map(|path| {
            decode_rgb(path)
                .map(|img| resize(&img, s, s, backbone.resize))
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<_> = images.iter().collect();
    input_tensor(&refs, backbone, View::Original, &Device::Cpu).map_err(|e| e.to_string())
}

fn run(a: &Args) -> Result<f64, String> {
    let x = input(&a.images, a.batch, a)?;
    let model = models::create(&a.backbone, &Device::Cpu).map_err(|e| e.to_string())?;
    model.forward_features(&x).map_err(|e| e.to_string())?;
    profile::take();
    let (mut n, start) = (0usize, Instant::now());
    while start.elapsed().as_secs_f64() < a.seconds {
        model.forward_features(&x).map_err(|e| e.to_string())?;
        n += 1;
    }
    let ips = (n * a.batch) as f64 / start.elapsed().as_secs_f64();
    if profile::enabled() {
        eprintln!("{}", profile::table(&profile::take()));
    }
    Ok(ips)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    runner::alloc::keep_freed_memory();
    // As `runner --threads N`: one rayon pool, candle's own pool at 1.
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
    {
        eprintln!("cannot start the thread pool: {e}");
        std::process::exit(1);
    }
    match run(&args) {
        Ok(ips) => println!(
            "{{\"runtime\": \"runner {}\", \"model\": \"{}\", \"batch\": {}, \"threads\": {}, \"images_per_s\": {ips:.3}, \"peak_live_mb\": {:.0}}}",
            env!("CARGO_PKG_VERSION"),
            args.arch.name(),
            args.batch,
            args.threads,
            PEAK.load(Ordering::Relaxed) as f64 / 1e6
        ),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
