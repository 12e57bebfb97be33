//! What the CPU layers share as candle custom ops: reading the input
//! storage, the output buffer, and [`WindowOp`], which runs any
//! sliding-window kernel of [`runner_kernels::window`] (depthwise
//! convolution, max and average pooling).

use candle_core::{CpuStorage, Layout, Shape};
use runner_kernels::window::{Window, WindowKind};

/// An output buffer that the op overwrites completely before anything reads
/// it. Zeroing it first (`vec![0.0; len]`) costs a single-threaded pass over
/// up to 40 MB per op, as long as some of the ops themselves; this is the
/// same pattern as candle's own CPU kernels.
#[allow(clippy::uninit_vec)]
pub(crate) fn output_buffer(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: f32 has no invalid bit patterns and every caller writes all
    // `len` elements (the GEMM stores every tile of C, the window kernels
    // every output plane) before the tensor is handed out.
    unsafe { v.set_len(len) };
    v
}

/// The contiguous f32 data of an op's input, or an error naming the op.
pub(crate) fn cpu_f32<'a>(
    op: &'static str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(d) => d,
        _ => candle_core::bail!("{op}: expected an f32 input"),
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// `(N, C, H, W)` of an op's input, or an error naming the op.
pub(crate) fn dims4(
    op: &'static str,
    layout: &Layout,
) -> candle_core::Result<(usize, usize, usize, usize)> {
    match layout.dims() {
        [n, c, h, w] => Ok((*n, *c, *h, *w)),
        d => candle_core::bail!("{op}: expected an (N, C, H, W) input, got {d:?}"),
    }
}

/// A sliding-window kernel as a candle op on a contiguous f32 NCHW input.
pub(super) struct WindowOp<'a> {
    /// The op's name in errors (`depthwise_conv2d`, `max_pool2d`, ...).
    pub name: &'static str,
    pub window: Window<'a>,
}

impl candle_core::CustomOp1 for WindowOp<'_> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name;
        let x = cpu_f32(name, s, l)?;
        let (n, c, h, w) = dims4(name, l)?;
        if let WindowKind::Depthwise { bias, .. } = self.window.kind {
            if c != bias.len() {
                candle_core::bail!("{name}: input has {c} channels, kernel {}", bias.len())
            }
        }
        let Some((oh, ow)) = self.window.out_size((h, w)) else {
            candle_core::bail!(
                "{name}: window {:?} with padding {:?} does not fit a {h}x{w} input",
                self.window.kernel,
                self.window.pad
            )
        };
        let mut out = output_buffer(n * c * oh * ow);
        self.window.run(x, (n, c, h, w), &mut out);
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}
