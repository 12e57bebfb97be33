//! What `tools/gpu/gpu-check.sh` runs besides the recipe, as the commands of
//! the `runner-dev` binary:
//! - [`backbones`]: parity of each shared backbone's features with its
//!   fixture on a device and precision, and images/s at a few batch sizes
//!   (every fixture in the models folder, its architecture identified by
//!   the registry);
//! - [`big_woof`]: a Kaggle-sized dataset generated from the woof-dev photos.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use image::codecs::jpeg::JpegEncoder;
use image::imageops;
use rayon::prelude::*;

use runner_kernels::rng::Rng;
use runner_models::{self as models, registry, Arch, Backbone, BackboneSpec, Preprocess};

/// One backbone with a parity fixture: `{stem}.fixture.safetensors` in the
/// models folder, run from the weights beside it.
struct Case {
    /// The table's name for it: the registered architecture, or
    /// `onnx:{stem}` for a graph.
    label: String,
    stem: String,
    spec: BackboneSpec,
}

/// Every `{stem}.fixture.safetensors` in `models_dir` (sorted), with
/// `{stem}.safetensors` run as the architecture the registry identifies
/// from its tensor names and `{stem}.onnx` run as a graph (its `features`
/// output), whichever exist.
fn cases(models_dir: &Path) -> Result<Vec<Case>, String> {
    let listing =
        std::fs::read_dir(models_dir).map_err(|e| format!("{}: {e}", models_dir.display()))?;
    let mut stems: Vec<String> = listing
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".fixture.safetensors").map(str::to_string))
        .collect();
    stems.sort();
    let mut cases = Vec::new();
    for stem in stems {
        let native = models_dir.join(format!("{stem}.safetensors"));
        if native.is_file() {
            let identified = registry::identify_file(&native).map_err(|e| e.to_string())?;
            let Some((entry, _)) = identified else {
                return Err(format!("{}: no registered architecture", native.display()));
            };
            let arch = Arch::from(entry);
            let spec = BackboneSpec::pretrained(arch, native)
                .ok_or_else(|| format!("{}: {} has no pretrained config", stem, arch.name()))?;
            cases.push(Case {
                label: arch.name().to_string(),
                stem: stem.clone(),
                spec,
            });
        }
        let graph = models_dir.join(format!("{stem}.onnx"));
        if graph.is_file() {
            let size = models::onnx::read_model(&graph)
                .and_then(|m| models::onnx::summarize(&m, &graph))
                .map_err(|e| e.to_string())?
                .input_size
                .unwrap_or(224);
            cases.push(Case {
                label: format!("onnx:{stem}"),
                stem: stem.clone(),
                spec: BackboneSpec {
                    arch: Arch::ONNX,
                    weights: graph,
                    input_size: size,
                    // Unused: the fixture's input is already preprocessed.
                    preprocess: Preprocess::Inception,
                    resize: Default::default(),
                    output: Some("features".into()),
                    input_layout: None,
                    pool: None,
                    prefix_tokens: None,
                    crop_pct: None,
                },
            });
        }
    }
    Ok(cases)
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

/// Parity and images/s of every shared backbone on `dev` in `dtype`, as a
/// markdown table on stdout; `Ok(false)` when a backbone fails parity or
/// cannot run. Parity bar: `max|ours - ref| / max|ref|` <= 1e-4 in f32 on
/// the CPU, 1e-3 in f32 on a GPU, 3e-2 in bf16 / f16.
pub fn backbones(
    models_dir: &Path,
    dev: &Device,
    dev_name: &str,
    dtype: DType,
    batches: &[usize],
    seconds: f64,
) -> bool {
    let tol = match (dtype, dev.is_cpu()) {
        (DType::F32, true) => 1e-4,
        (DType::F32, false) => 1e-3,
        _ => 3e-2,
    };
    let mut ok = true;
    let head: Vec<String> = batches.iter().map(|b| format!("images/s @ {b}")).collect();
    println!(
        "| backbone | device | parity (max rel err, {dtype:?}) | {} |",
        head.join(" | ")
    );
    println!("|---|---|---|{}", "---|".repeat(batches.len()));
    let cases = match cases(models_dir) {
        Ok(c) => c,
        Err(e) => {
            println!(
                "| - | {dev_name} | error: {e} |{}",
                " - |".repeat(batches.len())
            );
            return false;
        }
    };
    for case in cases {
        // Loaded once for the parity check and every batch size.
        let net = models::create(&case.spec, dev).map_err(|e| e.to_string());
        let checked = net
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|net| parity(models_dir, &case.stem, net.as_ref(), dev, dtype));
        let p = match checked {
            Ok(e) if e <= tol => format!("{e:.2e} ok"),
            Ok(e) => {
                ok = false;
                format!("{e:.2e} FAIL (> {tol:.0e})")
            }
            Err(e) => {
                ok = false;
                // First line only: candle appends a backtrace when enabled.
                let first = e.lines().next().unwrap_or_default().replace('|', "/");
                format!("error: {first}")
            }
        };
        let size = case.spec.input_size;
        let rates: Vec<String> = batches
            .iter()
            .map(|&b| match &net {
                Ok(net) => match rate(net.as_ref(), size, dev, dtype, b, seconds) {
                    Ok(r) => format!("{r:.1}"),
                    Err(_) => "-".into(),
                },
                Err(_) => "-".into(),
            })
            .collect();
        let name = &case.label;
        println!("| {name} | {dev_name} | {p} | {} |", rates.join(" | "));
    }
    ok
}

struct Source {
    path: PathBuf,
    label: String,
}

fn read_labels(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(','))
        .map(|(id, label)| (id.trim().to_string(), label.trim().to_string()))
        .collect())
}

/// Uniform in `[0, 1)` at f64 precision (53 bits of one draw).
fn unit(rng: &mut Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn write_one(src: &Source, out: &Path, seed: u64) -> Result<(), String> {
    let img = image::open(&src.path)
        .map_err(|e| format!("{}: {e}", src.path.display()))?
        .to_rgb8();
    let mut rng = Rng::new(seed);
    let (w, h) = img.dimensions();
    let cw = ((w as f64) * (0.72 + 0.28 * unit(&mut rng))).max(1.0) as u32;
    let ch = ((h as f64) * (0.72 + 0.28 * unit(&mut rng))).max(1.0) as u32;
    let x = ((w - cw) as f64 * unit(&mut rng)) as u32;
    let y = ((h - ch) as f64 * unit(&mut rng)) as u32;
    let mut crop = imageops::crop_imm(&img, x, y, cw, ch).to_image();
    if rng.next_u64() % 2 == 1 {
        crop = imageops::flip_horizontal(&crop);
    }
    let tmp = out.with_extension("jpg.tmp");
    let file = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut enc = JpegEncoder::new_with_quality(std::io::BufWriter::new(file), 90);
    enc.encode_image(&crop)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    drop(enc);
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
}

/// Writes `n_train` + `n_test` JPEGs in Kaggle layout under `out`, made
/// from the labelled photos under `src` (woof-dev: `labels.csv`,
/// `test_labels.csv`): Dog Breed Identification had 10,222 training and
/// 10,357 test images (20,579 in all). Each is a random crop (72-100% of
/// each side) of a source photo, sometimes mirrored, re-encoded at quality
/// 90, so decoding costs what real photos cost; labels come from the source
/// photo (`labels.csv`, `test_labels.csv`), so the run is scored too.
/// Deterministic (image `i` is made from source `i % sources` with a crop
/// drawn from a generator seeded by `i`) and resumable (existing files are
/// kept).
pub fn big_woof(src: &Path, out: &Path, n_train: usize, n_test: usize) -> Result<(), String> {
    let mut sources = Vec::new();
    for (labels, dir) in [("labels.csv", "train"), ("test_labels.csv", "test")] {
        for (id, label) in read_labels(&src.join(labels))? {
            sources.push(Source {
                path: src.join(dir).join(format!("{id}.jpg")),
                label,
            });
        }
    }
    if sources.is_empty() {
        return Err(format!("no labelled photos under {}", src.display()));
    }
    let mut classes: Vec<&str> = sources.iter().map(|s| s.label.as_str()).collect();
    classes.sort_unstable();
    classes.dedup();
    for dir in ["train", "test"] {
        std::fs::create_dir_all(out.join(dir)).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let started = std::time::Instant::now();
    // (split, index in split, global index)
    let jobs: Vec<(&str, usize, usize)> = (0..n_train)
        .map(|i| ("train", i, i))
        .chain((0..n_test).map(|i| ("test", i, n_train + i)))
        .collect();
    jobs.par_iter().try_for_each(|&(split, i, g)| {
        let path = out.join(split).join(format!("{split}{i:06}.jpg"));
        if path.is_file() {
            return Ok(()); // resumable
        }
        write_one(&sources[g % sources.len()], &path, g as u64)
    })?;
    let mut labels = String::from("id,breed\n");
    let mut test_labels = String::from("id,breed\n");
    let mut sample = format!("id,{}\n", classes.join(","));
    let uniform = format!("{:.6}", 1.0 / classes.len() as f64);
    for &(split, i, g) in &jobs {
        let id = format!("{split}{i:06}");
        let label = &sources[g % sources.len()].label;
        if split == "train" {
            labels.push_str(&format!("{id},{label}\n"));
        } else {
            test_labels.push_str(&format!("{id},{label}\n"));
            sample.push_str(&id);
            for _ in &classes {
                sample.push(',');
                sample.push_str(&uniform);
            }
            sample.push('\n');
        }
    }
    for (name, text) in [
        ("labels.csv", labels),
        ("test_labels.csv", test_labels),
        ("sample_submission.csv", sample),
    ] {
        std::fs::write(out.join(name), text).map_err(|e| format!("{name}: {e}"))?;
    }
    println!(
        "wrote {n_train} train + {n_test} test JPEGs ({} classes) to {} in {:.1} s",
        classes.len(),
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use crate::spec::{DataSpec, Layout};

    #[test]
    fn every_shared_fixture_is_checked_as_the_architecture_its_weights_name() {
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
        let labels: Vec<String> = cases(&models)
            .unwrap()
            .into_iter()
            .map(|c| c.label)
            .collect();
        assert_eq!(
            labels,
            [
                "efficientnet_lite0",
                "onnx:efficientnet_lite0_imagenet",
                "inception_v3",
                "xception"
            ]
        );
    }

    #[test]
    fn big_woof_writes_a_kaggle_layout_that_loads_and_resumes() {
        let woof = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/woof-dev");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("big");
        big_woof(&woof, &out, 12, 5).unwrap();
        let spec = DataSpec {
            layout: Layout::Kaggle,
            train_dir: out.join("train"),
            labels: Some(out.join("labels.csv")),
            test_dir: Some(out.join("test")),
            sample_submission: Some(out.join("sample_submission.csv")),
            test_labels: Some(out.join("test_labels.csv")),
            image_ext: "jpg".into(),
            on_bad_image: Default::default(),
        };
        let data = Dataset::load(&spec).unwrap();
        assert_eq!((data.train.len(), data.test.len()), (12, 5));
        let first = std::fs::read(&data.train[0].path).unwrap();
        // A second call keeps what is there (resumable) and changes nothing.
        big_woof(&woof, &out, 12, 5).unwrap();
        assert_eq!(std::fs::read(&data.train[0].path).unwrap(), first);
        assert!(image::load_from_memory(&first).is_ok());
    }
}
