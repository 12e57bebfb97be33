//! `runner export`: the ONNX graph of a run gives `runner predict`'s
//! probabilities, from resized images (the backbone inside the graph) and
//! from features; run here through runner's own ONNX evaluator and, where
//! `RUNNER_ONNXRUNTIME_PYTHON` names a Python with onnxruntime (CI sets
//! it), through onnxruntime too.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::run_dirs;
use crate::common::{runner, stderr, woof_subset};
use runner::data::image::{decode_rgb, resize};
use runner::spec::Resize;
use runner_models::onnx::Program;

/// `(ids, probabilities)` of a submission-layout CSV.
fn probabilities(path: &Path) -> (Vec<String>, Vec<Vec<f64>>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let mut ids = Vec::new();
    let mut rows = Vec::new();
    for r in reader.records() {
        let r = r.unwrap();
        ids.push(r[0].to_string());
        rows.push(r.iter().skip(1).map(|v| v.parse().unwrap()).collect());
    }
    (ids, rows)
}

fn max_difference(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The test photos `ids`, decoded and box-resized to `size` as a run
/// does, as `(N, 3, size, size)` RGB 0..255, row-major.
fn resized_images(dir: &Path, ids: &[String], size: usize) -> Vec<f32> {
    let mut pixels = Vec::new();
    for id in ids {
        let img = resize(
            &decode_rgb(&dir.join(format!("data/test/{id}.jpg"))).unwrap(),
            size,
            size,
            Resize::Box,
        );
        // HWC u8 -> CHW f32.
        for c in 0..3 {
            pixels.extend(img.pixels.iter().skip(c).step_by(3).map(|&v| v as f32));
        }
    }
    pixels
}

/// Runs `model` on `data` (shape `shape`) in onnxruntime and compares with
/// `pred.csv` in `dir`, where `RUNNER_ONNXRUNTIME_PYTHON` is set.
fn check_in_onnxruntime(dir: &Path, model: &str, data: Vec<f32>, shape: &[usize]) {
    let Some(python) = std::env::var_os("RUNNER_ONNXRUNTIME_PYTHON") else {
        eprintln!("RUNNER_ONNXRUNTIME_PYTHON unset: onnxruntime not tried on {model}");
        return;
    };
    // Row-major, one row per image; the script reshapes.
    let input = format!("{model}.input.npy");
    let m = runner::npy::Matrix::new(shape[0], data.len() / shape[0], data);
    runner::npy::write(&dir.join(&input), &m).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/export/check_onnxruntime.py");
    let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args([model, &input, &shape.join(","), "pred.csv", "1e-4"])
        .current_dir(dir)
        .output()
        .unwrap();
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "onnxruntime on {model}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_onnx(model: &Path, input: Tensor) -> Vec<Vec<f64>> {
    let proto = runner_models::onnx::read_model(model).unwrap();
    let program = Program::lower(&proto, None, &model.display().to_string()).unwrap();
    let out = program.run(input).unwrap();
    out.to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(f64::from).collect())
        .collect()
}

#[test]
fn the_exported_graph_gives_predicts_probabilities_from_images_and_from_features() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 8, 2);
    let path = super::write_spec(dir, "x", 2, 0.5);
    // Calibrated: the temperature is part of the graph too.
    let text = std::fs::read_to_string(&path).unwrap() + "calibrate = \"temperature\"\n";
    std::fs::write(&path, text).unwrap();
    let out = runner(dir, &["--quiet", "--runs", "runs", "x.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = run_dirs(&dir.join("runs")).remove(0);
    let run_arg = run.to_str().unwrap();
    let out = runner(
        dir,
        &[
            "--quiet",
            "predict",
            run_arg,
            "data/test",
            "--out",
            "pred.csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (ids, predicted) = probabilities(&dir.join("pred.csv"));

    // From images: the test photos decoded and resized as the run did.
    let out = runner(dir, &["--quiet", "export", run_arg, "--out", "image.onnx"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let size = 224;
    let pixels = resized_images(dir, &ids, size);
    let images =
        Tensor::from_vec(pixels.clone(), (ids.len(), 3, size, size), &Device::Cpu).unwrap();
    let from_images = run_onnx(&dir.join("image.onnx"), images);
    let diff = max_difference(&from_images, &predicted);
    assert!(diff < 1e-4, "from images: max difference {diff}");

    // From features: `runner extract`'s arrays, views stacked.
    let out = runner(
        dir,
        &[
            "--quiet",
            "export",
            run_arg,
            "--from",
            "features",
            "--out",
            "features.onnx",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = runner(
        dir,
        &[
            "--quiet",
            "extract",
            run.join("spec.toml").to_str().unwrap(),
            "--out",
            "feats",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let views: Vec<runner::npy::Matrix> = ["original", "hflip"]
        .iter()
        .map(|v| {
            runner::npy::read(&dir.join(format!("feats/test_efficientnet_lite0_{v}.npy"))).unwrap()
        })
        .collect();
    // Rows in the order of `pred.csv`'s ids.
    let extracted: Vec<String> = csv::Reader::from_path(dir.join("feats/test_ids.csv"))
        .unwrap()
        .records()
        .map(|r| r.unwrap()[0].to_string())
        .collect();
    let (n, d) = (views[0].rows, views[0].cols);
    let mut stacked = Vec::with_capacity(n * 2 * d);
    for id in &ids {
        let r = extracted.iter().position(|e| e == id).unwrap();
        for v in &views {
            stacked.extend_from_slice(v.row(r));
        }
    }
    let features = Tensor::from_vec(stacked.clone(), (n, 2, d), &Device::Cpu).unwrap();
    let from_features = run_onnx(&dir.join("features.onnx"), features);
    let diff = max_difference(&from_features, &predicted);
    assert!(diff < 1e-4, "from features: max difference {diff}");

    check_in_onnxruntime(dir, "image.onnx", pixels, &[ids.len(), 3, size, size]);
    check_in_onnxruntime(dir, "features.onnx", stacked, &[n, 2, d]);
}

/// Runs the spec `{name}.toml` in `dir` (on the test photos of `data`),
/// predicts the test photos and exports the run from images: the graph,
/// fed the photos resized to `size`, gives `runner predict`'s
/// probabilities, in runner's evaluator and, where available, onnxruntime.
fn run_export_and_compare_from_images(dir: &Path, name: &str, size: usize) {
    let out = runner(dir, &["--quiet", "--runs", "runs", &format!("{name}.toml")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = run_dirs(&dir.join("runs")).remove(0);
    let run_arg = run.to_str().unwrap();
    let out = runner(
        dir,
        &[
            "--quiet",
            "predict",
            run_arg,
            "data/test",
            "--out",
            "pred.csv",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (ids, predicted) = probabilities(&dir.join("pred.csv"));
    let out = runner(dir, &["--quiet", "export", run_arg, "--out", "image.onnx"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pixels = resized_images(dir, &ids, size);
    let images =
        Tensor::from_vec(pixels.clone(), (ids.len(), 3, size, size), &Device::Cpu).unwrap();
    let got = run_onnx(&dir.join("image.onnx"), images);
    let diff = max_difference(&got, &predicted);
    eprintln!("{name}: runner's evaluator vs runner predict: max difference {diff:.2e}");
    assert!(diff < 1e-4, "max difference {diff}");
    check_in_onnxruntime(dir, "image.onnx", pixels, &[ids.len(), 3, size, size]);
}

/// `arch = "onnx"`: the backbone's own graph is copied into the export.
#[test]
fn a_run_on_an_onnx_backbone_exports_from_images() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 6, 2);
    let spec = format!(
        "name = \"o\"\nviews = [\"original\"]\n[data]\nlayout = \"kaggle\"\nroot = \"data\"\n\
         [[backbone]]\narch = \"onnx\"\nweights = {:?}\noutput = \"features\"\n\
         preprocess = \"efficientnet_lite\"\n[extract]\nbatch_size = 8\n[cv]\nfolds = 2\n\
         [head]\nepochs = 5\nbatch_size = 16\n",
        crate::common::model("efficientnet_lite0_imagenet.onnx")
            .display()
            .to_string()
    );
    std::fs::write(dir.join("o.toml"), spec).unwrap();
    run_export_and_compare_from_images(dir, "o", 224);
}

/// A ResNet run (two views, ResNet-18 with timm's random fixture weights):
/// the network is written as ONNX nodes by its registry entry.
#[test]
fn a_run_on_a_resnet_exports_from_images() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 6, 2);
    let weights = dir.join("resnet18.safetensors");
    candle_core::safetensors::save(&crate::timm::state_dict("resnet18"), &weights).unwrap();
    let spec = format!(
        "name = \"r\"\nviews = [\"original\", \"hflip\"]\n[data]\nlayout = \"kaggle\"\n\
         root = \"data\"\n[[backbone]]\narch = \"resnet18\"\nweights = {:?}\n\
         [extract]\nbatch_size = 8\n[cv]\nfolds = 2\n[head]\nepochs = 5\nbatch_size = 16\n",
        weights.display().to_string()
    );
    std::fs::write(dir.join("r.toml"), spec).unwrap();
    run_export_and_compare_from_images(dir, "r", 224);
}

/// A vision transformer (DINOv2's architecture, small random-weight
/// fixture): its tokens pooled as `pool = "cls+mean"` in the run, and the
/// same pooling written into the export after the copied graph, whose
/// position embedding is resized to the 70 px image inside the graph.
#[test]
fn a_run_on_a_vision_transformer_pools_its_tokens_and_exports_from_images() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 3, 6, 2);
    let weights = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/onnx/timm_vit_small_patch14_dinov2.onnx");
    let spec = format!(
        "name = \"t\"\nviews = [\"original\"]\n[data]\nlayout = \"kaggle\"\nroot = \"data\"\n\
         [[backbone]]\narch = \"onnx\"\nweights = {:?}\ninput_size = 70\n\
         preprocess = \"imagenet\"\npool = \"cls+mean\"\n[extract]\nbatch_size = 4\n[cv]\nfolds = 2\n\
         [head]\nepochs = 5\nbatch_size = 16\n",
        weights.display().to_string()
    );
    std::fs::write(dir.join("t.toml"), spec).unwrap();
    run_export_and_compare_from_images(dir, "t", 70);
    // 64 channels, the class token and the patch mean side by side.
    let run = run_dirs(&dir.join("runs")).remove(0);
    let manifest = std::fs::read_to_string(run.join("model/manifest.json")).unwrap();
    assert!(manifest.contains("cls+mean"), "{manifest}");
}
