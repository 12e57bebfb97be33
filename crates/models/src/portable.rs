//! The layers on any device: candle's tensor ops plus the project's own
//! device kernels ([`crate::cuda`]: depthwise convolution and the
//! convolutions' bias + activation + residual epilogue). This is what the
//! backbones run on a GPU. The CPU path ([`crate::layers`]) uses custom
//! kernels that only have CPU implementations; on another device, or in
//! another precision than f32, each layer comes here.
//!
//! The same ops run on the CPU when a thread asks for them
//! ([`with_portable_ops`]), which is how the tests check this path against
//! the reference fixtures on machines without a GPU.
//!
//! Device weights are built on first use from the CPU-held ones and kept
//! ([`DeviceWeights::cached`]).

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

use crate::cuda;
use crate::layers::{Act, Pad4, Pool, WindowGeometry};

thread_local! {
    static FORCED: Cell<bool> = const { Cell::new(false) };
    static CANDLE_ONLY: Cell<bool> = const { Cell::new(false) };
}

/// Whether depthwise convolution and the convolution epilogue use the
/// project's kernels ([`device`], the default) or candle's ops alone:
/// `RUNNER_DEVICE_KERNELS=0` (or [`with_candle_ops_only`]) is the escape
/// hatch should a kernel misbehave on some GPU: slower (a 3x3 depthwise is
/// 9 broadcast multiply-adds over the tensor), same results.
fn own_kernels() -> bool {
    static ENV: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let env = *ENV.get_or_init(|| {
        !matches!(
            std::env::var("RUNNER_DEVICE_KERNELS").as_deref(),
            Ok("0" | "off" | "false")
        )
    });
    env && !CANDLE_ONLY.with(Cell::get)
}

/// Runs `f` with this thread's portable path on candle's ops alone.
pub fn with_candle_ops_only<T>(f: impl FnOnce() -> T) -> T {
    let before = CANDLE_ONLY.with(|c| c.replace(true));
    let out = f();
    CANDLE_ONLY.with(|c| c.set(before));
    out
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

/// A layer's weights on a device, in the precision the input has: the
/// kernel (OIHW for a convolution, `(C, kh, kw)` for a depthwise one) and a
/// bias per output channel.
#[derive(Clone)]
pub struct DeviceWeights {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl DeviceWeights {
    /// `cell`'s copy if it is on `device` in `dtype`, else a new one from
    /// the row-major f32 `weight` of shape `dims` and `bias`, kept in `cell`
    /// when it is empty (one device and precision per model in practice).
    pub fn cached(
        cell: &OnceLock<DeviceWeights>,
        weight: impl FnOnce() -> Vec<f32>,
        dims: &[usize],
        bias: &[f32],
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<DeviceWeights> {
        if let Some(w) = cell.get() {
            if w.weight.device().same_device(device) && w.weight.dtype() == dtype {
                return Ok(w.clone());
            }
        }
        let w = DeviceWeights {
            weight: Tensor::from_vec(weight(), dims, device)?.to_dtype(dtype)?,
            bias: Tensor::from_slice(bias, bias.len(), device)?.to_dtype(dtype)?,
        };
        let _ = cell.set(w.clone());
        Ok(w)
    }
}

/// `act(conv(pad(x), w) + b) (+ residual)`: candle's convolution, then one
/// pass for the epilogue ([`cuda::bias_act`]). A 1x1 stride-1 convolution
/// is one batched matrix product on the NCHW input (no im2col copy, no
/// transpose back), which is most of Xception's FLOPs.
pub fn conv2d(
    x: &Tensor,
    w: &DeviceWeights,
    g: WindowGeometry,
    a: Act,
    residual: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (o, c, kh, kw) = w.weight.dims4()?;
    let (stride, pad) = (g.stride, g.pad);
    let y = if (kh, kw, stride) == (1, 1, 1) && pad.is_zero() {
        let (n, _, h, wd) = x.dims4()?;
        w.weight
            .reshape((o, c))?
            .broadcast_left(n)?
            .matmul(&x.contiguous()?.reshape((n, c, h * wd))?)?
            .reshape((n, o, h, wd))?
    } else {
        pad_zeros(x, pad)?.conv2d(&w.weight, 0, stride, 1, 1)?
    };
    if own_kernels() {
        return cuda::bias_act(&y, &w.bias, a, residual);
    }
    let y = act(y.broadcast_add(&w.bias.reshape((1, o, 1, 1))?)?, a)?;
    match residual {
        Some(r) => y + r,
        None => Ok(y),
    }
}

/// `out_act(depthwise(in_act(x)) + b)` with the project's own kernel
/// ([`cuda::Depthwise`]): candle's grouped convolution would launch one
/// convolution per channel. Padding is implicit (no padded copy).
pub fn depthwise(
    x: &Tensor,
    w: &DeviceWeights,
    g: WindowGeometry,
    in_act: Act,
    out_act: Act,
) -> candle_core::Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let op = cuda::Depthwise {
        kernel: g.kernel,
        stride: g.stride,
        pad_top: g.pad.top,
        pad_left: g.pad.left,
        out: g.out_size((h, wd))?,
        in_act,
        out_act,
    };
    if own_kernels() {
        return op.forward(x, &w.weight, &w.bias);
    }
    depthwise_per_tap(x, w, &op, g.pad)
}

/// [`depthwise`] with candle's ops alone: one broadcast multiply-add per tap
/// over the whole batch.
fn depthwise_per_tap(
    x: &Tensor,
    w: &DeviceWeights,
    op: &cuda::Depthwise,
    pad: Pad4,
) -> candle_core::Result<Tensor> {
    let ((kh, kw), (oh, ow), s) = (op.kernel, op.out, op.stride);
    let x = pad_zeros(&act(x.clone(), op.in_act)?, pad)?;
    let (_, c, hp, wp) = x.dims4()?;
    let taps = w.weight.reshape((c, kh * kw))?;
    let mut acc: Option<Tensor> = None;
    for ky in 0..kh {
        let rows = every(&x.narrow(2, ky, hp - ky)?, 2, s, oh)?;
        for kx in 0..kw {
            let win = every(&rows.narrow(3, kx, wp - kx)?, 3, s, ow)?;
            let tap = taps.narrow(1, ky * kw + kx, 1)?.reshape((1, c, 1, 1))?;
            let term = win.broadcast_mul(&tap)?;
            acc = Some(match acc {
                Some(a) => (a + term)?,
                None => term,
            });
        }
    }
    let bias = w.bias.reshape((1, c, 1, 1))?;
    act(
        acc.expect("at least one tap").broadcast_add(&bias)?,
        op.out_act,
    )
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

/// A `kind` pool over the window `g`.
pub(crate) fn pool(x: &Tensor, kind: Pool, g: WindowGeometry) -> candle_core::Result<Tensor> {
    match kind {
        Pool::Max => max_pool(x, g),
        Pool::AvgExcludePad => avg_pool_exclude_pad(x, g),
    }
}

/// Max pooling with `-inf` padding.
fn max_pool(x: &Tensor, g: WindowGeometry) -> candle_core::Result<Tensor> {
    pad_neg_inf(x, g.pad)?.max_pool2d_with_stride(g.kernel, (g.stride, g.stride))
}

/// Average pooling that divides by the in-image taps only.
fn avg_pool_exclude_pad(x: &Tensor, g: WindowGeometry) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let ((kh, kw), stride, p) = (g.kernel, g.stride, g.pad);
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
