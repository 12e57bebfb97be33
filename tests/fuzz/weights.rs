//! Weight files: Keras-2 `.h5`, PyTorch `.pth` / `.pt` zips and
//! safetensors, mutated, through the loader the backbones use
//! ([`Weights::read`] and its fingerprint) and through `runner inspect`.

use std::path::Path;

use runner_models::layers::Weights;

use crate::harness::fuzz;
use crate::mutate::{fixture, mutated};

fn data(file: &str) -> (&'static str, &'static [u8]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file);
    (Box::leak(file.to_string().into_boxed_str()), fixture(&path))
}

/// Writes `bytes` under `name` in `dir` and reads it every way runner does.
fn read(dir: &Path, name: &str, bytes: &[u8]) -> bool {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let loaded = Weights::read("fuzz", &path).is_ok_and(|w| {
        w.summary();
        w.fingerprint().is_ok()
    });
    runner::inspect::inspect(&path, true, None).is_ok() && loaded
}

#[test]
fn h5_reader_survives_mutated_files() {
    let dir = tempfile::tempdir().unwrap();
    let bases = vec![data("xception_small_f16.h5"), data("xception_small.h5")];
    fuzz("h5", 3000, mutated(bases), |m| {
        read(dir.path(), "w.h5", &m.bytes)
    });
}

#[test]
fn pth_reader_survives_mutated_files() {
    let dir = tempfile::tempdir().unwrap();
    let bases = vec![data("timm/tiny_bare.pt"), data("timm/tiny_nested.pth")];
    fuzz("pth", 4000, mutated(bases), |m| {
        read(dir.path(), "w.pth", &m.bytes)
    });
}

#[test]
fn safetensors_reading_survives_mutated_files() {
    let dir = tempfile::tempdir().unwrap();
    let bases = vec![
        data("timm/resnet18.safetensors"),
        data("timm/tiny_expected.safetensors"),
    ];
    fuzz("safetensors", 4000, mutated(bases), |m| {
        read(dir.path(), "w.safetensors", &m.bytes)
    });
}
