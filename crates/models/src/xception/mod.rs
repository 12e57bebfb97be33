//! Xception (Chollet, "Xception: Deep Learning with Depthwise Separable
//! Convolutions", CVPR 2017), as built by Keras `applications/xception.py`
//! with `include_top=False, pooling="avg"` and by timm's `legacy_xception`
//! (the Cadene / tstandley port of the Keras weights): 299x299 input, 2048
//! features.
//!
//! Weights use either the Keras-2 layer names (`block1_conv1/kernel` HWIO,
//! `block2_sepconv1/{depthwise,pointwise}_kernel`, `block2_sepconv1_bn/...`;
//! the four residual 1x1 convolutions are `conv2d_1..4` with
//! `batch_normalization_1..4`) or timm's `legacy_xception` state-dict names
//! (the map is `Layer::names`); the naming is detected by the entry's
//! probes ([`MODELS`]). Every BatchNorm is folded into the preceding
//! convolution (for a separable convolution, into its pointwise part); each
//! `relu -> SeparableConv2D` applies the ReLU inside the depthwise kernel,
//! each `BN -> relu` inside the pointwise bias pass.
//!
//! The two sources are not quite the same function, and the model computes
//! what the checkpoint's framework computes:
//!
//! | | Keras | timm `legacy_xception` |
//! |---|---|---|
//! | BatchNorm epsilon | 1e-3 | 1e-5 (`nn.BatchNorm2d` default) |
//! | 3x3/2 max pools | TF "same": on an even input the extra padded row / column is at the bottom / right only (74 -> 37 at 299x299) | `MaxPool2d(3, 2, padding=1)`: one on every side |
//!
//! Everything else coincides: the stride-1 3x3 separable convolutions pad
//! one pixel on every side in both, the stem convolutions are unpadded, and a
//! 1x1 stride-2 shortcut needs no padding.
//!
//! `blocked` re-packs the network for the NCHW16c CPU kernels; `onnx`
//! writes the same network as ONNX nodes.

mod blocked;
mod onnx;

use std::path::Path;

use candle_core::{Device, Tensor};

use super::config::{BackboneSpec, Preprocess, PretrainedCfg};
use super::flavour::{Convention, Flavour};
use super::layers::{
    global_avg_pool, max_pool2d, Act, Conv2d, Conv2dConfig, DepthwiseConfig, DepthwiseConv2d,
    Padding, Weights,
};
use super::registry::{self, ModelEntry, Probe};
use super::{Backbone, ModelError};
use crate::layers::{nchwc_enabled, on_pool};
use blocked::BlockedFlow;

const ARCH: &str = "xception";

/// Keras' and timm's preprocessing and input size for Xception.
pub const CFG: PretrainedCfg = PretrainedCfg::new(299, Preprocess::Inception, 2048);

pub const MODELS: &[ModelEntry] =
    &[ModelEntry::native(ARCH, CFG, probes, load).with_onnx(onnx::to_onnx)];

/// The first and last convolutions in each naming (the map is
/// `Layer::names`).
fn probes() -> Vec<Probe> {
    let keras = ["block1_conv1/kernel", "block14_sepconv2/pointwise_kernel"];
    let timm = [
        "conv1.weight",
        "block12.skip.weight",
        "conv4.pointwise.weight",
    ];
    vec![
        Probe::keras(&keras),
        Probe::torch("timm legacy_xception names", &timm),
    ]
}

fn load(spec: &BackboneSpec, device: &Device) -> Result<Box<dyn Backbone>, ModelError> {
    Ok(Box::new(Xception::load(&spec.weights, device)?))
}

/// timm's `legacy_xception` uses PyTorch's default BatchNorm epsilon.
const TIMM_BN_EPS: f32 = 1e-5;

/// Kernel layouts and BatchNorm numerics of a checkpoint of `flavour`.
fn convention(flavour: Flavour) -> Convention {
    match flavour {
        Flavour::Keras => Convention::keras(true),
        Flavour::Torch => Convention::torch(TIMM_BN_EPS),
    }
}

/// The 3x3/2 max pool of the entry-flow blocks and block 13.
fn pool_padding(flavour: Flavour) -> Padding {
    flavour.padding(Padding::Same, 1)
}

/// One convolution of Xception (with its BatchNorm), by its place in the
/// network, Keras numbering.
#[derive(Debug, Clone, Copy)]
enum Layer {
    /// `block1_conv{i}`, i = 1, 2: the unpadded 3x3 stem convolutions.
    Stem(usize),
    /// Separable convolution `i` of block `block` (2..=14).
    Sep { block: usize, i: usize },
    /// The strided 1x1 shortcut of block `block` (2, 3, 4 or 13).
    Shortcut { block: usize },
}

impl Layer {
    /// `(convolution, BatchNorm)` layer names (Keras) or module paths (timm):
    /// the name map between the two checkpoints.
    ///
    /// | Keras-2 layer, BN | timm `legacy_xception` module, BN |
    /// |---|---|
    /// | `block1_conv{i}`, `block1_conv{i}_bn` | `conv{i}`, `bn{i}` |
    /// | `block2_sepconv{i}`, `..._bn` | `block1.rep.{3i-3}`, `block1.rep.{3i-2}` (no leading ReLU) |
    /// | `block{b}_sepconv{i}`, `..._bn`, b = 3..=13 | `block{b-1}.rep.{3i-2}`, `block{b-1}.rep.{3i-1}` |
    /// | `block14_sepconv{i}`, `..._bn` | `conv{i+2}`, `bn{i+2}` |
    /// | `conv2d_{1,2,3,4}`, `batch_normalization_{1,2,3,4}` (shortcuts of blocks 2, 3, 4, 13) | `block{1,2,3,12}.skip`, `block{1,2,3,12}.skipbn` |
    ///
    /// Tensors: Keras `LAYER/kernel` (HWIO), `LAYER/{depthwise,pointwise}_kernel`;
    /// timm `MODULE.weight` (OIHW), `MODULE.conv1.weight` (depthwise,
    /// `(C, 1, 3, 3)`), `MODULE.pointwise.weight`. timm's `fc.*` is ignored.
    fn names(self, flavour: Flavour) -> (String, String) {
        match (flavour, self) {
            (Flavour::Keras, Layer::Stem(i)) => {
                (format!("block1_conv{i}"), format!("block1_conv{i}_bn"))
            }
            (Flavour::Keras, Layer::Sep { block, i }) => (
                format!("block{block}_sepconv{i}"),
                format!("block{block}_sepconv{i}_bn"),
            ),
            (Flavour::Keras, Layer::Shortcut { block }) => {
                let n = match block {
                    13 => 4,
                    b => b - 1,
                };
                (format!("conv2d_{n}"), format!("batch_normalization_{n}"))
            }
            (Flavour::Torch, Layer::Stem(i)) => (format!("conv{i}"), format!("bn{i}")),
            (Flavour::Torch, Layer::Sep { block: 14, i }) => {
                (format!("conv{}", i + 2), format!("bn{}", i + 2))
            }
            (Flavour::Torch, Layer::Sep { block, i }) => {
                // `rep` is [ReLU, SepConv, BN] per convolution, without the
                // first ReLU in block 2 (timm's block1).
                let j = 3 * i - 3 + usize::from(block != 2);
                let m = block - 1;
                (
                    format!("block{m}.rep.{j}"),
                    format!("block{m}.rep.{}", j + 1),
                )
            }
            (Flavour::Torch, Layer::Shortcut { block }) => (
                format!("block{}.skip", block - 1),
                format!("block{}.skipbn", block - 1),
            ),
        }
    }

    /// The kernel tensor and BatchNorm of a dense layer (stem, shortcut).
    fn dense_tensors(self, flavour: Flavour) -> (String, String) {
        let (conv, bn) = self.names(flavour);
        let kernel = match flavour {
            Flavour::Keras => format!("{conv}/kernel"),
            Flavour::Torch => format!("{conv}.weight"),
        };
        (kernel, bn)
    }
}

/// Separable convolution `i` of block `block` with its BatchNorm folded into
/// the pointwise part.
struct SepWeights {
    /// `(C, kh, kw)`, flattened.
    dw: Vec<f32>,
    dw_dims: [usize; 3],
    /// OIHW `(C_out, C, 1, 1)`, flattened, BatchNorm folded.
    pw: Vec<f32>,
    pw_dims: [usize; 4],
    bias: Vec<f32>,
}

impl SepWeights {
    fn read(w: &Weights, conv: Convention, block: usize, i: usize) -> Result<Self, ModelError> {
        let (name, bn) = Layer::Sep { block, i }.names(conv.flavour);
        let (dw_name, pw_name) = match conv.flavour {
            Flavour::Keras => (
                format!("{name}/depthwise_kernel"),
                format!("{name}/pointwise_kernel"),
            ),
            Flavour::Torch => (
                format!("{name}.conv1.weight"),
                format!("{name}.pointwise.weight"),
            ),
        };
        let (dw, dw_dims) = conv.depthwise_kernel(w, &dw_name)?;
        let (mut pw, pw_dims) = conv.conv_kernel(w, &pw_name)?;
        if pw_dims[1] != dw_dims[0] || pw_dims[2..] != [1, 1] {
            return Err(w.shape_err(
                &pw_name,
                vec![pw_dims[0], dw_dims[0], 1, 1],
                pw_dims.to_vec(),
            ));
        }
        let bias = conv.bn(w, &bn, pw_dims[0])?.fold_into(&mut pw, None);
        Ok(Self {
            dw,
            dw_dims,
            pw,
            pw_dims,
            bias,
        })
    }
}

/// A checkpoint and what its naming implies.
struct Loader<'a> {
    w: &'a Weights,
    conv: Convention,
    device: &'a Device,
}

impl Loader<'_> {
    fn flavour(&self) -> Flavour {
        self.conv.flavour
    }

    /// A dense convolution `layer` + its BatchNorm.
    fn conv_bn(
        &self,
        layer: Layer,
        stride: usize,
        padding: Padding,
        act: Act,
    ) -> Result<Conv2d, ModelError> {
        let (kernel, bn) = layer.dense_tensors(self.flavour());
        let cfg = Conv2dConfig {
            stride,
            padding,
            act,
        };
        self.conv.conv_bn(self.w, &kernel, &bn, cfg, self.device)
    }
}

/// Keras `SeparableConv2D(3x3, padding="same", use_bias=False)` (timm
/// `SeparableConv2d(3, padding=1)`) + its BN: `out_act(pw(dw(in_act(x))))`.
struct SepConv {
    dw: DepthwiseConv2d,
    pw: Conv2d,
}

impl SepConv {
    /// Separable convolution `i` of block `block` and its BatchNorm.
    fn load(
        l: &Loader<'_>,
        block: usize,
        i: usize,
        in_act: Act,
        out_act: Act,
    ) -> Result<Self, ModelError> {
        let (w, device) = (l.w, l.device);
        let s = SepWeights::read(w, l.conv, block, i)?;
        let [c, kh, kw] = s.dw_dims;
        let cfg = DepthwiseConfig {
            padding: Padding::Same,
            in_act,
            ..DepthwiseConfig::default()
        };
        let dw = DepthwiseConv2d::new(s.dw, (c, kh, kw), None, cfg).map_err(|e| w.candle_err(e))?;
        let cfg = Conv2dConfig {
            stride: 1,
            padding: Padding::Same,
            act: out_act,
        };
        let pw = Conv2d::new(w.tensor(s.pw, &s.pw_dims, device)?, s.bias, cfg)
            .map_err(|e| w.candle_err(e))?;
        Ok(Self { dw, pw })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.pw.forward(&self.dw.forward(x)?)
    }

    /// `forward(x) + residual`, the add fused into the pointwise bias pass.
    fn forward_add(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        self.pw.forward_add(&self.dw.forward(x)?, residual)
    }
}

/// Entry-flow block (and block 13): two separable convolutions, a 3x3/2 max
/// pool, plus a strided 1x1 convolution on the shortcut.
struct DownBlock {
    sep1: SepConv,
    sep2: SepConv,
    pool_padding: Padding,
    residual: Conv2d,
}

impl DownBlock {
    /// `block`: Keras block number; `pre_relu`: whether the block starts with
    /// a ReLU (all but block 2).
    fn load(l: &Loader<'_>, block: usize, pre_relu: bool) -> Result<Self, ModelError> {
        let in_act = if pre_relu { Act::Relu } else { Act::None };
        Ok(Self {
            sep1: SepConv::load(l, block, 1, in_act, Act::Relu)?,
            sep2: SepConv::load(l, block, 2, Act::None, Act::None)?,
            pool_padding: pool_padding(l.flavour()),
            residual: l.conv_bn(Layer::Shortcut { block }, 2, Padding::Same, Act::None)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // The shortcut sees the block input before its ReLU. The maps below
        // are reassigned, not shadowed, so that each is freed once used.
        let residual = self.residual.forward(x)?; // (N, C_out, ceil(H/2), ceil(W/2))
        let mut y = self.sep1.forward(x)?; // (N, C_mid, H, W)
        y = self.sep2.forward(&y)?; // (N, C_out, H, W)
        y = max_pool2d(&y, 3, 2, self.pool_padding)?; // (N, C_out, ceil(H/2), ceil(W/2))
        y + residual
    }
}

/// Middle-flow block: three `relu -> SeparableConv2D(728) -> BN`, identity shortcut.
struct MiddleBlock {
    sep: [SepConv; 3],
}

impl MiddleBlock {
    fn load(l: &Loader<'_>, block: usize) -> Result<Self, ModelError> {
        let s = |i: usize, in_act: Act, out_act: Act| SepConv::load(l, block, i, in_act, out_act);
        Ok(Self {
            sep: [
                s(1, Act::Relu, Act::Relu)?,
                s(2, Act::None, Act::Relu)?,
                s(3, Act::None, Act::None)?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.sep[0].forward(x)?; // (N, 728, 19, 19)
        let y = self.sep[1].forward(&y)?; // (N, 728, 19, 19)
        self.sep[2].forward_add(&y, x) // (N, 728, 19, 19)
    }
}

/// Xception without its classifier; `forward_features` returns the
/// global-average-pooled `(N, 2048)` output of `block14_sepconv2_act` (timm:
/// `act4`).
pub struct Xception {
    block1_conv1: Conv2d,
    block1_conv2: Conv2d,
    /// Blocks 2, 3, 4 (shortcuts `conv2d_1..3`).
    entry: Vec<DownBlock>,
    /// Blocks 5..=12.
    middle: Vec<MiddleBlock>,
    /// Block 13 (shortcut `conv2d_4`).
    block13: DownBlock,
    block14_sepconv1: SepConv,
    block14_sepconv2: SepConv,
    flavour: Flavour,
    /// Blocks 2..=14 again in NCHW16c, on AVX-512 machines.
    blocked: Option<BlockedFlow>,
}

impl Xception {
    /// Loads Keras-2-named or timm-named weights (any float dtype) from a
    /// safetensors file or a PyTorch checkpoint.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::from_weights(&Weights::read(ARCH, path)?, device)
    }

    pub fn from_weights(w: &Weights, device: &Device) -> Result<Self, ModelError> {
        let flavour = registry::detect_flavour(w, &probes())?;
        let l = Loader {
            w,
            conv: convention(flavour),
            device,
        };
        let stem =
            |i: usize, stride: usize| l.conv_bn(Layer::Stem(i), stride, Padding::Valid, Act::Relu);
        Ok(Self {
            block1_conv1: stem(1, 2)?,
            block1_conv2: stem(2, 1)?,
            entry: vec![
                DownBlock::load(&l, 2, false)?,
                DownBlock::load(&l, 3, true)?,
                DownBlock::load(&l, 4, true)?,
            ],
            middle: (5..=12)
                .map(|b| MiddleBlock::load(&l, b))
                .collect::<Result<_, _>>()?,
            block13: DownBlock::load(&l, 13, true)?,
            block14_sepconv1: SepConv::load(&l, 14, 1, Act::None, Act::Relu)?,
            block14_sepconv2: SepConv::load(&l, 14, 2, Act::None, Act::Relu)?,
            flavour,
            blocked: None,
        }
        .with_blocked_flow())
    }

    /// Builds the NCHW16c copy of the network where it runs
    /// ([`nchwc_enabled`]).
    fn with_blocked_flow(mut self) -> Self {
        if nchwc_enabled() {
            self.blocked = BlockedFlow::of(&self);
        }
        self
    }

    /// Whose names the checkpoint used, hence whose numerics this model follows.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }
}

impl Backbone for Xception {
    fn forward_features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(flow) = &self.blocked {
            // The NCHW16c kernels are CPU kernels.
            if !super::portable::wanted(x) {
                return on_pool(|| flow.forward(x));
            }
        }
        // (N, 32, 149, 149) -> (N, 64, 147, 147), the first freed at once
        let mut x = self.block1_conv2.forward(&self.block1_conv1.forward(x)?)?;
        for b in &self.entry {
            x = b.forward(&x)?; // (N, 128, 74, 74) -> (N, 256, 37, 37) -> (N, 728, 19, 19)
        }
        for b in &self.middle {
            x = b.forward(&x)?; // (N, 728, 19, 19)
        }
        let x = self.block13.forward(&x)?; // (N, 1024, 10, 10)
        let x = self.block14_sepconv1.forward(&x)?; // (N, 1536, 10, 10)
        let x = self.block14_sepconv2.forward(&x)?; // (N, 2048, 10, 10)
        global_avg_pool(&x) // (N, 2048)
    }

    fn num_features(&self) -> usize {
        CFG.num_features
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_map_keras_to_timm() {
        let both = |l: Layer| (l.names(Flavour::Keras), l.names(Flavour::Torch));
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            both(Layer::Stem(2)),
            (s("block1_conv2", "block1_conv2_bn"), s("conv2", "bn2"))
        );
        assert_eq!(
            both(Layer::Sep { block: 2, i: 2 }),
            (
                s("block2_sepconv2", "block2_sepconv2_bn"),
                s("block1.rep.3", "block1.rep.4")
            )
        );
        assert_eq!(
            both(Layer::Sep { block: 12, i: 3 }),
            (
                s("block12_sepconv3", "block12_sepconv3_bn"),
                s("block11.rep.7", "block11.rep.8")
            )
        );
        assert_eq!(
            both(Layer::Sep { block: 14, i: 1 }),
            (
                s("block14_sepconv1", "block14_sepconv1_bn"),
                s("conv3", "bn3")
            )
        );
        assert_eq!(
            both(Layer::Shortcut { block: 13 }),
            (
                s("conv2d_4", "batch_normalization_4"),
                s("block12.skip", "block12.skipbn")
            )
        );
    }
}
