//! ResNet-18/34/50/101/152 (He et al., "Deep Residual Learning for Image
//! Recognition", CVPR 2016), as built by torchvision's and timm's `resnet*`
//! ("ResNet v1.5": the stride of a down-sampling bottleneck is on its 3x3
//! convolution): 224x224 input, 512 (basic blocks) or 2048 (bottlenecks)
//! features. The depths differ only in block kind and blocks per stage:
//! [`CONFIGS`].
//!
//! Weights use the torchvision state-dict names, which timm's `resnet*`
//! share: `conv1.weight` (OIHW), `bn1.{weight,bias,running_mean,running_var}`,
//! `layer{1..4}.{j}.conv{1,2[,3]}.weight`, `layer{1..4}.{j}.bn{1,2[,3]}.*`,
//! and where a block changes width or stride `layer{i}.{j}.downsample.0.weight`
//! (the 1x1 shortcut convolution) with `layer{i}.{j}.downsample.1.*` (its
//! BatchNorm); `fc.*` is ignored. A checkpoint with more or fewer blocks than
//! its config, or the other block kind, is refused naming the block.
//!
//! PyTorch numerics throughout: BatchNorm epsilon 1e-5, explicit symmetric
//! padding (3 for the 7x7/2 stem, 1 for every 3x3 and the 3x3/2 max pool).
//! Every BatchNorm is folded into its convolution and the ReLUs inside a block
//! run in the convolutions' bias pass; the shortcut add is fused into the
//! block's last convolution's bias pass, the ReLU after the add is a separate
//! pass.
//!
//! `runner export` writes the same network as ONNX nodes (`onnx.rs`): both
//! build their layers from one [`Layout`] read off the checkpoint.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::config::{BackboneSpec, Preprocess, PretrainedCfg};
use super::flavour::{Convention, Flavour, FoldedConv};
use super::layers::{
    global_avg_pool, max_pool2d, Act, Conv2d, Conv2dConfig, Pad4, Padding, Weights,
};
use super::registry::{ModelEntry, Probe};
use super::weights_view::TorchWeights;
use super::{Backbone, ModelError};

mod onnx;

/// `nn.BatchNorm2d`'s default epsilon (torchvision, timm).
const BN_EPS: f32 = 1e-5;

/// The stem's max pool: a 3x3 window, stride 2, padding 1 on every side.
const POOL_WINDOW: usize = 3;
const POOL_STRIDE: usize = 2;
const POOL_PAD: usize = 1;

/// The residual block a ResNet is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18, -34); the stride is on `conv1`.
    Basic,
    /// 1x1 -> 3x3 -> 1x1 with 4x expansion (ResNet-50 and deeper); the
    /// stride is on the 3x3 `conv2`.
    Bottleneck,
}

impl BlockKind {
    /// Per convolution `conv{i + 1}`: whether the block's stride applies to
    /// it, its padding, and the activation fused into it (the last one's
    /// ReLU comes after the shortcut add).
    const fn convs(self) -> &'static [(bool, usize, Act)] {
        match self {
            BlockKind::Basic => &[(true, 1, Act::Relu), (false, 1, Act::None)],
            BlockKind::Bottleneck => &[
                (false, 0, Act::Relu),
                (true, 1, Act::Relu),
                (false, 0, Act::None),
            ],
        }
    }

    /// Output channels per `planes` (torchvision's `expansion`).
    const fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// One depth of ResNet.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub name: &'static str,
    pub block: BlockKind,
    /// Blocks in `layer1..4`.
    pub layers: [usize; 4],
}

impl Config {
    /// Pooled feature width: `layer4`'s 512 planes times the expansion.
    pub const fn num_features(&self) -> usize {
        512 * self.block.expansion()
    }

    /// The torchvision / timm names of a checkpoint of this depth: the last
    /// convolution of each stage's last block, and not one more block
    /// (nor, for basic blocks, a third convolution).
    fn probe(&self) -> Probe {
        let last = self.block.convs().len();
        let mut present = vec!["conv1.weight".to_string()];
        let mut absent = Vec::new();
        for (i, &n) in self.layers.iter().enumerate() {
            present.push(format!("layer{}.{}.conv{last}.weight", i + 1, n - 1));
            absent.push(format!("layer{}.{n}.conv1.weight", i + 1));
        }
        if self.block == BlockKind::Basic {
            absent.push("layer1.0.conv3.weight".into());
        }
        Probe {
            naming: "torchvision / timm resnet names",
            flavour: Flavour::Torch,
            present,
            absent,
        }
    }

    /// Every block's module path (`layer{i}.{j}`) and stride, in order: the
    /// first block of `layer2..4` halves the resolution.
    fn blocks(&self) -> impl Iterator<Item = (String, usize)> + '_ {
        self.layers.iter().enumerate().flat_map(|(i, &n)| {
            (0..n).map(move |j| {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                (format!("layer{}.{j}", i + 1), stride)
            })
        })
    }
}

/// The registered depths.
#[rustfmt::skip]
pub const CONFIGS: [Config; 5] = [
    Config { name: "resnet18",  block: BlockKind::Basic,      layers: [2, 2, 2, 2] },
    Config { name: "resnet34",  block: BlockKind::Basic,      layers: [3, 4, 6, 3] },
    Config { name: "resnet50",  block: BlockKind::Bottleneck, layers: [3, 4, 6, 3] },
    Config { name: "resnet101", block: BlockKind::Bottleneck, layers: [3, 4, 23, 3] },
    Config { name: "resnet152", block: BlockKind::Bottleneck, layers: [3, 8, 36, 3] },
];

/// The registry entry of `CONFIGS[I]`, with its ONNX writer.
const fn entry<const I: usize>() -> ModelEntry {
    let cfg = PretrainedCfg::new(224, Preprocess::Imagenet, CONFIGS[I].num_features());
    ModelEntry::native(CONFIGS[I].name, cfg, probes::<I>, load::<I>).with_onnx(onnx::to_onnx::<I>)
}

fn probes<const I: usize>() -> Vec<Probe> {
    vec![CONFIGS[I].probe()]
}

fn load<const I: usize>(
    spec: &BackboneSpec,
    device: &Device,
) -> Result<Box<dyn Backbone>, ModelError> {
    Ok(Box::new(ResNet::load(&CONFIGS[I], &spec.weights, device)?))
}

pub const MODELS: &[ModelEntry] = &[
    entry::<0>(),
    entry::<1>(),
    entry::<2>(),
    entry::<3>(),
    entry::<4>(),
];

/// PyTorch `padding=p` on every side.
fn pad(p: usize) -> Padding {
    Padding::Explicit(Pad4::uniform(p))
}

/// A `Conv2d(bias=False)` and the `BatchNorm2d` after it, by their module
/// paths, with the stride, padding and activation they run with.
struct ConvBn {
    /// `layer2.0.conv2`: the kernel is `{conv}.weight`.
    conv: String,
    /// `layer2.0.bn2`.
    bn: String,
    cfg: Conv2dConfig,
}

impl ConvBn {
    /// The native layer, the BatchNorm folded in.
    fn load(&self, w: &Weights, device: &Device) -> Result<Conv2d, ModelError> {
        TorchWeights::new(w, device).conv_bn(&self.conv, &self.bn, BN_EPS, self.cfg)
    }

    /// Kernel and bias with the BatchNorm folded in as [`ConvBn::load`]
    /// folds it, for the ONNX writer.
    fn folded(&self, w: &Weights) -> Result<FoldedConv, ModelError> {
        let kernel = format!("{}.weight", self.conv);
        Convention::torch(BN_EPS).folded_conv(w, &kernel, &self.bn)
    }
}

/// One residual block's convolutions: `conv1..` in order, and the 1x1
/// `downsample` shortcut where the checkpoint has one.
struct BlockLayout {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

/// The network as the checkpoint names it, checked against its config:
/// what [`ResNet::from_weights`] loads and the ONNX writer writes, so the
/// two build the same layers.
struct Layout {
    /// `conv1` + `bn1` + ReLU, 7x7/2 padded 3.
    stem: ConvBn,
    /// `layer1..4`'s blocks, in order.
    blocks: Vec<BlockLayout>,
}

impl Layout {
    /// `cfg`'s layers over `w`, which must hold exactly its blocks (a
    /// missing tensor is reported when it is read).
    fn read(cfg: &Config, w: &Weights) -> Result<Self, ModelError> {
        check_layout(cfg, w)?;
        let stem = ConvBn {
            conv: "conv1".into(),
            bn: "bn1".into(),
            cfg: Conv2dConfig {
                stride: 2,
                padding: pad(3),
                act: Act::Relu,
            },
        };
        let blocks = cfg
            .blocks()
            .map(|(block, stride)| {
                let convs = cfg
                    .block
                    .convs()
                    .iter()
                    .enumerate()
                    .map(|(i, &(strided, p, act))| ConvBn {
                        conv: format!("{block}.conv{}", i + 1),
                        bn: format!("{block}.bn{}", i + 1),
                        cfg: Conv2dConfig {
                            stride: if strided { stride } else { 1 },
                            padding: if p == 0 { Padding::Valid } else { pad(p) },
                            act,
                        },
                    })
                    .collect();
                let downsample = w
                    .contains(&format!("{block}.downsample.0.weight"))
                    .then(|| ConvBn {
                        conv: format!("{block}.downsample.0"),
                        bn: format!("{block}.downsample.1"),
                        cfg: Conv2dConfig {
                            stride,
                            ..Conv2dConfig::default()
                        },
                    });
                BlockLayout { convs, downsample }
            })
            .collect();
        Ok(Self { stem, blocks })
    }
}

/// `relu(last(...(conv1(x))) + shortcut(x))`, the BatchNorms folded.
struct Block {
    /// `conv1..`, each with its `bn`.
    convs: Vec<Conv2d>,
    downsample: Option<Conv2d>,
}

impl Block {
    fn load(layout: &BlockLayout, w: &Weights, device: &Device) -> Result<Self, ModelError> {
        let convs = layout
            .convs
            .iter()
            .map(|c| c.load(w, device))
            .collect::<Result<Vec<_>, _>>()?;
        let downsample = match &layout.downsample {
            Some(d) => Some(d.load(w, device)?),
            None => None,
        };
        Ok(Self { convs, downsample })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (last, inner) = self.convs.split_last().expect("a block has convolutions");
        let mut y = inner[0].forward(x)?; // (N, C_mid, H, W) or (N, C_mid, H/s, W/s)
        for c in &inner[1..] {
            y = c.forward(&y)?; // (N, C_mid, H/s, W/s)
        }
        let y = match &self.downsample {
            Some(d) => last.forward_add(&y, &d.forward(x)?)?,
            None => last.forward_add(&y, x)?,
        }; // (N, C_out, H/s, W/s)
        y.relu()
    }

    fn out_channels(&self) -> usize {
        self.convs.last().map_or(0, Conv2d::out_channels)
    }
}

/// A torchvision / timm ResNet without its classifier; `forward_features`
/// returns the global-average-pooled `(N, 512 | 2048)` output of `layer4`.
pub struct ResNet {
    conv1: Conv2d,
    /// `layer1..4`, in order.
    blocks: Vec<Block>,
}

impl ResNet {
    /// Loads torchvision / timm state-dict weights (any float dtype) from a
    /// safetensors file or a PyTorch checkpoint.
    pub fn load(cfg: &Config, path: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::from_weights(cfg, &Weights::read(cfg.name, path)?, device)
    }

    /// Builds `cfg` from `w`, which must hold exactly its blocks.
    pub fn from_weights(cfg: &Config, w: &Weights, device: &Device) -> Result<Self, ModelError> {
        let layout = Layout::read(cfg, w)?;
        let conv1 = layout.stem.load(w, device)?;
        let blocks = layout
            .blocks
            .iter()
            .map(|b| Block::load(b, w, device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { conv1, blocks })
    }

    /// Residual blocks in all (16 for ResNet-50).
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }
}

/// Refuses a checkpoint of another block kind, or with a block beyond
/// `cfg`'s count (a missing one is reported when it is read).
fn check_layout(cfg: &Config, w: &Weights) -> Result<(), ModelError> {
    let refuse = |msg: String| Err(w.candle_err(candle_core::Error::Msg(msg)));
    let has_conv3 = w.contains("layer1.0.conv3.weight");
    match (cfg.block, has_conv3) {
        (BlockKind::Basic, true) => {
            return refuse(format!(
                "block `layer1.0` has `conv3`: a bottleneck ResNet (50, 101, 152), \
                 not {} (basic blocks)",
                cfg.name
            ))
        }
        (BlockKind::Bottleneck, false) if w.contains("layer1.0.conv1.weight") => {
            return refuse(format!(
                "block `layer1.0` has no `conv3`: a basic-block ResNet (18, 34), \
                 not {} (bottleneck blocks)",
                cfg.name
            ))
        }
        _ => {}
    }
    for (i, &n) in cfg.layers.iter().enumerate() {
        let extra = format!("layer{}.{n}", i + 1);
        if w.contains(&format!("{extra}.conv1.weight")) {
            return refuse(format!(
                "extra block `{extra}`: {} has {n} blocks in `layer{}` ({:?} in all); \
                 `runner inspect` names the depth of the checkpoint",
                cfg.name,
                i + 1,
                cfg.layers
            ));
        }
    }
    Ok(())
}

impl Backbone for ResNet {
    fn forward_features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.conv1.forward(x)?; // (N, 64, 112, 112)
        let mut x = max_pool2d(&x, POOL_WINDOW, POOL_STRIDE, pad(POOL_PAD))?; // (N, 64, 56, 56)
        for b in &self.blocks {
            // bottleneck: 256 (56) -> 512 (28) -> 1024 (14) -> 2048 (7);
            // basic: 64 -> 128 -> 256 -> 512
            x = b.forward(&x)?;
        }
        global_avg_pool(&x) // (N, 512 | 2048)
    }

    fn num_features(&self) -> usize {
        self.blocks.last().map_or(0, Block::out_channels)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::Arch;

    fn put(sd: &mut HashMap<String, Tensor>, name: String, v: Vec<f32>, shape: &[usize]) {
        let t = Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor");
        sd.insert(name, t);
    }

    /// PyTorch `conv` + BatchNorm `bn` (identity statistics).
    fn conv_bn(sd: &mut HashMap<String, Tensor>, conv: &str, bn: &str, shape: [usize; 4]) {
        let n: usize = shape.iter().product();
        let v = (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) / 20.0).collect();
        put(sd, format!("{conv}.weight"), v, &shape);
        let c = shape[0];
        for (p, x) in [
            ("weight", 1.0),
            ("running_var", 1.0),
            ("bias", 0.0),
            ("running_mean", 0.0),
        ] {
            put(sd, format!("{bn}.{p}"), vec![x; c], &[c]);
        }
    }

    /// A torchvision-named state dict of `cfg`'s layout whose stage `s`
    /// has `planes(s)` planes (torchvision: 64, 128, 256, 512).
    pub(super) fn state_dict(
        cfg: &Config,
        planes: impl Fn(usize) -> usize,
    ) -> HashMap<String, Tensor> {
        let mut sd = HashMap::new();
        let stem = planes(0);
        conv_bn(&mut sd, "conv1", "bn1", [stem, 3, 7, 7]);
        let mut c_in = stem;
        for (s, &n) in cfg.layers.iter().enumerate() {
            let (mid, out) = (planes(s), planes(s) * cfg.block.expansion());
            for j in 0..n {
                let p = format!("layer{}.{j}", s + 1);
                let (c, b) = (|i| format!("{p}.conv{i}"), |i| format!("{p}.bn{i}"));
                match cfg.block {
                    BlockKind::Basic => {
                        conv_bn(&mut sd, &c(1), &b(1), [mid, c_in, 3, 3]);
                        conv_bn(&mut sd, &c(2), &b(2), [out, mid, 3, 3]);
                    }
                    BlockKind::Bottleneck => {
                        conv_bn(&mut sd, &c(1), &b(1), [mid, c_in, 1, 1]);
                        conv_bn(&mut sd, &c(2), &b(2), [mid, mid, 3, 3]);
                        conv_bn(&mut sd, &c(3), &b(3), [out, mid, 1, 1]);
                    }
                }
                if j == 0 && (s > 0 || c_in != out) {
                    let (dc, db) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                    conv_bn(&mut sd, &dc, &db, [out, c_in, 1, 1]);
                }
                c_in = out;
            }
        }
        sd
    }

    pub(super) fn narrow(s: usize) -> usize {
        2 + s
    }

    #[test]
    fn block_counts_and_widths_follow_the_config() {
        for block in [BlockKind::Basic, BlockKind::Bottleneck] {
            let cfg = Config {
                name: "tiny",
                block,
                layers: [2, 1, 3, 1],
            };
            let w = Weights::from_tensors("tiny", state_dict(&cfg, narrow));
            let net = ResNet::from_weights(&cfg, &w, &Device::Cpu).expect("load");
            assert_eq!(net.num_blocks(), 7);
            let width = narrow(3) * block.expansion();
            assert_eq!(net.num_features(), width);
            let x = Tensor::ones((2, 3, 64, 64), candle_core::DType::F32, &Device::Cpu).expect("x");
            let f = net.forward_features(&x).expect("forward");
            assert_eq!(f.dims(), &[2, width]);
        }
    }

    /// Every registered depth at full width: the declared feature width is
    /// the network's.
    #[test]
    fn every_depth_produces_its_declared_feature_width() {
        let x = Tensor::ones((1, 3, 32, 32), candle_core::DType::F32, &Device::Cpu).expect("x");
        for (cfg, entry) in CONFIGS.iter().zip(MODELS) {
            let w = Weights::from_tensors(cfg.name, state_dict(cfg, |s| 64 << s));
            let net = ResNet::from_weights(cfg, &w, &Device::Cpu).expect("load");
            let declared = entry.pretrained_cfg.expect("native").num_features;
            assert_eq!(net.num_features(), declared, "{}", cfg.name);
            let f = net.forward_features(&x).expect("forward");
            assert_eq!(f.dims(), &[1, declared], "{}", cfg.name);
            assert_eq!(net.num_blocks(), cfg.layers.iter().sum::<usize>());
        }
    }

    /// Deeper, shallower and other-kind checkpoints are refused, naming the
    /// block that does not fit.
    #[test]
    fn a_checkpoint_of_another_depth_is_refused_naming_the_block() {
        let [r18, r34, r50, r101, _] = &CONFIGS;
        for (cfg, ckpt, expected) in [
            (r18, r34, "extra block `layer1.2`"),
            (r50, r101, "extra block `layer3.6`"),
            (r34, r18, "`layer1.2.conv1.weight` is missing"),
            (r50, r34, "basic-block ResNet"),
            (r18, r50, "a bottleneck ResNet"),
        ] {
            let w = Weights::from_tensors(cfg.name, state_dict(ckpt, narrow));
            let err = match ResNet::from_weights(cfg, &w, &Device::Cpu) {
                Ok(_) => panic!("{} loaded {}", cfg.name, ckpt.name),
                Err(e) => match std::error::Error::source(&e) {
                    Some(cause) => format!("{e}: {cause}"),
                    None => e.to_string(),
                },
            };
            assert!(
                err.contains(expected),
                "{} <- {}: {err}",
                cfg.name,
                ckpt.name
            );
        }
    }

    #[test]
    fn probes_tell_the_depths_apart() {
        for cfg in &CONFIGS {
            let sd = state_dict(cfg, narrow);
            let found =
                crate::registry::identify(sd.keys().map(String::as_str)).map(|(e, _)| e.name);
            assert_eq!(found, Some(cfg.name));
        }
    }

    #[test]
    fn arch_resnet50_is_named_resnet50_in_specs() {
        let a: Arch = serde_json::from_str("\"resnet50\"").expect("parse");
        assert_eq!(a.name(), "resnet50");
        let cfg = a.pretrained_cfg().expect("native");
        assert_eq!((cfg.input_size, cfg.num_features), (224, 2048));
        let r18 = Arch::from_name("resnet18").expect("registered");
        assert_eq!(r18.pretrained_cfg().map(|c| c.num_features), Some(512));
    }
}
