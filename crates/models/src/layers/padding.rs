//! Padding rules and the window geometry they resolve to.
//!
//! A layer keeps its rule ([`Padding`]: Keras / TF "same", ONNX
//! "SAME_LOWER", explicit); each forward call resolves it against the
//! actual input size into a [`Pad4`], and with the kernel and stride into a
//! [`WindowGeometry`], which says the output size.

use runner_kernels::window::{Clamp, Window, WindowKind};

/// Spatial padding rule of a convolution or pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// No padding (Keras `"valid"`).
    Valid,
    /// TF / Keras `"same"`: output `ceil(in / stride)`, total padding
    /// `max((out - 1) * stride + k - in, 0)`, the odd extra row / column at
    /// the bottom / right. Computed from the actual input size.
    Same,
    /// ONNX `auto_pad = "SAME_LOWER"`: as [`Padding::Same`] with the odd
    /// extra row / column at the top / left.
    SameLower,
    /// Fixed padding (ONNX `pads`, PyTorch `padding=`).
    Explicit(Pad4),
}

/// Padding of one forward call: `(top, bottom, left, right)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pad4 {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Pad4 {
    pub fn new(top: usize, bottom: usize, left: usize, right: usize) -> Self {
        Self {
            top,
            bottom,
            left,
            right,
        }
    }

    /// PyTorch `padding=p`: `p` on every side.
    pub fn uniform(p: usize) -> Self {
        Self::new(p, p, p, p)
    }

    pub fn is_zero(self) -> bool {
        self == Pad4::default()
    }

    /// As the kernels take it: `(top, bottom, left, right)`.
    pub fn tblr(self) -> (usize, usize, usize, usize) {
        (self.top, self.bottom, self.left, self.right)
    }
}

/// TF "same" total padding split `(before, after)` for one axis.
pub fn same_pad_1d(input: usize, k: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out.saturating_sub(1)) * stride + k).saturating_sub(input);
    (total / 2, total - total / 2)
}

impl Padding {
    /// The padding of a `(kh, kw)` window with stride `stride` over an
    /// `h x w` input.
    pub fn resolve(self, (h, w): (usize, usize), (kh, kw): (usize, usize), stride: usize) -> Pad4 {
        match self {
            Padding::Valid => Pad4::default(),
            Padding::Same => {
                let (top, bottom) = same_pad_1d(h, kh, stride);
                let (left, right) = same_pad_1d(w, kw, stride);
                Pad4::new(top, bottom, left, right)
            }
            Padding::SameLower => {
                let (bottom, top) = same_pad_1d(h, kh, stride);
                let (right, left) = same_pad_1d(w, kw, stride);
                Pad4::new(top, bottom, left, right)
            }
            Padding::Explicit(p) => p,
        }
    }

    /// The window `kernel` / `stride` with this padding resolved for an
    /// input of spatial size `hw`.
    pub fn window(
        self,
        hw: (usize, usize),
        kernel: (usize, usize),
        stride: usize,
    ) -> WindowGeometry {
        WindowGeometry {
            kernel,
            stride,
            pad: self.resolve(hw, kernel, stride),
        }
    }
}

/// A sliding window (convolution or pooling) resolved for one input:
/// kernel `(kh, kw)`, stride, and the padding on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowGeometry {
    pub kernel: (usize, usize),
    pub stride: usize,
    pub pad: Pad4,
}

impl WindowGeometry {
    /// The output size `(oh, ow)` over an `h x w` input, or an error when the
    /// window is larger than the padded input.
    pub fn out_size(&self, (h, w): (usize, usize)) -> candle_core::Result<(usize, usize)> {
        let p = self.pad;
        Ok((
            out_len(h, p.top + p.bottom, self.kernel.0, self.stride)?,
            out_len(w, p.left + p.right, self.kernel.1, self.stride)?,
        ))
    }

    /// This window as the CPU window kernels take it.
    pub(super) fn kernel_window<'a>(
        &self,
        kind: WindowKind<'a>,
        in_act: Clamp,
        out_act: Clamp,
    ) -> Window<'a> {
        Window {
            kind,
            kernel: self.kernel,
            stride: self.stride,
            pad: self.pad.tblr(),
            in_act,
            out_act,
        }
    }
}

/// Output length of a window of size `k` over `input + pad` positions.
fn out_len(input: usize, pad: usize, k: usize, stride: usize) -> candle_core::Result<usize> {
    let span = input + pad;
    if span < k {
        candle_core::bail!("window {k} larger than padded input {span}")
    }
    Ok((span - k) / stride + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_puts_the_extra_row_at_the_end() {
        assert_eq!(same_pad_1d(224, 3, 2), (0, 1));
        assert_eq!(same_pad_1d(56, 5, 2), (1, 2));
        assert_eq!(same_pad_1d(147, 3, 2), (1, 1));
        assert_eq!(same_pad_1d(74, 3, 2), (0, 1));
        assert_eq!(same_pad_1d(147, 1, 2), (0, 0));
        assert_eq!(same_pad_1d(17, 7, 1), (3, 3));
    }

    #[test]
    fn same_lower_padding_puts_the_extra_row_at_the_start() {
        let p = Padding::SameLower.resolve((224, 224), (3, 3), 2);
        assert_eq!(p, Pad4::new(1, 0, 1, 0));
    }

    #[test]
    fn window_larger_than_the_padded_input_is_an_error() {
        let g = Padding::Valid.window((2, 5), (3, 3), 1);
        assert!(g.out_size((2, 5)).is_err());
        let g = Padding::Same.window((2, 5), (3, 3), 1);
        assert_eq!(g.out_size((2, 5)).unwrap(), (2, 5));
    }
}
