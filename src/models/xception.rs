//! Xception (Chollet, "Xception: Deep Learning with Depthwise Separable
//! Convolutions", CVPR 2017), as built by Keras `applications/xception.py`
//! with `include_top=False, pooling="avg"`: 299x299 input, 2048 features.
//!
//! Weights use the Keras-2 layer names (`block1_conv1/kernel` HWIO,
//! `block2_sepconv1/{depthwise,pointwise}_kernel`, `block2_sepconv1_bn/...`;
//! the four residual 1x1 convolutions are `conv2d_1..4` with
//! `batch_normalization_1..4`). Every BatchNorm is folded into the preceding
//! convolution (for a separable convolution, into its pointwise part); each
//! `relu -> SeparableConv2D` applies the ReLU inside the depthwise kernel, each
//! `BN -> relu` inside the pointwise bias pass.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::layers::{global_avg_pool, max_pool2d, Act, Conv2d, DepthwiseConv2d, Padding, Weights};
use super::{Arch, Backbone, ModelError};

const ARCH: &str = "xception";

/// Keras `SeparableConv2D(3x3, padding="same", use_bias=False)` + its BN:
/// `out_act(pw(dw(in_act(x))))`.
struct SepConv {
    dw: DepthwiseConv2d,
    pw: Conv2d,
}

impl SepConv {
    /// Layer `name` (and BN `{name}_bn`).
    fn load(
        w: &Weights,
        name: &str,
        in_act: Act,
        out_act: Act,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let (dk, dshape) = w.keras_depthwise_kernel(&format!("{name}/depthwise_kernel"))?;
        let dw = DepthwiseConv2d::new(
            dk,
            (dshape[0], dshape[1], dshape[2]),
            None,
            1,
            Padding::Same,
            in_act,
            Act::None,
        )
        .map_err(|e| w.candle_err(e))?;
        let (mut pk, pshape) = w.keras_conv_kernel(&format!("{name}/pointwise_kernel"))?;
        if pshape[1] != dshape[0] {
            return Err(w.shape_err(
                &format!("{name}/pointwise_kernel"),
                vec![1, 1, dshape[0], pshape[0]],
                vec![pshape[2], pshape[3], pshape[1], pshape[0]],
            ));
        }
        let bias = w
            .keras_bn(&format!("{name}_bn"), pshape[0], true)?
            .fold_into(&mut pk, None);
        let pw = Conv2d::new(
            w.tensor(pk, &pshape, device)?,
            bias,
            1,
            Padding::Same,
            out_act,
        )
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
    residual: Conv2d,
}

impl DownBlock {
    /// `block`: Keras block number; `res`: index of its `conv2d_N` shortcut;
    /// `pre_relu`: whether the block starts with a ReLU (all but block 2).
    fn load(
        w: &Weights,
        block: usize,
        res: usize,
        pre_relu: bool,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let in_act = if pre_relu { Act::Relu } else { Act::None };
        Ok(Self {
            sep1: SepConv::load(
                w,
                &format!("block{block}_sepconv1"),
                in_act,
                Act::Relu,
                device,
            )?,
            sep2: SepConv::load(
                w,
                &format!("block{block}_sepconv2"),
                Act::None,
                Act::None,
                device,
            )?,
            residual: Conv2d::keras_conv_bn(
                w,
                &format!("conv2d_{res}"),
                &format!("batch_normalization_{res}"),
                true,
                2,
                Padding::Same,
                Act::None,
                device,
            )?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // The shortcut sees the block input before its ReLU.
        let residual = self.residual.forward(x)?; // (N, C_out, ceil(H/2), ceil(W/2))
        let y = self.sep1.forward(x)?; // (N, C_mid, H, W)
        let y = self.sep2.forward(&y)?; // (N, C_out, H, W)
        let y = max_pool2d(&y, 3, 2, Padding::Same)?; // (N, C_out, ceil(H/2), ceil(W/2))
        y + residual
    }
}

/// Middle-flow block: three `relu -> SeparableConv2D(728) -> BN`, identity shortcut.
struct MiddleBlock {
    sep: [SepConv; 3],
}

impl MiddleBlock {
    fn load(w: &Weights, block: usize, device: &Device) -> Result<Self, ModelError> {
        let s = |i: usize, in_act: Act, out_act: Act| {
            SepConv::load(
                w,
                &format!("block{block}_sepconv{i}"),
                in_act,
                out_act,
                device,
            )
        };
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

/// Keras Xception without its classifier; `forward_features` returns the
/// global-average-pooled `(N, 2048)` output of `block14_sepconv2_act`.
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
}

impl Xception {
    /// Loads Keras-2-named weights (any float dtype) from a safetensors file.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::from_weights(&Weights::read(ARCH, path)?, device)
    }

    pub fn from_weights(w: &Weights, device: &Device) -> Result<Self, ModelError> {
        let conv = |name: &str, stride: usize| {
            Conv2d::keras_conv_bn(
                w,
                name,
                &format!("{name}_bn"),
                true,
                stride,
                Padding::Valid,
                Act::Relu,
                device,
            )
        };
        Ok(Self {
            block1_conv1: conv("block1_conv1", 2)?,
            block1_conv2: conv("block1_conv2", 1)?,
            entry: vec![
                DownBlock::load(w, 2, 1, false, device)?,
                DownBlock::load(w, 3, 2, true, device)?,
                DownBlock::load(w, 4, 3, true, device)?,
            ],
            middle: (5..=12)
                .map(|b| MiddleBlock::load(w, b, device))
                .collect::<Result<_, _>>()?,
            block13: DownBlock::load(w, 13, 4, true, device)?,
            block14_sepconv1: SepConv::load(w, "block14_sepconv1", Act::None, Act::Relu, device)?,
            block14_sepconv2: SepConv::load(w, "block14_sepconv2", Act::None, Act::Relu, device)?,
        })
    }
}

impl Backbone for Xception {
    fn forward_features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.block1_conv1.forward(x)?; // (N, 32, 149, 149)
        let mut x = self.block1_conv2.forward(&x)?; // (N, 64, 147, 147)
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
        Arch::Xception.pretrained_cfg().map_or(0, |c| c.num_features)
    }
}
