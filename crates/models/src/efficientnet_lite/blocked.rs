//! EfficientNet-Lite0's MBConv blocks and head in the NCHW16c layout: the
//! native layers' weights re-packed once at load for the blocked CPU
//! kernels ([`runner_kernels::nchwc`]).

use candle_core::Tensor;

use super::{EfficientNetLite0, MbConv};
use crate::layers::{into_blocked, BlockedConv1x1, BlockedDepthwise};
use runner_kernels::nchwc::Blocked;

/// [`MbConv`] in NCHW16c: `[expand] -> depthwise -> project [+ x]`.
struct BlockedMbConv {
    expand: Option<BlockedConv1x1>,
    depthwise: BlockedDepthwise,
    project: BlockedConv1x1,
    skip: bool,
}

impl BlockedMbConv {
    fn of(b: &MbConv) -> Option<Self> {
        Some(Self {
            expand: match &b.expand {
                Some(e) => Some(e.blocked_1x1()?),
                None => None,
            },
            depthwise: b.depthwise.blocked(),
            project: b.project.blocked_1x1()?,
            skip: b.skip,
        })
    }

    fn forward(&self, x: &Blocked) -> Blocked {
        let y = match &self.expand {
            Some(e) => self.depthwise.forward(&e.forward(x, None)),
            None => self.depthwise.forward(x),
        };
        self.project.forward(&y, self.skip.then_some(x))
    }
}

/// Blocks and head in the NCHW16c layout: the narrow 1x1 convolutions read
/// the activations in place (nothing packed per call), the depthwise
/// convolutions run 16 channels per instruction with no padded copies. The
/// stem stays NCHW (3 input channels); its output is converted once.
pub(super) struct BlockedFlow {
    blocks: Vec<BlockedMbConv>,
    head: BlockedConv1x1,
}

impl BlockedFlow {
    pub(super) fn of(net: &EfficientNetLite0) -> Option<Self> {
        Some(Self {
            blocks: net
                .blocks
                .iter()
                .map(BlockedMbConv::of)
                .collect::<Option<_>>()?,
            head: net.conv_head.blocked_1x1()?,
        })
    }

    /// `x`: the stem's `(N, 32, H, W)` output -> pooled `(N, 1280)`.
    pub(super) fn forward(&self, x: Tensor) -> candle_core::Result<Tensor> {
        let n = x.dim(0)?;
        let (mut y, device) = into_blocked(x)?;
        for b in &self.blocks {
            y = b.forward(&y);
        }
        let pooled = self.head.forward(&y, None).global_avg();
        let f = pooled.len() / n.max(1);
        Tensor::from_vec(pooled, (n, f), &device)
    }
}
