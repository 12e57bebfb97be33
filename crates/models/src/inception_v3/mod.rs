//! Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture for
//! Computer Vision", CVPR 2016), as built by Keras
//! `applications/inception_v3.py` with `include_top=False, pooling="avg"`
//! and by timm's / torchvision's `inception_v3`: 299x299 input, 2048
//! features.
//!
//! Weights use either the Keras-2 names `conv2d_1..94/kernel` (HWIO, no bias)
//! and `batch_normalization_1..94/{beta,moving_mean,moving_variance}` (no
//! gamma: Keras builds these BNs with `scale=False`), numbered in the order
//! Keras creates the layers, i.e. the call order of `conv2d_bn` below; or the
//! timm / torchvision state-dict names (`Mixed_5b.branch1x1.conv.weight`,
//! `Mixed_5b.branch1x1.bn.{weight,bias,running_mean,running_var}`; the map is
//! [`torch_modules`]). The naming is detected by the entry's probes. Each
//! `conv2d_bn` is one [`Conv2d`] with the BN folded in and the ReLU fused.
//!
//! Both frameworks use BatchNorm epsilon 1e-3 and pad every stride-1
//! convolution symmetrically (stride-2 ones and the max pools not at all).
//! They differ in the 3x3 stride-1 average pool before each `branch_pool`
//! convolution: Keras `AveragePooling2D(3, strides=1, padding="same")`
//! excludes the padding from the mean, PyTorch `F.avg_pool2d(x, 3, 1,
//! padding=1)` counts it (divides by 9 at the borders too). The model does
//! what the checkpoint's framework does.
//!
//! `names` holds the timm / torchvision name map; `onnx` writes the same
//! network as ONNX nodes; `blocked` re-packs it for the NCHW16c CPU
//! kernels.

mod blocked;
mod names;
mod onnx;

use std::path::Path;

use candle_core::{Device, Tensor};

use super::config::{BackboneSpec, Preprocess, PretrainedCfg};
use super::flavour::{Convention, Flavour, FoldedConv};
use super::layers::{
    avg_pool2d_same_exclude_pad, concat_channels, global_avg_pool, max_pool2d, nchwc_enabled,
    on_pool, Act, Conv2d, Conv2dConfig, DepthwiseConfig, DepthwiseConv2d, Pad4, Padding, Weights,
};
use super::registry::{self, ModelEntry, Probe};
use super::{Backbone, ModelError};
use blocked::BlockedFlow;
pub use names::torch_modules;

const ARCH: &str = "inception_v3";

/// Keras' and timm's preprocessing and input size for Inception-v3.
pub const CFG: PretrainedCfg = PretrainedCfg::new(299, Preprocess::Inception, 2048);

pub const MODELS: &[ModelEntry] =
    &[ModelEntry::native(ARCH, CFG, probes, load).with_onnx(onnx::to_onnx)];

/// The first and last convolutions in each naming (Keras numbers 94; the
/// first four alone would also be Xception's shortcuts).
fn probes() -> Vec<Probe> {
    let torch = [
        "Conv2d_1a_3x3.conv.weight",
        "Mixed_7c.branch_pool.conv.weight",
    ];
    vec![
        Probe::keras(&["conv2d_1/kernel", "conv2d_94/kernel"]),
        Probe::torch("timm / torchvision inception_v3 names", &torch),
    ]
}

fn load(spec: &BackboneSpec, device: &Device) -> Result<Box<dyn Backbone>, ModelError> {
    Ok(Box::new(InceptionV3::load(&spec.weights, device)?))
}

/// timm's and torchvision's `BasicConv2d` / `ConvNormAct` BatchNorm epsilon
/// (the same as Keras').
const TORCH_BN_EPS: f32 = 1e-3;

/// Hands out the `conv2d_bn` layers' folded weights in Keras creation order.
struct Layers<'a> {
    w: &'a Weights,
    conv: Convention,
    /// `(kernel tensor, BatchNorm)` of every layer, in order.
    names: Vec<(String, String)>,
    next: usize,
}

impl<'a> Layers<'a> {
    /// The checkpoint's layers in its naming.
    fn new(w: &'a Weights) -> Result<Self, ModelError> {
        let (conv, names) = match registry::detect_flavour(w, &probes())? {
            Flavour::Keras => (
                Convention::keras(false),
                (1..=94)
                    .map(|i| {
                        (
                            format!("conv2d_{i}/kernel"),
                            format!("batch_normalization_{i}"),
                        )
                    })
                    .collect(),
            ),
            Flavour::Torch => (
                Convention::torch(TORCH_BN_EPS),
                torch_modules()
                    .into_iter()
                    .map(|m| (format!("{m}.conv.weight"), format!("{m}.bn")))
                    .collect(),
            ),
        };
        Ok(Self {
            w,
            conv,
            names,
            next: 0,
        })
    }

    fn flavour(&self) -> Flavour {
        self.conv.flavour
    }

    /// The next layer, its BatchNorm folded in.
    fn take(&mut self) -> Result<FoldedConv, ModelError> {
        let Some((kernel, bn)) = self.names.get(self.next) else {
            return Err(self.w.candle_err(candle_core::Error::Msg(format!(
                "layer {} asked for, the network has {}",
                self.next + 1,
                self.names.len()
            ))));
        };
        self.next += 1;
        self.conv.folded_conv(self.w, kernel, bn)
    }
}

/// Builds the `conv2d_bn` layers in Keras creation order.
struct Seq<'a> {
    layers: Layers<'a>,
    device: &'a Device,
}

impl Seq<'_> {
    /// Keras `conv2d_bn(x, filters, kh, kw, padding, strides)`; the kernel
    /// size and filters come from the checkpoint.
    fn conv(&mut self, stride: usize, padding: Padding) -> Result<Conv2d, ModelError> {
        let f = self.layers.take()?;
        let cfg = Conv2dConfig {
            stride,
            padding,
            act: Act::Relu,
        };
        let w = self.layers.w;
        Conv2d::new(w.tensor(f.kernel, &f.dims, self.device)?, f.bias, cfg)
            .map_err(|e| w.candle_err(e))
    }

    fn same(&mut self) -> Result<Conv2d, ModelError> {
        self.conv(1, Padding::Same)
    }

    fn valid(&mut self, stride: usize) -> Result<Conv2d, ModelError> {
        self.conv(stride, Padding::Valid)
    }

    /// `branch_pool`: the 3x3 stride-1 average pool, then its convolution.
    fn branch_pool(&mut self) -> Result<BranchPool, ModelError> {
        let conv = self.same()?;
        let pool = match self.layers.flavour() {
            Flavour::Keras => AvgPool::ExcludePad,
            Flavour::Torch => {
                // Sum of the 9 taps (zero padding counted) / 9: a depthwise
                // convolution with weights 1/9.
                let c = conv.in_channels();
                let cfg = DepthwiseConfig {
                    padding: Padding::Explicit(Pad4::new(1, 1, 1, 1)),
                    ..DepthwiseConfig::default()
                };
                let dw = DepthwiseConv2d::new(vec![1.0 / 9.0; c * 9], (c, 3, 3), None, cfg)
                    .map_err(|e| self.layers.w.candle_err(e))?;
                AvgPool::IncludePad(dw)
            }
        };
        Ok(BranchPool { pool, conv })
    }
}

/// The 3x3 stride-1 average pool before a `branch_pool` convolution.
enum AvgPool {
    /// Keras `AveragePooling2D(3, strides=1, padding="same")`: the mean of
    /// the in-bounds taps.
    ExcludePad,
    /// PyTorch `F.avg_pool2d(x, 3, stride=1, padding=1)`
    /// (`count_include_pad=True`): the sum of the in-bounds taps / 9.
    IncludePad(DepthwiseConv2d),
}

/// `conv(avg_pool(x))`.
struct BranchPool {
    pool: AvgPool,
    conv: Conv2d,
}

impl BranchPool {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let p = match &self.pool {
            AvgPool::ExcludePad => avg_pool2d_same_exclude_pad(x, 3)?,
            AvgPool::IncludePad(dw) => dw.forward(x)?,
        };
        self.conv.forward(&p)
    }
}

/// Runs a chain of convolutions.
fn chain(convs: &[Conv2d], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut y = convs[0].forward(x)?;
    for c in &convs[1..] {
        y = c.forward(&y)?;
    }
    Ok(y)
}

/// `mixed0..2` (35x35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1.
struct BlockA {
    branch1x1: Conv2d,
    branch5x5: [Conv2d; 2],
    branch3x3dbl: [Conv2d; 3],
    branch_pool: BranchPool,
}

impl BlockA {
    fn load(s: &mut Seq<'_>) -> Result<Self, ModelError> {
        Ok(Self {
            branch1x1: s.same()?,
            branch5x5: [s.same()?, s.same()?],
            branch3x3dbl: [s.same()?, s.same()?, s.same()?],
            branch_pool: s.branch_pool()?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?; // (N, 64, 35, 35)
        let b5 = chain(&self.branch5x5, x)?; // (N, 64, 35, 35)
        let b3 = chain(&self.branch3x3dbl, x)?; // (N, 96, 35, 35)
        let bp = self.branch_pool.forward(x)?; // (N, 32 | 64, 35, 35)
        concat_channels(&[b1, b5, b3, bp]) // (N, 256 | 288, 35, 35)
    }
}

/// `mixed3` (35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2.
struct BlockB {
    branch3x3: Conv2d,
    branch3x3dbl: [Conv2d; 3],
}

impl BlockB {
    fn load(s: &mut Seq<'_>) -> Result<Self, ModelError> {
        Ok(Self {
            branch3x3: s.valid(2)?,
            branch3x3dbl: [s.same()?, s.same()?, s.valid(2)?],
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b3 = self.branch3x3.forward(x)?; // (N, 384, 17, 17)
        let bd = chain(&self.branch3x3dbl, x)?; // (N, 96, 17, 17)
        let bp = max_pool2d(x, 3, 2, Padding::Valid)?; // (N, 288, 17, 17)
        concat_channels(&[b3, bd, bp]) // (N, 768, 17, 17)
    }
}

/// `mixed4..7` (17x17): 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1.
struct BlockC {
    branch1x1: Conv2d,
    branch7x7: [Conv2d; 3],
    branch7x7dbl: [Conv2d; 5],
    branch_pool: BranchPool,
}

impl BlockC {
    fn load(s: &mut Seq<'_>) -> Result<Self, ModelError> {
        Ok(Self {
            branch1x1: s.same()?,
            branch7x7: [s.same()?, s.same()?, s.same()?],
            branch7x7dbl: [s.same()?, s.same()?, s.same()?, s.same()?, s.same()?],
            branch_pool: s.branch_pool()?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?; // (N, 192, 17, 17)
        let b7 = chain(&self.branch7x7, x)?; // (N, 192, 17, 17)
        let bd = chain(&self.branch7x7dbl, x)?; // (N, 192, 17, 17)
        let bp = self.branch_pool.forward(x)?; // (N, 192, 17, 17)
        concat_channels(&[b1, b7, bd, bp]) // (N, 768, 17, 17)
    }
}

/// `mixed8` (17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2.
struct BlockD {
    branch3x3: [Conv2d; 2],
    branch7x7x3: [Conv2d; 4],
}

impl BlockD {
    fn load(s: &mut Seq<'_>) -> Result<Self, ModelError> {
        Ok(Self {
            branch3x3: [s.same()?, s.valid(2)?],
            branch7x7x3: [s.same()?, s.same()?, s.same()?, s.valid(2)?],
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b3 = chain(&self.branch3x3, x)?; // (N, 320, 8, 8)
        let b7 = chain(&self.branch7x7x3, x)?; // (N, 192, 8, 8)
        let bp = max_pool2d(x, 3, 2, Padding::Valid)?; // (N, 768, 8, 8)
        concat_channels(&[b3, b7, bp]) // (N, 1280, 8, 8)
    }
}

/// `mixed9`, `mixed10` (8x8): 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | avgpool-1x1.
struct BlockE {
    branch1x1: Conv2d,
    branch3x3: Conv2d,
    branch3x3_1: Conv2d,
    branch3x3_2: Conv2d,
    branch3x3dbl: [Conv2d; 2],
    branch3x3dbl_1: Conv2d,
    branch3x3dbl_2: Conv2d,
    branch_pool: BranchPool,
}

impl BlockE {
    fn load(s: &mut Seq<'_>) -> Result<Self, ModelError> {
        Ok(Self {
            branch1x1: s.same()?,
            branch3x3: s.same()?,
            branch3x3_1: s.same()?,
            branch3x3_2: s.same()?,
            branch3x3dbl: [s.same()?, s.same()?],
            branch3x3dbl_1: s.same()?,
            branch3x3dbl_2: s.same()?,
            branch_pool: s.branch_pool()?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let b1 = self.branch1x1.forward(x)?; // (N, 320, 8, 8)
        let b3 = self.branch3x3.forward(x)?; // (N, 384, 8, 8)
        let b3a = self.branch3x3_1.forward(&b3)?; // (N, 384, 8, 8)
        let b3b = self.branch3x3_2.forward(&b3)?; // (N, 384, 8, 8)
        drop(b3);
        let bd = chain(&self.branch3x3dbl, x)?; // (N, 384, 8, 8)
        let bda = self.branch3x3dbl_1.forward(&bd)?; // (N, 384, 8, 8)
        let bdb = self.branch3x3dbl_2.forward(&bd)?; // (N, 384, 8, 8)
        drop(bd);
        let bp = self.branch_pool.forward(x)?; // (N, 192, 8, 8)
        concat_channels(&[b1, b3a, b3b, bda, bdb, bp]) // (N, 2048, 8, 8)
    }
}

/// InceptionV3 without its classifier; `forward_features` returns the
/// global-average-pooled `(N, 2048)` output of `mixed10` (timm / torchvision:
/// `Mixed_7c`).
pub struct InceptionV3 {
    /// `conv2d_1..5`.
    stem: [Conv2d; 5],
    mixed0_2: [BlockA; 3],
    mixed3: BlockB,
    mixed4_7: [BlockC; 4],
    mixed8: BlockD,
    mixed9_10: [BlockE; 2],
    flavour: Flavour,
    /// The NCHW16c copy of the network, where it runs.
    blocked: Option<BlockedFlow>,
}

impl InceptionV3 {
    /// Loads Keras-2-named or timm / torchvision-named weights (any float
    /// dtype) from a safetensors file or a PyTorch checkpoint.
    pub fn load(path: &Path, device: &Device) -> Result<Self, ModelError> {
        Self::from_weights(&Weights::read(ARCH, path)?, device)
    }

    pub fn from_weights(w: &Weights, device: &Device) -> Result<Self, ModelError> {
        let mut s = Seq {
            layers: Layers::new(w)?,
            device,
        };
        let flavour = s.layers.flavour();
        let stem = [
            s.valid(2)?, // conv2d_1: 3x3/2, 32
            s.valid(1)?, // conv2d_2: 3x3, 32
            s.same()?,   // conv2d_3: 3x3, 64
            s.valid(1)?, // conv2d_4: 1x1, 80
            s.valid(1)?, // conv2d_5: 3x3, 192
        ];
        Ok(Self {
            stem,
            mixed0_2: [
                BlockA::load(&mut s)?,
                BlockA::load(&mut s)?,
                BlockA::load(&mut s)?,
            ],
            mixed3: BlockB::load(&mut s)?,
            mixed4_7: [
                BlockC::load(&mut s)?,
                BlockC::load(&mut s)?,
                BlockC::load(&mut s)?,
                BlockC::load(&mut s)?,
            ],
            mixed8: BlockD::load(&mut s)?,
            mixed9_10: [BlockE::load(&mut s)?, BlockE::load(&mut s)?],
            flavour,
            blocked: None,
        }
        .with_blocked_flow())
    }

    /// Builds the NCHW16c copy where it runs ([`nchwc_enabled`]).
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

    /// Whose names the checkpoint used, hence whose numerics this model follows.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }
}

impl Backbone for InceptionV3 {
    fn forward_features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(flow) = &self.blocked {
            // The NCHW16c kernels are CPU kernels.
            if !super::portable::wanted(x) {
                return on_pool(|| flow.forward(x));
            }
        }
        let x = self.stem[0].forward(x)?; // (N, 32, 149, 149)
        let x = self.stem[1].forward(&x)?; // (N, 32, 147, 147)
        let x = self.stem[2].forward(&x)?; // (N, 64, 147, 147)
        let x = max_pool2d(&x, 3, 2, Padding::Valid)?; // (N, 64, 73, 73)
        let x = self.stem[3].forward(&x)?; // (N, 80, 73, 73)
        let x = self.stem[4].forward(&x)?; // (N, 192, 71, 71)
        let mut x = max_pool2d(&x, 3, 2, Padding::Valid)?; // (N, 192, 35, 35)
        for b in &self.mixed0_2 {
            x = b.forward(&x)?; // (N, 256 | 288 | 288, 35, 35)
        }
        let mut x = self.mixed3.forward(&x)?; // (N, 768, 17, 17)
        for b in &self.mixed4_7 {
            x = b.forward(&x)?; // (N, 768, 17, 17)
        }
        let mut x = self.mixed8.forward(&x)?; // (N, 1280, 8, 8)
        for b in &self.mixed9_10 {
            x = b.forward(&x)?; // (N, 2048, 8, 8)
        }
        global_avg_pool(&x) // (N, 2048)
    }

    fn num_features(&self) -> usize {
        CFG.num_features
    }
}
