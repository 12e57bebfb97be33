//! Depthwise convolution (one `kh x kw` filter per channel, multiplier 1)
//! with a kernel of our own: `out_act(dw(in_act(x)) + b)`.
//!
//! candle's grouped convolution splits the input into one convolution per
//! channel and is 7-10x slower than a direct kernel; ours
//! ([`runner_kernels::window`], rayon over the `N * C` planes) takes any
//! asymmetric padding, fuses an optional ReLU on its input (Xception's
//! `relu -> SeparableConv2D`), the folded bias and an output activation.

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use runner_kernels::window::WindowKind;
use runner_kernels::Act;

use super::cpu_op::WindowOp;
use super::padding::{Pad4, Padding, WindowGeometry};
use crate::{portable, profile};

/// A depthwise convolution's stride, padding rule, and the activations on
/// its input and its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseConfig {
    pub stride: usize,
    pub padding: Padding,
    /// Applied to the input before the convolution: ReLU commutes with zero
    /// padding, so `dw(relu(x)) == dw_in_relu(x)`.
    pub in_act: Act,
    pub out_act: Act,
}

impl Default for DepthwiseConfig {
    /// Stride 1, no padding, no activations.
    fn default() -> Self {
        Self {
            stride: 1,
            padding: Padding::Valid,
            in_act: Act::None,
            out_act: Act::None,
        }
    }
}

/// Depthwise convolution (one `kh x kw` filter per channel, multiplier 1):
/// `out_act(dw(in_act(x)) + b)`.
pub struct DepthwiseConv2d {
    /// `(C, kh, kw)`, row-major.
    pub(super) weight: Vec<f32>,
    /// Folded bias (zeros when the layer had none).
    pub(super) bias: Vec<f32>,
    pub(super) channels: usize,
    pub(super) k: (usize, usize),
    pub(super) cfg: DepthwiseConfig,
    /// Copies for the portable path ([`portable`]), made on first use.
    device_weights: OnceLock<portable::DeviceWeights>,
}

impl DepthwiseConv2d {
    /// `weight` is `(C, kh, kw)` flattened; `bias` defaults to zeros.
    pub fn new(
        weight: Vec<f32>,
        (channels, kh, kw): (usize, usize, usize),
        bias: Option<Vec<f32>>,
        cfg: DepthwiseConfig,
    ) -> candle_core::Result<Self> {
        if weight.len() != channels * kh * kw {
            candle_core::bail!(
                "depthwise_conv2d: {} weights for ({channels}, {kh}, {kw})",
                weight.len()
            )
        }
        let bias = bias.unwrap_or_else(|| vec![0.0; channels]);
        if bias.len() != channels {
            candle_core::bail!(
                "depthwise_conv2d: {channels} channels but {} biases",
                bias.len()
            )
        }
        if cfg.stride == 0 {
            candle_core::bail!("depthwise_conv2d: stride 0")
        }
        Ok(Self {
            weight,
            bias,
            channels,
            k: (kh, kw),
            cfg,
            device_weights: OnceLock::new(),
        })
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The window over an `h x w` input.
    pub(super) fn geometry(&self, hw: (usize, usize)) -> WindowGeometry {
        self.cfg.padding.window(hw, self.k, self.cfg.stride)
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let g = self.geometry((h, w));
        if portable::wanted(x) {
            let weights = self.portable_weights(x.device(), x.dtype())?;
            let DepthwiseConfig {
                in_act, out_act, ..
            } = self.cfg;
            return portable::depthwise(x, &weights, g, in_act, out_act);
        }
        profile::time(
            || {
                let (s, (kh, kw)) = (g.stride, g.kernel);
                let flops = 2.0 * (x.elem_count() / s / s * kh * kw) as f64;
                (format!("depthwise {kh}x{kw}/{s}"), flops)
            },
            || depthwise_conv2d(x, self, g.pad),
        )
    }

    /// The weights on `device` for the portable path.
    fn portable_weights(
        &self,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<portable::DeviceWeights> {
        let dims = [self.channels, self.k.0, self.k.1];
        let w = || self.weight.clone();
        portable::DeviceWeights::cached(&self.device_weights, w, &dims, &self.bias, device, dtype)
    }
}

/// Runs `dw` with explicit padding `pad` (CPU, f32).
pub fn depthwise_conv2d(
    x: &Tensor,
    dw: &DepthwiseConv2d,
    pad: Pad4,
) -> candle_core::Result<Tensor> {
    let g = WindowGeometry {
        kernel: dw.k,
        stride: dw.cfg.stride,
        pad,
    };
    let kind = WindowKind::Depthwise {
        weights: &dw.weight,
        bias: &dw.bias,
    };
    let window = g.kernel_window(kind, dw.cfg.in_act.clamp(), dw.cfg.out_act.clamp());
    x.contiguous()?.apply_op1_no_bwd(&WindowOp {
        name: "depthwise_conv2d",
        window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use runner_kernels::rng::uniform_vec as rand_vec;

    use crate::layers::max_abs_diff;

    /// Reference: explicit zero padding, then candle's grouped conv2d.
    fn reference(
        x: &Tensor,
        w: &[f32],
        (c, kh, kw): (usize, usize, usize),
        bias: &[f32],
        stride: usize,
        p: Pad4,
        in_relu: bool,
    ) -> Tensor {
        let x = if in_relu {
            x.relu().expect("relu")
        } else {
            x.clone()
        };
        let x = x
            .pad_with_zeros(2, p.top, p.bottom)
            .and_then(|x| x.pad_with_zeros(3, p.left, p.right))
            .expect("pad");
        let wt = Tensor::from_vec(w.to_vec(), (c, 1, kh, kw), &Device::Cpu).expect("w");
        let b = Tensor::from_vec(bias.to_vec(), (1, c, 1, 1), &Device::Cpu).expect("b");
        x.conv2d(&wt, 0, stride, 1, c)
            .and_then(|y| y.broadcast_add(&b))
            .expect("conv")
    }

    #[test]
    fn depthwise_kernel_matches_candle_grouped_conv() {
        let cases = [
            // (n, c, h, w, k, stride, pad)
            (2, 3, 7, 9, 3, 1, Pad4::new(1, 1, 1, 1)),
            (1, 4, 8, 8, 3, 2, Pad4::new(0, 1, 0, 1)),
            (2, 5, 11, 10, 5, 1, Pad4::new(2, 2, 2, 2)),
            (1, 3, 12, 12, 5, 2, Pad4::new(1, 2, 1, 2)),
            (1, 2, 9, 7, 5, 2, Pad4::new(2, 2, 2, 2)),
            (2, 3, 6, 5, 3, 1, Pad4::new(0, 2, 2, 0)),
            (1, 2, 5, 6, 3, 2, Pad4::default()),
            (1, 2, 4, 4, 5, 1, Pad4::new(3, 0, 0, 3)),
        ];
        for (i, &(n, c, h, w, k, s, p)) in cases.iter().enumerate() {
            for in_relu in [false, true] {
                let x = Tensor::from_vec(
                    rand_vec(n * c * h * w, i as u64 + 1),
                    (n, c, h, w),
                    &Device::Cpu,
                )
                .expect("x");
                let wv = rand_vec(c * k * k, 100 + i as u64);
                let bv = rand_vec(c, 200 + i as u64);
                let in_act = if in_relu { Act::Relu } else { Act::None };
                let cfg = DepthwiseConfig {
                    stride: s,
                    in_act,
                    ..Default::default()
                };
                let dw =
                    DepthwiseConv2d::new(wv.clone(), (c, k, k), Some(bv.clone()), cfg).expect("dw");
                let ours = depthwise_conv2d(&x, &dw, p).expect("ours");
                let want = reference(&x, &wv, (c, k, k), &bv, s, p, in_relu);
                assert_eq!(ours.dims(), want.dims(), "case {i}");
                let d = max_abs_diff(&ours, &want);
                assert!(d < 1e-5, "case {i} (in_relu {in_relu}): max diff {d}");
            }
        }
    }

    #[test]
    fn depthwise_same_padding_and_relu6_output() {
        // 8x8, stride 2, k 3: TF "same" pads (0, 1); ReLU6 clamps the output.
        let (n, c, h, w) = (1, 3, 8, 8);
        let x =
            Tensor::from_vec(rand_vec(n * c * h * w, 7), (n, c, h, w), &Device::Cpu).expect("x");
        let wv: Vec<f32> = rand_vec(c * 9, 8).iter().map(|v| v * 8.0).collect();
        let cfg = DepthwiseConfig {
            stride: 2,
            padding: Padding::Same,
            out_act: Act::Relu6,
            ..Default::default()
        };
        let dw = DepthwiseConv2d::new(wv.clone(), (c, 3, 3), None, cfg).expect("dw");
        let ours = dw.forward(&x).expect("ours");
        let p = Pad4::new(0, 1, 0, 1);
        let want = reference(&x, &wv, (c, 3, 3), &[0.0; 3], 2, p, false)
            .clamp(0f32, 6f32)
            .expect("clamp");
        assert_eq!(ours.dims(), &[1, 3, 4, 4]);
        assert!(max_abs_diff(&ours, &want) < 1e-5);
    }
}
