//! Dense convolution on our GEMM: `act(conv2d(x, w) + b) (+ residual)`, with
//! BatchNorm already folded into `w` and `b`.
//!
//! Every dense convolution is one GEMM per image with [`runner_kernels`]
//! (AVX-512 / AVX2 micro-kernels), `W (O, C*kh*kw) @ im2col(x)`, or `W @ x`
//! for 1x1 stride-1 kernels; 1.3-3x candle 0.11's matmul on most of our
//! shapes, on par at 7x7-10x10 outputs (`benches/backbones.rs`). The bias,
//! activation and residual run in the GEMM's epilogue while each output
//! block is still in cache, instead of candle's two broadcast passes.

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Device, Layout, Shape, Tensor};
use runner_kernels::{self as kernels, Act, ConvGeometry, Im2Col, MatRef, Output, PackedA};

use super::cpu_op::{cpu_f32, dims4, output_buffer};
use super::padding::{Padding, WindowGeometry};
use crate::{portable, profile};

/// A dense convolution's stride, padding rule and fused output activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub stride: usize,
    pub padding: Padding,
    pub act: Act,
}

impl Default for Conv2dConfig {
    /// Stride 1, no padding, no activation.
    fn default() -> Self {
        Self {
            stride: 1,
            padding: Padding::Valid,
            act: Act::None,
        }
    }
}

/// `act(conv2d(x, w) + b)`, with BatchNorm already folded into `w` and `b`.
pub struct Conv2d {
    /// OIHW, flattened (row `o` of the GEMM's `A (O x C*kh*kw)`), packed
    /// once for the micro-kernel.
    pub(super) weight: PackedA,
    pub(super) in_channels: usize,
    pub(super) bias: Vec<f32>,
    pub(super) k: (usize, usize),
    pub(super) cfg: Conv2dConfig,
    /// Copies for the portable path ([`portable`]), made on first use.
    device_weights: OnceLock<portable::DeviceWeights>,
}

impl Conv2d {
    /// From an OIHW kernel and a bias (BatchNorm already folded in).
    pub fn new(weight: Tensor, bias: Vec<f32>, cfg: Conv2dConfig) -> candle_core::Result<Self> {
        let (o, c, kh, kw) = weight.dims4()?;
        if bias.len() != o {
            candle_core::bail!("conv2d: {o} output channels but {} biases", bias.len())
        }
        if cfg.stride == 0 {
            candle_core::bail!("conv2d: stride 0")
        }
        let weight = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let k = c * kh * kw;
        let weight = PackedA::best(
            MatRef {
                data: &weight,
                ld: k,
            },
            o,
            k,
        )
        .map_err(candle_core::Error::wrap)?;
        Ok(Self {
            weight,
            in_channels: c,
            bias,
            k: (kh, kw),
            cfg,
            device_weights: OnceLock::new(),
        })
    }

    pub fn out_channels(&self) -> usize {
        self.bias.len()
    }

    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// The window over an `h x w` input.
    fn geometry(&self, hw: (usize, usize)) -> WindowGeometry {
        self.cfg.padding.window(hw, self.k, self.cfg.stride)
    }

    /// The output shape for an input of shape `dims`, if it fits.
    pub fn out_dims(&self, dims: &[usize]) -> Option<[usize; 4]> {
        let &[n, c, h, w] = dims else { return None };
        if c != self.in_channels {
            return None;
        }
        let (oh, ow) = self.geometry((h, w)).out_size((h, w)).ok()?;
        Some([n, self.out_channels(), oh, ow])
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_impl(x, None)
    }

    /// `act(conv(x) + b) + residual`.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_impl(x, Some(residual))
    }

    fn forward_impl(&self, x: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let g = self.geometry((h, w));
        if portable::wanted(x) {
            let weights = self.portable_weights(x.device(), x.dtype())?;
            return portable::conv2d(x, &weights, g, self.cfg.act, residual);
        }
        let x = x.contiguous()?;
        let op = ConvOp { conv: self, g };
        let label = || format!("conv {}x{}/{}", self.k.0, self.k.1, self.cfg.stride);
        match residual {
            None => profile::time(
                || (label(), self.flops(x.dims(), g)),
                || x.apply_op1_no_bwd(&op),
            ),
            Some(r) => {
                let r = r.contiguous()?;
                profile::time(
                    || (label() + " +res", self.flops(x.dims(), g)),
                    || x.apply_op2_no_bwd(&r, &op),
                )
            }
        }
    }

    /// Multiply-adds x 2 of one call on an input of shape `dims`.
    fn flops(&self, dims: &[usize], g: WindowGeometry) -> f64 {
        let (kh, kw) = self.k;
        match dims {
            &[n, c, h, w] => {
                let (oh, ow) = g.out_size((h, w)).unwrap_or((0, 0));
                2.0 * (n * self.out_channels() * oh * ow * c * kh * kw) as f64
            }
            _ => 0.0,
        }
    }

    /// The weights on `device` for the portable path.
    fn portable_weights(
        &self,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<portable::DeviceWeights> {
        let dims = [self.out_channels(), self.in_channels, self.k.0, self.k.1];
        let oihw = || self.weight.to_row_major();
        portable::DeviceWeights::cached(
            &self.device_weights,
            oihw,
            &dims,
            &self.bias,
            device,
            dtype,
        )
    }
}

/// One batched GEMM, `W (O, C*kh*kw) @ cols_t (C*kh*kw, OH*OW)` per image
/// `t`, whose result is already NCHW ([`kernels::gemm_packed`]): the weights
/// were packed at load, and each task packs its block of `cols_t` straight
/// from the image ([`Im2Col`], any stride and asymmetric padding), so no
/// column matrix is ever built. The folded bias, activation and residual run
/// in the GEMM's epilogue, on each block of the output while it is still in
/// cache.
struct ConvOp<'a> {
    conv: &'a Conv2d,
    g: WindowGeometry,
}

impl ConvOp<'_> {
    fn run(
        &self,
        x: &[f32],
        layout: &Layout,
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4("conv2d", layout)?;
        let cv = self.conv;
        if c != cv.in_channels {
            candle_core::bail!("conv2d: input has {c} channels, kernel {}", cv.in_channels)
        }
        let (oh, ow) = self.g.out_size((h, w))?;
        let o = cv.out_channels();
        let plane = oh * ow;
        let mut out = output_buffer(n * o * plane);
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from((n, o, oh, ow))));
        }
        let geometry = ConvGeometry {
            chw: (c, h, w),
            kernel: cv.k,
            stride: self.g.stride,
            top_left: (self.g.pad.top, self.g.pad.left),
            out: (oh, ow),
        };
        let images = x
            .chunks_exact(c * h * w)
            .map(|xi| Im2Col::new(xi, geometry))
            .collect::<Result<Vec<_>, _>>()
            .map_err(candle_core::Error::wrap)?;
        // One branch-free loop per row (the activation as a clamp), which
        // LLVM vectorises.
        let act = cv.cfg.act.clamp();
        let epilogue = |img: usize, row: usize, j0: usize, v: &mut [f32]| {
            let bias = cv.bias[row];
            match residual {
                Some(r) => {
                    let r = &r[(img * o + row) * plane + j0..][..v.len()];
                    for (v, &r) in v.iter_mut().zip(r) {
                        *v = act.apply(*v + bias) + r;
                    }
                }
                None => v.iter_mut().for_each(|v| *v = act.apply(*v + bias)),
            }
        };
        let c = Output::new(&mut out, plane, o * plane);
        kernels::gemm_packed(&cv.weight, &images, c, Some(&epilogue))
            .map_err(candle_core::Error::wrap)?;
        Ok((CpuStorage::F32(out), Shape::from((n, o, oh, ow))))
    }
}

impl candle_core::CustomOp1 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(cpu_f32("conv2d", s, l)?, l, None)
    }
}

impl candle_core::CustomOp2 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "conv2d_add"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, _, h, w) = dims4("conv2d_add", l1)?;
        let (oh, ow) = self.g.out_size((h, w))?;
        let want = [n, self.conv.out_channels(), oh, ow];
        if l2.dims() != want {
            candle_core::bail!("conv2d_add: output {want:?} but residual {:?}", l2.dims())
        }
        let r = cpu_f32("conv2d_add", s2, l2)?;
        self.run(cpu_f32("conv2d_add", s1, l1)?, l1, Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use candle_core::Device;
    use runner_kernels::rng::uniform_vec as rand_vec;

    use crate::layers::max_abs_diff;

    /// Our GEMM convolution against candle's conv2d (explicit zero padding,
    /// bias, activation, residual), on stride 1 and 2, 1x1 and kxk kernels.
    #[test]
    fn conv2d_matches_candle_conv2d() {
        // (n, c, o, h, w, kh, kw, stride, padding, act, residual)
        let cases = [
            (2, 5, 7, 9, 8, 3, 3, 2, Padding::Same, Act::Relu, false),
            (2, 6, 9, 7, 7, 1, 1, 1, Padding::Same, Act::None, true),
            (1, 4, 33, 11, 10, 1, 1, 2, Padding::Valid, Act::None, false),
            (2, 3, 20, 17, 17, 1, 7, 1, Padding::Same, Act::Relu6, true),
            (1, 3, 16, 12, 13, 7, 1, 1, Padding::Same, Act::Relu, false),
            (2, 8, 15, 10, 9, 3, 3, 1, Padding::Valid, Act::Relu, false),
        ];
        for (i, &(n, c, o, h, w, kh, kw, s, padding, act, res)) in cases.iter().enumerate() {
            let seed = 10 * i as u64;
            let x = Tensor::from_vec(
                rand_vec(n * c * h * w, seed + 1),
                (n, c, h, w),
                &Device::Cpu,
            )
            .expect("x");
            let wt = Tensor::from_vec(
                rand_vec(o * c * kh * kw, seed + 2),
                (o, c, kh, kw),
                &Device::Cpu,
            )
            .expect("w");
            let bias = rand_vec(o, seed + 3);
            let cfg = Conv2dConfig {
                stride: s,
                padding,
                act,
            };
            let conv = Conv2d::new(wt.clone(), bias.clone(), cfg).expect("conv");
            let p = padding.resolve((h, w), (kh, kw), s);
            let want = x
                .pad_with_zeros(2, p.top, p.bottom)
                .and_then(|x| x.pad_with_zeros(3, p.left, p.right))
                .and_then(|x| x.conv2d(&wt, 0, s, 1, 1))
                .and_then(|y| {
                    y.broadcast_add(&Tensor::from_vec(bias.clone(), (1, o, 1, 1), &Device::Cpu)?)
                })
                .expect("reference");
            let want = match act {
                Act::None => want,
                Act::Relu => want.relu().expect("relu"),
                Act::Relu6 => want.clamp(0f32, 6f32).expect("relu6"),
            };
            let ours = if res {
                let r = Tensor::from_vec(
                    rand_vec(want.elem_count(), seed + 4),
                    want.dims(),
                    &Device::Cpu,
                )
                .expect("residual");
                let want = (&want + &r).expect("add");
                let ours = conv.forward_add(&x, &r).expect("ours");
                assert!(max_abs_diff(&ours, &want) < 1e-5, "case {i} (residual)");
                ours
            } else {
                let ours = conv.forward(&x).expect("ours");
                assert!(max_abs_diff(&ours, &want) < 1e-5, "case {i}");
                ours
            };
            assert_eq!(ours.dims(), want.dims(), "case {i}");
        }
    }
}
