//! Frozen pretrained backbones: registry, pretrained configs and loading.
//!
//! Every backbone takes a preprocessed `(N, 3, H, W)` f32 tensor (NCHW) and
//! returns global-average-pooled features `(N, C)`.

use std::path::Path;

use candle_core::{Device, Tensor};

pub mod cuda;
pub mod efficientnet_lite;
pub mod flavour;
pub mod h5;
pub mod inception_v3;
pub mod layers;
pub mod onnx;
pub mod portable;
pub mod profile;
pub mod pth;
pub mod resnet;
pub mod xception;

pub use efficientnet_lite::EfficientNetLite0;
pub use inception_v3::InceptionV3;
pub use resnet::ResNet;
pub use xception::Xception;

/// The architectures `runner` builds natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    Xception,
    InceptionV3,
    EfficientnetLite0,
    /// torchvision / timm ResNet-50 (`"resnet50"`).
    Resnet50,
    /// Any ONNX image model ([`onnx`]): input size and preprocessing come
    /// from the spec or the graph.
    Onnx,
}

/// How `u8` RGB pixels become network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preprocess {
    /// `x / 127.5 - 1`, range [-1, 1] (Keras `preprocess_input` for Xception / InceptionV3).
    Inception,
    /// `(x - 127) / 128` (EfficientNet-Lite's TF preprocessing).
    EfficientnetLite,
    /// `(x / 255 - mean) / std` with ImageNet statistics (torchvision).
    Imagenet,
}

impl Preprocess {
    /// Per-channel `(scale, offset)` such that `input = x * scale + offset`.
    pub fn scale_offset(self) -> [(f32, f32); 3] {
        match self {
            Preprocess::Inception => [(1.0 / 127.5, -1.0); 3],
            Preprocess::EfficientnetLite => [(1.0 / 128.0, -127.0 / 128.0); 3],
            Preprocess::Imagenet => {
                let mean = [0.485f32, 0.456, 0.406];
                let std = [0.229f32, 0.224, 0.225];
                [0, 1, 2].map(|c| (1.0 / (255.0 * std[c]), -mean[c] / std[c]))
            }
        }
    }
}

/// What a pretrained backbone expects and produces (timm's `pretrained_cfg`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PretrainedCfg {
    pub input_size: usize,
    pub preprocess: Preprocess,
    pub num_features: usize,
}

impl Arch {
    /// The native architectures' configuration; `None` for ONNX graphs.
    pub fn pretrained_cfg(self) -> Option<PretrainedCfg> {
        Some(match self {
            Arch::Xception => PretrainedCfg {
                input_size: 299,
                preprocess: Preprocess::Inception,
                num_features: 2048,
            },
            Arch::InceptionV3 => PretrainedCfg {
                input_size: 299,
                preprocess: Preprocess::Inception,
                num_features: 2048,
            },
            Arch::EfficientnetLite0 => PretrainedCfg {
                input_size: 224,
                preprocess: Preprocess::EfficientnetLite,
                num_features: 1280,
            },
            Arch::Resnet50 => PretrainedCfg {
                input_size: 224,
                preprocess: Preprocess::Imagenet,
                num_features: 2048,
            },
            Arch::Onnx => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Xception => "xception",
            Arch::InceptionV3 => "inception_v3",
            Arch::EfficientnetLite0 => "efficientnet_lite0",
            Arch::Resnet50 => "resnet50",
            Arch::Onnx => "onnx",
        }
    }
}

/// A loaded, frozen feature extractor.
pub trait Backbone: Send + Sync {
    /// `(N, 3, H, W)` preprocessed input -> `(N, num_features)` pooled features.
    fn forward_features(&self, x: &Tensor) -> candle_core::Result<Tensor>;
    fn num_features(&self) -> usize;
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot load {arch} weights from {path} (safetensors, Keras .h5 or PyTorch .pth expected; an ONNX graph needs arch = \"onnx\"; `runner inspect {path}` says what the file holds)")]
    Load {
        arch: &'static str,
        path: String,
        #[source]
        source: candle_core::Error,
    },
    #[error("{arch} weights {path}: tensor `{name}` is missing")]
    MissingTensor {
        arch: &'static str,
        path: String,
        name: String,
    },
    #[error("{arch} weights {path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        arch: &'static str,
        path: String,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
}

/// Loads `arch` from a safetensors file onto `device` (weights kept in f32).
///
/// BatchNorms are folded into the convolutions here. On the CPU the layers
/// run the project's CPU kernels; on another device (or in f16 / bf16) they
/// take the portable path ([`portable`]), with device copies of the weights
/// made on first use.
pub fn load(arch: Arch, weights: &Path, device: &Device) -> Result<Box<dyn Backbone>, ModelError> {
    Ok(match arch {
        Arch::Xception => Box::new(Xception::load(weights, device)?),
        Arch::InceptionV3 => Box::new(InceptionV3::load(weights, device)?),
        Arch::EfficientnetLite0 => Box::new(EfficientNetLite0::load(weights, device)?),
        Arch::Resnet50 => Box::new(ResNet::load(weights, device)?),
        Arch::Onnx => {
            return Err(ModelError::Onnx(onnx::OnnxError::Graph {
                path: weights.display().to_string(),
                message: "an ONNX backbone loads with models::onnx::OnnxBackbone::load".into(),
            }))
        }
    })
}
