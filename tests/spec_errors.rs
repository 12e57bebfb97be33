//! Bad specs fail before any work, with the file, the key and what is
//! allowed in the message, and a non-zero exit code.

use crate::common::{runner, stderr};

fn fails_with(spec: &str, expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), spec).unwrap();
    let out = runner(dir.path(), &["--quiet", "bad.toml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for e in expected.iter().chain(&["bad.toml"]) {
        assert!(err.contains(e), "expected {e:?} in:\n{err}");
    }
    assert!(
        crate::common::no_run_dirs(&dir.path().join("runs")),
        "no run directory for a bad spec"
    );
}

const GOOD_DATA: &str = "[data]\nlayout = \"kaggle\"\nroot = \"d\"\n";
const GOOD_BACKBONE: &str =
    "[[backbone]]\narch = \"efficientnet_lite0\"\nweights = \"w.safetensors\"\n";

#[test]
fn unknown_key_names_key_line_and_allowed_keys() {
    let spec = format!("name = \"x\"\n{GOOD_DATA}{GOOD_BACKBONE}[head]\ndropuot = 0.5\n");
    fails_with(&spec, &["dropuot", "line 9", "dropout"]);
}

#[test]
fn unknown_architecture_lists_the_known_ones() {
    let spec =
        format!("name = \"x\"\n{GOOD_DATA}[[backbone]]\narch = \"resnet9000\"\nweights = \"w\"\n");
    fails_with(
        &spec,
        &[
            "resnet9000",
            "xception",
            "inception_v3",
            "efficientnet_lite0",
        ],
    );
}

#[test]
fn out_of_range_value_names_the_key_and_the_range() {
    let spec = format!("name = \"x\"\n{GOOD_DATA}{GOOD_BACKBONE}[head]\ndropout = 1.5\n");
    fails_with(&spec, &["head.dropout", "1.5", "0 <= dropout < 1"]);
}

#[test]
fn missing_backbone_says_what_to_add() {
    let spec = format!("name = \"x\"\n{GOOD_DATA}");
    fails_with(&spec, &["backbone", "[[backbone]]"]);
}

#[test]
fn toml_syntax_error_names_the_line() {
    fails_with("name = \"x\nseed = 1\n", &["line 1"]);
}

#[test]
fn missing_spec_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(dir.path(), &["nope.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nope.toml"), "{}", stderr(&out));
}

fn onnx_backbone(extra: &str) -> String {
    let onnx = crate::common::model("efficientnet_lite0_imagenet.onnx");
    format!(
        "name = \"x\"\n{GOOD_DATA}[[backbone]]\narch = \"onnx\"\nweights = \"{}\"\n{extra}",
        onnx.display()
    )
}

#[test]
fn onnx_backbone_without_preprocess_says_which_to_set() {
    fails_with(
        &onnx_backbone("output = \"features\"\n"),
        &["backbone[0].preprocess", "imagenet", "inception"],
    );
}

#[test]
fn onnx_output_that_the_graph_lacks_lists_the_graph_outputs() {
    // The data folder does not exist either: the graph is checked first.
    fails_with(
        &onnx_backbone("output = \"pooled\"\npreprocess = \"efficientnet_lite\"\n"),
        &[
            "output = \"pooled\"",
            "`features` [?, 1280]",
            "`logits` [?, 1000]",
        ],
    );
}

#[test]
fn onnx_only_keys_on_a_native_backbone_are_errors() {
    let spec = format!("name = \"x\"\n{GOOD_DATA}{GOOD_BACKBONE}output = \"features\"\n");
    fails_with(&spec, &["backbone[0].output", "onnx"]);
}

#[test]
fn unknown_device_in_the_spec_lists_the_devices() {
    let spec = format!("name = \"x\"\ndevice = \"tpu\"\n{GOOD_DATA}{GOOD_BACKBONE}");
    fails_with(&spec, &["device", "tpu", "cuda:N"]);
}

#[test]
fn a_gpu_precision_on_the_cpu_fails_before_any_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!(
        "name = \"x\"\n[data]\nlayout = \"kaggle\"\nroot = {:?}\n[[backbone]]\narch = \"efficientnet_lite0\"\nweights = {:?}\n[extract]\nprecision = \"bf16\"\n",
        crate::common::woof(),
        crate::common::model("efficientnet_lite0_imagenet.safetensors"),
    );
    std::fs::write(dir.path().join("bf16.toml"), spec).unwrap();
    let out = runner(dir.path(), &["--quiet", "--device", "cpu", "bf16.toml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for e in [
        "bf16.toml",
        "precision = \"bf16\"",
        "needs a GPU",
        "--device cuda",
    ] {
        assert!(err.contains(e), "expected {e:?} in:\n{err}");
    }
    assert!(
        crate::common::no_run_dirs(&dir.path().join("runs")),
        "no run directory"
    );
}

/// A copy of the EfficientNet-Lite0 weights with the first value of its
/// first float tensor set to NaN.
fn weights_with_a_nan(to: &std::path::Path) {
    let mut bytes = std::fs::read(crate::common::model(
        "efficientnet_lite0_imagenet.safetensors",
    ))
    .unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let (_, tensor) = header
        .as_object()
        .unwrap()
        .iter()
        .find(|(name, t)| *name != "__metadata__" && t["dtype"] == "F32")
        .unwrap();
    let at = 8 + header_len + tensor["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(to, bytes).unwrap();
}

#[test]
fn bad_weights_and_names_are_refused_before_any_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = crate::common::model("efficientnet_lite0_imagenet.safetensors");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(d.join("truncated.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    weights_with_a_nan(&d.join("nan.safetensors"));
    std::fs::create_dir(d.join("folder.safetensors")).unwrap();
    let spec = |name: &str, arch: &str, weights: &std::path::Path| {
        format!(
            "name = \"{name}\"\n[data]\nlayout = \"kaggle\"\nroot = {:?}\n[[backbone]]\narch = \"{arch}\"\nweights = {weights:?}\n",
            crate::common::woof(),
        )
    };
    let long = "n".repeat(300);
    let cases: [(&str, String, &[&str]); 5] = [
        (
            "truncated",
            spec("t", "efficientnet_lite0", &d.join("truncated.safetensors")),
            &["truncated.safetensors", "backbone[0]"],
        ),
        (
            "nan",
            spec("t", "efficientnet_lite0", &d.join("nan.safetensors")),
            &["nan.safetensors", "NaN or infinite", "download it again"],
        ),
        (
            "wrong_arch",
            spec("t", "xception", &good),
            &[
                "efficientnet_lite0_imagenet.safetensors",
                "arch = \"xception\"",
                "none of these sets of tensors",
            ],
        ),
        (
            "folder",
            spec("t", "efficientnet_lite0", &d.join("folder.safetensors")),
            &["folder.safetensors", "is a folder"],
        ),
        (
            "long_name",
            spec(&long, "efficientnet_lite0", &good),
            &["name", "300 characters", "at most 180"],
        ),
    ];
    let good_spec = spec("fine", "efficientnet_lite0", &good);
    std::fs::write(d.join("good.toml"), &good_spec).unwrap();
    for (case, text, needles) in cases {
        let file = format!("{case}.toml");
        std::fs::write(d.join(&file), text).unwrap();
        // The bad spec comes second: it is refused before the first runs.
        let out = runner(d, &["--quiet", "good.toml", &file]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{case}: {err}");
        assert!(!err.contains("panicked"), "{case}: {err}");
        for needle in needles.iter().chain(&[file.as_str()]) {
            assert!(
                err.contains(needle),
                "{case}: expected {needle:?} in:\n{err}"
            );
        }
        assert!(
            !d.join("runs")
                .join(".")
                .read_dir()
                .is_ok_and(|mut r| r.any(|e| !e
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.'))),
            "{case}: no run directory"
        );
    }
}

fn vit_backbone(extra: &str) -> String {
    let onnx = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/onnx/timm_vit_tiny_patch16_224.onnx");
    format!(
        "name = \"x\"\n{GOOD_DATA}[[backbone]]\narch = \"onnx\"\nweights = \"{}\"\n\
         preprocess = \"imagenet\"\n{extra}",
        onnx.display()
    )
}

#[test]
fn a_token_output_without_a_pool_says_which_pools_there_are() {
    fails_with(
        &vit_backbone(""),
        &["a sequence of tokens", "pool = \"cls\"", "\"cls+mean\""],
    );
}

#[test]
fn pool_keys_where_they_do_not_apply_are_errors() {
    let spec = format!("name = \"x\"\n{GOOD_DATA}{GOOD_BACKBONE}pool = \"cls\"\n");
    fails_with(&spec, &["backbone[0].pool", "onnx"]);
    fails_with(
        &vit_backbone("pool = \"cls\"\nprefix_tokens = 1\n"),
        &["backbone[0].prefix_tokens", "pool = \"mean\""],
    );
    fails_with(
        &onnx_backbone(
            "output = \"features\"\npreprocess = \"efficientnet_lite\"\npool = \"mean\"\n",
        ),
        &["pool is set", "[1, 1280]", "remove pool"],
    );
    fails_with(
        &vit_backbone("pool = \"max\"\n"),
        &["line 9", "`cls`, `mean`, `cls+mean`"],
    );
}

#[test]
fn preprocessing_keys_are_checked_naming_the_key() {
    let with = |extra: &str| format!("name = \"x\"\n{GOOD_DATA}{GOOD_BACKBONE}{extra}");
    fails_with(
        &with("mean = [0.5, 0.5, 0.5]\n"),
        &["backbone[0].std", "is missing"],
    );
    fails_with(
        &with("mean = [0.5, 0.5]\nstd = [1, 1, 1]\n"),
        &["three finite numbers"],
    );
    fails_with(
        &with("preprocess = \"clip\"\nmean = [0.5, 0.5, 0.5]\nstd = [1.0, 1.0, 1.0]\n"),
        &["backbone[0].preprocess", "not both"],
    );
    fails_with(
        &with("crop_pct = 1.5\n"),
        &["backbone[0].crop_pct", "at most 1"],
    );
    fails_with(
        &with("resize = \"lanczos\"\n"),
        &["lanczos", "bicubic", "bilinear"],
    );
}
