//! Pooling: max and average windows with kernels of our own, global
//! average pooling, and channel concatenation.
//!
//! - [`max_pool2d`]: padded positions never win (`-inf` semantics, as Keras'
//!   `MaxPooling2D(padding="same")`).
//! - [`avg_pool2d_same_exclude_pad`]: Keras `AveragePooling2D(padding="same")`,
//!   which divides by the number of in-bounds taps.

use candle_core::{DType, Result, Tensor};
use runner_kernels::window::{Clamp, WindowKind};

use super::cpu_op::WindowOp;
use super::padding::Padding;
use crate::{portable, profile};

/// What a pooling window computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pool {
    /// The largest in-bounds value (padding never wins).
    Max,
    /// The mean over the in-bounds taps (padding not counted).
    AvgExcludePad,
}

/// Max pooling `k x k`, stride `stride`; padded positions never win.
pub fn max_pool2d(x: &Tensor, k: usize, stride: usize, padding: Padding) -> Result<Tensor> {
    pool2d(x, Pool::Max, (k, k), stride, padding)
}

/// Max pooling with a `kh x kw` window (ONNX `MaxPool`).
pub fn max_pool2d_rect(x: &Tensor, k: (usize, usize), s: usize, p: Padding) -> Result<Tensor> {
    pool2d(x, Pool::Max, k, s, p)
}

/// Keras `AveragePooling2D((k, k), strides=1, padding="same")`: the mean over
/// the in-bounds taps only (padding is not counted).
pub fn avg_pool2d_same_exclude_pad(x: &Tensor, k: usize) -> Result<Tensor> {
    pool2d(x, Pool::AvgExcludePad, (k, k), 1, Padding::Same)
}

/// Average pooling with stride `s` and padding `p` that divides by the
/// number of in-bounds taps (ONNX `AveragePool` with `count_include_pad =
/// 0`; the ONNX op rescales this for `count_include_pad = 1`, PyTorch
/// InceptionV3 runs a depthwise convolution with weights `1 / (kh * kw)`).
pub fn avg_pool2d_exclude_pad(
    x: &Tensor,
    k: (usize, usize),
    s: usize,
    p: Padding,
) -> Result<Tensor> {
    pool2d(x, Pool::AvgExcludePad, k, s, p)
}

/// A `kind` pool with a `k` window on the CPU kernels, or on the portable
/// path ([`portable::pool`]).
fn pool2d(
    x: &Tensor,
    kind: Pool,
    k: (usize, usize),
    stride: usize,
    padding: Padding,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let g = padding.window((h, w), k, stride);
    if portable::wanted(x) {
        return portable::pool(x, kind, g);
    }
    let (name, label, kind) = match kind {
        Pool::Max => ("max_pool2d", "max pool", WindowKind::Max),
        Pool::AvgExcludePad => ("avg_pool2d", "avg pool", WindowKind::AvgExcludePad),
    };
    let window = g.kernel_window(kind, Clamp::NONE, Clamp::NONE);
    profile::time(
        || (format!("{label} {}x{}/{stride}", k.0, k.1), 0.0),
        || x.contiguous()?.apply_op1_no_bwd(&WindowOp { name, window }),
    )
}

/// Global average pooling `(N, C, H, W) -> (N, C)`, summed in f32 whatever
/// the input's precision (features are stored as f32; a bf16 sum of 64+
/// values would lose what the network computed).
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    profile::time(
        || ("global avg pool".into(), 0.0),
        || x.to_dtype(DType::F32)?.mean((2, 3)),
    )
}

/// Concatenation along channels (InceptionV3's branches).
pub fn concat_channels(xs: &[Tensor]) -> Result<Tensor> {
    profile::time(|| ("concat".into(), 0.0), || Tensor::cat(xs, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    use candle_core::Device;

    #[test]
    fn pools_ignore_padding() {
        let x = Tensor::from_vec(
            vec![-1f32, -2., -3., -4., -5., -6., -7., -8., -9.],
            (1, 1, 3, 3),
            &Device::Cpu,
        )
        .expect("x");
        // Max pooling of all-negative input: padding must never win.
        let m = max_pool2d(&x, 3, 2, Padding::Same).expect("max");
        assert_eq!(
            m.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v"),
            vec![-1., -2., -4., -5.]
        );
        // Average pooling divides by the in-bounds count: corner = mean of 4.
        let a = avg_pool2d_same_exclude_pad(&x, 3).expect("avg");
        let v = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v");
        assert!((v[0] - (-1. - 2. - 4. - 5.) / 4.).abs() < 1e-6);
        assert!((v[4] - (-5.)).abs() < 1e-6);
    }
}
