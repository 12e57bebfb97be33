//! `LayerNormalization` (opset 17): every transformer block normalises its
//! tokens twice, and ConvNeXt every pixel, so the CPU path is one parallel
//! pass over the rows instead of a chain of candle ops.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::eval::Inputs;
use super::{axis, to_f32s};
use crate::layers::{cpu_f32, dims4, output_buffer};

/// `(x - mean) / sqrt(var + eps) * scale + bias` over the axes from
/// `axis` on; `scale` and `bias` broadcast to those axes.
pub fn layer_normalization(ins: &Inputs, a: i64, eps: f32) -> Result<Tensor> {
    let x = ins.x()?;
    let scale = ins.get(1)?;
    let bias = ins.opt(2);
    let a = axis(a, x.rank())?;
    let inner: usize = x.dims()[a..].iter().product();
    let full = |t: &Tensor| t.elem_count() == inner;
    if x.device().is_cpu()
        && x.dtype() == DType::F32
        && inner > 0
        && full(scale)
        && bias.is_none_or(full)
    {
        let op = RowNorm {
            scale: to_f32s(scale)?,
            bias: bias.map(to_f32s).transpose()?,
            inner,
            eps,
        };
        return x.contiguous()?.apply_op1_no_bwd(&op);
    }
    let norm_dims = &x.dims()[a..];
    let outer = x.elem_count() / inner.max(1);
    let rows = x.to_dtype(DType::F32)?.reshape((outer, inner))?;
    let centred = rows.broadcast_sub(&rows.mean_keepdim(1)?)?;
    let var = centred.sqr()?.mean_keepdim(1)?;
    let normed = centred
        .broadcast_div(&(var + eps as f64)?.sqrt()?)?
        .reshape(x.dims())?;
    let mut y = normed.broadcast_mul(&scale.broadcast_as(norm_dims)?)?;
    if let Some(b) = bias {
        y = y.broadcast_add(&b.broadcast_as(norm_dims)?)?;
    }
    y.to_dtype(x.dtype())
}

/// LayerNorm over axis 1 of an `(N, C, H, W)` tensor: each pixel's `C`
/// values normalised, then scaled and shifted per channel.
pub fn channel_layer_norm(ins: &Inputs, eps: f32) -> Result<Tensor> {
    let x = ins.x()?;
    let (_, c, _, _) = x.dims4()?;
    let scale = ins.get(1)?;
    let bias = ins.opt(2);
    if scale.elem_count() != c || bias.is_some_and(|b| b.elem_count() != c) {
        candle_core::bail!("channel LayerNorm: scale / bias do not have {c} values")
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let op = PixelNorm {
            scale: to_f32s(scale)?,
            bias: bias.map(to_f32s).transpose()?,
            eps,
        };
        return x.contiguous()?.apply_op1_no_bwd(&op);
    }
    // Elsewhere: the transposes the graph had.
    let nhwc = x.permute((0, 2, 3, 1))?.contiguous()?;
    let y = layer_normalization(&Inputs::new(&[Some(&nhwc), Some(scale), bias]), -1, eps)?;
    y.permute((0, 3, 1, 2))?.contiguous()
}

/// [`channel_layer_norm`] on the CPU: per image, the channel statistics of
/// every pixel accumulated plane by plane (unit stride, vectorised), in
/// f64 and two passes as [`RowNorm`].
struct PixelNorm {
    scale: Vec<f32>,
    bias: Option<Vec<f32>>,
    eps: f32,
}

impl candle_core::CustomOp1 for PixelNorm {
    fn name(&self) -> &'static str {
        "channel_layer_norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32("channel_layer_norm", s, l)?;
        let (_, c, h, w) = dims4("channel_layer_norm", l)?;
        let hw = h * w;
        let mut out = output_buffer(x.len());
        if c * hw > 0 {
            out.par_chunks_mut(c * hw)
                .zip(x.par_chunks(c * hw))
                .for_each(|(y, x)| self.image(x, y, c, hw));
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

impl PixelNorm {
    fn image(&self, x: &[f32], y: &mut [f32], c: usize, hw: usize) {
        let mut mean = vec![0f64; hw];
        for plane in x.chunks_exact(hw) {
            for (m, &v) in mean.iter_mut().zip(plane) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= c as f64);
        let mut var = vec![0f64; hw];
        for plane in x.chunks_exact(hw) {
            for ((s, &v), &m) in var.iter_mut().zip(plane).zip(&mean) {
                *s += (v as f64 - m) * (v as f64 - m);
            }
        }
        let inv: Vec<f32> = var
            .iter()
            .map(|&v| (1.0 / (v / c as f64 + self.eps as f64).sqrt()) as f32)
            .collect();
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        for (ch, (out, plane)) in y.chunks_exact_mut(hw).zip(x.chunks_exact(hw)).enumerate() {
            let (s, b) = (self.scale[ch], self.bias.as_ref().map_or(0.0, |b| b[ch]));
            for (((o, &v), &m), &i) in out.iter_mut().zip(plane).zip(&mean).zip(&inv) {
                *o = (v - m) * i * s + b;
            }
        }
    }
}

/// Normalises each row of `inner` values of a contiguous f32 tensor.
struct RowNorm {
    scale: Vec<f32>,
    bias: Option<Vec<f32>>,
    inner: usize,
    eps: f32,
}

impl candle_core::CustomOp1 for RowNorm {
    fn name(&self) -> &'static str {
        "layer_norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32("layer_norm", s, l)?;
        let n = self.inner;
        let mut out = output_buffer(x.len());
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(y, x)| self.row(x, y));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

impl RowNorm {
    /// Two passes (mean, then the centred sum of squares) in f64: one
    /// pass of E[x^2] - E[x]^2 in f32 loses digits when the mean is large
    /// against the spread, as in a transformer's residual stream.
    fn row(&self, x: &[f32], y: &mut [f32]) {
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let inv = (1.0 / (var + self.eps as f64).sqrt()) as f32;
        let mean = mean as f32;
        match &self.bias {
            Some(b) => {
                for (((y, &x), &s), &b) in y.iter_mut().zip(x).zip(&self.scale).zip(b) {
                    *y = (x - mean) * inv * s + b;
                }
            }
            None => {
                for ((y, &x), &s) in y.iter_mut().zip(x).zip(&self.scale) {
                    *y = (x - mean) * inv * s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::testutil::{tensor, values};

    /// The row kernel and the candle composition (taken for other devices
    /// and for a scale that only broadcasts) agree, and both normalise.
    #[test]
    fn rows_are_normalised_then_scaled_and_shifted() {
        let x = tensor(&[1., 2., 3., 4., 10., 10., 10., 14.], &[2, 4]);
        let scale = tensor(&[1., 2., 1., 1.], &[4]);
        let bias = tensor(&[0., 0., 0., 1.], &[4]);
        let fast = layer_normalization(
            &Inputs::new(&[Some(&x), Some(&scale), Some(&bias)]),
            -1,
            0.0,
        )
        .unwrap();
        let v = values(&fast);
        // Row 0: mean 2.5, variance 1.25.
        let s = 1.25f32.sqrt();
        let want0 = [-1.5 / s, 2.0 * -0.5 / s, 0.5 / s, 1.5 / s + 1.0];
        for (a, b) in v[..4].iter().zip(want0) {
            assert!((a - b).abs() < 1e-6, "{v:?}");
        }
        // A one-value scale broadcasts: the composed path.
        let one = tensor(&[1.], &[1]);
        let slow =
            layer_normalization(&Inputs::new(&[Some(&x), Some(&one), None]), 1, 0.0).unwrap();
        let plain = layer_normalization(
            &Inputs::new(&[Some(&x), Some(&tensor(&[1.; 4], &[4])), None]),
            1,
            0.0,
        )
        .unwrap();
        for (a, b) in values(&slow).iter().zip(values(&plain)) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    /// ConvNeXt's LayerNorm2d computed on NCHW equals the exported
    /// transpose, LayerNorm over the last axis, transpose back.
    #[test]
    fn channel_layer_norm_equals_transposed_layer_norm() {
        let v: Vec<f32> = (0..2 * 3 * 2 * 5)
            .map(|i| ((i * 37) % 11) as f32 - 4.0)
            .collect();
        let x = tensor(&v, &[2, 3, 2, 5]);
        let scale = tensor(&[0.5, 1.0, 2.0], &[3]);
        let bias = tensor(&[0.1, -0.2, 0.3], &[3]);
        let ours =
            channel_layer_norm(&Inputs::new(&[Some(&x), Some(&scale), Some(&bias)]), 1e-6).unwrap();
        let nhwc = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
        let want = layer_normalization(
            &Inputs::new(&[Some(&nhwc), Some(&scale), Some(&bias)]),
            -1,
            1e-6,
        )
        .unwrap()
        .permute((0, 3, 1, 2))
        .unwrap()
        .contiguous()
        .unwrap();
        for (a, b) in values(&ours).iter().zip(values(&want)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn normalising_from_an_earlier_axis_covers_every_later_axis() {
        let x = tensor(&[1., 2., 3., 4., 5., 6., 7., 8.], &[2, 2, 2]);
        let scale = tensor(&[1.; 4], &[2, 2]);
        let y = layer_normalization(&Inputs::new(&[Some(&x), Some(&scale), None]), 1, 0.0).unwrap();
        let v = values(&y);
        let s = 1.25f32.sqrt();
        assert!(
            (v[0] + 1.5 / s).abs() < 1e-6 && (v[7] - 1.5 / s).abs() < 1e-6,
            "{v:?}"
        );
    }
}
