//! EfficientNet-Lite0's MBConv blocks and head in the NCHW16c layout: the
//! native layers' weights re-packed once at load for the blocked CPU
//! kernels ([`runner_kernels::nchwc`]).

use candle_core::Tensor;

use super::{EfficientNetLite0, MbConv};
use crate::layers::{pooled_tensor, BlockedConv1x1, BlockedDepthwise, BlockedStem};
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

/// The whole network in the NCHW16c layout: the stem reads the RGB image as
/// interleaved pixels, the narrow 1x1 convolutions read the activations in
/// place (nothing packed per call), the depthwise convolutions run 16
/// channels per instruction.
pub(super) struct BlockedFlow {
    stem: BlockedStem,
    blocks: Vec<BlockedMbConv>,
    head: BlockedConv1x1,
}

impl BlockedFlow {
    pub(super) fn of(net: &EfficientNetLite0) -> Option<Self> {
        Some(Self {
            stem: net.conv_stem.blocked_stem()?,
            blocks: net
                .blocks
                .iter()
                .map(BlockedMbConv::of)
                .collect::<Option<_>>()?,
            head: net.conv_head.blocked_1x1()?,
        })
    }

    /// The preprocessed `(N, 3, H, W)` input -> pooled `(N, 1280)`.
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (mut y, device) = self.stem.forward(x)?;
        for b in &self.blocks {
            y = b.forward(&y);
        }
        pooled_tensor(&self.head.forward(&y, None), &device)
    }
}
