//! End to end on a woof-dev subset with EfficientNet-Lite0: every file of
//! the run directory, the submission's format, the cache on a second run,
//! determinism, resumption and `runner report`.

use std::path::{Path, PathBuf};

use candle_core::Device;
use runner::cache::FeatureCache;
use runner::data::Dataset;
use runner::log::Log;
use runner::npy::Matrix;
use runner::plan::{Plan, Split};
use runner::run::Run;
use runner::spec::Spec;

use crate::common::{model, runner, runner_dev, stderr, stdout, woof_subset};

mod bad_input_corpus;
mod bad_inputs;
mod ensemble;
mod experiments;
mod export;
mod html_report;
mod interrupt;
mod predict;
mod reliability;
mod resources;
mod shards;

const CLASSES: usize = 3;
const TRAIN_PER_CLASS: usize = 10;
const TEST_PER_CLASS: usize = 3;

fn write_spec(dir: &Path, name: &str, folds: usize, dropout: f64) -> PathBuf {
    let spec = format!(
        r#"
name = "{name}"
seed = 7
views = ["original", "hflip"]
[data]
layout = "kaggle"
root = "data"
[[backbone]]
arch = "efficientnet_lite0"
weights = "{weights}"
[extract]
batch_size = 8
[cv]
folds = {folds}
[head]
dropout = {dropout}
epochs = 20
patience = 3
batch_size = 16
"#,
        weights = model("efficientnet_lite0_imagenet.safetensors").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, spec).unwrap();
    path
}

/// A quiet run context on the CPU.
fn cpu_run<'a>(spec: &'a Spec, data: &'a Dataset, cache: &'a FeatureCache) -> Run<'a> {
    static LOG: std::sync::OnceLock<Log> = std::sync::OnceLock::new();
    Run {
        spec,
        data,
        cache,
        device: &Device::Cpu,
        log: LOG.get_or_init(|| Log::new(true)),
    }
}

fn run_dirs(runs: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    dirs.sort();
    dirs
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn quick_run_writes_every_file_then_reruns_from_cache_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS);
    write_spec(dir, "tiny", 3, 0.5);

    let first = runner(dir, &["--quiet", "--threads", "2", "tiny.toml"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let runs = run_dirs(&dir.join("runs"));
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert!(run
        .file_name()
        .unwrap()
        .to_string_lossy()
        .contains("-tiny-"));
    for f in [
        "spec.toml",
        "run.json",
        "metrics.json",
        "folds.csv",
        "oof.csv",
        "submission.csv",
        "run.log",
    ] {
        assert!(run.join(f).is_file(), "missing {f}");
    }

    // The resolved spec has every default filled in and parses back.
    let resolved: runner::spec::Spec =
        toml::from_str(&std::fs::read_to_string(run.join("spec.toml")).unwrap()).unwrap();
    assert_eq!(resolved.head.optimizer, runner::spec::Optimizer::Adagrad);
    assert_eq!(resolved.backbones[0].input_size, 224);

    let manifest = json(&run.join("run.json"));
    assert_eq!(manifest["status"], "complete");
    assert_eq!(manifest["feature_stages_computed"], 4); // 1 backbone x 2 views x 2 splits
    let metrics = json(&run.join("metrics.json"));
    let stages = metrics["propagation"].as_array().unwrap();
    assert_eq!(stages.len(), 3, "fold 1 -> all folds -> all views");
    let fin = &metrics["final"];
    assert_eq!(fin["oof_rows"], CLASSES * TRAIN_PER_CLASS);
    assert!(fin["test_log_loss"].as_f64().unwrap() < 1.0, "{fin}");

    // folds.csv: a row per fold x view.
    let folds = std::fs::read_to_string(run.join("folds.csv")).unwrap();
    assert_eq!(folds.lines().count(), 1 + 3 * 2);
    assert!(folds.starts_with("fold,view,epochs_run,best_epoch,valid_log_loss,valid_accuracy"));

    // oof.csv: id, label, one column per class; every training row once.
    let oof = std::fs::read_to_string(run.join("oof.csv")).unwrap();
    assert_eq!(oof.lines().count(), 1 + CLASSES * TRAIN_PER_CLASS);
    assert_eq!(oof.lines().next().unwrap().split(',').count(), 2 + CLASSES);

    // submission.csv: the sample's header and id order, rows summing to 1.
    let sample = std::fs::read_to_string(dir.join("data/sample_submission.csv")).unwrap();
    let sub = std::fs::read_to_string(run.join("submission.csv")).unwrap();
    assert_eq!(sub.lines().next(), sample.lines().next());
    let ids = |s: &str| {
        s.lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&sub), ids(&sample));
    for line in sub.lines().skip(1) {
        let sum: f64 = line
            .split(',')
            .skip(1)
            .map(|v| v.parse::<f64>().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-6, "{line}");
    }

    // Second run of the same spec: nothing recomputed, bit-identical OOF.
    let second = runner(dir, &["--threads", "2", "tiny.toml"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("served from the cache"),
        "{}",
        stderr(&second)
    );
    let runs = run_dirs(&dir.join("runs"));
    assert_eq!(runs.len(), 2);
    let again = &runs[1];
    assert_eq!(json(&again.join("run.json"))["feature_stages_computed"], 0);
    assert_eq!(
        std::fs::read(run.join("oof.csv")).unwrap(),
        std::fs::read(again.join("oof.csv")).unwrap(),
        "same spec twice gives bit-identical out-of-fold predictions"
    );

    // Changing head settings reuses the features too.
    write_spec(dir, "tiny_one_fold", 1, 0.2);
    let third = runner(dir, &["--quiet", "tiny_one_fold.toml"]);
    assert!(third.status.success(), "{}", stderr(&third));
    let runs = run_dirs(&dir.join("runs"));
    let one_fold = runs
        .iter()
        .find(|p| p.to_string_lossy().contains("tiny_one_fold"))
        .unwrap();
    assert_eq!(
        json(&one_fold.join("run.json"))["feature_stages_computed"],
        0
    );

    // The report lists all three runs, sorted by OOF log loss.
    for format in ["table", "csv", "markdown", "json"] {
        let out = runner(dir, &["report", "--format", format]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("tiny_one_fold"), "{format}: {text}");
        assert!(text.contains("oof_log_loss"), "{format}: {text}");
    }
    let out = runner(dir, &["report", "--format", "json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(rows.len(), 3);
    let losses: Vec<f64> = rows
        .iter()
        .map(|r| r["oof_log_loss"].as_f64().unwrap())
        .collect();
    assert!(losses.windows(2).all(|w| w[0] <= w[1]), "{losses:?}");
    assert_eq!(rows[0]["status"], "complete");
    assert_eq!(rows.iter().filter(|r| r["features"] == "cache").count(), 2);

    // extract: .npy per backbone x view x split plus ids.
    let out = runner(dir, &["--quiet", "extract", "tiny.toml", "--out", "feats"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let m = runner::npy::read(&dir.join("feats/train_efficientnet_lite0_hflip.npy")).unwrap();
    assert_eq!((m.rows, m.cols), (CLASSES * TRAIN_PER_CLASS, 1280));
    let ids = std::fs::read_to_string(dir.join("feats/train_ids.csv")).unwrap();
    assert_eq!(ids.lines().count(), 1 + m.rows);
    assert!(dir
        .join("feats/test_efficientnet_lite0_original.npy")
        .is_file());
}

#[test]
fn resumes_after_interrupted_extraction() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 2, 3, 1);
    let spec = runner::spec::load(&write_spec(dir, "resume", 2, 0.5)).unwrap();
    let data = Dataset::load(&spec.data).unwrap();
    let plan = Plan::new(&spec, &data, None).unwrap();
    let cache = FeatureCache::new(dir.join("cache"));
    // An interrupted run finished the first chunk of the training images
    // for both views; marker values prove they are reused, not recomputed.
    let rows = data.train.len();
    let marker = Matrix::new(rows, 1280, vec![7.0; rows * 1280]);
    for stage in plan.stages.iter().filter(|s| s.split == Split::Train) {
        cache.put_chunk(&stage.key, 0, &marker).unwrap();
    }
    let feats = runner::features::ensure(&cpu_run(&spec, &data, &cache), &plan).unwrap();
    assert_eq!(feats.computed, 4);
    for stage in &plan.stages {
        let m = feats.get(stage);
        match stage.split {
            Split::Train => assert_eq!(m, &marker),
            Split::Test => assert!(m.data.iter().all(|&v| v != 7.0 && v.is_finite())),
        }
        assert!(cache.contains(&stage.key));
    }
}

#[test]
fn changing_an_image_changes_only_its_splits_feature_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 2, 3, 1);
    let spec = runner::spec::load(&write_spec(dir, "keys", 2, 0.5)).unwrap();
    // Keys hashed afresh and through the cache's memo (which must notice
    // the change) agree every time.
    let memo = FeatureCache::new(dir.join("cache"));
    let keys = || {
        let data = Dataset::load(&spec.data).unwrap();
        let of = |plan: Plan| {
            plan.stages
                .iter()
                .map(|s| (s.split, s.key.clone()))
                .collect::<Vec<_>>()
        };
        let fresh = of(Plan::new(&spec, &data, None).unwrap());
        let memoised = of(Plan::new(&spec, &data, Some(&memo)).unwrap());
        assert_eq!(fresh, memoised);
        fresh
    };
    let before = keys();
    assert_eq!(before, keys(), "keys are stable");
    // Re-encode one training image: different bytes, same id.
    let victim = std::fs::read_dir(dir.join("data/train"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let img = image::open(&victim).unwrap().to_rgb8();
    img.save_with_format(&victim, image::ImageFormat::Png)
        .unwrap();
    let after = keys();
    for ((split, a), (_, b)) in before.iter().zip(&after) {
        match split {
            Split::Train => assert_ne!(a, b),
            Split::Test => assert_eq!(a, b),
        }
    }
    // Changing head settings changes no feature key.
    let mut other = spec.clone();
    other.head.dropout = 0.1;
    other.cv.folds = 3;
    let data = Dataset::load(&other.data).unwrap();
    let plan = Plan::new(&other, &data, None).unwrap();
    assert_eq!(
        plan.stages
            .iter()
            .map(|s| (s.split, s.key.clone()))
            .collect::<Vec<_>>(),
        after
    );
}

/// An ONNX export of EfficientNet-Lite0 in a spec gives the native
/// network's features, and runs end to end through the CLI.
#[test]
fn onnx_backbone_gives_the_native_features_and_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    woof_subset(&dir.join("data"), 2, 3, 1);
    let spec = format!(
        r#"
name = "onnx"
views = ["original", "hflip"]
[data]
layout = "kaggle"
root = "data"
[[backbone]]
arch = "efficientnet_lite0"
weights = "{native}"
[[backbone]]
arch = "onnx"
weights = "{onnx}"
output = "features"
preprocess = "efficientnet_lite"
[extract]
batch_size = 4
[cv]
folds = 2
[head]
epochs = 5
"#,
        native = model("efficientnet_lite0_imagenet.safetensors").display(),
        onnx = model("efficientnet_lite0_imagenet.onnx").display(),
    );
    let path = dir.join("onnx.toml");
    std::fs::write(&path, spec).unwrap();
    let spec = runner::spec::load(&path).unwrap();
    assert_eq!(spec.backbones[1].input_size, 224, "read from the graph");
    let data = Dataset::load(&spec.data).unwrap();
    let plan = Plan::new(&spec, &data, None).unwrap();
    let cache = FeatureCache::new(dir.join("cache"));
    let feats = runner::features::ensure(&cpu_run(&spec, &data, &cache), &plan).unwrap();
    for split in [Split::Train, Split::Test] {
        for view in [runner::spec::View::Original, runner::spec::View::Hflip] {
            let native = feats.get(plan.stage(0, view, split));
            let onnx = feats.get(plan.stage(1, view, split));
            assert_eq!((native.rows, native.cols), (onnx.rows, onnx.cols));
            let max = native.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = native
                .data
                .iter()
                .zip(&onnx.data)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff <= 1e-4 * max,
                "{split:?} {view:?}: {diff} vs max {max}"
            );
        }
    }
    // Same cache: the CLI run reuses the features computed above.
    let out = runner(
        dir,
        &["--quiet", "--runs", "runs", "--cache", "cache", "onnx.toml"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let runs = run_dirs(&dir.join("runs"));
    assert_eq!(runs.len(), 1);
    assert!(runs[0].join("submission.csv").is_file());
}

#[test]
fn report_warns_about_a_run_file_it_cannot_read() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("runs/20260101T000000Z-x-00000000");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("run.json"), "{not json").unwrap();
    let out = runner(tmp.path(), &["--runs", "runs", "report"]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("warning:") && err.contains("run.json: cannot parse"),
        "{err}"
    );
    assert!(stdout(&out).contains("unreadable"));
}

#[test]
fn developer_checks_live_in_runner_dev_not_in_runner() {
    let tmp = tempfile::tempdir().unwrap();
    let help = runner_dev(tmp.path(), &["--help"]);
    assert!(help.status.success(), "{}", stderr(&help));
    let text = stdout(&help);
    assert!(
        text.contains("backbones") && text.contains("big-woof"),
        "{text}"
    );
    let out = runner(tmp.path(), &["dev", "backbones", "models"]);
    assert!(!out.status.success());
    assert!(!stdout(&out).contains("| backbone |"), "{}", stdout(&out));
}
