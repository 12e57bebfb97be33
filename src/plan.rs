//! Stage keys: which feature matrices a spec needs and their content hashes.
//!
//! A feature stage is one backbone x one view x one split. Its key is the
//! BLAKE3 hash of a canonical JSON document holding everything that changes
//! the numbers (image bytes, resize, preprocessing, weights, architecture,
//! view, and [`FEATURE_CODE_VERSION`]) and nothing that does not (folds,
//! dropout, file paths, ids), so head settings never invalidate features.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use crate::cache::FeatureCache;
use crate::data::{Dataset, Item};
use crate::spec::{BackboneSpec, Resize, Spec, View};
use runner_models::{Arch, Preprocess};

/// Bump when a change to decoding, resizing, a backbone's code or what the
/// key hashes changes feature values or keys: every cached feature is then
/// recomputed.
pub const FEATURE_CODE_VERSION: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FeatureStage {
    /// Index into `spec.backbones`.
    pub backbone: usize,
    pub view: View,
    pub split: Split,
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub stages: Vec<FeatureStage>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot use {path}")]
pub struct HashError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

/// BLAKE3 of a file's bytes, streamed through a 1 MiB buffer on the calling
/// thread ([`hash_images`] hashes many files in parallel).
pub fn hash_file(path: &Path) -> Result<String, HashError> {
    let mut hasher = blake3::Hasher::new();
    let err = |source| HashError {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    std::io::copy(
        &mut std::io::BufReader::with_capacity(1 << 20, file),
        &mut hasher,
    )
    .map_err(err)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// What identifies a backbone's weights in the stage key: for the native
/// architectures the checkpoint's tensors whatever the container
/// ([`runner_models::layers::Weights::fingerprint`]: safetensors and Keras
/// `.h5` share features); for an ONNX graph, the file's bytes (its structure
/// is part of what computes the features).
pub fn weights_fingerprint(b: &BackboneSpec) -> Result<String, HashError> {
    if b.arch == Arch::ONNX {
        return hash_file(&b.weights);
    }
    let unreadable = |e| HashError {
        path: b.weights.display().to_string(),
        source: std::io::Error::other(e),
    };
    let weights =
        runner_models::layers::Weights::read(b.arch.name(), &b.weights).map_err(unreadable)?;
    // Weights of another architecture are refused now, not when the
    // backbone is built after the run has started.
    runner_models::registry::detect_flavour(&weights, &(b.arch.entry().probes)())
        .map_err(unreadable)?;
    weights.fingerprint().map_err(unreadable)
}

/// [`weights_fingerprint`], remembered in the cache's memo while the file
/// is unchanged. Computing it checks the weights (the architecture's
/// tensors present, every value finite), so a spec's checks run it before
/// any run starts and the run itself finds it in the memo.
pub fn checked_fingerprint(
    b: &BackboneSpec,
    memo: Option<&FeatureCache>,
) -> Result<String, HashError> {
    match memo {
        // The kind names what the fingerprint depends on besides the file:
        // the architecture's reader and this version.
        Some(cache) => cache.memoised(
            &format!(
                "weights-fingerprint/{}/v{FEATURE_CODE_VERSION}",
                b.arch.name()
            ),
            &[&b.weights],
            || weights_fingerprint(b),
        ),
        None => weights_fingerprint(b),
    }
}

/// One hash over the ordered contents of a list of images.
fn hash_images(items: &[Item]) -> Result<String, HashError> {
    let hashes = items
        .par_iter()
        .map(|item| hash_file(&item.path))
        .collect::<Result<Vec<_>, _>>()?;
    let mut hasher = blake3::Hasher::new();
    for h in hashes {
        hasher.update(h.as_bytes());
        hasher.update(b"\n");
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// The canonical document a feature stage's key hashes.
#[derive(Serialize)]
struct FeatureKey<'a> {
    feature_code_version: u32,
    arch: Arch,
    weights_fingerprint: &'a str,
    input_size: usize,
    preprocess: Preprocess,
    resize: Resize,
    view: View,
    images_blake3: &'a str,
    /// ONNX only; absent for native backbones so their keys are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input_layout: Option<runner_models::onnx::InputLayout>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<runner_models::onnx::TokenPool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prefix_tokens: Option<usize>,
    /// Absent for f32, so f32 keys are unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<crate::spec::Precision>,
}

impl Plan {
    /// Hashes weights and images and derives every feature stage's key.
    /// With a cache, weights fingerprints and image-set hashes are
    /// remembered there while the files' sizes and modification times stay
    /// the same ([`FeatureCache::memoised`]).
    pub fn new(
        spec: &Spec,
        data: &Dataset,
        memo: Option<&FeatureCache>,
    ) -> Result<Plan, HashError> {
        let mut weights_hashes = std::collections::HashMap::<PathBuf, String>::new();
        for b in &spec.backbones {
            if !weights_hashes.contains_key(&b.weights) {
                weights_hashes.insert(b.weights.clone(), checked_fingerprint(b, memo)?);
            }
        }
        let splits: Vec<(Split, String)> = [(Split::Train, &data.train), (Split::Test, &data.test)]
            .into_iter()
            .filter(|(_, items)| !items.is_empty())
            .map(|(split, items)| {
                let hash = match memo {
                    Some(cache) => {
                        let paths: Vec<&Path> = items.iter().map(|i| i.path.as_path()).collect();
                        cache.memoised("images-blake3", &paths, || hash_images(items))?
                    }
                    None => hash_images(items)?,
                };
                Ok((split, hash))
            })
            .collect::<Result<_, HashError>>()?;
        let mut stages = Vec::new();
        for (split, images_hash) in &splits {
            for (i, b) in spec.backbones.iter().enumerate() {
                for &view in &spec.views {
                    let key = stage_key(
                        b,
                        &weights_hashes[&b.weights],
                        view,
                        images_hash,
                        spec.extract.precision,
                    );
                    stages.push(FeatureStage {
                        backbone: i,
                        view,
                        split: *split,
                        key,
                    });
                }
            }
        }
        Ok(Plan { stages })
    }

    pub fn stage(&self, backbone: usize, view: View, split: Split) -> &FeatureStage {
        self.stages
            .iter()
            .find(|s| s.backbone == backbone && s.view == view && s.split == split)
            .expect("every backbone x view x split is planned")
    }
}

fn stage_key(
    b: &BackboneSpec,
    weights_hash: &str,
    view: View,
    images_hash: &str,
    precision: Option<crate::spec::Precision>,
) -> String {
    let doc = FeatureKey {
        feature_code_version: FEATURE_CODE_VERSION,
        arch: b.arch,
        weights_fingerprint: weights_hash,
        input_size: b.input_size,
        preprocess: b.preprocess,
        resize: b.resize,
        view,
        images_blake3: images_hash,
        output: b.output.as_deref(),
        input_layout: b.input_layout,
        pool: b.pool,
        prefix_tokens: b.prefix_tokens,
        precision: precision.filter(|p| *p != crate::spec::Precision::F32),
    };
    let json = serde_json::to_vec(&doc).expect("key serialises");
    blake3::hash(&json).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backbone() -> BackboneSpec {
        BackboneSpec {
            arch: Arch::from_name("xception").expect("registered"),
            weights: "w".into(),
            input_size: 299,
            preprocess: Preprocess::Inception,
            resize: Resize::Box,
            output: None,
            input_layout: None,
            pool: None,
            prefix_tokens: None,
            crop_pct: None,
        }
    }

    #[test]
    fn key_changes_with_what_changes_features_only() {
        let base = stage_key(&backbone(), "w1", View::Original, "i1", None);
        assert_eq!(
            base,
            stage_key(&backbone(), "w1", View::Original, "i1", None)
        );
        assert_ne!(
            base,
            stage_key(&backbone(), "w2", View::Original, "i1", None)
        );
        assert_ne!(base, stage_key(&backbone(), "w1", View::Hflip, "i1", None));
        assert_ne!(
            base,
            stage_key(&backbone(), "w1", View::Original, "i2", None)
        );
        let mut smaller = backbone();
        smaller.input_size = 224;
        assert_ne!(base, stage_key(&smaller, "w1", View::Original, "i1", None));
        // The weights' path is not part of the key: a copy shares the cache.
        let mut moved = backbone();
        moved.weights = "elsewhere/w".into();
        assert_eq!(base, stage_key(&moved, "w1", View::Original, "i1", None));
        // Computing in bf16 changes the numbers, so the key.
        let bf16 = Some(crate::spec::Precision::Bf16);
        assert_ne!(
            base,
            stage_key(&backbone(), "w1", View::Original, "i1", bf16)
        );
        let f32 = Some(crate::spec::Precision::F32);
        assert_eq!(
            base,
            stage_key(&backbone(), "w1", View::Original, "i1", f32)
        );
    }

    #[test]
    fn the_same_weights_in_f16_and_f32_files_share_a_fingerprint() {
        use candle_core::{DType, Device, Tensor};
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::new(&[[0.5f32, -1.25], [3.0, 0.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
        let save = |name: &str, dtype: DType, bias: &Tensor| {
            let path = dir.path().join(name);
            let map = std::collections::HashMap::from([
                (
                    "block1_conv1/kernel".to_string(),
                    w.to_dtype(dtype).unwrap(),
                ),
                (
                    "block14_sepconv2/pointwise_kernel".to_string(),
                    bias.to_dtype(dtype).unwrap(),
                ),
            ]);
            candle_core::safetensors::save(&map, &path).unwrap();
            BackboneSpec {
                weights: path,
                ..backbone()
            }
        };
        let f32_file = save("a.safetensors", DType::F32, &b);
        let f16_file = save("b.safetensors", DType::F16, &b);
        let other = save("c.safetensors", DType::F32, &(&b + 1.0).unwrap());
        assert_ne!(
            hash_file(&f32_file.weights).unwrap(),
            hash_file(&f16_file.weights).unwrap()
        );
        let fp = |b: &BackboneSpec| weights_fingerprint(b).unwrap();
        assert_eq!(fp(&f32_file), fp(&f16_file));
        assert_ne!(fp(&f32_file), fp(&other));
    }
}
