//! Layers in the NCHW16c layout ([`runner_kernels::nchwc`]), built from the
//! NCHW ones: a 1x1 convolution ([`BlockedConv1x1`]), any dense convolution
//! ([`BlockedConv`]), a depthwise convolution ([`BlockedDepthwise`]) and max
//! pooling ([`blocked_max_pool`]). Only AVX-512F machines run them
//! ([`nchwc::available`]).

use runner_kernels::nchwc;
use runner_kernels::window::Clamp;

use candle_core::{Storage, Tensor};

use super::conv::Conv2d;
use super::cpu_op::cpu_f32;
use super::depthwise::DepthwiseConv2d;
use super::padding::Padding;
use crate::profile;

/// Whether backbones build their NCHW16c copies: on CPUs that run the
/// kernels ([`nchwc::available`]), unless `RUNNER_NCHWC=0` asks for the NCHW
/// path (A/B comparisons).
pub fn nchwc_enabled() -> bool {
    nchwc::available() && !std::env::var("RUNNER_NCHWC").is_ok_and(|v| v == "0")
}

/// Runs `f` (a whole NCHW16c forward pass) on a worker of rayon's pool, so
/// that each layer's parallel loop starts from a worker (queued locally,
/// stolen by the others) rather than being injected from an outside thread
/// and waking the pool again: 0.98-1.05x (median 1.03x of five pairs) on
/// EfficientNet-Lite0, whose
/// forward pass at batch 8 is ~50 parallel layers of under a millisecond.
/// Inline when already on a worker.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// A first convolution (at most 16 input channels: RGB) from an NCHW CPU
/// tensor straight to an [`nchwc::Blocked`] map, reading the image as
/// interleaved pixels ([`nchwc::conv_interleaved`]) rather than running in
/// NCHW and converting its wider output.
pub struct BlockedStem {
    packed: nchwc::PackedConv,
    stride: usize,
    padding: Padding,
    act: Clamp,
}

impl BlockedStem {
    /// `act(conv(x) + b)` of an `(N, C, H, W)` CPU tensor, and its device.
    pub fn forward(
        &self,
        x: &Tensor,
    ) -> candle_core::Result<(nchwc::Blocked, candle_core::Device)> {
        let x = x.contiguous()?;
        let (n, c, h, w) = x.dims4()?;
        let (kh, kw) = self.packed.k;
        let pad = self.padding.resolve((h, w), (kh, kw), self.stride).tblr();
        let args = nchwc::ConvArgs {
            stride: self.stride,
            pad,
            act: self.act,
            residual: None,
        };
        let (storage, layout) = x.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("nchwc: expected a CPU tensor")
        };
        let data = cpu_f32("nchwc stem", cpu, layout)?;
        let s = self.stride;
        let y = profile::time(
            || {
                let (oh, ow) = nchwc::out_size((h, w), (kh, kw), s, pad);
                let flops = 2.0 * (n * oh * ow * c * self.packed.o * kh * kw) as f64;
                (format!("nchwc conv {kh}x{kw}/{s} (stem)"), flops)
            },
            || nchwc::conv_interleaved(data, (n, c, h, w), &self.packed, args),
        );
        Ok((y, x.device().clone()))
    }
}

/// A 1x1 convolution (any stride, no padding) for [`nchwc::Blocked`] maps,
/// with an optional residual added after the activation.
pub struct BlockedConv1x1 {
    packed: nchwc::PackedConv,
    stride: usize,
    act: Clamp,
}

impl BlockedConv1x1 {
    fn new(w: &[f32], bias: &[f32], (o, c): (usize, usize), stride: usize, act: Clamp) -> Self {
        Self {
            packed: nchwc::PackedConv::new(w, bias, o, c, (1, 1), 2),
            stride,
            act,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.packed.o
    }

    /// `act(conv(x) + b) (+ residual)`.
    pub fn forward(&self, x: &nchwc::Blocked, residual: Option<&nchwc::Blocked>) -> nchwc::Blocked {
        let (h, w) = (x.h.div_ceil(self.stride), x.w.div_ceil(self.stride));
        let mut y = nchwc::Blocked::uninit(x.n, self.packed.o, h, w);
        self.forward_into(x, residual, &mut y, 0);
        y
    }

    /// [`Self::forward`] written to `y`'s blocks `block_offset..` (a branch
    /// of a concatenation).
    pub fn forward_into(
        &self,
        x: &nchwc::Blocked,
        residual: Option<&nchwc::Blocked>,
        y: &mut nchwc::Blocked,
        block_offset: usize,
    ) {
        let flops = 2.0 * (y.n * y.hw() * self.packed.c * self.packed.o) as f64;
        let label = if residual.is_some() {
            "nchwc conv 1x1 +res"
        } else {
            "nchwc conv 1x1"
        };
        let args = nchwc::ConvArgs {
            stride: self.stride,
            pad: (0, 0, 0, 0),
            act: self.act,
            residual,
        };
        profile::time(
            || (format!("{label}/{}", self.stride), flops),
            || nchwc::conv_into(x, &self.packed, args, y, block_offset),
        )
    }
}

/// A dense convolution for [`nchwc::Blocked`] maps: the 1x1 kernel for
/// unpadded 1x1 windows, Winograd F(2x2, 3x3) for 3x3 stride-1 windows,
/// the row-exact `kh x kw` kernel otherwise. Each holds its weights in the
/// one packing it runs.
pub enum BlockedConv {
    OneByOne(BlockedConv1x1),
    Winograd {
        packed: nchwc::PackedWinograd,
        padding: Padding,
        act: Clamp,
    },
    Dense {
        packed: nchwc::PackedConv,
        stride: usize,
        padding: Padding,
        act: Clamp,
    },
}

impl BlockedConv {
    pub fn out_channels(&self) -> usize {
        match self {
            Self::OneByOne(c) => c.out_channels(),
            Self::Winograd { packed, .. } => packed.o,
            Self::Dense { packed, .. } => packed.o,
        }
    }

    /// `act(conv(x) + b)`.
    pub fn forward(&self, x: &nchwc::Blocked) -> nchwc::Blocked {
        let (oh, ow) = nchwc::out_size((x.h, x.w), self.kernel(), self.stride(), self.pad(x));
        let mut y = nchwc::Blocked::uninit(x.n, self.out_channels(), oh, ow);
        self.forward_into(x, &mut y, 0);
        y
    }

    fn kernel(&self) -> (usize, usize) {
        match self {
            Self::OneByOne(_) => (1, 1),
            Self::Winograd { .. } => (3, 3),
            Self::Dense { packed, .. } => packed.k,
        }
    }

    fn stride(&self) -> usize {
        match self {
            Self::OneByOne(c) => c.stride,
            Self::Winograd { .. } => 1,
            Self::Dense { stride, .. } => *stride,
        }
    }

    /// The padding over input `x`, `(top, bottom, left, right)`.
    fn pad(&self, x: &nchwc::Blocked) -> nchwc::Pad {
        let padding = match self {
            Self::OneByOne(_) => return (0, 0, 0, 0),
            Self::Winograd { padding, .. } | Self::Dense { padding, .. } => padding,
        };
        padding
            .resolve((x.h, x.w), self.kernel(), self.stride())
            .tblr()
    }

    /// [`Self::forward`] written to `y`'s blocks `block_offset..`.
    pub fn forward_into(&self, x: &nchwc::Blocked, y: &mut nchwc::Blocked, block_offset: usize) {
        let pad = self.pad(x);
        let (kh, kw) = self.kernel();
        let flops = 2.0 * (y.n * y.hw() * x.c * self.out_channels() * kh * kw) as f64;
        match self {
            Self::OneByOne(c) => c.forward_into(x, None, y, block_offset),
            Self::Winograd { packed, act, .. } => profile::time(
                || ("nchwc conv 3x3/1 winograd".to_string(), flops),
                || nchwc::winograd_into(x, packed, pad, *act, y, block_offset),
            ),
            Self::Dense {
                packed,
                stride,
                act,
                ..
            } => {
                let args = nchwc::ConvArgs {
                    stride: *stride,
                    pad,
                    act: *act,
                    residual: None,
                };
                profile::time(
                    || (format!("nchwc conv {kh}x{kw}/{stride}"), flops),
                    || nchwc::conv_into(x, packed, args, y, block_offset),
                )
            }
        }
    }
}

/// Global average pooling of a batch of maps: `(N, C)` on `device`.
pub fn pooled_tensor(
    y: &nchwc::Blocked,
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    Tensor::from_vec(y.global_avg(), (y.n, y.c), device)
}

impl Conv2d {
    /// This convolution as the first of an NCHW16c network, when it has at
    /// most 16 input channels.
    pub fn blocked_stem(&self) -> Option<BlockedStem> {
        if self.in_channels > nchwc::CB {
            return None;
        }
        let w = self.weight.to_row_major();
        let (o, c) = (self.out_channels(), self.in_channels);
        Some(BlockedStem {
            packed: nchwc::PackedConv::new(&w, &self.bias, o, c, self.k, 2),
            stride: self.cfg.stride,
            padding: self.cfg.padding,
            act: self.cfg.act.clamp(),
        })
    }

    /// This convolution for NCHW16c maps.
    pub fn blocked(&self) -> BlockedConv {
        if let Some(c) = self.blocked_1x1() {
            return BlockedConv::OneByOne(c);
        }
        let w = self.weight.to_row_major();
        let (o, c) = (self.out_channels(), self.in_channels);
        let (padding, act) = (self.cfg.padding, self.cfg.act.clamp());
        if self.k == (3, 3) && self.cfg.stride == 1 {
            return BlockedConv::Winograd {
                packed: nchwc::PackedWinograd::new(&w, &self.bias, o, c),
                padding,
                act,
            };
        }
        BlockedConv::Dense {
            packed: nchwc::PackedConv::new(&w, &self.bias, o, c, self.k, 2),
            stride: self.cfg.stride,
            padding,
            act,
        }
    }

    /// This 1x1 convolution without its bias and activation, and those two:
    /// `act(pool(conv(x)) + b)` equals `act(conv(pool(x)) + b)` for a linear
    /// pool, on the convolution's (fewer) output channels.
    pub fn blocked_1x1_linear(&self) -> Option<(BlockedConv1x1, Vec<f32>, Clamp)> {
        if !self.is_unpadded_1x1() || self.cfg.stride != 1 {
            return None;
        }
        let w = self.weight.to_row_major();
        let zero = vec![0.0; self.out_channels()];
        let oc = (self.out_channels(), self.in_channels);
        let linear = BlockedConv1x1::new(&w, &zero, oc, 1, Clamp::NONE);
        Some((linear, self.bias.clone(), self.cfg.act.clamp()))
    }

    /// A 1x1 window that no padding rule pads.
    fn is_unpadded_1x1(&self) -> bool {
        // "same" never pads a 1x1 window, whatever the stride.
        let unpadded = match self.cfg.padding {
            Padding::Explicit(p) => p.is_zero(),
            Padding::Valid | Padding::Same | Padding::SameLower => true,
        };
        self.k == (1, 1) && unpadded
    }

    /// This convolution for NCHW16c maps, when it is 1x1 without padding
    /// (any stride: the kernel reads every `stride`-th pixel in place).
    pub fn blocked_1x1(&self) -> Option<BlockedConv1x1> {
        if !self.is_unpadded_1x1() {
            return None;
        }
        let w = self.weight.to_row_major();
        let oc = (self.out_channels(), self.in_channels);
        let (stride, act) = (self.cfg.stride, self.cfg.act.clamp());
        Some(BlockedConv1x1::new(&w, &self.bias, oc, stride, act))
    }
}

/// A depthwise convolution for [`nchwc::Blocked`] maps.
pub struct BlockedDepthwise {
    packed: nchwc::PackedDepthwise,
    stride: usize,
    padding: Padding,
    in_act: Clamp,
    out_act: Clamp,
}

impl BlockedDepthwise {
    pub fn forward(&self, x: &nchwc::Blocked) -> nchwc::Blocked {
        let (kh, kw) = self.packed.k;
        let pad = self
            .padding
            .resolve((x.h, x.w), (kh, kw), self.stride)
            .tblr();
        profile::time(
            || {
                let s = self.stride;
                let flops = 2.0 * (x.n * x.c * x.h * x.w / s / s * kh * kw) as f64;
                (format!("nchwc depthwise {kh}x{kw}/{s}"), flops)
            },
            || nchwc::depthwise(x, &self.packed, self.stride, pad, self.in_act, self.out_act),
        )
    }

    /// `pw(self(x)) (+ residual)` for a stride-1 1x1 `pw`: fused band by
    /// band ([`nchwc::depthwise_then_1x1`]) where the depthwise window has
    /// a sliding-window kernel, else one after the other. Xception's
    /// separable convolutions gain 1.01-1.07x and 17% of peak memory;
    /// EfficientNet-Lite0's MBConvs measured 0.94-1.0x, so they stay
    /// unfused.
    pub fn then_1x1(
        &self,
        pw: &BlockedConv1x1,
        x: &nchwc::Blocked,
        residual: Option<&nchwc::Blocked>,
    ) -> nchwc::Blocked {
        if pw.stride == 1 {
            let (kh, kw) = self.packed.k;
            let dw = nchwc::DepthwiseArgs {
                p: &self.packed,
                stride: self.stride,
                pad: self
                    .padding
                    .resolve((x.h, x.w), (kh, kw), self.stride)
                    .tblr(),
                in_act: self.in_act,
                out_act: self.out_act,
            };
            let fused = profile::time(
                || {
                    let (s, (h, w)) = (
                        self.stride,
                        (x.h.div_ceil(self.stride), x.w.div_ceil(self.stride)),
                    );
                    let flops = 2.0 * (x.n * h * w * x.c * (kh * kw + pw.packed.o)) as f64;
                    (format!("nchwc depthwise {kh}x{kw}/{s} + conv 1x1"), flops)
                },
                || nchwc::depthwise_then_1x1(x, dw, &pw.packed, pw.act, residual),
            );
            if let Some(y) = fused {
                return y;
            }
        }
        pw.forward(&self.forward(x), residual)
    }
}

impl DepthwiseConv2d {
    /// This convolution for NCHW16c maps.
    pub fn blocked(&self) -> BlockedDepthwise {
        BlockedDepthwise {
            packed: nchwc::PackedDepthwise::new(&self.weight, &self.bias, self.channels, self.k),
            stride: self.cfg.stride,
            padding: self.cfg.padding,
            in_act: self.cfg.in_act.clamp(),
            out_act: self.cfg.out_act.clamp(),
        }
    }
}

/// Max pooling `k x k` of an NCHW16c map; padded positions never win.
pub fn blocked_max_pool(
    x: &nchwc::Blocked,
    k: usize,
    stride: usize,
    padding: Padding,
) -> nchwc::Blocked {
    let pad = padding.resolve((x.h, x.w), (k, k), stride).tblr();
    profile::time(
        || (format!("nchwc max pool {k}x{k}/{stride}"), 0.0),
        || nchwc::max_pool(x, (k, k), stride, pad),
    )
}

/// [`blocked_max_pool`] written to `y`'s blocks `block_offset..`.
pub fn blocked_max_pool_into(
    x: &nchwc::Blocked,
    k: usize,
    stride: usize,
    padding: Padding,
    y: &mut nchwc::Blocked,
    block_offset: usize,
) {
    let pad = padding.resolve((x.h, x.w), (k, k), stride).tblr();
    profile::time(
        || (format!("nchwc max pool {k}x{k}/{stride}"), 0.0),
        || nchwc::max_pool_into(x, (k, k), stride, pad, y, block_offset),
    )
}
