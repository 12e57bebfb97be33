//! Frozen pretrained backbones: the registry, pretrained configs and loading.
//!
//! - [`registry`]: one [`registry::ModelEntry`] per architecture (name,
//!   [`PretrainedCfg`], the tensor names that identify its checkpoints,
//!   loader); [`Arch`] is a handle to an entry, [`create`] builds any of them.
//! - [`config`]: [`Preprocess`], [`Resize`], [`PretrainedCfg`] and the
//!   [`BackboneSpec`] a spec's `[[backbone]]` table resolves to.
//! - One file per architecture ([`xception`], [`inception_v3`],
//!   [`efficientnet_lite`], [`resnet`]) and the ONNX executor ([`onnx`]),
//!   over the [`layers`] and the checkpoint readers ([`h5`], [`pth`]).
//!
//! Every backbone takes a preprocessed `(N, 3, H, W)` f32 tensor (NCHW) and
//! returns global-average-pooled features `(N, C)`.

use candle_core::{Device, Tensor};

pub mod config;
pub mod cuda;
pub mod efficientnet_lite;
pub mod flavour;
pub mod h5;
pub mod inception_v3;
pub mod layers;
pub mod onnx;
pub mod portable;
pub mod preprocess;
pub mod profile;
pub mod pth;
pub mod registry;
pub mod resnet;
pub mod weights_view;
pub mod xception;

pub use config::{Arch, BackboneSpec, Preprocess, PretrainedCfg, Resize};

pub use efficientnet_lite::EfficientNetLite0;
pub use inception_v3::InceptionV3;
pub use resnet::ResNet;
pub use xception::Xception;

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
    #[error("{arch} weights {path}: tensor `{name}` holds {count} NaN or infinite value(s) of {total}: the file is damaged (or saved from a diverged model); download it again")]
    NonFinite {
        arch: &'static str,
        path: String,
        name: String,
        count: usize,
        total: usize,
    },
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
}

/// Builds the backbone a `[[backbone]]` table describes, with its
/// registered loader ([`registry`]): a native architecture from its
/// checkpoint (safetensors, Keras `.h5` or PyTorch `.pth`), or an ONNX graph.
///
/// BatchNorms are folded into the convolutions at load. On the CPU the layers
/// run the project's CPU kernels; on another device (or in f16 / bf16) they
/// take the portable path ([`portable`]), with device copies of the weights
/// made on first use.
pub fn create(spec: &BackboneSpec, device: &Device) -> Result<Box<dyn Backbone>, ModelError> {
    (spec.arch.entry().load)(spec, device)
}
