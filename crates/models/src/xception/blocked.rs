//! Xception in the NCHW16c layout, from its first convolution: the native layers'
//! weights re-packed once at load for the blocked CPU kernels.

use candle_core::Tensor;

use super::{DownBlock, MiddleBlock, SepConv, Xception};
use crate::layers::{
    blocked_max_pool, pooled_tensor, BlockedConv, BlockedConv1x1, BlockedDepthwise, BlockedStem,
    Padding,
};
use runner_kernels::nchwc::Blocked;

/// A separable convolution in NCHW16c: `pw(dw(x)) (+ residual)`.
struct BlockedSep {
    dw: BlockedDepthwise,
    pw: BlockedConv1x1,
}

impl BlockedSep {
    fn of(s: &SepConv) -> Option<Self> {
        Some(Self {
            dw: s.dw.blocked(),
            pw: s.pw.blocked_1x1()?,
        })
    }

    fn forward(&self, x: &Blocked, residual: Option<&Blocked>) -> Blocked {
        self.dw.then_1x1(&self.pw, x, residual)
    }
}

/// [`super::DownBlock`] in NCHW16c; the shortcut's 1x1/2 convolution adds the
/// pooled branch in its output pass.
struct BlockedDown {
    sep1: BlockedSep,
    sep2: BlockedSep,
    pool_padding: Padding,
    residual: BlockedConv1x1,
}

impl BlockedDown {
    fn of(b: &DownBlock) -> Option<Self> {
        Some(Self {
            sep1: BlockedSep::of(&b.sep1)?,
            sep2: BlockedSep::of(&b.sep2)?,
            pool_padding: b.pool_padding,
            residual: b.residual.blocked_1x1()?,
        })
    }

    fn forward(&self, x: &Blocked) -> Blocked {
        // Reassigned, not shadowed: each map is freed as soon as the next
        // exists (a shadowed binding lives to the end of the scope).
        let mut y = self.sep1.forward(x, None);
        y = self.sep2.forward(&y, None);
        y = blocked_max_pool(&y, 3, 2, self.pool_padding);
        self.residual.forward(x, Some(&y))
    }
}

/// The whole network in the NCHW16c layout ([`runner_kernels::nchwc`]):
/// the same weights re-packed at load, so that depthwise convolutions and
/// max pools run 16 channels per instruction, and the convolutions read the
/// activations in place; the first convolution reads the RGB image as
/// interleaved pixels.
pub(super) struct BlockedFlow {
    conv1: BlockedStem,
    conv2: BlockedConv,
    entry: Vec<BlockedDown>,
    middle: Vec<[BlockedSep; 3]>,
    block13: BlockedDown,
    block14: [BlockedSep; 2],
}

impl BlockedFlow {
    pub(super) fn of(x: &Xception) -> Option<Self> {
        let sep3 = |m: &MiddleBlock| -> Option<[BlockedSep; 3]> {
            Some([
                BlockedSep::of(&m.sep[0])?,
                BlockedSep::of(&m.sep[1])?,
                BlockedSep::of(&m.sep[2])?,
            ])
        };
        Some(Self {
            conv1: x.block1_conv1.blocked_stem()?,
            conv2: x.block1_conv2.blocked(),
            entry: x.entry.iter().map(BlockedDown::of).collect::<Option<_>>()?,
            middle: x.middle.iter().map(sep3).collect::<Option<_>>()?,
            block13: BlockedDown::of(&x.block13)?,
            block14: [
                BlockedSep::of(&x.block14_sepconv1)?,
                BlockedSep::of(&x.block14_sepconv2)?,
            ],
        })
    }

    /// The preprocessed `(N, 3, H, W)` input -> pooled `(N, 2048)`.
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (y, device) = self.conv1.forward(x)?; // (N, 32, 149, 149)
        let y = self.conv2.forward(&y); // (N, 64, 147, 147)
        pooled_tensor(&self.forward_blocked(y), &device)
    }

    fn forward_blocked(&self, mut y: Blocked) -> Blocked {
        for b in &self.entry {
            y = b.forward(&y);
        }
        for [s1, s2, s3] in &self.middle {
            let mut t = s1.forward(&y, None);
            t = s2.forward(&t, None);
            y = s3.forward(&t, Some(&y));
        }
        y = self.block13.forward(&y);
        let [s1, s2] = &self.block14;
        s2.forward(&s1.forward(&y, None), None)
    }
}
