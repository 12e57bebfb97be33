//! The layers computed with candle's own tensor ops, on any device: what
//! the backbones run on a GPU (issue 5) until kernels of the project's own
//! exist there. The CPU path ([`super::layers`]) uses custom kernels that
//! only have CPU implementations; on another device each layer comes here.
//!
//! The same ops run on the CPU when a thread asks for them
//! ([`with_portable_ops`]), which is how the tests check this path against
//! the reference fixtures on machines without a GPU.
//!
//! Device weights are built on first use from the CPU-held ones and kept
//! (one device per model in practice).

use std::cell::Cell;

use candle_core::{DType, Device, Tensor};

use super::layers::{Act, Pad4};

thread_local! {
    static FORCED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread's layers on the portable path, CPU included.
pub fn with_portable_ops<T>(f: impl FnOnce() -> T) -> T {
    let before = FORCED.with(|c| c.replace(true));
    let out = f();
    FORCED.with(|c| c.set(before));
    out
}

/// Whether a layer given `x` takes the portable path: off the CPU, in a
/// precision other than f32 (the CPU kernels are f32), or when forced.
pub fn wanted(x: &Tensor) -> bool {
    !x.device().is_cpu() || x.dtype() != DType::F32 || FORCED.with(Cell::get)
}

/// `act(x)` with candle ops.
pub fn act(x: Tensor, act: Act) -> candle_core::Result<Tensor> {
    match act {
        Act::None => Ok(x),
        Act::Relu => x.relu(),
        Act::Relu6 => x.clamp(0f32, 6f32),
    }
}

/// Zero padding of the two spatial axes, any amounts on each side.
pub fn pad_zeros(x: &Tensor, p: Pad4) -> candle_core::Result<Tensor> {
    if p.is_zero() {
        return Ok(x.clone());
    }
    x.pad_with_zeros(2, p.top, p.bottom)?
        .pad_with_zeros(3, p.left, p.right)
}

/// Padding with `-inf` (max pooling: padded cells never win).
fn pad_neg_inf(x: &Tensor, p: Pad4) -> candle_core::Result<Tensor> {
    if p.is_zero() {
        return Ok(x.clone());
    }
    let (n, c, h, w) = x.dims4()?;
    let fill = |dims: (usize, usize, usize, usize)| {
        Tensor::full(f32::NEG_INFINITY, dims, x.device())?.to_dtype(x.dtype())
    };
    let mut parts = Vec::new();
    if p.top > 0 {
        parts.push(fill((n, c, p.top, w))?);
    }
    parts.push(x.clone());
    if p.bottom > 0 {
        parts.push(fill((n, c, p.bottom, w))?);
    }
    let x = Tensor::cat(&parts, 2)?;
    let h = h + p.top + p.bottom;
    let mut parts = Vec::new();
    if p.left > 0 {
        parts.push(fill((n, c, h, p.left))?);
    }
    parts.push(x);
    if p.right > 0 {
        parts.push(fill((n, c, h, p.right))?);
    }
    Tensor::cat(&parts, 3)
}

/// Every `s`-th element of axis `dim`, from the first (`len` kept).
fn every(x: &Tensor, dim: usize, s: usize, len: usize) -> candle_core::Result<Tensor> {
    if s == 1 {
        return x.narrow(dim, 0, len);
    }
    let idx: Vec<u32> = (0..len as u32).map(|i| i * s as u32).collect();
    // index_select reads contiguous tensors only.
    x.contiguous()?
        .index_select(&Tensor::new(idx.as_slice(), x.device())?, dim)
}

/// Device copies of a convolution's weights: OIHW and a `(1, O, 1, 1)` bias.
#[derive(Clone)]
pub struct ConvWeights {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl ConvWeights {
    pub fn to_dtype(self, dtype: DType) -> candle_core::Result<Self> {
        Ok(Self {
            weight: self.weight.to_dtype(dtype)?,
            bias: self.bias.to_dtype(dtype)?,
        })
    }

    pub fn new(
        oihw: Vec<f32>,
        dims: (usize, usize, usize, usize),
        bias: &[f32],
        device: &Device,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            weight: Tensor::from_vec(oihw, dims, device)?,
            bias: Tensor::from_slice(bias, (1, bias.len(), 1, 1), device)?,
        })
    }
}

/// `act(conv(pad(x), w) + b) (+ residual)`.
pub fn conv2d(
    x: &Tensor,
    w: &ConvWeights,
    stride: usize,
    pad: Pad4,
    a: Act,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let y = pad_zeros(x, pad)?
        .conv2d(&w.weight, 0, stride, 1, 1)?
        .broadcast_add(&w.bias)?;
    let y = act(y, a)?;
    match residual {
        Some(r) => y + r,
        None => Ok(y),
    }
}

/// Depthwise weights on a device: one `(1, C, 1, 1)` tensor per tap.
#[derive(Clone)]
pub struct DepthwiseWeights {
    taps: Vec<Tensor>,
    pub bias: Tensor,
}

impl DepthwiseWeights {
    pub fn to_dtype(self, dtype: DType) -> candle_core::Result<Self> {
        Ok(Self {
            taps: self
                .taps
                .iter()
                .map(|t| t.to_dtype(dtype))
                .collect::<candle_core::Result<_>>()?,
            bias: self.bias.to_dtype(dtype)?,
        })
    }

    /// From `(C, kh, kw)` row-major weights.
    pub fn new(
        w: &[f32],
        c: usize,
        taps: usize,
        bias: &[f32],
        device: &Device,
    ) -> candle_core::Result<Self> {
        let taps = (0..taps)
            .map(|t| {
                let v: Vec<f32> = (0..c).map(|ch| w[ch * taps + t]).collect();
                Tensor::from_vec(v, (1, c, 1, 1), device)
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            taps,
            bias: Tensor::from_slice(bias, (1, c, 1, 1), device)?,
        })
    }
}

/// `out_act(sum_taps w_tap * in_act(x) shifted + b)`: one broadcast
/// multiply-add per tap over the whole batch (candle's grouped convolution
/// would launch one convolution per channel).
#[allow(clippy::too_many_arguments)]
pub fn depthwise(
    x: &Tensor,
    w: &DepthwiseWeights,
    (kh, kw): (usize, usize),
    stride: usize,
    pad: Pad4,
    in_act: Act,
    out_act: Act,
) -> candle_core::Result<Tensor> {
    let x = pad_zeros(&act(x.clone(), in_act)?, pad)?;
    let (_, _, hp, wp) = x.dims4()?;
    if hp < kh || wp < kw {
        candle_core::bail!("depthwise {kh}x{kw} larger than the padded {hp}x{wp} input")
    }
    let (oh, ow) = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
    let mut acc: Option<Tensor> = None;
    for ky in 0..kh {
        let rows = every(&x.narrow(2, ky, hp - ky)?, 2, stride, oh)?;
        for kx in 0..kw {
            let win = every(&rows.narrow(3, kx, wp - kx)?, 3, stride, ow)?;
            let term = win.broadcast_mul(&w.taps[ky * kw + kx])?;
            acc = Some(match acc {
                Some(a) => (a + term)?,
                None => term,
            });
        }
    }
    let y = acc.expect("at least one tap").broadcast_add(&w.bias)?;
    act(y, out_act)
}

/// Max pooling with `-inf` padding.
pub fn max_pool(
    x: &Tensor,
    k: (usize, usize),
    stride: usize,
    pad: Pad4,
) -> candle_core::Result<Tensor> {
    pad_neg_inf(x, pad)?.max_pool2d_with_stride(k, (stride, stride))
}

/// Average pooling that divides by the in-image taps only.
pub fn avg_pool_exclude_pad(
    x: &Tensor,
    (kh, kw): (usize, usize),
    stride: usize,
    p: Pad4,
) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    // candle's avg_pool2d divides by kh * kw; rescale by kh * kw / taps.
    let mean_all = pad_zeros(x, p)?.avg_pool2d_with_stride((kh, kw), (stride, stride))?;
    let (_, _, oh, ow) = mean_all.dims4()?;
    let count = |o: usize, k: usize, before: usize, len: usize| {
        let (a, b) = (o * stride, o * stride + k);
        b.min(before + len).saturating_sub(a.max(before))
    };
    let mut scale = Vec::with_capacity(oh * ow);
    for oy in 0..oh {
        for ox in 0..ow {
            let taps = count(oy, kh, p.top, h) * count(ox, kw, p.left, w);
            scale.push((kh * kw) as f32 / taps.max(1) as f32);
        }
    }
    let scale = Tensor::from_vec(scale, (1, 1, oh, ow), x.device())?.to_dtype(x.dtype())?;
    mean_all.broadcast_mul(&scale)
}
