//! EfficientNet-Lite0 (Tan & Le, "EfficientNet: Rethinking Model Scaling for
//! Convolutional Neural Networks", ICML 2019; the "Lite" variants of the
//! TensorFlow TPU repository: ReLU6 instead of swish, no squeeze-excitation,
//! stem and head not rescaled), as implemented by `efficientnet-lite-pytorch`
//! 0.1.0 (`Conv2dStaticSamePadding`, i.e. TF "SAME" padding).
//!
//! Weights use that implementation's PyTorch state-dict names:
//! `_conv_stem.weight` (OIHW), `_bn0.*`, `_blocks.N._expand_conv.weight`,
//! `_blocks.N._bn0.*`, `_blocks.N._depthwise_conv.weight` `(C, 1, k, k)`,
//! `_blocks.N._bn1.*`, `_blocks.N._project_conv.weight`, `_blocks.N._bn2.*`,
//! `_conv_head.weight`, `_bn1.*`, `_fc.{weight,bias}`. BatchNorm epsilon 1e-3.
//! Every BatchNorm is folded into its convolution and every ReLU6 fused; the
//! depthwise convolutions run on our own kernel, the residual adds are fused
//! into the projection convolution's bias pass.
//!
//! Padding follows TF "SAME" for the actual input size; the PyTorch module
//! precomputes it for 224x224, which is the same at that size.
//!
//! `blocked` re-packs the whole network for the NCHW16c CPU kernels.

mod blocked;

use std::path::Path;

use candle_core::{Device, Tensor};

use super::config::{BackboneSpec, Preprocess, PretrainedCfg};
use super::flavour::Convention;
use super::layers::{
    global_avg_pool, Act, Conv2d, Conv2dConfig, DepthwiseConfig, DepthwiseConv2d, Padding, Weights,
    BN_EPS,
};
use super::onnx::build::{same_pads, ConvAttrs, GraphBuilder};
use super::registry::{ModelEntry, Probe};
use super::weights_view::TorchWeights;
use super::{Backbone, ModelError};
use crate::layers::{nchwc_enabled, on_pool};
use blocked::BlockedFlow;

const ARCH: &str = "efficientnet_lite0";

/// The TF reference's preprocessing and input size for Lite0.
pub const CFG: PretrainedCfg = PretrainedCfg::new(224, Preprocess::EfficientnetLite, 1280);

pub const MODELS: &[ModelEntry] = &[ModelEntry::native(ARCH, CFG, probes, load).with_onnx(to_onnx)];

/// Stem, head and the 16th (last) MBConv block, and no 17th (Lite1 and
/// larger have more blocks).
fn probes() -> Vec<Probe> {
    let mut p = Probe::torch(
        "efficientnet-lite-pytorch names",
        &[
            "_conv_stem.weight",
            "_blocks.15._depthwise_conv.weight",
            "_conv_head.weight",
        ],
    );
    p.absent = vec!["_blocks.16._depthwise_conv.weight".into()];
    vec![p]
}

fn load(spec: &BackboneSpec, device: &Device) -> Result<Box<dyn Backbone>, ModelError> {
    Ok(Box::new(EfficientNetLite0::load(&spec.weights, device)?))
}

/// The network as ONNX nodes, from the same checkpoint tensors and with
/// the same folding: `Conv` (BatchNorm folded, TF "SAME" padding as
/// explicit pads for the spec's input size; depthwise as `group = C`),
/// `Clip(0, 6)` for ReLU6, `Add` for the residuals, `GlobalAveragePool`.
fn to_onnx(spec: &BackboneSpec, g: &mut GraphBuilder, input: &str) -> Result<String, ModelError> {
    let w = Weights::read(ARCH, &spec.weights)?;
    let conv = Convention::torch(BN_EPS);
    let mut size = spec.input_size;
    // `act(bn(conv(x)))`; `depthwise`: one filter per channel.
    let mut conv_bn = |g: &mut GraphBuilder,
                       x: &str,
                       kernel: &str,
                       bn: &str,
                       stride: usize,
                       depthwise: bool,
                       relu6: bool|
     -> Result<(String, usize), ModelError> {
        let (mut k, dims) = if depthwise {
            let (k, [c, kh, kw]) = conv.depthwise_kernel(&w, kernel)?;
            (k, [c, 1, kh, kw])
        } else {
            conv.conv_kernel(&w, kernel)?
        };
        let bias = conv.bn(&w, bn, dims[0])?.fold_into(&mut k, None);
        let (pads, out) = same_pads(size, dims[2], stride);
        size = out;
        let groups = if depthwise { dims[0] } else { 1 };
        let attrs = ConvAttrs {
            stride,
            pads,
            groups,
        };
        let y = g.conv(x, k, dims, bias, attrs);
        let y = if relu6 { g.clip(&y, 0.0, 6.0) } else { y };
        Ok((y, dims[0]))
    };
    let (mut x, mut channels) = conv_bn(g, input, "_conv_stem.weight", "_bn0", 2, false, true)?;
    for (i, &stride) in LITE0_STRIDES.iter().enumerate() {
        let p = |leaf: &str| format!("_blocks.{i}.{leaf}");
        let block_in = (x.clone(), channels);
        let mut y = x.clone();
        if w.contains(&p("_expand_conv.weight")) {
            y = conv_bn(g, &y, &p("_expand_conv.weight"), &p("_bn0"), 1, false, true)?.0;
        }
        y = conv_bn(
            g,
            &y,
            &p("_depthwise_conv.weight"),
            &p("_bn1"),
            stride,
            true,
            true,
        )?
        .0;
        let (projected, out_c) = conv_bn(
            g,
            &y,
            &p("_project_conv.weight"),
            &p("_bn2"),
            1,
            false,
            false,
        )?;
        x = if stride == 1 && block_in.1 == out_c {
            g.node("Add", &[&projected, &block_in.0], vec![])
        } else {
            projected
        };
        channels = out_c;
    }
    let (head, _) = conv_bn(g, &x, "_conv_head.weight", "_bn1", 1, false, true)?;
    Ok(g.global_avg_pool(&head))
}

/// Stride of each of the 16 MBConv blocks of Lite0 (stages: 1x s1, 2x s2,
/// 2x s2, 3x s2, 3x s1, 4x s2, 1x s1; the stride applies to a stage's first block).
const LITE0_STRIDES: [usize; 16] = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1];

/// TF "SAME" padding with stride `stride` and fused activation `act`.
fn same(stride: usize, act: Act) -> Conv2dConfig {
    Conv2dConfig {
        stride,
        padding: Padding::Same,
        act,
    }
}

/// Mobile inverted bottleneck (MBConv) without squeeze-excitation:
/// `[expand 1x1 -> ReLU6] -> depthwise kxk -> ReLU6 -> project 1x1 [+ x]`.
struct MbConv {
    expand: Option<Conv2d>,
    depthwise: DepthwiseConv2d,
    project: Conv2d,
    skip: bool,
}

impl MbConv {
    /// Block `w` (`_blocks.{i}`), its depthwise convolution with stride `stride`.
    fn load(w: &TorchWeights<'_>, stride: usize) -> Result<Self, ModelError> {
        let expand = if w.contains("_expand_conv.weight") {
            Some(w.conv_bn("_expand_conv", "_bn0", BN_EPS, same(1, Act::Relu6))?)
        } else {
            None
        };
        let (ckpt, conv) = (w.weights(), Convention::torch(BN_EPS));
        let (mut k, [c, kh, kw]) =
            conv.depthwise_kernel(ckpt, &w.path("_depthwise_conv.weight"))?;
        let bias = conv.bn(ckpt, &w.path("_bn1"), c)?.fold_into(&mut k, None);
        let depthwise = DepthwiseConv2d::new(
            k,
            (c, kh, kw),
            Some(bias),
            DepthwiseConfig {
                stride,
                padding: Padding::Same,
                in_act: Act::None,
                out_act: Act::Relu6,
            },
        )
        .map_err(|e| ckpt.candle_err(e))?;
        let project = w.conv_bn("_project_conv", "_bn2", BN_EPS, same(1, Act::None))?;
        let in_c = expand.as_ref().map_or(c, Conv2d::in_channels);
        let skip = stride == 1 && in_c == project.out_channels();
        Ok(Self {
            expand,
            depthwise,
            project,
            skip,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.expand {
            Some(e) => self.depthwise.forward(&e.forward(x)?)?, // (N, C*6, H/s, W/s)
            None => self.depthwise.forward(x)?,                 // (N, C, H/s, W/s)
        };
        if self.skip {
            self.project.forward_add(&y, x) // (N, C_out, H, W)
        } else {
            self.project.forward(&y) // (N, C_out, H/s, W/s)
        }
    }
}

/// EfficientNet-Lite0 with its 1000-class ImageNet classifier (`_fc`) when the
/// checkpoint holds one; `forward_features` returns the pooled `(N, 1280)`
/// output of the head convolution.
pub struct EfficientNetLite0 {
    conv_stem: Conv2d,
    blocks: Vec<MbConv>,
    conv_head: Conv2d,
    /// `_fc`: weight transposed to `(1280, classes)`, bias `(1, classes)`.
    fc: Option<(Tensor, Tensor)>,
    /// The blocks and head re-packed for NCHW16c, where the CPU runs it.
    blocked: Option<BlockedFlow>,
}

impl EfficientNetLite0 {
    /// Loads `efficientnet-lite-pytorch` state-dict weights from a safetensors file.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::from_weights(&Weights::read(ARCH, path)?, device)
    }

    pub fn from_weights(w: &Weights, device: &Device) -> Result<Self, ModelError> {
        let root = TorchWeights::new(w, device);
        let conv_stem = root.conv_bn("_conv_stem", "_bn0", BN_EPS, same(2, Act::Relu6))?;
        let blocks = LITE0_STRIDES
            .iter()
            .enumerate()
            .map(|(i, &s)| MbConv::load(&root.pp("_blocks").pp(i), s))
            .collect::<Result<Vec<_>, _>>()?;
        let conv_head = root.conv_bn("_conv_head", "_bn1", BN_EPS, same(1, Act::Relu6))?;
        let fc = if w.contains("_fc.weight") {
            let f = conv_head.out_channels();
            let dims = w.dims("_fc.weight")?;
            let classes = dims[0];
            let weight = w
                .get("_fc.weight", &[classes, f])?
                .t()
                .and_then(|t| t.contiguous())
                .and_then(|t| t.to_device(device))
                .map_err(|e| w.candle_err(e))?;
            let bias = w
                .get("_fc.bias", &[classes])?
                .reshape((1, classes))
                .and_then(|t| t.to_device(device))
                .map_err(|e| w.candle_err(e))?;
            Some((weight, bias))
        } else {
            None
        };
        Ok(Self {
            conv_stem,
            blocks,
            conv_head,
            fc,
            blocked: None,
        }
        .with_blocked_flow())
    }

    /// Builds the NCHW16c copy of the blocks and head where it runs
    /// ([`nchwc_enabled`]).
    fn with_blocked_flow(mut self) -> Self {
        if nchwc_enabled() {
            self.blocked = BlockedFlow::of(&self);
        }
        self
    }

    /// This network on the NCHW path whatever the CPU (the reference the
    /// NCHW16c path is tested against).
    pub fn nchw_only(mut self) -> Self {
        self.blocked = None;
        self
    }

    fn forward_features_nchw(&self, mut x: Tensor) -> candle_core::Result<Tensor> {
        for b in &self.blocks {
            // 16 (112) -> 24 (56) -> 40 (28) -> 80 (14) -> 112 (14) -> 192 (7) -> 320 (7)
            x = b.forward(&x)?;
        }
        let x = self.conv_head.forward(&x)?; // (N, 1280, 7, 7)
        global_avg_pool(&x) // (N, 1280)
    }

    /// Whether the checkpoint carried the `_fc` classifier.
    pub fn has_classifier(&self) -> bool {
        self.fc.is_some()
    }

    /// Pooled features `(N, 1280)` and ImageNet logits `(N, 1000)`.
    pub fn forward_features_and_logits(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let f = self.forward_features(x)?;
        let l = self.logits_from_features(&f)?;
        Ok((f, l))
    }

    /// ImageNet logits `(N, 1000)` of a preprocessed `(N, 3, H, W)` input.
    pub fn forward_logits(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.logits_from_features(&self.forward_features(x)?)
    }

    /// `_fc` applied to pooled features `(N, 1280)`.
    pub fn logits_from_features(&self, f: &Tensor) -> candle_core::Result<Tensor> {
        let Some((w, b)) = &self.fc else {
            candle_core::bail!("efficientnet_lite0: the checkpoint has no `_fc.weight` classifier")
        };
        f.matmul(w)?.broadcast_add(b) // (N, 1000)
    }
}

impl Backbone for EfficientNetLite0 {
    fn forward_features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(flow) = &self.blocked {
            // The NCHW16c kernels are CPU kernels.
            if !super::portable::wanted(x) {
                return on_pool(|| flow.forward(x));
            }
        }
        let x = self.conv_stem.forward(x)?; // (N, 32, 112, 112)
        self.forward_features_nchw(x)
    }

    fn num_features(&self) -> usize {
        CFG.num_features
    }
}
