//! Keras-2 `.h5` weight files (`models::h5`): the committed h5py-written files
//! in `tests/data/` (written by `tools/fixtures/make_keras_h5.py tests/data --small`)
//! read back bit-exactly against the shared safetensors, malformed files fail
//! with an error naming the file and object, and (ignored by default: the
//! full files are ~90 MB each, made on demand) the native Xception and
//! InceptionV3 loaded from full `.h5` files give the same features as from
//! the safetensors:
//!
//! ```sh
//! python tools/fixtures/make_keras_h5.py /tmp/h5fx
//! RUNNER_H5_FIXTURES=/tmp/h5fx cargo test --test main keras_h5 -- --ignored
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use runner_models::h5::read_keras_weights;
use runner_models::layers::Weights;
use runner_models::{self as models, Arch, BackboneSpec};

use crate::common;

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

fn safetensors(stem: &str) -> HashMap<String, Tensor> {
    let path = common::model(&format!("{stem}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The raw bits of `t` (f16 or f32), for exact comparisons.
fn bits(t: &Tensor) -> Vec<u32> {
    let flat = t.flatten_all().expect("flatten");
    match t.dtype() {
        DType::F16 => flat
            .to_vec1::<half::f16>()
            .expect("f16")
            .into_iter()
            .map(|v| v.to_bits() as u32)
            .collect(),
        DType::F32 => flat
            .to_vec1::<f32>()
            .expect("f32")
            .into_iter()
            .map(f32::to_bits)
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

const SMALL_LAYERS: [&str; 6] = [
    "block1_conv1",
    "block1_conv1_bn",
    "block2_sepconv1",
    "block2_sepconv1_bn",
    "conv2d_1",
    "batch_normalization_1",
];

/// Every tensor of the shared safetensors whose layer is in `layers`.
fn expected(layers: &[&str]) -> HashMap<String, Tensor> {
    safetensors("xception_imagenet_notop")
        .into_iter()
        .filter(|(k, _)| layers.iter().any(|l| k.split('/').next() == Some(l)))
        .collect()
}

#[test]
fn small_f32_file_reads_back_exactly() {
    let got = read_keras_weights(&data("xception_small.h5")).expect("read .h5");
    let want = expected(&SMALL_LAYERS);
    assert_eq!(want.len(), 16, "safetensors subset");
    let mut names: Vec<_> = got.keys().cloned().collect();
    names.sort();
    let mut want_names: Vec<_> = want.keys().cloned().collect();
    want_names.sort();
    // Same names (LAYER/VAR, no `:0`), none for the 152 layers without weights.
    assert_eq!(names, want_names);
    for (name, w) in &want {
        let g = &got[name];
        assert_eq!(g.dtype(), DType::F32, "{name}");
        assert_eq!(g.dims(), w.dims(), "{name}");
        // The f16 safetensors value upcast to f32 is exactly what h5py stored.
        let w32 = w.to_dtype(DType::F32).expect("upcast");
        assert_eq!(bits(g), bits(&w32), "{name}");
    }
}

#[test]
fn small_f16_file_reads_back_exactly() {
    let got = read_keras_weights(&data("xception_small_f16.h5")).expect("read .h5");
    let want = expected(&SMALL_LAYERS[..2]);
    assert_eq!(got.len(), want.len());
    for (name, w) in &want {
        let g = got.get(name).unwrap_or_else(|| panic!("missing {name}"));
        assert_eq!(g.dtype(), DType::F16, "{name}");
        assert_eq!(g.dims(), w.dims(), "{name}");
        assert_eq!(bits(g), bits(w), "{name}");
    }
}

/// `Weights::read` picks the reader by extension; lookups work as for
/// safetensors (converted to f32, shape checked).
#[test]
fn weights_read_dispatches_on_extension() {
    let w = Weights::read("xception", &data("xception_small.h5")).expect("read");
    let k = w
        .get("block2_sepconv1/depthwise_kernel", &[3, 3, 64, 1])
        .expect("get");
    assert_eq!(k.dtype(), DType::F32);
    let e = w
        .get("block14_sepconv2/pointwise_kernel", &[1, 1, 1536, 2048])
        .expect_err("a tensor the small file lacks");
    assert!(e.to_string().contains("block14_sepconv2/pointwise_kernel"));
}

fn load_err(path: &Path) -> String {
    let e = Weights::read("xception", path)
        .err()
        .expect("loading must fail");
    let msg = format!("{:#}", anyhow::Error::from(e));
    println!("{msg}");
    msg
}

#[test]
fn malformed_files_are_errors_naming_file_and_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let orig = std::fs::read(data("xception_small.h5")).expect("read");

    // Not an HDF5 file at all (a safetensors file renamed .h5).
    let fake = dir.path().join("renamed.h5");
    std::fs::copy(common::model("xception_imagenet_notop.safetensors"), &fake).expect("copy");
    let msg = load_err(&fake);
    assert!(msg.contains("renamed.h5"), "{msg}");
    assert!(msg.contains("not a readable HDF5 file"), "{msg}");
    assert!(msg.contains("Keras-2 weights file"), "{msg}");

    let patched = |name: &str, from: &[u8], to: &[u8]| {
        let at = orig
            .windows(from.len())
            .position(|w| w == from)
            .expect("pattern in file");
        let mut bytes = orig.clone();
        bytes[at..at + to.len()].copy_from_slice(to);
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path
    };

    // A valid HDF5 file without Keras' attributes.
    let msg = load_err(&patched("plain.h5", b"layer_names", b"layer_nameX"));
    assert!(msg.contains("plain.h5"), "{msg}");
    assert!(msg.contains("no attribute `layer_names`"), "{msg}");

    // `weight_names` lists a dataset the file lacks: the error names it.
    let from = b"block1_conv1/kernel:0";
    let msg = load_err(&patched(
        "renamed_weight.h5",
        from,
        b"block1_conv1/kernel:9",
    ));
    assert!(msg.contains("renamed_weight.h5"), "{msg}");
    assert!(
        msg.contains("dataset `/block1_conv1/block1_conv1/kernel:9`"),
        "{msg}"
    );

    // Truncated.
    let cut = dir.path().join("cut.h5");
    std::fs::write(&cut, &orig[..orig.len() - 100]).expect("write");
    let msg = load_err(&cut);
    assert!(msg.contains("cut.h5"), "{msg}");
    assert!(msg.contains("truncated or damaged"), "{msg}");

    // Missing file.
    let msg = load_err(&dir.path().join("absent.h5"));
    assert!(
        msg.contains("absent.h5") && msg.contains("No such file"),
        "{msg}"
    );
}

/// Truncated and corrupted copies never panic: each read is `Ok` or `Err`.
#[test]
fn damaged_files_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("damaged.h5");
    let orig = std::fs::read(data("xception_small_f16.h5")).expect("read");
    let mut cases: Vec<Vec<u8>> = (0..orig.len())
        .step_by(37)
        .map(|n| orig[..n].to_vec())
        .collect();
    let mut seed: u64 = 2017;
    for _ in 0..1500 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut d = orig.clone();
        let at = (seed >> 33) as usize % orig.len();
        d[at] ^= 1 << ((seed >> 20) % 8);
        cases.push(d);
    }
    let mut errors = 0;
    for bytes in cases {
        std::fs::write(&path, &bytes).expect("write");
        let r = std::panic::catch_unwind(|| read_keras_weights(&path));
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                errors += 1;
                assert!(e.to_string().contains("damaged.h5"), "{e}");
            }
            Err(_) => panic!("the reader panicked on a damaged file"),
        }
    }
    assert!(errors > 0);
}

// ---------------------------------------------------------------------------
// Full files: made on demand, not committed (~90 MB each)
// ---------------------------------------------------------------------------

fn full_h5(stem: &str) -> PathBuf {
    let how = "make them with `pip install h5py numpy safetensors && \
               python tools/fixtures/make_keras_h5.py OUTDIR`, then run \
               `RUNNER_H5_FIXTURES=OUTDIR cargo test --test main keras_h5 -- --ignored`";
    let dir = std::env::var_os("RUNNER_H5_FIXTURES")
        .unwrap_or_else(|| panic!("RUNNER_H5_FIXTURES is not set: the full Keras .h5 files are generated, not committed; {how}"));
    let path = Path::new(&dir).join(format!("{stem}.h5"));
    assert!(path.is_file(), "{} does not exist; {how}", path.display());
    path
}

/// `input_nhwc` of the shared fixture as NCHW.
fn fixture_input(stem: &str) -> Tensor {
    let path = common::model(&format!("{stem}.fixture.safetensors"));
    let fx = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    fx["input_nhwc"]
        .permute((0, 3, 1, 2))
        .and_then(|t| t.contiguous())
        .expect("nhwc -> nchw")
}

fn check_full(name: &str, stem: &str) {
    let arch = Arch::from_name(name).expect("registered");
    let spec = |weights: PathBuf| BackboneSpec::pretrained(arch, weights).expect("native");
    let h5 = full_h5(stem);
    let st = common::model(&format!("{stem}.safetensors"));
    let x = fixture_input(stem);
    let from_h5 = models::create(&spec(h5.clone()), &Device::Cpu).expect("load from .h5");
    let from_st = models::create(&spec(st.clone()), &Device::Cpu).expect("load from safetensors");
    let a = from_h5.forward_features(&x).expect("forward (.h5)");
    let b = from_st.forward_features(&x).expect("forward (safetensors)");
    assert_eq!(a.dims(), &[4, 2048]);
    // Same f32 weights, same kernels: the features are identical.
    let (a, b) = (bits(&a), bits(&b));
    assert!(a == b, "{name}: features from .h5 differ from safetensors");
    // And they share cached features: the stage key's weights fingerprint
    // does not depend on the container.
    let fp =
        |weights: PathBuf| runner::plan::weights_fingerprint(&spec(weights)).expect("fingerprint");
    assert_eq!(fp(h5), fp(st), "{name}: .h5 and safetensors fingerprints");
}

#[test]
#[ignore = "needs the full .h5 files: RUNNER_H5_FIXTURES=DIR (tools/fixtures/make_keras_h5.py DIR)"]
fn xception_from_full_h5_matches_safetensors() {
    check_full("xception", "xception_imagenet_notop");
}

#[test]
#[ignore = "needs the full .h5 files: RUNNER_H5_FIXTURES=DIR (tools/fixtures/make_keras_h5.py DIR)"]
fn inception_v3_from_full_h5_matches_safetensors() {
    check_full("inception_v3", "inception_v3_nsfwjs_notop");
}
