//! Which framework a checkpoint comes from, and what that means for loading
//! and running a native backbone.
//!
//! The same architecture is not always the same function in Keras and in
//! PyTorch: Keras / TF "same" padding puts the odd extra row of a strided
//! window at the bottom / right where PyTorch pads symmetrically, Keras
//! BatchNormalization uses epsilon 1e-3 where `nn.BatchNorm2d` defaults to
//! 1e-5, and Keras average pooling excludes the padding that PyTorch's
//! `avg_pool2d` counts. A backbone loaded from Keras-named weights computes
//! what Keras computes; one loaded from PyTorch-named weights (timm /
//! torchvision) computes what PyTorch computes. Each architecture detects the
//! [`Flavour`] from its tensor names, keeps its documented name map from its
//! Keras layers to the PyTorch modules, and states what else differs; the
//! kernel layouts and BatchNorm naming are handled here.

use candle_core::Device;

use super::layers::{BatchNorm, Conv2d, Conv2dConfig, Pad4, Padding, Weights, BN_EPS};
use super::ModelError;

/// Whose tensor names (and numerics) a checkpoint follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// Keras-2 layer names `LAYER/VAR`: kernels HWIO, depthwise kernels
    /// `(kh, kw, C, 1)`, BatchNorm `LAYER/{gamma,beta,moving_mean,moving_variance}`
    /// with epsilon 1e-3.
    Keras,
    /// PyTorch state-dict names `MODULE.PARAM` (timm, torchvision): kernels
    /// OIHW, depthwise kernels `(C, 1, kh, kw)`, BatchNorm
    /// `MODULE.{weight,bias,running_mean,running_var}` with the module's epsilon.
    Torch,
}

impl Flavour {
    /// [`Flavour::Keras`] if the checkpoint holds `keras_probe`,
    /// [`Flavour::Torch`] if it holds `torch_probe`, otherwise an error naming
    /// both.
    pub fn detect(w: &Weights, keras_probe: &str, torch_probe: &str) -> Result<Self, ModelError> {
        if w.contains(keras_probe) {
            Ok(Flavour::Keras)
        } else if w.contains(torch_probe) {
            Ok(Flavour::Torch)
        } else {
            Err(w.candle_err(candle_core::Error::Msg(format!(
                "neither `{keras_probe}` (Keras-2 names) nor `{torch_probe}` \
                 (PyTorch / timm / torchvision names) is in the checkpoint"
            ))))
        }
    }

    /// PyTorch explicit symmetric padding `p` on all sides in the Torch
    /// flavour, `keras` in the Keras flavour.
    pub fn padding(self, keras: Padding, torch_pad: usize) -> Padding {
        match self {
            Flavour::Keras => keras,
            Flavour::Torch => Padding::Explicit(Pad4::uniform(torch_pad)),
        }
    }
}

/// A convolution with its BatchNorm folded in.
pub struct FoldedConv {
    /// OIHW, flattened.
    pub kernel: Vec<f32>,
    pub dims: [usize; 4],
    pub bias: Vec<f32>,
}

/// How one architecture reads a checkpoint of a given [`Flavour`]: tensor
/// layouts and the BatchNorm numerics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Convention {
    pub flavour: Flavour,
    /// BatchNorm epsilon.
    pub bn_eps: f32,
    /// Whether every BatchNorm must have a scale (`gamma` / `weight`); when
    /// `false` a missing one means 1 (Keras `scale=False`).
    pub bn_scale: bool,
}

impl Convention {
    /// Keras-2 weights: epsilon 1e-3.
    pub fn keras(bn_scale: bool) -> Self {
        Self {
            flavour: Flavour::Keras,
            bn_eps: BN_EPS,
            bn_scale,
        }
    }

    /// PyTorch weights whose BatchNorms use epsilon `bn_eps`.
    pub fn torch(bn_eps: f32) -> Self {
        Self {
            flavour: Flavour::Torch,
            bn_eps,
            bn_scale: true,
        }
    }

    /// The dense kernel `name` as OIHW, flattened, with its OIHW dims.
    pub fn conv_kernel(
        &self,
        w: &Weights,
        name: &str,
    ) -> Result<(Vec<f32>, [usize; 4]), ModelError> {
        match self.flavour {
            Flavour::Keras => w.keras_conv_kernel(name),
            Flavour::Torch => w.kernel4(name, None),
        }
    }

    /// The depthwise kernel `name` (one filter per channel) as `(C, kh, kw)`.
    pub fn depthwise_kernel(
        &self,
        w: &Weights,
        name: &str,
    ) -> Result<(Vec<f32>, [usize; 3]), ModelError> {
        match self.flavour {
            Flavour::Keras => w.keras_depthwise_kernel(name),
            Flavour::Torch => {
                let (v, [c, m, kh, kw]) = w.kernel4(name, None)?;
                if m != 1 {
                    return Err(w.shape_err(name, vec![c, 1, kh, kw], vec![c, m, kh, kw]));
                }
                Ok((v, [c, kh, kw]))
            }
        }
    }

    /// The BatchNorm layer (Keras) or module (PyTorch) `prefix` over `c` channels.
    pub fn bn(&self, w: &Weights, prefix: &str, c: usize) -> Result<BatchNorm, ModelError> {
        let mut bn = match self.flavour {
            Flavour::Keras => w.keras_bn(prefix, c, self.bn_scale)?,
            Flavour::Torch => w.torch_bn(prefix, c, self.bn_eps)?,
        };
        bn.eps = self.bn_eps; // the same for Keras, whose layers all use 1e-3
        Ok(bn)
    }

    /// The dense kernel `kernel` (no bias) with the BatchNorm `bn` folded in.
    pub fn folded_conv(
        &self,
        w: &Weights,
        kernel: &str,
        bn: &str,
    ) -> Result<FoldedConv, ModelError> {
        let (mut k, dims) = self.conv_kernel(w, kernel)?;
        let bias = self.bn(w, bn, dims[0])?.fold_into(&mut k, None);
        Ok(FoldedConv {
            kernel: k,
            dims,
            bias,
        })
    }

    /// `act(bn(conv(x)))` with the BatchNorm folded: kernel tensor `kernel`
    /// (no bias), BatchNorm `bn`, stride, padding and activation `cfg`.
    pub fn conv_bn(
        &self,
        w: &Weights,
        kernel: &str,
        bn: &str,
        cfg: Conv2dConfig,
        device: &Device,
    ) -> Result<Conv2d, ModelError> {
        let f = self.folded_conv(w, kernel, bn)?;
        let weight = w.tensor(f.kernel, &f.dims, device)?;
        Conv2d::new(weight, f.bias, cfg).map_err(|e| w.candle_err(e))
    }
}
