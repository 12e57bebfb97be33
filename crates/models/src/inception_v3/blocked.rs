//! InceptionV3 in the NCHW16c layout: the
//! native layers' weights re-packed once at load for the blocked CPU
//! kernels ([`runner_kernels::nchwc`]).
//!
//! Every branch writes its channel blocks straight into the block's output
//! (every branch width is a multiple of 16), so concatenation costs
//! nothing; the 3x3 average pool before each `branch_pool` convolution runs
//! after it instead (both are linear), on its 32-192 output channels rather
//! than the 192-2048 input channels, with the bias and ReLU applied once
//! pooled.

use candle_core::Tensor;
use runner_kernels::nchwc::{self, Blocked, CB};
use runner_kernels::window::Clamp;

use super::{AvgPool, BlockA, BlockB, BlockC, BlockD, BlockE, BranchPool, InceptionV3};
use crate::layers::{
    blocked_max_pool, blocked_max_pool_into, pooled_tensor, BlockedConv, BlockedConv1x1,
    BlockedStem, Conv2d, Padding,
};
use crate::profile;

/// Blocked copies of a list of convolutions.
fn convs<const N: usize>(c: &[Conv2d; N]) -> [BlockedConv; N] {
    std::array::from_fn(|i| c[i].blocked())
}

/// Runs `conv` into `y` at block `at`; returns the block after it.
fn branch_into(conv: &BlockedConv, x: &Blocked, y: &mut Blocked, at: usize) -> usize {
    conv.forward_into(x, y, at);
    at + conv.out_channels() / CB
}

/// Runs all but the last convolution, then the last into `y` at block `at`;
/// returns the block after it.
fn chain_into(convs: &[BlockedConv], x: &Blocked, y: &mut Blocked, at: usize) -> usize {
    let (last, first) = convs.split_last().expect("a chain has a convolution");
    match first {
        [] => branch_into(last, x, y, at),
        [head, rest @ ..] => {
            let mut t = head.forward(x);
            for c in rest {
                t = c.forward(&t);
            }
            branch_into(last, &t, y, at)
        }
    }
}

/// `conv(avg_pool(x))` run as `act(avg_pool(conv_linear(x)) + b)`.
struct BlockedBranchPool {
    conv: BlockedConv1x1,
    bias: Vec<f32>,
    act: Clamp,
    exclude_pad: bool,
}

impl BlockedBranchPool {
    fn of(b: &BranchPool) -> Option<Self> {
        let (conv, bias, act) = b.conv.blocked_1x1_linear()?;
        Some(Self {
            conv,
            bias,
            act,
            exclude_pad: matches!(b.pool, AvgPool::ExcludePad),
        })
    }

    fn forward_into(&self, x: &Blocked, y: &mut Blocked, at: usize) -> usize {
        let t = self.conv.forward(x, None);
        profile::time(
            || ("nchwc avg pool 3x3 +bias".to_string(), 0.0),
            || {
                let pad = (1, 1, 1, 1);
                let (e, b, a) = (self.exclude_pad, &self.bias, self.act);
                nchwc::avg_pool_into(&t, (3, 3), 1, pad, e, b, a, y, at)
            },
        );
        at + t.blocks()
    }
}

/// Whether every branch of a block writes whole channel blocks (true of
/// InceptionV3's widths: 32-448, all multiples of 16).
fn whole_blocks(widths: &[usize]) -> bool {
    widths.iter().all(|c| c % CB == 0)
}

struct BlockedA {
    b1: BlockedConv,
    b5: [BlockedConv; 2],
    b3: [BlockedConv; 3],
    pool: BlockedBranchPool,
    c: usize,
}

impl BlockedA {
    fn of(b: &BlockA) -> Option<Self> {
        let widths = [
            b.branch1x1.out_channels(),
            b.branch5x5[1].out_channels(),
            b.branch3x3dbl[2].out_channels(),
            b.branch_pool.conv.out_channels(),
        ];
        whole_blocks(&widths).then_some(())?;
        Some(Self {
            b1: b.branch1x1.blocked(),
            b5: convs(&b.branch5x5),
            b3: convs(&b.branch3x3dbl),
            pool: BlockedBranchPool::of(&b.branch_pool)?,
            c: widths.iter().sum(),
        })
    }

    fn forward(&self, x: &Blocked) -> Blocked {
        let mut y = Blocked::uninit(x.n, self.c, x.h, x.w);
        let at = branch_into(&self.b1, x, &mut y, 0);
        let at = chain_into(&self.b5, x, &mut y, at);
        let at = chain_into(&self.b3, x, &mut y, at);
        self.pool.forward_into(x, &mut y, at);
        y
    }
}

struct BlockedB {
    b3: BlockedConv,
    bd: [BlockedConv; 3],
}

impl BlockedB {
    fn of(b: &BlockB) -> Option<Self> {
        let widths = [
            b.branch3x3.out_channels(),
            b.branch3x3dbl[2].out_channels(),
            b.branch3x3.in_channels(),
        ];
        whole_blocks(&widths).then_some(())?;
        Some(Self {
            b3: b.branch3x3.blocked(),
            bd: convs(&b.branch3x3dbl),
        })
    }

    fn forward(&self, x: &Blocked) -> Blocked {
        let c = self.b3.out_channels() + self.bd[2].out_channels() + x.c;
        let (h, w) = nchwc::out_size((x.h, x.w), (3, 3), 2, (0, 0, 0, 0));
        let mut y = Blocked::uninit(x.n, c, h, w);
        let at = branch_into(&self.b3, x, &mut y, 0);
        let at = chain_into(&self.bd, x, &mut y, at);
        blocked_max_pool_into(x, 3, 2, Padding::Valid, &mut y, at);
        y
    }
}

struct BlockedC {
    b1: BlockedConv,
    b7: [BlockedConv; 3],
    bd: [BlockedConv; 5],
    pool: BlockedBranchPool,
    c: usize,
}

impl BlockedC {
    fn of(b: &BlockC) -> Option<Self> {
        let widths = [
            b.branch1x1.out_channels(),
            b.branch7x7[2].out_channels(),
            b.branch7x7dbl[4].out_channels(),
            b.branch_pool.conv.out_channels(),
        ];
        whole_blocks(&widths).then_some(())?;
        Some(Self {
            b1: b.branch1x1.blocked(),
            b7: convs(&b.branch7x7),
            bd: convs(&b.branch7x7dbl),
            pool: BlockedBranchPool::of(&b.branch_pool)?,
            c: widths.iter().sum(),
        })
    }

    fn forward(&self, x: &Blocked) -> Blocked {
        let mut y = Blocked::uninit(x.n, self.c, x.h, x.w);
        let at = branch_into(&self.b1, x, &mut y, 0);
        let at = chain_into(&self.b7, x, &mut y, at);
        let at = chain_into(&self.bd, x, &mut y, at);
        self.pool.forward_into(x, &mut y, at);
        y
    }
}

struct BlockedD {
    b3: [BlockedConv; 2],
    b7: [BlockedConv; 4],
}

impl BlockedD {
    fn of(b: &BlockD) -> Option<Self> {
        let widths = [
            b.branch3x3[1].out_channels(),
            b.branch7x7x3[3].out_channels(),
            b.branch3x3[0].in_channels(),
        ];
        whole_blocks(&widths).then_some(())?;
        Some(Self {
            b3: convs(&b.branch3x3),
            b7: convs(&b.branch7x7x3),
        })
    }

    fn forward(&self, x: &Blocked) -> Blocked {
        let c = self.b3[1].out_channels() + self.b7[3].out_channels() + x.c;
        let (h, w) = nchwc::out_size((x.h, x.w), (3, 3), 2, (0, 0, 0, 0));
        let mut y = Blocked::uninit(x.n, c, h, w);
        let at = chain_into(&self.b3, x, &mut y, 0);
        let at = chain_into(&self.b7, x, &mut y, at);
        blocked_max_pool_into(x, 3, 2, Padding::Valid, &mut y, at);
        y
    }
}

struct BlockedE {
    b1: BlockedConv,
    b3: BlockedConv,
    b3_1: BlockedConv,
    b3_2: BlockedConv,
    bd: [BlockedConv; 2],
    bd_1: BlockedConv,
    bd_2: BlockedConv,
    pool: BlockedBranchPool,
    c: usize,
}

impl BlockedE {
    fn of(b: &BlockE) -> Option<Self> {
        let widths = [
            b.branch1x1.out_channels(),
            b.branch3x3_1.out_channels(),
            b.branch3x3_2.out_channels(),
            b.branch3x3dbl_1.out_channels(),
            b.branch3x3dbl_2.out_channels(),
            b.branch_pool.conv.out_channels(),
        ];
        whole_blocks(&widths).then_some(())?;
        Some(Self {
            b1: b.branch1x1.blocked(),
            b3: b.branch3x3.blocked(),
            b3_1: b.branch3x3_1.blocked(),
            b3_2: b.branch3x3_2.blocked(),
            bd: convs(&b.branch3x3dbl),
            bd_1: b.branch3x3dbl_1.blocked(),
            bd_2: b.branch3x3dbl_2.blocked(),
            pool: BlockedBranchPool::of(&b.branch_pool)?,
            c: widths.iter().sum(),
        })
    }

    fn forward(&self, x: &Blocked) -> Blocked {
        let mut y = Blocked::uninit(x.n, self.c, x.h, x.w);
        let at = branch_into(&self.b1, x, &mut y, 0);
        let b3 = self.b3.forward(x);
        let at = branch_into(&self.b3_1, &b3, &mut y, at);
        let at = branch_into(&self.b3_2, &b3, &mut y, at);
        drop(b3);
        let bd = self.bd[1].forward(&self.bd[0].forward(x));
        let at = branch_into(&self.bd_1, &bd, &mut y, at);
        let at = branch_into(&self.bd_2, &bd, &mut y, at);
        drop(bd);
        self.pool.forward_into(x, &mut y, at);
        y
    }
}

/// The whole network in NCHW16c: the first convolution reads the RGB image
/// as interleaved pixels, then the stem's 32-192 channel convolutions and
/// the eleven mixed blocks.
pub(super) struct BlockedFlow {
    /// `conv2d_1`.
    conv1: BlockedStem,
    /// `conv2d_2..5`.
    stem: [BlockedConv; 4],
    mixed0_2: [BlockedA; 3],
    mixed3: BlockedB,
    mixed4_7: [BlockedC; 4],
    mixed8: BlockedD,
    mixed9_10: [BlockedE; 2],
}

impl BlockedFlow {
    pub(super) fn of(net: &InceptionV3) -> Option<Self> {
        let a = |i: usize| BlockedA::of(&net.mixed0_2[i]);
        let c = |i: usize| BlockedC::of(&net.mixed4_7[i]);
        let e = |i: usize| BlockedE::of(&net.mixed9_10[i]);
        Some(Self {
            conv1: net.stem[0].blocked_stem()?,
            stem: [1, 2, 3, 4].map(|i| net.stem[i].blocked()),
            mixed0_2: [a(0)?, a(1)?, a(2)?],
            mixed3: BlockedB::of(&net.mixed3)?,
            mixed4_7: [c(0)?, c(1)?, c(2)?, c(3)?],
            mixed8: BlockedD::of(&net.mixed8)?,
            mixed9_10: [e(0)?, e(1)?],
        })
    }

    /// The preprocessed `(N, 3, 299, 299)` input -> pooled `(N, 2048)`.
    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (y, device) = self.conv1.forward(x)?; // (N, 32, 149, 149)
        let y = self.stem[0].forward(&y); // (N, 32, 147, 147)
        let y = self.stem[1].forward(&y); // (N, 64, 147, 147)
        let y = blocked_max_pool(&y, 3, 2, Padding::Valid); // (N, 64, 73, 73)
        let y = self.stem[2].forward(&y); // (N, 80, 73, 73)
        let y = self.stem[3].forward(&y); // (N, 192, 71, 71)
        let mut y = blocked_max_pool(&y, 3, 2, Padding::Valid); // (N, 192, 35, 35)
        for b in &self.mixed0_2 {
            y = b.forward(&y);
        }
        y = self.mixed3.forward(&y);
        for b in &self.mixed4_7 {
            y = b.forward(&y);
        }
        y = self.mixed8.forward(&y);
        for b in &self.mixed9_10 {
            y = b.forward(&y);
        }
        pooled_tensor(&y, &device)
    }
}
