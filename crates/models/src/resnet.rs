//! ResNet-50 (He et al., "Deep Residual Learning for Image Recognition",
//! CVPR 2016), as built by torchvision's `resnet50` and timm's `resnet50`
//! ("ResNet v1.5": the stride of a down-sampling bottleneck is on its 3x3
//! convolution): 224x224 input, 2048 features.
//!
//! Weights use the torchvision state-dict names, which timm's `resnet50`
//! shares: `conv1.weight` (OIHW), `bn1.{weight,bias,running_mean,running_var}`,
//! `layer{1..4}.{j}.conv{1,2,3}.weight`, `layer{1..4}.{j}.bn{1,2,3}.*`, and on
//! each stage's first block `layer{i}.0.downsample.0.weight` (the 1x1
//! shortcut convolution) with `layer{i}.0.downsample.1.*` (its BatchNorm);
//! `fc.*` is ignored. The number of blocks per stage is read from the
//! checkpoint (3, 4, 6, 3 for ResNet-50), so the deeper bottleneck ResNets
//! (101, 152) with the same names load too.
//!
//! PyTorch numerics throughout: BatchNorm epsilon 1e-5, explicit symmetric
//! padding (3 for the 7x7/2 stem, 1 for every 3x3 and the 3x3/2 max pool).
//! Every BatchNorm is folded into its convolution and the ReLUs inside a block
//! run in the convolutions' bias pass; the shortcut add is fused into the
//! third convolution's bias pass, the ReLU after the add is a separate pass.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::flavour::Convention;
use super::layers::{
    global_avg_pool, max_pool2d, Act, Conv2d, Conv2dConfig, Pad4, Padding, Weights,
};
use super::{Backbone, ModelError};

const ARCH: &str = "resnet50";

/// `nn.BatchNorm2d`'s default epsilon (torchvision, timm).
const BN_EPS: f32 = 1e-5;

/// PyTorch `padding=p` on every side.
fn pad(p: usize) -> Padding {
    Padding::Explicit(Pad4::new(p, p, p, p))
}

/// PyTorch `Conv2d(bias=False)` `{conv}.weight` + `BatchNorm2d` `{bn}.*`, folded.
fn conv_bn(
    w: &Weights,
    conv: &str,
    bn: &str,
    stride: usize,
    padding: Padding,
    act: Act,
    device: &Device,
) -> Result<Conv2d, ModelError> {
    let cfg = Conv2dConfig {
        stride,
        padding,
        act,
    };
    Convention::torch(BN_EPS).conv_bn(w, &format!("{conv}.weight"), bn, cfg, device)
}

/// `relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))`.
struct Bottleneck {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    downsample: Option<Conv2d>,
}

impl Bottleneck {
    /// Block `p` (`layer{i}.{j}`), its 3x3 convolution with stride `stride`.
    fn load(w: &Weights, p: &str, stride: usize, device: &Device) -> Result<Self, ModelError> {
        let c = |i: usize, s: usize, padding: Padding, act: Act| {
            conv_bn(
                w,
                &format!("{p}.conv{i}"),
                &format!("{p}.bn{i}"),
                s,
                padding,
                act,
                device,
            )
        };
        let downsample = if w.contains(&format!("{p}.downsample.0.weight")) {
            Some(conv_bn(
                w,
                &format!("{p}.downsample.0"),
                &format!("{p}.downsample.1"),
                stride,
                Padding::Valid,
                Act::None,
                device,
            )?)
        } else {
            None
        };
        Ok(Self {
            conv1: c(1, 1, Padding::Valid, Act::Relu)?,
            conv2: c(2, stride, pad(1), Act::Relu)?,
            conv3: c(3, 1, Padding::Valid, Act::None)?,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.conv1.forward(x)?; // (N, C_mid, H, W)
        let y = self.conv2.forward(&y)?; // (N, C_mid, H/s, W/s)
        let y = match &self.downsample {
            Some(d) => self.conv3.forward_add(&y, &d.forward(x)?)?,
            None => self.conv3.forward_add(&y, x)?,
        }; // (N, C_out, H/s, W/s)
        y.relu()
    }
}

/// A torchvision / timm bottleneck ResNet without its classifier;
/// `forward_features` returns the global-average-pooled `(N, 2048)` output of
/// `layer4`.
pub struct ResNet {
    conv1: Conv2d,
    /// `layer1..4`, in order.
    blocks: Vec<Bottleneck>,
}

impl ResNet {
    /// Loads torchvision / timm state-dict weights (any float dtype) from a
    /// safetensors file or a PyTorch checkpoint.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::from_weights(&Weights::read(ARCH, path)?, device)
    }

    pub fn from_weights(w: &Weights, device: &Device) -> Result<Self, ModelError> {
        let conv1 = conv_bn(w, "conv1", "bn1", 2, pad(3), Act::Relu, device)?;
        if w.contains("layer1.0.conv1.weight") && !w.contains("layer1.0.conv3.weight") {
            return Err(w.candle_err(candle_core::Error::Msg(
                "this is a basic-block ResNet (18 / 34: no `layer1.0.conv3.weight`); \
                 only bottleneck ResNets (50, 101, 152) are built"
                    .into(),
            )));
        }
        let mut blocks = Vec::new();
        for stage in 1..=4 {
            let stride = if stage == 1 { 1 } else { 2 };
            // Blocks `layer{stage}.0..` as far as the checkpoint has them
            // (the first one must be there: it is reported as missing).
            let mut j = 0;
            while j == 0 || w.contains(&format!("layer{stage}.{j}.conv1.weight")) {
                let s = if j == 0 { stride } else { 1 };
                blocks.push(Bottleneck::load(
                    w,
                    &format!("layer{stage}.{j}"),
                    s,
                    device,
                )?);
                j += 1;
            }
        }
        Ok(Self { conv1, blocks })
    }

    /// Bottleneck blocks in all (16 for ResNet-50).
    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }
}

impl Backbone for ResNet {
    fn forward_features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.conv1.forward(x)?; // (N, 64, 112, 112)
        let mut x = max_pool2d(&x, 3, 2, pad(1))?; // (N, 64, 56, 56)
        for b in &self.blocks {
            // 256 (56) -> 512 (28) -> 1024 (14) -> 2048 (7)
            x = b.forward(&x)?;
        }
        global_avg_pool(&x) // (N, 2048)
    }

    fn num_features(&self) -> usize {
        self.blocks.last().map_or(0, |b| b.conv3.out_channels())
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

    /// A narrow bottleneck ResNet's state dict: `blocks[i]` blocks in stage
    /// `i + 1`, widths `mid` / `4 * mid` per stage.
    fn tiny(blocks: [usize; 4]) -> HashMap<String, Tensor> {
        let mut sd = HashMap::new();
        conv_bn(&mut sd, "conv1", "bn1", [4, 3, 7, 7]);
        let mut c_in = 4;
        for (s, &n) in blocks.iter().enumerate() {
            let mid = 2 + s;
            for j in 0..n {
                let p = format!("layer{}.{j}", s + 1);
                let (c, b) = (|i| format!("{p}.conv{i}"), |i| format!("{p}.bn{i}"));
                conv_bn(&mut sd, &c(1), &b(1), [mid, c_in, 1, 1]);
                conv_bn(&mut sd, &c(2), &b(2), [mid, mid, 3, 3]);
                conv_bn(&mut sd, &c(3), &b(3), [4 * mid, mid, 1, 1]);
                if j == 0 {
                    let (dc, db) = (format!("{p}.downsample.0"), format!("{p}.downsample.1"));
                    conv_bn(&mut sd, &dc, &db, [4 * mid, c_in, 1, 1]);
                }
                c_in = 4 * mid;
            }
        }
        sd
    }

    #[test]
    fn block_counts_and_widths_come_from_the_checkpoint() {
        let w = Weights::from_tensors(ARCH, tiny([2, 1, 3, 1]));
        let net = ResNet::from_weights(&w, &Device::Cpu).expect("load");
        assert_eq!(net.num_blocks(), 7);
        assert_eq!(net.num_features(), 20);
        let x = Tensor::ones((2, 3, 64, 64), candle_core::DType::F32, &Device::Cpu).expect("x");
        let f = net.forward_features(&x).expect("forward");
        assert_eq!(f.dims(), &[2, 20]);
    }

    #[test]
    fn basic_block_resnets_are_refused_by_name() {
        let mut sd = tiny([1, 1, 1, 1]);
        sd.retain(|k, _| !k.contains(".conv3.") && !k.contains(".bn3."));
        let w = Weights::from_tensors(ARCH, sd);
        let err = match ResNet::from_weights(&w, &Device::Cpu) {
            Ok(_) => panic!("loaded without conv3"),
            Err(e) => e,
        };
        let cause = std::error::Error::source(&err).expect("cause").to_string();
        assert!(cause.contains("basic-block ResNet"), "{cause}");
    }

    #[test]
    fn arch_resnet50_is_named_resnet50_in_specs() {
        let a: Arch = serde_json::from_str("\"resnet50\"").expect("parse");
        assert_eq!(a, Arch::Resnet50);
        assert_eq!(a.name(), "resnet50");
        let cfg = a.pretrained_cfg().expect("native");
        assert_eq!((cfg.input_size, cfg.num_features), (224, 2048));
    }
}
