//! A PyTorch state dict seen under a module prefix (candle's
//! `VarBuilder::pp`): a block receives the view of its own module, so the
//! Rust nesting follows the checkpoint keys (`w.pp("layer1").pp(0)` reads
//! `layer1.0.conv1.weight` as `conv1.weight`) and errors name the full path.

use std::fmt::Display;

use candle_core::Device;

use crate::flavour::Convention;
use crate::layers::{Conv2d, Conv2dConfig, Weights};
use crate::ModelError;

/// `w`'s tensors under `prefix` (dot-separated PyTorch module path), with
/// the device the layers are built for.
#[derive(Clone)]
pub struct TorchWeights<'a> {
    w: &'a Weights,
    device: &'a Device,
    prefix: String,
}

impl<'a> TorchWeights<'a> {
    /// The whole state dict.
    pub fn new(w: &'a Weights, device: &'a Device) -> Self {
        Self {
            w,
            device,
            prefix: String::new(),
        }
    }

    /// The view of submodule `name` (a field name or a `Sequential` index).
    pub fn pp(&self, name: impl Display) -> Self {
        Self {
            w: self.w,
            device: self.device,
            prefix: self.path(&name.to_string()),
        }
    }

    /// The full checkpoint key of `leaf` under this view.
    pub fn path(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// Whether the checkpoint holds `leaf` under this view.
    pub fn contains(&self, leaf: &str) -> bool {
        self.w.contains(&self.path(leaf))
    }

    pub fn weights(&self) -> &'a Weights {
        self.w
    }

    /// `Conv2d(bias=False)` `{conv}.weight` followed by `BatchNorm2d` `{bn}.*`
    /// with epsilon `bn_eps`, folded into one convolution.
    pub fn conv_bn(
        &self,
        conv: &str,
        bn: &str,
        bn_eps: f32,
        cfg: Conv2dConfig,
    ) -> Result<Conv2d, ModelError> {
        Convention::torch(bn_eps).conv_bn(
            self.w,
            &self.path(&format!("{conv}.weight")),
            &self.path(bn),
            cfg,
            self.device,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn nested_views_spell_the_full_checkpoint_key() {
        let w = Weights::from_tensors("t", HashMap::new());
        let root = TorchWeights::new(&w, &Device::Cpu);
        assert_eq!(root.path("conv1.weight"), "conv1.weight");
        let block = root.pp("layer2").pp(3);
        assert_eq!(block.path("bn1"), "layer2.3.bn1");
        assert!(!block.contains("conv1.weight"));
    }
}
