//! Side-by-side timings of the dense-convolution GEMM and of whole backbones,
//! in one process so that both sides see the same machine load.
//!
//! `cargo bench --bench backbones [-- peak|gemm|backbones [ARCH]...]`:
//! - `gemm`: the convolution GEMM on real conv shapes of our three backbones,
//!   against candle's `Tensor::matmul`, alternating the two, in GFLOP/s;
//! - `backbones`: seconds per image at batch 8 of every registered
//!   architecture with a checkpoint in `../shared/models` (found by its
//!   tensor names; ARCH arguments select some).
//!
//! `RUNNER_PROFILE=1` adds each backbone's per-op table (time share,
//! GFLOP/s).
//!
//! Threads as the CLI sets them: one global rayon pool (`RAYON_NUM_THREADS`,
//! default all cores) and candle's elementwise pool pinned to 1 thread.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use runner_kernels::{self as kernels, DenseB, MatRef, Output, PackedA};
use runner_models::{self as models, profile, registry, Arch, BackboneSpec};

// As in the binary: mimalloc reuses freed buffers instead of re-faulting them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    runner::alloc::keep_freed_memory();
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // Before any thread exists (edition 2021: set_var is safe here).
    std::env::set_var("CANDLE_NUM_THREADS", "1");
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
    {
        eprintln!("cannot start the thread pool: {e}");
        return;
    }
    // `cargo bench` passes `--bench`; `peak`, `gemm` and `backbones` select
    // parts (default: all), backbone names select backbones.
    const PARTS: [&str; 5] = ["peak", "gemm", "backbones", "tune", "window"];
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| PARTS.contains(&a.as_str()))
        .collect();
    let want =
        |p: &str| parts.is_empty() && p != "tune" && p != "window" || parts.iter().any(|a| a == p);
    println!("threads: {threads}, kernel: {}", kernels::best().name);
    if want("peak") {
        peak();
    }
    if want("gemm") {
        gemm();
    }
    if want("tune") {
        tune();
    }
    if want("window") {
        window();
    }
    if want("backbones") {
        backbones();
    }
}

use runner_kernels::rng::uniform_vec as rand_vec;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Real convolution GEMMs: `m` = Cout, `n` = OH*OW, `k` = Cin*kh*kw.
#[rustfmt::skip]
const GEMM_SHAPES: &[(&str, usize, usize, usize)] = &[
    ("xception entry 3x3 32->64 @147", 64, 147 * 147, 32 * 9),
    ("xception middle 1x1 728->728 @19", 728, 19 * 19, 728),
    ("xception exit 1x1 1024->1536 @10", 1536, 10 * 10, 1024),
    ("inception 3x3 32->64 @147", 64, 147 * 147, 32 * 9),
    ("inception 1x7 192->192 @17", 192, 17 * 17, 192 * 7),
    ("inception 7x1 128->128 @17", 128, 17 * 17, 128 * 7),
    ("inception 1x1 768->192 @17", 192, 17 * 17, 768),
    ("inception 3x3 384->384 @8 (1x3)", 384, 8 * 8, 384 * 3),
    ("effnet 1x1 32->16 @112", 16, 112 * 112, 32),
    ("effnet 1x1 16->96 @112", 96, 112 * 112, 16),
    ("effnet 1x1 144->24 @56", 24, 56 * 56, 144),
    ("effnet 1x1 24->144 @56", 144, 56 * 56, 24),
    ("effnet 1x1 40->240 @28", 240, 28 * 28, 40),
    ("effnet 1x1 320->1280 @7", 1280, 7 * 7, 320),
    // ViT-S/14 at 224 px, batch 8 (257 tokens each): the MLP's first
    // linear layer with tokens as rows (as MatMul runs it) and as columns.
    ("vit fc1 tokens x 384 @ 384x1536", 8 * 257, 1536, 384),
    ("vit fc1 1536x384 @ 384 x tokens", 1536, 8 * 257, 384),
    ("vit qk^T one head 257x64 @ 64x257", 257, 257, 64),
];

/// The micro-kernel alone on L1-resident panels, one thread: the ceiling
/// every GEMM and convolution number is compared against.
fn peak() {
    let kern = kernels::best();
    let k = 128;
    let a = rand_vec(kern.mr * k, 1);
    let b = rand_vec(kern.nr * k, 2);
    let mut c = vec![0f32; kern.mr * kern.nr];
    let reps = 200_000;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            let tile = kernels::Tile {
                c: c.as_mut_ptr(),
                ldc: kern.nr,
                rows: kern.mr,
                cols: kern.nr,
                accumulate: false,
            };
            // SAFETY: panels of k*mr and k*nr floats, a full mr x nr tile.
            unsafe { (kern.run)(k, a.as_ptr(), b.as_ptr(), &tile) };
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    let flop = 2.0 * (kern.mr * kern.nr * k * reps) as f64;
    println!(
        "\n== peak: {} on L1-resident panels, 1 thread: {:.1} GFLOP/s ==",
        kern.name,
        flop / best / 1e9
    );
    std::hint::black_box(&c);
}

/// Our GEMM against candle's matmul, alternating, best of 5 rounds each.
fn gemm() {
    println!("\n== GEMM: ours vs candle Tensor::matmul (GFLOP/s, best of 5 alternating rounds) ==");
    println!(
        "{:<34} {:>5} {:>6} {:>5} {:>8} {:>8} {:>6}",
        "shape", "m", "n", "k", "ours", "candle", "ratio"
    );
    for (i, &(name, m, n, k)) in GEMM_SHAPES.iter().enumerate() {
        let a = rand_vec(m * k, 2 * i as u64 + 1);
        let b = rand_vec(k * n, 2 * i as u64 + 2);
        let flop = 2.0 * (m * n * k) as f64;
        // About 50 ms of work per round at 50 GFLOP/s.
        let reps = ((2.5e9 / flop) as usize).clamp(1, 2000);
        let (ta, tb) = match (
            Tensor::from_vec(a.clone(), (m, k), &Device::Cpu),
            Tensor::from_vec(b.clone(), (k, n), &Device::Cpu),
        ) {
            (Ok(ta), Ok(tb)) => (ta, tb),
            _ => {
                println!("{name}: cannot build tensors");
                continue;
            }
        };
        let mut c = vec![0f32; m * n];
        // As the convolutions run it: weights packed once, B packed per block.
        let packed = match PackedA::best(MatRef { data: &a, ld: k }, m, k) {
            Ok(p) => p,
            Err(e) => {
                println!("{name}: {e}");
                continue;
            }
        };
        let Ok(dense) = DenseB::new(MatRef { data: &b, ld: n }, k, n) else {
            continue;
        };
        let (mut ours, mut theirs) = (f64::INFINITY, f64::INFINITY);
        let mut max_diff = 0f32;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                let r = kernels::gemm_packed(
                    &packed,
                    std::slice::from_ref(&dense),
                    Output {
                        data: &mut c,
                        ld: n,
                        image_stride: 0,
                        accumulate: false,
                    },
                    None,
                );
                if let Err(e) = r {
                    println!("{name}: {e}");
                    return;
                }
            }
            ours = ours.min(t.elapsed().as_secs_f64() / reps as f64);
            let t = Instant::now();
            let mut out = None;
            for _ in 0..reps {
                out = Some(ta.matmul(&tb));
            }
            theirs = theirs.min(t.elapsed().as_secs_f64() / reps as f64);
            if let Some(Ok(v)) = out.map(|o| o.and_then(|o| o.flatten_all()?.to_vec1::<f32>())) {
                max_diff = v
                    .iter()
                    .zip(&c)
                    .map(|(x, y)| (x - y).abs())
                    .fold(max_diff, f32::max);
            }
        }
        let (g_ours, g_theirs) = (flop / ours / 1e9, flop / theirs / 1e9);
        println!(
            "{name:<34} {m:>5} {n:>6} {k:>5} {g_ours:>8.1} {g_theirs:>8.1} {:>5.2}x  (max |diff| {max_diff:.1e})",
            g_ours / g_theirs
        );
    }
}

/// `tune` (only when named): GEMM GFLOP/s on real shapes at 8 images per
/// call (as the convolutions run it) under other blockings (`kc`, `nc`, B
/// block floats), alternating, best of 5 rounds.
fn tune() {
    let variants: [(&str, kernels::Tuning); 6] = [
        ("default", kernels::Tuning::default()),
        (
            "kc256",
            kernels::Tuning {
                kc: Some(256),
                ..Default::default()
            },
        ),
        (
            "kc1024",
            kernels::Tuning {
                kc: Some(1024),
                ..Default::default()
            },
        ),
        (
            "B128K",
            kernels::Tuning {
                b_block_floats: Some(128 * 1024),
                ..Default::default()
            },
        ),
        (
            "B64K",
            kernels::Tuning {
                b_block_floats: Some(64 * 1024),
                ..Default::default()
            },
        ),
        (
            "nc256",
            kernels::Tuning {
                nc: Some(256),
                ..Default::default()
            },
        ),
    ];
    println!("\n== tune: GFLOP/s, 8 images per call ==");
    let head: Vec<String> = variants.iter().map(|(n, _)| format!("{n:>8}")).collect();
    println!("{:<34} {}", "shape", head.join(" "));
    const IMAGES: usize = 8;
    for (i, &(name, m, n, k)) in GEMM_SHAPES.iter().enumerate() {
        let a = rand_vec(m * k, 2 * i as u64 + 1);
        let b = rand_vec(IMAGES * k * n, 2 * i as u64 + 2);
        let flop = 2.0 * (IMAGES * m * n * k) as f64;
        let reps = ((4e9 / flop) as usize).clamp(1, 500);
        let mut c = vec![0f32; IMAGES * m * n];
        let dense: Vec<DenseB> = b
            .chunks_exact(k * n)
            .filter_map(|bi| DenseB::new(MatRef { data: bi, ld: n }, k, n).ok())
            .collect();
        let packed: Vec<PackedA> = variants
            .iter()
            .filter_map(|(_, t)| {
                kernels::set_tuning(*t);
                PackedA::best(MatRef { data: &a, ld: k }, m, k).ok()
            })
            .collect();
        let mut best_t = vec![f64::INFINITY; variants.len()];
        for _ in 0..5 {
            for ((_, t), (pa, bt)) in variants.iter().zip(packed.iter().zip(best_t.iter_mut())) {
                kernels::set_tuning(*t);
                let start = Instant::now();
                for _ in 0..reps {
                    let out = Output {
                        data: &mut c,
                        ld: n,
                        image_stride: m * n,
                        accumulate: false,
                    };
                    if let Err(e) = kernels::gemm_packed(pa, &dense, out, None) {
                        println!("{name}: {e}");
                        return;
                    }
                }
                *bt = bt.min(start.elapsed().as_secs_f64() / reps as f64);
            }
        }
        kernels::set_tuning(kernels::Tuning::default());
        let g: Vec<String> = best_t
            .iter()
            .map(|t| format!("{:>8.1}", flop / t / 1e9))
            .collect();
        println!("{name:<34} {}", g.join(" "));
    }
}

/// `window` (only when named): Xception's depthwise 3x3 on 728 planes of
/// 19x19, one image (input in L2) vs eight (8.4 MB in and out), in ns per
/// plane: tells whether the op is bound by its own work or by memory.
fn window() {
    use runner_kernels::window::{Clamp, Window, WindowKind};
    let c = 728;
    let weights = rand_vec(c * 9, 1);
    let bias = rand_vec(c, 2);
    let op = Window {
        kind: WindowKind::Depthwise {
            weights: &weights,
            bias: &bias,
        },
        kernel: (3, 3),
        stride: 1,
        pad: (1, 1, 1, 1),
        in_act: Clamp {
            lo: 0.0,
            hi: f32::INFINITY,
        },
        out_act: Clamp::NONE,
    };
    println!("\n== window: depthwise 3x3 on 19x19 planes, ns per plane ==");
    for n in [1usize, 8] {
        let x = rand_vec(n * c * 19 * 19, 3);
        let mut out = vec![0f32; n * c * 19 * 19];
        let reps = 400 / n;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                op.run(&x, (n, c, 19, 19), &mut out);
            }
            best = best.min(t.elapsed().as_secs_f64() / (reps * n * c) as f64);
        }
        println!("batch {n}: {:.0} ns per plane", best * 1e9);
    }
}

/// The shared checkpoints in `dir` (`*.safetensors`, fixtures aside), each
/// with the registered architecture its tensor names identify, in registry
/// order; none when the folder is absent.
fn shared_backbones(dir: &Path) -> Vec<(Arch, PathBuf)> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        println!("backbones skipped: {} missing", dir.display());
        return Vec::new();
    };
    let mut found: Vec<(Arch, PathBuf)> = listing
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".safetensors") && !name.ends_with(".fixture.safetensors")
        })
        .filter_map(|p| {
            let (entry, _) = registry::identify_file(&p).ok()??;
            Some((Arch::from(entry), p))
        })
        .collect();
    let rank = |a: &Arch| registry::all().position(|e| e.name == a.name());
    found.sort_by_key(|(a, p)| (rank(a), p.clone()));
    found
}

/// Seconds per image at batch 8: one warm-up batch, then the median of 3.
fn backbones() {
    const BATCH: usize = 8;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
    let table = shared_backbones(&dir);
    println!("\n== backbones, batch {BATCH}: seconds per image (median of 3) ==");
    // Backbone names among the arguments select those only.
    let named: Vec<String> = std::env::args()
        .filter(|a| table.iter().any(|(arch, _)| arch.name() == a))
        .collect();
    for (arch, path) in table {
        if !named.is_empty() && !named.iter().any(|n| n == arch.name()) {
            continue;
        }
        let Some(spec) = BackboneSpec::pretrained(arch, path) else {
            continue;
        };
        let model = match models::create(&spec, &Device::Cpu) {
            Ok(m) => m,
            Err(e) => {
                println!("{:<20} cannot load: {e}", arch.name());
                continue;
            }
        };
        let s = spec.input_size;
        let x = match Tensor::from_vec(
            rand_vec(BATCH * 3 * s * s, 42),
            (BATCH, 3, s, s),
            &Device::Cpu,
        ) {
            Ok(x) => x,
            Err(e) => {
                println!("{:<20} input: {e}", arch.name());
                continue;
            }
        };
        let mut times = Vec::new();
        for i in 0..4 {
            let t = Instant::now();
            if let Err(e) = model.forward_features(&x) {
                println!("{:<20} forward: {e}", arch.name());
                break;
            }
            if i > 0 {
                times.push(t.elapsed().as_secs_f64() / BATCH as f64);
            } else {
                // The warm-up batch is not profiled.
                profile::take();
            }
        }
        if times.len() == 3 {
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "{:<20} {:.4} s/image (min {:.4})",
                arch.name(),
                median(times),
                min
            );
        }
        if profile::enabled() {
            println!("{}", profile::table(&profile::take()));
        }
    }
}
