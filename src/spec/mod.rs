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

/// Which head is trained on the features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// Dropout + dense softmax, mini-batches, early stopping (the 2017
    /// recipe's head).
    #[default]
    Dense,
    /// The same softmax layer fitted to convergence with an L2 penalty
    /// chosen by inner cross-validation.
    Logistic,
}

impl HeadKind {
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Dense => "dense",
            HeadKind::Logistic => "logistic",
        }
    }
}

/// The resolved `[head]`. Every field is filled whatever the kind, so
/// training code reads its own keys directly; the saved spec holds only the
/// kind's own keys ([`SavedHead`]), so a dense spec serialises (and hashes)
/// as it did before kinds existed, and a logistic run's `spec.toml` names no
/// setting it ignores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "SavedHead", from = "SavedHead")]
pub struct HeadSpec {
    pub kind: HeadKind,
    // Dense only.
    pub dropout: f64,
    pub epochs: usize,
    pub patience: usize,
    pub restore_best: bool,
    pub optimizer: Optimizer,
    pub lr: f64,
    pub batch_size: usize,
    // Logistic only.
    /// Candidate L2 penalties (one: no inner cross-validation).
    pub l2: Vec<f64>,
    /// Folds of the inner cross-validation that picks the penalty.
    pub inner_folds: usize,
    // Either kind.
    /// What is done to the averaged probabilities before they are scored
    /// and written.
    pub calibrate: Calibration,
}

/// `[head] calibrate`: a transformation of the run's averaged
/// probabilities, fitted on its out-of-fold predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Calibration {
    #[default]
    None,
    /// Temperature scaling: `p ∝ p^(1/T)`, one `T` fitted to minimise the
    /// out-of-fold log loss (nested across folds for the reported scores).
    Temperature,
}

impl Default for HeadSpec {
    /// What a spec without a `[head]` table resolves to.
    fn default() -> HeadSpec {
        resolve::default_head()
    }
}

/// `[head]` as written into the saved spec: the kind's keys only.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedHead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<HeadKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dropout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epochs: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    patience: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restore_best: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    optimizer: Option<Optimizer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l2: Option<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inner_folds: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    calibrate: Option<Calibration>,
}

impl From<HeadSpec> for SavedHead {
    fn from(h: HeadSpec) -> SavedHead {
        let dense = h.kind == HeadKind::Dense;
        let logistic = !dense;
        SavedHead {
            kind: logistic.then_some(h.kind),
            dropout: dense.then_some(h.dropout),
            epochs: dense.then_some(h.epochs),
            patience: dense.then_some(h.patience),
            restore_best: dense.then_some(h.restore_best),
            optimizer: dense.then_some(h.optimizer),
            lr: dense.then_some(h.lr),
            batch_size: dense.then_some(h.batch_size),
            l2: logistic.then_some(h.l2),
            inner_folds: logistic.then_some(h.inner_folds),
            calibrate: (h.calibrate != Calibration::None).then_some(h.calibrate),
        }
    }
}

impl From<SavedHead> for HeadSpec {
    fn from(s: SavedHead) -> HeadSpec {
        let d = HeadSpec::default();
        HeadSpec {
            kind: s.kind.unwrap_or(d.kind),
            dropout: s.dropout.unwrap_or(d.dropout),
            epochs: s.epochs.unwrap_or(d.epochs),
            patience: s.patience.unwrap_or(d.patience),
            restore_best: s.restore_best.unwrap_or(d.restore_best),
            optimizer: s.optimizer.unwrap_or(d.optimizer),
            lr: s.lr.unwrap_or(d.lr),
            batch_size: s.batch_size.unwrap_or(d.batch_size),
            l2: s.l2.unwrap_or(d.l2),
            inner_folds: s.inner_folds.unwrap_or(d.inner_folds),
            calibrate: s.calibrate.unwrap_or(d.calibrate),
        }
    }
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

/// The spec `m` of one Xception backbone on a Kaggle layout in `dir`, with
/// `top_keys` (`views = [...]`) added: for the tests of what a run writes.
#[cfg(test)]
pub(crate) fn test_spec(dir: &std::path::Path, top_keys: &str) -> Spec {
    let text = format!(
        "name = \"m\"\n{top_keys}\n[data]\nlayout = \"kaggle\"\nroot = \".\"\n[[backbone]]\narch = \"xception\"\nweights = \"w.safetensors\"\n"
    );
    parse(&text, "m.toml", dir).unwrap()
}
