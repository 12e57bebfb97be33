//! Experiment specs: TOML in, a validated [`Spec`] with every default filled
//! in out.
//!
//! `raw` mirrors the file (serde, unknown keys rejected, so a typo is an error
//! rather than a silently ignored setting); `compose` follows `extends` and
//! anchors paths; `overrides` applies `--set`; `sweep` expands `[sweep]`;
//! `load` strings them together; `resolve` fills in defaults. [`Spec`] is the
//! resolved form the rest of the tool uses and the run directory records as
//! `spec.toml`, with absolute paths, so the saved file runs again as it is.

mod compose;
mod load;
pub mod overrides;
mod raw;
mod resolve;
pub mod sweep;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{load, load_experiment, parse, Experiment, Member, Overrides};
pub use resolve::{is_device_name, DEFAULT_EXTRACT_BATCH, DEFAULT_GPU_EXTRACT_BATCH};

/// Longest spec (and sweep member) name: a run directory's name adds ~30
/// characters to it, and file systems allow 255 bytes.
pub const MAX_NAME_LEN: usize = 180;
pub use runner_models::{BackboneSpec, Resize};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, unknown keys, wrong types: the message carries line and
    /// column and, for enums and keys, the allowed values.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// A `--set`, `--sweep` or sweep value that does not fit the spec.
    #[error("{flag} {arg}: {message}")]
    Override {
        flag: &'static str,
        arg: String,
        message: String,
    },
    #[error("{path}: `{key}` {problem}; {allowed}")]
    Invalid {
        path: String,
        key: String,
        problem: String,
        allowed: String,
    },
}

/// A view of every image the features are computed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum View {
    Original,
    /// Mirrored left to right (width axis reversed).
    Hflip,
}

impl View {
    pub fn name(self) -> &'static str {
        match self {
            View::Original => "original",
            View::Hflip => "hflip",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `labels.csv` (`id,label`), `train/<id>.jpg`, `test/<id>.jpg`,
    /// `sample_submission.csv`: Kaggle's Dog Breed Identification.
    Kaggle,
    /// One folder per class under `train_dir`; test images flat in `test_dir`.
    Folders,
}

/// Floating-point format the backbones compute in (features are stored as
/// f32 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    F32,
    /// bfloat16: GPUs only (the CPU kernels are f32).
    Bf16,
    /// float16: GPUs only.
    F16,
}

impl Precision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
            Precision::F16 => candle_core::DType::F16,
        }
    }
}

/// What a run does with an image that is damaged (JPEG data the decoder
/// had to fill in) or, under `Skip`, does not decode at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadImage {
    /// The run fails naming the image; nothing is cached for its stage.
    Error,
    /// The decoded pixels are used, with a warning naming the image.
    #[default]
    Warn,
    /// Training images are left out before the folds are planned, each
    /// named in a warning; test images (every one is a submission row) are
    /// used with a warning, as under `Warn`.
    Skip,
}

impl OnBadImage {
    pub fn name(self) -> &'static str {
        match self {
            OnBadImage::Error => "error",
            OnBadImage::Warn => "warn",
            OnBadImage::Skip => "skip",
        }
    }

    fn is_default(&self) -> bool {
        *self == OnBadImage::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    /// Keras-2 Adagrad: accumulators from 0, epsilon 1e-7.
    Adagrad,
    Adam,
}

/// A resolved experiment: every default filled in, every path absolute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    pub seed: u64,
    pub views: Vec<View>,
    /// `auto | cpu | cuda | cuda:N`; `--device` overrides it. Omitted from
    /// the resolved spec when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub data: DataSpec,
    #[serde(rename = "backbone")]
    pub backbones: Vec<BackboneSpec>,
    pub extract: ExtractSpec,
    pub cv: CvSpec,
    pub head: HeadSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub layout: Layout,
    pub train_dir: PathBuf,
    /// Kaggle layout: `id,label` CSV for the training images.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_submission: Option<PathBuf>,
    /// `id,label` answer key for the test images; scores test predictions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_labels: Option<PathBuf>,
    /// File extension of `<id>.<ext>` images in the Kaggle layout.
    pub image_ext: String,
    /// Omitted when `warn`, the default, so specs that do not set it keep
    /// their hash (and saved specs from before it existed still read).
    #[serde(default, skip_serializing_if = "OnBadImage::is_default")]
    pub on_bad_image: OnBadImage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    /// Images per forward pass; default ([`crate::features::batch_size`]):
    /// 16 on the CPU, 128 on a GPU. Absent when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Threads decoding and resizing JPEGs ahead of the backbones; default
    /// ([`crate::features::decode_threads`]): one beside the CPU backbones,
    /// every core when the backbones run on a GPU. Omitted when unset: the
    /// default depends on the device, not on the experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_threads: Option<usize>,
    /// Default f32; `bf16` / `f16` on GPUs only. Omitted for f32, the
    /// default, so an f32 spec reads the same whether it names it or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

impl ExtractSpec {
    pub fn precision(&self) -> Precision {
        self.precision.unwrap_or(Precision::F32)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CvSpec {
    /// 1 = one stratified 80/20 split (the reference's "one fold" stage).
    pub folds: usize,
    /// false = contiguous blocks in file order, as the 2017 notebook did.
    pub stratified: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    pub dropout: f64,
    pub epochs: usize,
    pub patience: usize,
    pub restore_best: bool,
    pub optimizer: Optimizer,
    pub lr: f64,
    pub batch_size: usize,
}

impl Spec {
    /// Short content hash of the resolved spec, for run directory names.
    pub fn short_hash(&self) -> String {
        let json = serde_json::to_vec(self).expect("spec serialises");
        blake3::hash(&json).to_hex()[..8].to_string()
    }

    /// The resolved spec as TOML, as written into the run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("spec serialises to TOML")
    }
}
