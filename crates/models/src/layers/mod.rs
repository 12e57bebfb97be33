//! Shared building blocks of the native backbones: a checkpoint reader that
//! names missing tensors, BatchNorm folding, TF/Keras "same" padding, and
//! inference-only layers on CPU kernels of our own where candle is slow or
//! lacks the operation.
//!
//! Every layer is inference-only and keeps its weights in f32. BatchNorm is
//! folded into the preceding convolution at load time, so a convolution here
//! is always `act(conv(x, w) + b)`, with the bias and activation (and a
//! residual) fused into the kernel.
//!
//! Where to find what:
//! - `weights`: [`Weights`] (safetensors / Keras `.h5` / PyTorch `.pth`,
//!   name lookups, the content fingerprint) and [`BatchNorm`] folding;
//! - `padding`: [`Padding`] rules, [`Pad4`], and the [`WindowGeometry`] a
//!   rule resolves to for one input;
//! - `conv`: [`Conv2d`], every dense convolution as one GEMM per image;
//! - `depthwise`: [`DepthwiseConv2d`];
//! - `pool`: max and average pooling, global average pooling, channel
//!   concatenation;
//! - `blocked`: the NCHW16c versions of the 1x1 convolution, the depthwise
//!   convolution and max pooling (Xception's middle and exit flows);
//! - `cpu_op`: what the CPU layers share as candle custom ops.
//!
//! The kernels themselves ([`runner_kernels`]) run on contiguous f32 NCHW
//! tensors on the CPU. Any other input (another device, another precision)
//! takes the portable path ([`crate::portable`]): candle's ops plus the
//! device kernels of [`crate::cuda`].

mod blocked;
mod conv;
mod cpu_op;
pub(crate) use cpu_op::{cpu_f32, dims4, output_buffer};
mod depthwise;
mod padding;
mod pool;
mod weights;

pub use blocked::{
    blocked_max_pool, blocked_max_pool_into, nchwc_enabled, on_pool, pooled_tensor, BlockedConv,
    BlockedConv1x1, BlockedDepthwise, BlockedStem,
};
pub use conv::{Conv2d, Conv2dConfig};
pub use depthwise::{depthwise_conv2d, DepthwiseConfig, DepthwiseConv2d};
pub use padding::{same_pad_1d, Pad4, Padding, WindowGeometry};
pub(crate) use pool::Pool;
pub use pool::{
    avg_pool2d_exclude_pad, avg_pool2d_same_exclude_pad, concat_channels, global_avg_pool,
    max_pool2d, max_pool2d_rect,
};
pub use runner_kernels::Act;
pub use weights::{BatchNorm, BnNames, Weights, BN_EPS};

/// The largest elementwise difference of two tensors (the layers' tests).
#[cfg(test)]
fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("diff")
}
