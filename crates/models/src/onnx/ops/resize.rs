//! ONNX `Resize` (opsets 10-19): nearest, linear and cubic interpolation
//! along any axes, with every coordinate transformation exporters emit and
//! antialiasing (opset 18). Vision transformers resize their position
//! embedding to the image's patch grid with it (DINOv2: bicubic with
//! antialias), at load time when the image size is fixed, else per batch.
//!
//! Each axis is resampled on its own (interpolation in ONNX is separable):
//! every output index gets a short list of `(source index, weight)` taps.

use candle_core::{DType, Result, Tensor};

use super::eval::Inputs;
use super::{axes, to_f32s, to_i64s};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nearest {
    RoundPreferFloor,
    RoundPreferCeil,
    Floor,
    Ceil,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Nearest(Nearest),
    Linear,
    /// `a`: `cubic_coeff_a` (-0.75 in ONNX and PyTorch, -0.5 in Pillow and
    /// TensorFlow); `exclude_outside`: taps outside the input get weight 0
    /// and the rest are renormalised.
    Cubic {
        a: f32,
        exclude_outside: bool,
    },
}

/// How an output coordinate maps to an input one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coordinates {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    TfHalfPixelForNn,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResizeAttrs {
    pub mode: Mode,
    pub coordinates: Coordinates,
    pub antialias: bool,
    /// The axes `scales` / `sizes` list (opset 18); default: all.
    pub axes: Option<Vec<i64>>,
    /// Opset 10: inputs are `(X, scales)`.
    pub scales_only: bool,
}

pub fn resize(ins: &Inputs, at: &ResizeAttrs) -> Result<Tensor> {
    let x = ins.x()?;
    let rank = x.rank();
    let resized = match &at.axes {
        Some(a) => axes(a, rank)?,
        None => (0..rank).collect(),
    };
    let (scales, sizes) = if at.scales_only {
        (ins.opt(1), None)
    } else {
        (ins.opt(2), ins.opt(3))
    };
    let dims = x.dims().to_vec();
    let mut plan: Vec<(usize, usize, f64)> = Vec::new();
    let sizes = sizes.filter(|t| t.elem_count() > 0);
    let scales = scales.filter(|t| t.elem_count() > 0);
    match (sizes, scales) {
        (Some(s), _) => {
            let s = to_i64s(s)?;
            check_len(s.len(), resized.len())?;
            for (&a, &out) in resized.iter().zip(&s) {
                let out = usize::try_from(out)
                    .map_err(|_| candle_core::Error::Msg(format!("Resize: size {out}")))?;
                plan.push((a, out, out as f64 / dims[a].max(1) as f64));
            }
        }
        (None, Some(s)) => {
            let s = to_f32s(s)?;
            check_len(s.len(), resized.len())?;
            for (&a, &scale) in resized.iter().zip(&s) {
                if !(scale > 0.0 && scale.is_finite()) {
                    candle_core::bail!("Resize: scale {scale}")
                }
                let out = (dims[a] as f64 * scale as f64).floor() as usize;
                plan.push((a, out, scale as f64));
            }
        }
        (None, None) => candle_core::bail!("Resize needs scales or sizes"),
    }
    let mut out_dims = dims.clone();
    for &(a, out, _) in &plan {
        out_dims[a] = out;
    }
    super::shape::check_output("Resize", &out_dims)?;
    let dtype = x.dtype();
    let mut y = x.to_dtype(DType::F32)?;
    for (a, out, scale) in plan {
        if out == dims[a] && scale == 1.0 {
            continue;
        }
        let taps = taps(at, dims[a], out, scale)?;
        y = resample_axis(&y, a, &taps)?;
    }
    y.to_dtype(dtype)
}

fn check_len(given: usize, axes: usize) -> Result<()> {
    if given != axes {
        candle_core::bail!("Resize: {given} scales or sizes for {axes} axes")
    }
    Ok(())
}

/// Per output index, its `(input index, weight)` taps.
type Taps = Vec<Vec<(usize, f32)>>;

/// The input coordinate of output index `o` (before any clamping).
fn source(c: Coordinates, o: usize, scale: f64, len: usize, out: usize) -> f64 {
    let o = o as f64;
    match c {
        Coordinates::HalfPixel => (o + 0.5) / scale - 0.5,
        Coordinates::PytorchHalfPixel if out > 1 => (o + 0.5) / scale - 0.5,
        Coordinates::PytorchHalfPixel => 0.0,
        Coordinates::AlignCorners if out > 1 => o * (len as f64 - 1.0) / (out as f64 - 1.0),
        Coordinates::AlignCorners => 0.0,
        Coordinates::Asymmetric => o / scale,
        Coordinates::TfHalfPixelForNn => (o + 0.5) / scale,
    }
}

fn taps(at: &ResizeAttrs, len: usize, out: usize, scale: f64) -> Result<Taps> {
    if len == 0 {
        candle_core::bail!("Resize of an empty axis")
    }
    let last = (len - 1) as f64;
    let clamp = |i: i64| i.clamp(0, len as i64 - 1) as usize;
    (0..out)
        .map(|o| {
            let x = source(at.coordinates, o, scale, len, out);
            Ok(match at.mode {
                Mode::Nearest(rule) => {
                    let i = match rule {
                        Nearest::RoundPreferFloor if x.fract() == 0.5 => x.floor(),
                        Nearest::RoundPreferFloor => x.round(),
                        Nearest::RoundPreferCeil => (x + 0.5).floor(),
                        Nearest::Floor => x.floor(),
                        Nearest::Ceil => x.ceil(),
                    };
                    vec![(clamp(i as i64), 1.0)]
                }
                Mode::Linear if at.antialias => {
                    filtered(x, scale, len, 1.0, |t| (1.0 - t.abs()).max(0.0))
                }
                Mode::Cubic { a, .. } if at.antialias => {
                    filtered(x, scale, len, 2.0, |t| cubic(a as f64, t))
                }
                Mode::Linear => {
                    let x = x.clamp(0.0, last);
                    let i0 = x.floor();
                    let t = (x - i0) as f32;
                    let i0 = i0 as i64;
                    vec![(clamp(i0), 1.0 - t), (clamp(i0 + 1), t)]
                }
                Mode::Cubic { a, exclude_outside } => {
                    let i0 = x.floor();
                    let t = x - i0;
                    let i0 = i0 as i64;
                    let mut taps: Vec<(i64, f64)> = (-1..=2)
                        .map(|k| (i0 + k, cubic(a as f64, t - k as f64)))
                        .collect();
                    if exclude_outside {
                        taps.retain(|(i, _)| (0..len as i64).contains(i));
                        let sum: f64 = taps.iter().map(|t| t.1).sum();
                        taps.iter_mut().for_each(|t| t.1 /= sum);
                    }
                    taps.into_iter()
                        .map(|(i, w)| (clamp(i), w as f32))
                        .collect()
                }
            })
        })
        .collect()
}

/// Keys' cubic convolution kernel with parameter `a`.
fn cubic(a: f64, t: f64) -> f64 {
    let t = t.abs();
    if t <= 1.0 {
        ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    } else if t < 2.0 {
        ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    } else {
        0.0
    }
}

/// Antialiased taps (Pillow's resampling, which onnxruntime follows): when
/// shrinking, the filter is stretched by `1 / scale` so that every input
/// pixel contributes; taps outside the input are dropped and the weights
/// renormalised.
fn filtered(
    x: f64,
    scale: f64,
    len: usize,
    support: f64,
    f: impl Fn(f64) -> f64,
) -> Vec<(usize, f32)> {
    let stretch = (1.0 / scale).max(1.0);
    let support = support * stretch;
    let centre = x + 0.5;
    let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
    let hi = ((centre + support + 0.5).floor() as usize).min(len);
    let mut taps: Vec<(usize, f64)> = (lo..hi)
        .map(|i| (i, f((i as f64 - centre + 0.5) / stretch)))
        .collect();
    let sum: f64 = taps.iter().map(|t| t.1).sum();
    if sum != 0.0 {
        taps.iter_mut().for_each(|t| t.1 /= sum);
    }
    taps.into_iter().map(|(i, w)| (i, w as f32)).collect()
}

/// `x` with axis `a` resampled by `taps` (one list per output index).
fn resample_axis(x: &Tensor, a: usize, taps: &Taps) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let outer: usize = dims[..a].iter().product();
    let inner: usize = dims[a + 1..].iter().product();
    let len = dims[a];
    let src = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; outer * taps.len() * inner];
    for b in 0..outer {
        let plane = &src[b * len * inner..(b + 1) * len * inner];
        for (o, t) in taps.iter().enumerate() {
            let dst = &mut out[(b * taps.len() + o) * inner..][..inner];
            for &(i, w) in t {
                for (d, s) in dst.iter_mut().zip(&plane[i * inner..(i + 1) * inner]) {
                    *d += w * s;
                }
            }
        }
    }
    let mut new_dims = dims;
    new_dims[a] = taps.len();
    Tensor::from_vec(out, new_dims, x.device())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::testutil::{tensor, values};

    fn attrs(mode: Mode, coordinates: Coordinates) -> ResizeAttrs {
        ResizeAttrs {
            mode,
            coordinates,
            antialias: false,
            axes: None,
            scales_only: false,
        }
    }

    fn run(x: &Tensor, at: &ResizeAttrs, sizes: &[i64]) -> Vec<f32> {
        let s = Tensor::new(sizes, &candle_core::Device::Cpu).unwrap();
        values(&resize(&Inputs::new(&[Some(x), None, None, Some(&s)]), at).unwrap())
    }

    /// Numbers from the ONNX operator tests (`test_resize_upsample_sizes_*`,
    /// `test_resize_downsample_scales_linear`).
    #[test]
    fn interpolation_matches_the_onnx_reference_cases() {
        let x = tensor(&[1., 2., 3., 4.], &[1, 1, 2, 2]);
        let nearest = attrs(
            Mode::Nearest(Nearest::RoundPreferFloor),
            Coordinates::HalfPixel,
        );
        assert_eq!(
            run(&x, &nearest, &[1, 1, 4, 6]),
            [
                1., 1., 1., 2., 2., 2., 1., 1., 1., 2., 2., 2., //
                3., 3., 3., 4., 4., 4., 3., 3., 3., 4., 4., 4.
            ]
        );
        let linear = attrs(Mode::Linear, Coordinates::HalfPixel);
        let y = run(&x, &linear, &[1, 1, 4, 4]);
        let want = [
            1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0,
        ];
        assert_eq!(y, want);
        let x = tensor(&[1., 2., 3., 4., 5., 6., 7., 8.], &[1, 1, 2, 4]);
        let scales = Tensor::new(&[1f32, 1., 0.6, 0.6], &candle_core::Device::Cpu).unwrap();
        let y = resize(&Inputs::new(&[Some(&x), None, Some(&scales)]), &linear).unwrap();
        let v = values(&y);
        assert_eq!(y.dims(), [1, 1, 1, 2]);
        assert!(
            (v[0] - 2.666_666_7).abs() < 1e-5 && (v[1] - 4.333_333_5).abs() < 1e-5,
            "{v:?}"
        );
    }

    #[test]
    fn cubic_keeps_constants_and_reproduces_the_input_at_scale_one() {
        let x = tensor(&[1., 5., 2., 8.], &[1, 4]);
        for aa in [false, true] {
            let mut at = attrs(
                Mode::Cubic {
                    a: -0.75,
                    exclude_outside: false,
                },
                Coordinates::HalfPixel,
            );
            at.antialias = aa;
            assert_eq!(run(&x, &at, &[1, 4]), [1., 5., 2., 8.]);
            let c = tensor(&[3.; 4], &[1, 4]);
            for v in run(&c, &at, &[1, 7]) {
                assert!((v - 3.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn antialiased_shrinking_averages_every_input() {
        // Halving with a triangle stretched to 2 px: output 0 is centred
        // on input 1.0, with weights 1, 3, 3, 1 on inputs -1..=2; input -1
        // does not exist, so the rest are renormalised by 7.
        let x = tensor(&[0., 0., 8., 8.], &[1, 4]);
        let mut at = attrs(Mode::Linear, Coordinates::HalfPixel);
        at.antialias = true;
        let y = run(&x, &at, &[1, 2]);
        assert!((y[0] - 8.0 / 7.0).abs() < 1e-6, "{y:?}");
        assert!((y[1] - 48.0 / 7.0).abs() < 1e-6, "{y:?}");
    }
}
