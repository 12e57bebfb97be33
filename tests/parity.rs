//! Parity of the native backbones with their reference frameworks: features
//! (and EfficientNet-Lite0 logits) for the 4 fixture images, as stored in
//! `shared/models/*.fixture.safetensors` by Keras 3 / PyTorch in f32, must
//! match to `1e-4 * max|reference|`, for the image and its horizontal flip.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use runner_models::{
    self as models, resnet, Arch, Backbone, BackboneSpec, EfficientNetLite0, InceptionV3,
};

use crate::common::rel_err;

const REL_TOL: f32 = 1e-4;

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models")
}

fn fixture(stem: &str) -> HashMap<String, Tensor> {
    let path = models_dir().join(format!("{stem}.fixture.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn get<'a>(fx: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    fx.get(name)
        .unwrap_or_else(|| panic!("fixture lacks `{name}`"))
}

/// `input_nhwc` as NCHW, and its horizontal flip (width axis reversed).
fn inputs(fx: &HashMap<String, Tensor>) -> (Tensor, Tensor) {
    let x = get(fx, "input_nhwc")
        .permute((0, 3, 1, 2))
        .and_then(|t| t.contiguous())
        .expect("nhwc -> nchw");
    let w = x.dim(3).expect("width");
    let idx =
        Tensor::from_vec((0..w as u32).rev().collect::<Vec<_>>(), w, &Device::Cpu).expect("index");
    let flipped = x.index_select(&idx, 3).expect("flip");
    (x, flipped)
}

fn check(label: &str, ours: &Tensor, want: &Tensor) {
    let e = rel_err(ours, want);
    println!("{label}: max|ours - ref| / max|ref| = {e:.3e}");
    assert!(
        e <= REL_TOL,
        "{label}: relative error {e:.3e} > {REL_TOL:.0e}"
    );
}

/// The registered architecture `name` with its pretrained configuration
/// over the shared weights `{stem}.safetensors`, built through the registry.
fn load(name: &str, stem: &str) -> (Arch, Box<dyn Backbone>) {
    let arch = Arch::from_name(name).expect("registered");
    let weights = models_dir().join(format!("{stem}.safetensors"));
    let spec = BackboneSpec::pretrained(arch, weights).expect("native");
    (
        arch,
        models::create(&spec, &Device::Cpu).expect("load backbone"),
    )
}

fn check_backbone(name: &str, stem: &str) {
    let fx = fixture(stem);
    let (arch, model) = load(name, stem);
    let (x, xf) = inputs(&fx);
    let t = Instant::now();
    let f = model.forward_features(&x).expect("forward");
    println!(
        "{}: batch {} in {:.2} s",
        arch.name(),
        x.dim(0).expect("batch"),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(f.dims(), &[4, model.num_features()]);
    check(
        &format!("{} features", arch.name()),
        &f,
        get(&fx, "features"),
    );
    let ff = model.forward_features(&xf).expect("forward flipped");
    check(
        &format!("{} features_hflip", arch.name()),
        &ff,
        get(&fx, "features_hflip"),
    );
}

#[test]
fn xception_features_match_keras_reference() {
    check_backbone("xception", "xception_imagenet_notop");
}

#[test]
fn inception_v3_features_match_keras_reference() {
    let stem = "inception_v3_nsfwjs_notop";
    // The default path (NCHW16c after the first convolution on AVX-512
    // CPUs), then the NCHW one.
    check_backbone("inception_v3", stem);
    let fx = fixture(stem);
    let path = models_dir().join(format!("{stem}.safetensors"));
    let model = InceptionV3::load(&path, &Device::Cpu)
        .expect("load backbone")
        .nchw_only();
    let (x, xf) = inputs(&fx);
    let f = model.forward_features(&x).expect("forward");
    check("inception_v3 (NCHW) features", &f, get(&fx, "features"));
    let ff = model.forward_features(&xf).expect("forward flipped");
    check(
        "inception_v3 (NCHW) features_hflip",
        &ff,
        get(&fx, "features_hflip"),
    );
}

#[test]
fn efficientnet_lite0_features_and_logits_match_pytorch_reference() {
    let stem = "efficientnet_lite0_imagenet";
    let fx = fixture(stem);
    let load = || {
        EfficientNetLite0::load(
            &models_dir().join(format!("{stem}.safetensors")),
            &Device::Cpu,
        )
        .expect("load backbone")
    };
    let model = load();
    assert!(model.has_classifier());
    let (x, xf) = inputs(&fx);
    // The default path (NCHW16c on AVX-512 CPUs) and the NCHW one.
    for (path, model) in [("", model), (" (NCHW)", load().nchw_only())] {
        let t = Instant::now();
        let (f, l) = model.forward_features_and_logits(&x).expect("forward");
        println!(
            "efficientnet_lite0{path}: batch 4 in {:.2} s",
            t.elapsed().as_secs_f64()
        );
        check(
            &format!("efficientnet_lite0{path} features"),
            &f,
            get(&fx, "features"),
        );
        check(
            &format!("efficientnet_lite0{path} logits"),
            &l,
            get(&fx, "logits"),
        );
        let ff = model.forward_features(&xf).expect("forward flipped");
        check(
            &format!("efficientnet_lite0{path} features_hflip"),
            &ff,
            get(&fx, "features_hflip"),
        );
    }
}

/// The shared ONNX export of the same EfficientNet-Lite0 (`torch.onnx.export`,
/// opset 17), run by runner's own executor: features and logits match the
/// PyTorch reference like the native network does.
#[test]
fn efficientnet_lite0_onnx_export_matches_pytorch_reference() {
    use runner_models::onnx::{OnnxBackbone, OnnxOptions};
    let stem = "efficientnet_lite0_imagenet";
    let fx = fixture(stem);
    let path = models_dir().join(format!("{stem}.onnx"));
    let load = |output: &str| {
        let opts = OnnxOptions {
            output: Some(output.into()),
            input_layout: None,
            ..Default::default()
        };
        OnnxBackbone::load(&path, &opts, 224).expect("load ONNX backbone")
    };
    let (x, xf) = inputs(&fx);
    let features = load("features");
    assert_eq!(features.num_features(), 1280);
    // Every convolution ran as a native call; the Pad subgraphs were folded.
    assert_eq!(features.program().native_convolutions(), 49);
    let t = Instant::now();
    let f = features.forward_features(&x).expect("forward");
    println!(
        "onnx efficientnet_lite0: batch 4 in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    check("onnx efficientnet_lite0 features", &f, get(&fx, "features"));
    let ff = features.forward_features(&xf).expect("forward flipped");
    check(
        "onnx efficientnet_lite0 features_hflip",
        &ff,
        get(&fx, "features_hflip"),
    );
    let logits = load("logits");
    let l = logits.forward_features(&x).expect("forward logits");
    check("onnx efficientnet_lite0 logits", &l, get(&fx, "logits"));
}

/// The shared checkpoint and fixture stem of each architecture that has one.
fn shared_stem(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "xception" => "xception_imagenet_notop",
        "inception_v3" => "inception_v3_nsfwjs_notop",
        "efficientnet_lite0" => "efficientnet_lite0_imagenet",
        _ => return None,
    })
}

/// Every registered ONNX emitter (what `runner export` writes) computes
/// what its native backbone computes: the emitted graph, run by runner's
/// own evaluator on the fixture images, against `forward_features` on the
/// same checkpoint, and against the reference framework's features. The
/// ResNets, which have no shared checkpoint, are checked on their timm
/// fixtures (`tests/timm.rs`) and in `resnet::onnx`'s unit tests.
#[test]
fn every_onnx_emitter_matches_its_native_backbone() {
    let (mut checked, mut elsewhere) = (Vec::new(), Vec::new());
    // Native entries; `arch = "onnx"` copies its own graph, checked on every
    // ONNX fixture in `onnx_exports`.
    let native = models::registry::all().filter(|e| e.pretrained_cfg.is_some());
    for entry in native.filter(|e| e.to_onnx.is_some()) {
        let Some(stem) = shared_stem(entry.name) else {
            // Checked on its timm fixture by
            // `timm::onnx_emitters_of_timm_named_checkpoints_match_native_and_timm`;
            // resnet101 / resnet152, which have none, block for block at
            // reduced width by `resnet::onnx`'s unit tests.
            let deeper_resnet = resnet::MODELS[3..].iter().any(|e| e.name == entry.name);
            assert!(
                crate::timm::timm_fixture(entry.name).is_some() || deeper_resnet,
                "{}: no checkpoint to check its emitter on",
                entry.name
            );
            elsewhere.push(entry.name);
            continue;
        };
        let fx = fixture(stem);
        let (arch, model) = load(entry.name, stem);
        let spec = BackboneSpec::pretrained(arch, models_dir().join(format!("{stem}.safetensors")))
            .expect("native");
        let program = crate::common::emitted_backbone(&spec);
        let (x, _) = inputs(&fx);
        let native = model.forward_features(&x).expect("native forward");
        let t = Instant::now();
        let ours = program.run(x).expect("run the emitted graph");
        println!(
            "emitted {}: batch 4 in {:.2} s",
            arch.name(),
            t.elapsed().as_secs_f64()
        );
        check(
            &format!("emitted {} vs native", arch.name()),
            &ours,
            &native,
        );
        check(
            &format!("emitted {} vs reference", arch.name()),
            &ours,
            get(&fx, "features"),
        );
        checked.push(entry.name);
    }
    for name in ["xception", "inception_v3", "efficientnet_lite0"] {
        assert!(
            checked.contains(&name),
            "{name} has no emitter: {checked:?}"
        );
    }
    let resnets: Vec<&str> = resnet::MODELS.iter().map(|e| e.name).collect();
    assert_eq!(elsewhere, resnets, "checked elsewhere");
}

/// The portable path (what the layers run on a GPU) checked on the CPU
/// against the same references: every native backbone, image and flip,
/// with the project's device kernels (their CPU twins) and with candle's
/// ops alone (the `RUNNER_DEVICE_KERNELS=0` escape hatch).
#[test]
fn portable_ops_path_matches_the_references() {
    use runner_models::portable::{with_candle_ops_only, with_portable_ops};
    for (name, stem) in [
        ("xception", "xception_imagenet_notop"),
        ("inception_v3", "inception_v3_nsfwjs_notop"),
        ("efficientnet_lite0", "efficientnet_lite0_imagenet"),
    ] {
        let fx = fixture(stem);
        let (arch, model) = load(name, stem);
        let (x, xf) = inputs(&fx);
        for candle_only in [false, true] {
            let mode = if candle_only {
                "candle ops only"
            } else {
                "device kernels"
            };
            let t = Instant::now();
            let run = || {
                with_portable_ops(|| {
                    (
                        model.forward_features(&x).expect("forward"),
                        model.forward_features(&xf).expect("forward flipped"),
                    )
                })
            };
            let (f, ff) = if candle_only {
                with_candle_ops_only(run)
            } else {
                run()
            };
            println!(
                "{} (portable, {mode}): 2 batches of 4 in {:.2} s",
                arch.name(),
                t.elapsed().as_secs_f64()
            );
            check(
                &format!("{} portable ({mode}) features", arch.name()),
                &f,
                get(&fx, "features"),
            );
            check(
                &format!("{} portable ({mode}) features_hflip", arch.name()),
                &ff,
                get(&fx, "features_hflip"),
            );
        }
    }
}

/// A GPU precision on the portable path (run on the CPU here: a non-f32
/// input takes it on its own): EfficientNet-Lite0 in f16 against the f32
/// reference, within the reduced-precision bar of 3e-2 x max|reference|.
/// (bf16 cannot run here: candle's CPU matmul has no bf16;
/// `tools/gpu/gpu-check.sh` checks it on a GPU.)
#[test]
fn portable_ops_in_f16_stay_within_3e_2() {
    use candle_core::DType;
    let stem = "efficientnet_lite0_imagenet";
    let fx = fixture(stem);
    let (_, model) = load("efficientnet_lite0", stem);
    let (x, _) = inputs(&fx);
    let f = model
        .forward_features(&x.to_dtype(DType::F16).expect("cast"))
        .and_then(|f| f.to_dtype(DType::F32))
        .expect("forward");
    let e = rel_err(&f, get(&fx, "features"));
    println!("efficientnet_lite0 portable f16: {e:.3e}");
    assert!(e <= 3e-2, "f16: relative error {e:.3e} > 3e-2");
}

/// The ONNX executor in f16 (the portable path, as on a GPU): its float
/// constants follow the input's precision.
#[test]
fn efficientnet_lite0_onnx_export_runs_in_f16() {
    use candle_core::DType;
    use runner_models::onnx::{OnnxBackbone, OnnxOptions};
    let stem = "efficientnet_lite0_imagenet";
    let fx = fixture(stem);
    let opts = OnnxOptions {
        output: Some("features".into()),
        input_layout: None,
        ..Default::default()
    };
    let net = OnnxBackbone::load(&models_dir().join(format!("{stem}.onnx")), &opts, 224)
        .expect("load ONNX backbone");
    let (x, _) = inputs(&fx);
    let f = net
        .forward_features(&x.to_dtype(DType::F16).expect("cast"))
        .and_then(|f| f.to_dtype(DType::F32))
        .expect("forward");
    let e = rel_err(&f, get(&fx, "features"));
    println!("onnx efficientnet_lite0 f16: {e:.3e}");
    assert!(e <= 3e-2, "relative error {e:.3e} > 3e-2");
}
