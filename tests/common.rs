//! Shared test helpers: paths to `../shared`, tiny datasets, running the
//! binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

pub fn woof() -> PathBuf {
    shared().join("data/woof-dev")
}

pub fn model(file: &str) -> PathBuf {
    shared().join("models").join(file)
}

fn run_binary(exe: &str, cwd: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .current_dir(cwd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{exe} does not start: {e}"))
}

/// Runs the `runner` binary in `cwd`.
pub fn runner(cwd: &Path, args: &[&str]) -> Output {
    run_binary(env!("CARGO_BIN_EXE_runner"), cwd, args)
}

/// Runs the `runner-dev` binary (the developer checks) in `cwd`.
pub fn runner_dev(cwd: &Path, args: &[&str]) -> Output {
    run_binary(env!("CARGO_BIN_EXE_runner-dev"), cwd, args)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Copies a class-balanced subset of woof-dev into `dir` in Kaggle layout:
/// `per_class_train` training and `per_class_test` test images for the
/// first `classes` breeds, with labels, sample submission and answer key.
pub fn woof_subset(dir: &Path, classes: usize, per_class_train: usize, per_class_test: usize) {
    let src = woof();
    let read = |name: &str| -> Vec<(String, String)> {
        let text = std::fs::read_to_string(src.join(name)).unwrap();
        text.lines()
            .skip(1)
            .map(|l| {
                let (id, label) = l.split_once(',').unwrap();
                (id.to_string(), label.to_string())
            })
            .collect()
    };
    let sample_header = std::fs::read_to_string(src.join("sample_submission.csv")).unwrap();
    let all_classes: Vec<String> = sample_header
        .lines()
        .next()
        .unwrap()
        .split(',')
        .skip(1)
        .map(str::to_string)
        .collect();
    let keep: Vec<String> = all_classes[..classes].to_vec();
    let pick = |rows: Vec<(String, String)>, per: usize| -> Vec<(String, String)> {
        let mut out = Vec::new();
        for c in &keep {
            out.extend(rows.iter().filter(|r| &r.1 == c).take(per).cloned());
        }
        out
    };
    let train = pick(read("labels.csv"), per_class_train);
    let test = pick(read("test_labels.csv"), per_class_test);
    std::fs::create_dir_all(dir.join("train")).unwrap();
    std::fs::create_dir_all(dir.join("test")).unwrap();
    let mut labels = String::from("id,breed\n");
    for (id, label) in &train {
        std::fs::copy(
            src.join(format!("train/{id}.jpg")),
            dir.join(format!("train/{id}.jpg")),
        )
        .unwrap();
        labels.push_str(&format!("{id},{label}\n"));
    }
    let mut key = String::from("id,breed\n");
    let mut sample = format!("id,{}\n", keep.join(","));
    for (id, label) in &test {
        std::fs::copy(
            src.join(format!("test/{id}.jpg")),
            dir.join(format!("test/{id}.jpg")),
        )
        .unwrap();
        key.push_str(&format!("{id},{label}\n"));
        sample.push_str(&format!("{id}{}\n", ",0.1".repeat(keep.len())));
    }
    std::fs::write(dir.join("labels.csv"), labels).unwrap();
    std::fs::write(dir.join("test_labels.csv"), key).unwrap();
    std::fs::write(dir.join("sample_submission.csv"), sample).unwrap();
}

/// `max|ours - want| / max|want|`, the parity tests' measure.
pub fn rel_err(ours: &candle_core::Tensor, want: &candle_core::Tensor) -> f32 {
    assert_eq!(ours.dims(), want.dims(), "output shape");
    let max_abs = |t: &candle_core::Tensor| {
        t.abs()
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.max(0))
            .and_then(|t| t.to_scalar::<f32>())
            .expect("max")
    };
    max_abs(&(ours - want).expect("diff")) / max_abs(want)
}

/// Whether `runs` holds no run directory (the feature cache's `.cache`
/// may exist: spec checks remember weights fingerprints there).
pub fn no_run_dirs(runs: &Path) -> bool {
    std::fs::read_dir(runs).map_or(true, |entries| {
        entries
            .flatten()
            .all(|e| e.file_name().to_string_lossy().starts_with('.'))
    })
}

/// The backbone `spec` as its registry entry's ONNX emitter writes it: a
/// graph from the input `image` `(N, 3, S, S)` to the pooled features,
/// lowered by runner's own evaluator. With `RUNNER_DUMP_EMITTED=DIR` the
/// graph is also written to `DIR/<arch>-<weights file stem>.onnx` (for a
/// look in onnxruntime).
pub fn emitted_backbone(spec: &runner_models::BackboneSpec) -> runner_models::onnx::Program {
    use prost::Message;
    use runner_models::onnx::build::GraphBuilder;
    let name = spec.arch.name();
    let emit = spec
        .arch
        .entry()
        .to_onnx
        .unwrap_or_else(|| panic!("{name} has no ONNX emitter"));
    let s = spec.input_size as i64;
    let mut g = GraphBuilder::new(name);
    g.input("image", &[None, Some(3), Some(s), Some(s)]);
    let features = emit(spec, &mut g, "image").expect("emit");
    g.node_into("Identity", &[&features], vec![], "features");
    let width = spec.arch.pretrained_cfg().map(|c| c.num_features as i64);
    g.output("features", &[None, width]);
    let proto = g.finish("test", Vec::new());
    if let Some(dir) = std::env::var_os("RUNNER_DUMP_EMITTED") {
        let stem = spec
            .weights
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        let path = Path::new(&dir).join(format!("{name}-{stem}.onnx"));
        std::fs::write(&path, proto.encode_to_vec()).expect("write the graph");
    }
    runner_models::onnx::Program::lower(&proto, None, name).expect("lower")
}
