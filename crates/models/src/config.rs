//! What a backbone expects of its input (timm's `pretrained_cfg`) and the
//! `[[backbone]]` table of a spec that names one.
//!
//! [`Arch`] is a handle to a [`crate::registry`] entry; it serialises as the
//! entry's name (`"xception"`, `"resnet50"`, `"onnx"`), so the resolved spec
//! and every key derived from it spell an architecture the same way however
//! the registry is laid out.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::onnx::{InputLayout, OnnxOptions, TokenPool};
use crate::registry::{self, ModelEntry};

pub use crate::preprocess::Preprocess;

/// The filter that resizes a photo to the input size (timm's `interpolation`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// Pillow's `Image.BOX`: the mean of the source pixels whose centres
    /// fall inside each output pixel (how the shared fixtures were made).
    #[default]
    Box,
    /// OpenCV's `INTER_AREA`: partially covered pixels weighted by overlap
    /// (the 2017 notebook's `cv2.resize`).
    Area,
    /// Pillow's `Image.BILINEAR` (antialiased when shrinking), as
    /// torchvision's `Resize` on PIL images.
    Bilinear,
    /// Pillow's `Image.BICUBIC` (`a = -0.5`, antialiased when shrinking):
    /// timm's `interpolation = "bicubic"` for most of its models.
    Bicubic,
}

/// What a pretrained backbone expects and produces (timm's `pretrained_cfg`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PretrainedCfg {
    /// Square input side, pixels.
    pub input_size: usize,
    pub preprocess: Preprocess,
    pub resize: Resize,
    /// Width of the pooled feature vector.
    pub num_features: usize,
}

impl PretrainedCfg {
    /// A square `input_size` input resized with [`Resize::Box`].
    pub const fn new(input_size: usize, preprocess: Preprocess, num_features: usize) -> Self {
        Self {
            input_size,
            preprocess,
            resize: Resize::Box,
            num_features,
        }
    }
}

/// A registered architecture: a `Copy` handle to its [`ModelEntry`],
/// (de)serialised as the entry's name.
#[derive(Clone, Copy)]
pub struct Arch(&'static ModelEntry);

impl Arch {
    /// Any ONNX image model ([`crate::onnx`]): input size and preprocessing
    /// come from the spec or the graph.
    pub const ONNX: Arch = Arch(&registry::ONNX);

    pub fn entry(self) -> &'static ModelEntry {
        self.0
    }

    /// The registered name, as specs write it.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// The architecture's own configuration; `None` where the weights file
    /// defines it (ONNX graphs).
    pub fn pretrained_cfg(self) -> Option<PretrainedCfg> {
        self.0.pretrained_cfg
    }

    /// The registered architecture called `name`.
    pub fn from_name(name: &str) -> Option<Arch> {
        registry::find(name).map(Arch)
    }
}

impl From<&'static ModelEntry> for Arch {
    fn from(entry: &'static ModelEntry) -> Self {
        Arch(entry)
    }
}

impl PartialEq for Arch {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Arch {}

impl std::hash::Hash for Arch {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl fmt::Debug for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Arch({:?})", self.name())
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Arch::from_name(&name).ok_or_else(|| {
            let known: Vec<String> = registry::all().map(|e| format!("`{}`", e.name)).collect();
            serde::de::Error::custom(format!(
                "unknown architecture `{name}`, expected one of {}",
                known.join(", ")
            ))
        })
    }
}

/// One `[[backbone]]` table of a resolved spec: the architecture, its
/// weights and how images are prepared for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneSpec {
    pub arch: Arch,
    pub weights: PathBuf,
    pub input_size: usize,
    pub preprocess: Preprocess,
    pub resize: Resize,
    /// The graph value holding the features (ONNX only). Omitted when unset:
    /// a native backbone has no graph, and the serialised spec names only
    /// what applies to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The graph input's axis order (ONNX only, like `output`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_layout: Option<InputLayout>,
    /// How a token output becomes one vector (ONNX only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<TokenPool>,
    /// Tokens before the patch tokens, for `pool = "mean"` / `"cls+mean"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_tokens: Option<usize>,
    /// timm's `crop_pct`: the shorter side resized to
    /// `floor(input_size / crop_pct)`, then the centre cropped; unset, the
    /// whole photo is resized to the square input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop_pct: Option<f64>,
}

impl BackboneSpec {
    /// `weights` run as `arch` with its pretrained configuration; `None` for
    /// an architecture without one (ONNX: the spec says what the graph needs).
    pub fn pretrained(arch: Arch, weights: impl Into<PathBuf>) -> Option<Self> {
        let cfg = arch.pretrained_cfg()?;
        Some(Self {
            arch,
            weights: weights.into(),
            input_size: cfg.input_size,
            preprocess: cfg.preprocess,
            resize: cfg.resize,
            output: None,
            input_layout: None,
            pool: None,
            prefix_tokens: None,
            crop_pct: None,
        })
    }

    /// The shorter side a photo is resized to before its centre is
    /// cropped (timm's `scale_size`), when `crop_pct` is set.
    pub fn shorter_side(&self) -> Option<usize> {
        self.crop_pct
            .map(|p| (self.input_size as f64 / p).floor() as usize)
    }

    pub fn onnx_options(&self) -> OnnxOptions {
        OnnxOptions {
            output: self.output.clone(),
            input_layout: self.input_layout,
            pool: self.pool,
            prefix_tokens: self.prefix_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_serialises_as_its_registered_name() {
        for entry in registry::all() {
            let arch = Arch::from(entry);
            let json = serde_json::to_string(&arch).expect("serialise");
            assert_eq!(json, format!("\"{}\"", entry.name));
            let back: Arch = serde_json::from_str(&json).expect("parse");
            assert_eq!(back, arch);
        }
    }

    #[test]
    fn an_unknown_arch_is_refused_with_the_registered_names() {
        let err = serde_json::from_str::<Arch>("\"resnet9000\"")
            .expect_err("unknown")
            .to_string();
        assert!(err.contains("resnet9000"), "{err}");
        for entry in registry::all() {
            assert!(err.contains(&format!("`{}`", entry.name)), "{err}");
        }
    }

    #[test]
    fn pretrained_spec_takes_the_entrys_defaults() {
        let arch = Arch::from_name("resnet50").expect("registered");
        let spec = BackboneSpec::pretrained(arch, "w.pth").expect("native");
        assert_eq!(spec.input_size, 224);
        assert_eq!(spec.preprocess, Preprocess::Imagenet);
        assert!(BackboneSpec::pretrained(Arch::ONNX, "m.onnx").is_none());
    }
}
