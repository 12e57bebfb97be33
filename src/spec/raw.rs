//! The spec file as written: every key optional (a spec that `extends`
//! another may set only what it changes; the resolver names what the merged
//! spec still lacks), unknown keys rejected (serde names the key, its line
//! and the allowed keys).

use std::path::PathBuf;

use serde::Deserialize;

use super::{HeadKind, Layout, OnBadImage, Optimizer, Precision, Resize, View};
use runner_models::onnx::InputLayout;
use runner_models::{Arch, Preprocess};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    /// Another spec (relative to this one) whose tables this one overrides
    /// key by key. Read from the table by [`super::compose`]; declared here
    /// so the schema check knows the key and its type.
    #[allow(dead_code)]
    pub extends: Option<String>,
    pub name: Option<String>,
    pub seed: Option<u64>,
    pub views: Option<Vec<View>>,
    pub device: Option<String>,
    pub data: Option<RawData>,
    #[serde(rename = "backbone")]
    pub backbones: Option<Vec<RawBackbone>>,
    pub extract: Option<RawExtract>,
    pub cv: Option<RawCv>,
    pub head: Option<RawHead>,
    /// Dotted keys mapped to lists of values, plus `mode`; read from the
    /// table and checked by [`super::sweep`].
    #[allow(dead_code)]
    pub sweep: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    pub layout: Option<Layout>,
    /// Kaggle layout: folder holding `labels.csv`, `train/`, `test/`,
    /// `sample_submission.csv`; each can be overridden below.
    pub root: Option<PathBuf>,
    pub labels: Option<PathBuf>,
    pub train_dir: Option<PathBuf>,
    pub test_dir: Option<PathBuf>,
    pub sample_submission: Option<PathBuf>,
    pub test_labels: Option<PathBuf>,
    pub image_ext: Option<String>,
    pub on_bad_image: Option<OnBadImage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackbone {
    pub arch: Arch,
    pub weights: PathBuf,
    pub input_size: Option<usize>,
    pub preprocess: Option<Preprocess>,
    /// Per-channel statistics instead of a preset (timm's `mean` / `std`).
    pub mean: Option<Vec<f64>>,
    pub std: Option<Vec<f64>>,
    pub resize: Option<Resize>,
    /// ONNX only: the graph value holding the features.
    pub output: Option<String>,
    /// ONNX only: `nchw` or `nhwc`; default read from the graph.
    pub input_layout: Option<InputLayout>,
    /// ONNX only: how a token output becomes one vector.
    pub pool: Option<runner_models::onnx::TokenPool>,
    /// ONNX only, with a pool over the patch tokens.
    pub prefix_tokens: Option<usize>,
    pub crop_pct: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExtract {
    pub batch_size: Option<usize>,
    pub decode_threads: Option<usize>,
    pub precision: Option<Precision>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCv {
    pub folds: Option<usize>,
    pub stratified: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHead {
    pub dropout: Option<f64>,
    pub epochs: Option<usize>,
    pub patience: Option<usize>,
    pub restore_best: Option<bool>,
    pub optimizer: Option<Optimizer>,
    pub lr: Option<f64>,
    pub batch_size: Option<usize>,
    pub kind: Option<HeadKind>,
    pub l2: Option<Penalties>,
    pub inner_folds: Option<usize>,
    pub calibrate: Option<super::Calibration>,
}

/// `[head] l2`: one penalty or a list of candidates.
#[derive(Debug)]
pub struct Penalties(pub Vec<f64>);

impl<'de> Deserialize<'de> for Penalties {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Penalties, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Penalties;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a penalty (a number, e.g. 0.01) or a list of candidate penalties")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Penalties, E> {
                Ok(Penalties(vec![v]))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Penalties, E> {
                Ok(Penalties(vec![v as f64]))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Penalties, E> {
                Ok(Penalties(vec![v as f64]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Penalties, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<f64>()? {
                    out.push(v);
                }
                Ok(Penalties(out))
            }
        }
        d.deserialize_any(Visitor)
    }
}
