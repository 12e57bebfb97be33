//! Native backbones loaded from timm / torchvision state-dict names compute
//! what timm computes, and PyTorch checkpoints (`.pth` / `.pt`) load.
//!
//! The full-size weights are not stored: each is a pure function of its
//! state-dict name and shape (the generator of `tools/fixtures/make_timm_fixtures.py`,
//! reimplemented here bit for bit), so only the names and shapes
//! (`tests/data/timm/<model>.tensors.txt`) and timm's pooled features for a
//! generated input (`<model>.safetensors`, computed by timm in f32 on the CPU)
//! are committed. Regenerate them with
//! `/tmp/torchenv/bin/python tools/fixtures/make_timm_fixtures.py` (venv setup in
//! the script's docstring).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use runner_models::flavour::Flavour;

use crate::common::rel_err;
use runner_models::layers::Weights;
use runner_models::resnet::{self, CONFIGS};
use runner_models::{self as models, registry, Arch, Backbone, BackboneSpec, Preprocess, Resize};
use runner_models::{InceptionV3, ResNet, Xception};

/// `max|ours - timm| / max|timm|` must stay below this (as tests/parity.rs).
const REL_TOL: f32 = 1e-4;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/timm")
}

const REGENERATE: &str =
    "regenerate with `/tmp/torchenv/bin/python tools/fixtures/make_timm_fixtures.py` \
     (venv: python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch timm safetensors numpy)";

// ---------------------------------------------------------------------------
// The generator of tools/fixtures/make_timm_fixtures.py
// ---------------------------------------------------------------------------

fn fnv1a64(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn splitmix64(z: u64) -> u64 {
    let z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The deterministic value of every element of tensor `name` (row-major).
fn generate(name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let seed = fnv1a64(name);
    let two_pow_m53 = 1.0 / (1u64 << 53) as f64;
    let rule: Box<dyn Fn(f64) -> f64> = if name == "input" {
        Box::new(|u| 2.0 * u - 1.0)
    } else if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        let scale = (6.0 / fan_in as f64).sqrt();
        Box::new(move |u| (2.0 * u - 1.0) * scale)
    } else if name.ends_with("running_mean") {
        Box::new(|u| (2.0 * u - 1.0) * 0.1)
    } else if name.ends_with("running_var") || name.ends_with("weight") {
        Box::new(|u| 0.5 + u)
    } else if name.ends_with("bias") {
        Box::new(|u| (2.0 * u - 1.0) * 0.1)
    } else {
        panic!("no generator rule for `{name}` {shape:?}")
    };
    (0..n as u64)
        .map(|i| {
            let u = (splitmix64(seed.wrapping_add(i)) >> 11) as f64 * two_pow_m53;
            rule(u) as f32
        })
        .collect()
}

fn generated_tensor(name: &str, shape: &[usize]) -> Tensor {
    Tensor::from_vec(generate(name, shape), shape, &Device::Cpu).expect("tensor")
}

/// The full-size random state dict of `fixture`, from its manifest.
pub fn state_dict(fixture: &str) -> HashMap<String, Tensor> {
    let path = data_dir().join(format!("{fixture}.tensors.txt"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; {REGENERATE}", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, dims) = l.split_once('\t').expect("name<TAB>dims");
            let shape: Vec<usize> = if dims.is_empty() {
                vec![]
            } else {
                dims.split(',').map(|d| d.parse().expect("dim")).collect()
            };
            (name.to_string(), generated_tensor(name, &shape))
        })
        .collect()
}

/// timm's features for the generated input.
fn reference(fixture: &str) -> Tensor {
    let path = data_dir().join(format!("{fixture}.safetensors"));
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}; {REGENERATE}", path.display()));
    t.remove("features").expect("`features`")
}

/// Runs `model` on the generated `(batch, 3, size, size)` input and compares
/// with timm's features.
fn check(fixture: &str, model: &dyn Backbone, size: usize) {
    let want = reference(fixture);
    let batch = want.dim(0).expect("batch");
    let x = generated_tensor("input", &[batch, 3, size, size]);
    let t = Instant::now();
    let f = model.forward_features(&x).expect("forward");
    let e = rel_err(&f, &want);
    println!(
        "{fixture}: batch {batch} at {size}x{size} in {:.2} s; max|ours - timm| / max|timm| = {e:.3e}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(f.dims(), &[batch, model.num_features()]);
    assert!(
        e <= REL_TOL,
        "{fixture}: relative error {e:.3e} > {REL_TOL:.0e} against timm"
    );
}

#[test]
fn generator_matches_the_fixture_script() {
    // Values printed by the script's `generate` (numpy, float64 then float32).
    assert_eq!(fnv1a64("conv1.weight"), 0x69a2_9a2c_ee47_d254);
    // f32 values as f64 (exact), as numpy prints them.
    let as_f64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    assert_eq!(
        as_f64(generate("bn1.running_var", &[3])),
        [1.1423076391220093, 0.9848067164421082, 0.589049756526947]
    );
    assert_eq!(
        as_f64(generate("conv1.weight", &[2, 3, 1, 1])),
        [
            0.127491295337677,
            -1.2026054859161377,
            1.301129937171936,
            0.972089409828186,
            0.5443614721298218,
            -0.14774969220161438
        ]
    );
}

#[test]
fn xception_timm_names_match_timm_legacy_xception() {
    let w = Weights::from_tensors("xception", state_dict("legacy_xception"));
    let model = Xception::from_weights(&w, &Device::Cpu).expect("load");
    assert_eq!(model.flavour(), Flavour::Torch);
    check("legacy_xception", &model, 299);
}

#[test]
fn inception_v3_timm_names_match_timm_inception_v3() {
    let w = Weights::from_tensors("inception_v3", state_dict("inception_v3"));
    let model = InceptionV3::from_weights(&w, &Device::Cpu).expect("load");
    assert_eq!(model.flavour(), Flavour::Torch);
    check("inception_v3", &model, 299);
}

/// Every ONNX emitter of an architecture with a timm fixture reads
/// timm-named checkpoints and then computes what timm computes (symmetric
/// max pool padding in Xception, average pools counting the padding in
/// InceptionV3; ResNet knows no other naming): the emitted graph, run by
/// runner's evaluator, against the native backbone and timm's features.
#[test]
fn onnx_emitters_of_timm_named_checkpoints_match_native_and_timm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = Vec::new();
    for entry in registry::all().filter(|e| e.to_onnx.is_some()) {
        let (arch, Some(fixture)) = (entry.name, timm_fixture(entry.name)) else {
            continue;
        };
        let path = dir.path().join(format!("{fixture}.safetensors"));
        candle_core::safetensors::save(&state_dict(fixture), &path).expect("save");
        let spec = BackboneSpec::pretrained(Arch::from(entry), &path).expect("native");
        let native = models::create(&spec, &Device::Cpu).expect("load");
        let program = crate::common::emitted_backbone(&spec);
        let want = reference(fixture);
        let batch = want.dim(0).expect("batch");
        let x = generated_tensor("input", &[batch, 3, spec.input_size, spec.input_size]);
        let f = native.forward_features(&x).expect("native forward");
        let t = Instant::now();
        let ours = program.run(x).expect("run the emitted graph");
        let seconds = t.elapsed().as_secs_f64();
        for (label, other) in [("native", &f), ("timm", &want)] {
            let e = rel_err(&ours, other);
            println!(
                "emitted {arch} (timm names, batch {batch} in {seconds:.2} s): \
                 max|onnx - {label}| / max|{label}| = {e:.3e}"
            );
            assert!(
                e <= REL_TOL,
                "emitted {arch} (timm names) vs {label}: relative error {e:.3e} > {REL_TOL:.0e}"
            );
        }
        checked.push(arch);
    }
    assert_eq!(
        checked,
        [
            "xception",
            "inception_v3",
            "resnet18",
            "resnet34",
            "resnet50"
        ]
    );
}

/// ResNet fixture `name` loaded with its registered config: timm's and
/// torchvision's `resnet*` share these names and, on the same weights, agree
/// exactly (asserted by the fixture script).
fn check_resnet(name: &str, blocks: usize) {
    let cfg = CONFIGS.iter().find(|c| c.name == name).expect("registered");
    let w = Weights::from_tensors(cfg.name, state_dict(name));
    let model = ResNet::from_weights(cfg, &w, &Device::Cpu).expect("load");
    assert_eq!(model.num_blocks(), blocks);
    check(name, &model, 224);
}

#[test]
fn resnet18_matches_timm_and_torchvision_resnet18() {
    check_resnet("resnet18", 8);
}

#[test]
fn resnet34_matches_timm_and_torchvision_resnet34() {
    check_resnet("resnet34", 16);
}

#[test]
fn resnet50_matches_timm_and_torchvision_resnet50() {
    check_resnet("resnet50", 16);
}

/// Where a registered architecture's checkpoint for the registry test comes from.
enum Source {
    /// A timm fixture's generated state dict (`tests/data/timm`).
    Timm(&'static str),
    /// A file of `../shared/models`.
    Shared(&'static str),
}

/// The fixture in `tests/data/timm` of the registered architecture `arch`,
/// where it has one.
pub fn timm_fixture(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "xception" => "legacy_xception",
        "inception_v3" => "inception_v3",
        "resnet18" => "resnet18",
        "resnet34" => "resnet34",
        "resnet50" => "resnet50",
        _ => return None,
    })
}

/// A checkpoint for each registered architecture that has one here;
/// resnet101 / resnet152 are built at full width by `resnet`'s unit tests.
fn source(arch: &str) -> Option<Source> {
    if let Some(fixture) = timm_fixture(arch) {
        return Some(Source::Timm(fixture));
    }
    Some(match arch {
        "efficientnet_lite0" => Source::Shared("efficientnet_lite0_imagenet.safetensors"),
        "onnx" => Source::Shared("efficientnet_lite0_imagenet.onnx"),
        _ => return None,
    })
}

/// Every registered architecture, built through the registry from a real
/// checkpoint file: the registry identifies it from its tensor names, and
/// one image at the declared input size gives the declared feature width.
#[test]
fn every_registered_architecture_produces_its_declared_features() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = Vec::new();
    for entry in registry::all() {
        let Some(src) = source(entry.name) else {
            println!(
                "{}: no checkpoint here (see resnet's unit tests)",
                entry.name
            );
            continue;
        };
        let path = match src {
            Source::Timm(fixture) => {
                let path = dir.path().join(format!("{fixture}.safetensors"));
                candle_core::safetensors::save(&state_dict(fixture), &path).expect("save");
                path
            }
            Source::Shared(file) => crate::common::model(file),
        };
        let spec = match BackboneSpec::pretrained(Arch::from(entry), &path) {
            Some(spec) => {
                let (found, _) = registry::identify_file(&path)
                    .expect("read")
                    .expect("identified");
                assert_eq!(found.name, entry.name);
                spec
            }
            // The graph fixes the size; the features are its `features` output.
            None => BackboneSpec {
                arch: Arch::ONNX,
                weights: path,
                input_size: 224,
                preprocess: Preprocess::EfficientnetLite,
                resize: Resize::Box,
                output: Some("features".into()),
                input_layout: None,
                pool: None,
                prefix_tokens: None,
                crop_pct: None,
            },
        };
        let model = models::create(&spec, &Device::Cpu).expect("create");
        let x = generated_tensor("input", &[1, 3, spec.input_size, spec.input_size]);
        let f = model.forward_features(&x).expect("forward");
        let width = entry
            .pretrained_cfg
            .map_or(model.num_features(), |c| c.num_features);
        assert_eq!(f.dims(), &[1, width], "{}", entry.name);
        assert_eq!(model.num_features(), width, "{}", entry.name);
        checked.push(entry.name);
    }
    let missing: Vec<&str> = registry::all()
        .map(|e| e.name)
        .filter(|n| !checked.contains(n))
        .collect();
    assert_eq!(
        missing,
        resnet::MODELS[3..]
            .iter()
            .map(|e| e.name)
            .collect::<Vec<_>>()
    );
}

/// With `RUNNER_TIMM_CHECKPOINTS=DIR`, the same full-size weights as timm
/// training checkpoints (`DIR/<model>.pth`: nested under `state_dict`, keys
/// prefixed `module.`, ~100 MB each, written by the fixture script with
/// `--checkpoints DIR`) load through [`models::create`] and give timm's
/// features. Without the variable this test only says how to run it.
#[test]
fn full_size_pth_checkpoints_load_through_the_registry() {
    let Some(dir) = std::env::var_os("RUNNER_TIMM_CHECKPOINTS") else {
        println!(
            "skipped: set RUNNER_TIMM_CHECKPOINTS=DIR after \
             `/tmp/torchenv/bin/python tools/fixtures/make_timm_fixtures.py --checkpoints DIR`"
        );
        return;
    };
    for (fixture, arch) in [
        ("legacy_xception", "xception"),
        ("inception_v3", "inception_v3"),
        ("resnet18", "resnet18"),
        ("resnet34", "resnet34"),
        ("resnet50", "resnet50"),
    ] {
        let path = Path::new(&dir).join(format!("{fixture}.pth"));
        assert!(
            path.exists(),
            "{} is missing: write it with `/tmp/torchenv/bin/python \
             tools/fixtures/make_timm_fixtures.py --checkpoints {}` ({REGENERATE})",
            path.display(),
            Path::new(&dir).display()
        );
        let arch = Arch::from_name(arch).expect("registered");
        let spec = BackboneSpec::pretrained(arch, path).expect("native");
        let t = Instant::now();
        let model = models::create(&spec, &Device::Cpu).expect("load .pth");
        println!(
            "{fixture}: .pth loaded in {:.2} s",
            t.elapsed().as_secs_f64()
        );
        check(fixture, model.as_ref(), spec.input_size);
    }
}

// ---------------------------------------------------------------------------
// PyTorch checkpoints
// ---------------------------------------------------------------------------

fn assert_same_tensors(got: &Weights, want_path: &Path) {
    let want = candle_core::safetensors::load(want_path, &Device::Cpu).expect("expected");
    for (name, t) in &want {
        let g = got
            .get(name, t.dims())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let a = g
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("got");
        let b = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("want");
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn pytorch_checkpoints_read_nested_prefixed_strided_and_half() {
    let dir = data_dir();
    let expected = dir.join("tiny_expected.safetensors");
    // {"state_dict": {"module.conv.weight": ..., ...}, "epoch": 3}: nested
    // under `state_dict`, DataParallel prefix removed, a transposed view, f16,
    // an int64 buffer.
    let nested = Weights::read("tiny", &dir.join("tiny_nested.pth")).expect("read .pth");
    assert!(nested.contains("conv.weight") && !nested.contains("module.conv.weight"));
    assert_same_tensors(&nested, &expected);
    // A bare state dict saved as `.pt`.
    let bare = Weights::read("tiny", &dir.join("tiny_bare.pt")).expect("read .pt");
    assert_same_tensors(&bare, &expected);
}

#[test]
fn a_pth_that_is_not_a_torch_zip_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("weights.pth");
    std::fs::write(&path, b"not a zip").expect("write");
    let err = match Weights::read("resnet50", &path) {
        Ok(_) => panic!("garbage read as a checkpoint"),
        Err(e) => e,
    };
    let chain = format!("{err}: {}", std::error::Error::source(&err).expect("cause"));
    assert!(chain.contains("weights.pth"), "{chain}");
    assert!(chain.contains("PyTorch zip checkpoint"), "{chain}");
}
