//! Pools and reductions over spatial or named axes.

use candle_core::{Result, Tensor};

use super::eval::Inputs;
use super::{axes, to_i64s, Window2d};
use crate::layers::{self, Pad4, Padding};

pub fn max_pool(ins: &Inputs, window: &Window2d, ceil: bool) -> Result<Tensor> {
    let x = ins.x()?;
    let (k, s, pad) = pool_geometry(window, ceil, x)?;
    layers::max_pool2d_rect(x, k, s, Padding::Explicit(pad))
}

pub fn average_pool(
    ins: &Inputs,
    window: &Window2d,
    ceil: bool,
    count_include_pad: bool,
) -> Result<Tensor> {
    let x = ins.x()?;
    let (k, s, pad) = pool_geometry(window, ceil, x)?;
    let mean = layers::avg_pool2d_exclude_pad(x, k, s, Padding::Explicit(pad))?;
    if !count_include_pad {
        return Ok(mean);
    }
    // Counting the padding: rescale each output by in-image taps / taps
    // inside the declared padding. `ceil_mode` only adds padding at the end,
    // and those cells are never counted.
    let (_, _, h, w) = x.dims4()?;
    let (_, _, oh, ow) = mean.dims4()?;
    let declared = window.padding.resolve((h, w), k, s);
    // (in-image taps, counted taps) of output `o` along one axis, in the
    // frame padded by `before`.
    let taps = |o: usize, kk: usize, before: usize, len: usize, after: usize| {
        let (a, b) = (o * s, o * s + kk);
        let inside = b.min(before + len).saturating_sub(a.max(before));
        (inside, b.min(before + len + after) - a)
    };
    let mut factor = Vec::with_capacity(oh * ow);
    for oy in 0..oh {
        let (iy, cy) = taps(oy, k.0, pad.top, h, declared.bottom);
        for ox in 0..ow {
            let (ix, cx) = taps(ox, k.1, pad.left, w, declared.right);
            factor.push((iy * ix) as f32 / (cy * cx).max(1) as f32);
        }
    }
    let factor = Tensor::from_vec(factor, (1, 1, oh, ow), x.device())?;
    mean.broadcast_mul(&factor)
}

/// The mean over every axis after N and C, kept as size 1.
pub fn global_average_pool(ins: &Inputs) -> Result<Tensor> {
    let x = ins.x()?;
    let mut y = x.clone();
    for d in (2..x.rank()).rev() {
        y = y.mean_keepdim(d)?;
    }
    Ok(y)
}

/// `axes` from the attribute (opset < 18) or input 1 (which wins).
/// What a `Reduce*` op computes over its axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    Mean,
    Sum,
    Max,
    Min,
}

pub fn reduce(
    ins: &Inputs,
    kind: Reduce,
    axes_attr: &Option<Vec<i64>>,
    keepdims: bool,
    noop_with_empty_axes: bool,
) -> Result<Tensor> {
    let x = ins.x()?;
    let wanted = match (axes_attr, ins.opt(1)) {
        (_, Some(t)) if t.elem_count() > 0 => to_i64s(t)?,
        (Some(a), _) => a.clone(),
        _ if noop_with_empty_axes => return Ok(x.clone()),
        _ => (0..x.rank() as i64).collect(),
    };
    let mut reduced = axes(&wanted, x.rank())?;
    reduced.sort_unstable();
    reduced.dedup();
    let mut y = x.clone();
    for &a in reduced.iter().rev() {
        y = match (kind, keepdims) {
            (Reduce::Mean, true) => y.mean_keepdim(a)?,
            (Reduce::Mean, false) => y.mean(a)?,
            (Reduce::Sum, true) => y.sum_keepdim(a)?,
            (Reduce::Sum, false) => y.sum(a)?,
            (Reduce::Max, true) => y.max_keepdim(a)?,
            (Reduce::Max, false) => y.max(a)?,
            (Reduce::Min, true) => y.min_keepdim(a)?,
            (Reduce::Min, false) => y.min(a)?,
        };
    }
    Ok(y)
}

/// Kernel, stride and explicit padding of a pool on `x`, with `ceil_mode`'s
/// extra end padding (the last window must start inside the input or the
/// leading padding, as in ONNX and PyTorch).
fn pool_geometry(
    window: &Window2d,
    ceil: bool,
    x: &Tensor,
) -> Result<((usize, usize), usize, Pad4)> {
    let (_, _, h, w) = x.dims4()?;
    let k = window.kernel.expect("pools parse with a kernel");
    let s = window.stride;
    let mut p = window.padding.resolve((h, w), k, s);
    if ceil {
        let extra = |len: usize, before: usize, after: usize, kk: usize| -> usize {
            let span = len + before + after;
            if span < kk {
                return 0;
            }
            let mut out = (span - kk).div_ceil(s) + 1;
            if (out - 1) * s >= len + before {
                out -= 1;
            }
            ((out - 1) * s + kk).saturating_sub(span)
        };
        p.bottom += extra(h, p.top, p.bottom, k.0);
        p.right += extra(w, p.left, p.right, k.1);
    }
    Ok((k, s, p))
}

#[cfg(test)]
mod tests {
    use super::super::Op;
    use super::*;
    use crate::onnx::testutil::{tensor, values};

    #[test]
    fn average_pool_counts_padding_only_when_asked() {
        // 1x1x2x2 input, 3x3 window, pads 1: each output sees the 4 values.
        let x = tensor(&[1., 2., 3., 4.], &[1, 1, 2, 2]);
        let window = Window2d {
            kernel: Some((3, 3)),
            stride: 1,
            padding: Padding::Explicit(Pad4::new(1, 1, 1, 1)),
        };
        let run = |count_include_pad| {
            values(
                &Op::AveragePool {
                    window,
                    ceil: false,
                    count_include_pad,
                }
                .eval(&[Some(&x)])
                .unwrap()[0],
            )
        };
        assert_eq!(run(false), vec![2.5; 4]);
        for v in run(true) {
            assert!((v - 10.0 / 9.0).abs() < 1e-6, "{v}");
        }
    }

    #[test]
    fn max_pool_ceil_mode_adds_a_last_partial_window() {
        let x = tensor(
            &(0..25).map(|v| v as f32).collect::<Vec<_>>(),
            &[1, 1, 5, 5],
        );
        let window = Window2d {
            kernel: Some((2, 2)),
            stride: 2,
            padding: Padding::Explicit(Pad4::default()),
        };
        let floor = Op::MaxPool {
            window,
            ceil: false,
        }
        .eval(&[Some(&x)])
        .unwrap();
        let ceil = Op::MaxPool { window, ceil: true }
            .eval(&[Some(&x)])
            .unwrap();
        assert_eq!(floor[0].dims(), &[1, 1, 2, 2]);
        assert_eq!(
            values(&ceil[0]),
            vec![6., 8., 9., 16., 18., 19., 21., 23., 24.]
        );
    }

    #[test]
    fn reduce_mean_without_axes_reduces_all_or_nothing() {
        let x = tensor(&[1., 2., 3., 6.], &[1, 1, 2, 2]);
        let mean = |keepdims, noop_with_empty_axes| {
            Op::Reduce {
                kind: Reduce::Mean,
                axes: None,
                keepdims,
                noop_with_empty_axes,
            }
            .eval(&[Some(&x)])
            .unwrap()
            .remove(0)
        };
        let all = mean(false, false);
        assert_eq!(all.rank(), 0);
        assert_eq!(all.to_scalar::<f32>().unwrap(), 3.0);
        assert_eq!(mean(true, true).dims(), &[1, 1, 2, 2]);
    }
}
