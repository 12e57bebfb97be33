//! Depthwise convolution and max pooling in NCHW16c: the 16 channels of one
//! pixel are one AVX-512 register, so a depthwise tap is one FMA for 16
//! channels and a pooling tap one `max`, with no padded copies.

use rayon::prelude::*;

use super::{Blocked, CB};
use crate::window::Clamp;
use crate::{uninit, ConvGeometry};

/// Depthwise weights per channel block: `[block][tap][16]`, bias `[block][16]`.
pub struct PackedDepthwise {
    w: Vec<f32>,
    bias: Vec<f32>,
    pub c: usize,
    pub k: (usize, usize),
}

impl PackedDepthwise {
    /// From `(C, kh, kw)` row-major weights and a per-channel bias.
    pub fn new(w: &[f32], bias: &[f32], c: usize, (kh, kw): (usize, usize)) -> Self {
        assert_eq!(w.len(), c * kh * kw, "depthwise weights");
        assert_eq!(bias.len(), c, "depthwise bias");
        let blocks = c.div_ceil(CB);
        let taps = kh * kw;
        let mut p = vec![0f32; blocks * taps * CB];
        let mut b = vec![0f32; blocks * CB];
        for ch in 0..c {
            for t in 0..taps {
                p[((ch / CB) * taps + t) * CB + ch % CB] = w[ch * taps + t];
            }
            b[ch] = bias[ch];
        }
        Self {
            w: p,
            bias: b,
            c,
            k: (kh, kw),
        }
    }
}

/// Padding `(top, bottom, left, right)`.
pub type Pad = (usize, usize, usize, usize);

fn out_len(len: usize, before: usize, after: usize, k: usize, s: usize) -> usize {
    (len + before + after).saturating_sub(k) / s + 1
}

/// What a window kernel computes.
#[derive(Clone, Copy)]
enum Reduce<'a> {
    /// `out_act(sum w * in_act(x) + b)`; `window` applies `in_act`.
    Depthwise {
        p: &'a PackedDepthwise,
        in_act: Clamp,
        out_act: Clamp,
    },
    /// Max over the in-bounds taps (padding never wins).
    Max,
}

/// Depthwise convolution (multiplier 1), NCHW16c in and out.
pub fn depthwise(
    x: &Blocked,
    p: &PackedDepthwise,
    stride: usize,
    pad: Pad,
    in_act: Clamp,
    out_act: Clamp,
) -> Blocked {
    assert_eq!(x.c, p.c, "depthwise: channels");
    window(
        x,
        p.k,
        stride,
        pad,
        Reduce::Depthwise { p, in_act, out_act },
    )
}

/// Max pooling, NCHW16c in and out.
pub fn max_pool(x: &Blocked, k: (usize, usize), stride: usize, pad: Pad) -> Blocked {
    window(x, k, stride, pad, Reduce::Max)
}

fn window(x: &Blocked, k: (usize, usize), s: usize, pad: Pad, op: Reduce) -> Blocked {
    let (t, b, l, r) = pad;
    let (oh, ow) = (out_len(x.h, t, b, k.0, s), out_len(x.w, l, r, k.1, s));
    let g = ConvGeometry {
        chw: (CB, x.h, x.w),
        kernel: k,
        stride: s,
        top_left: (t, l),
        out: (oh, ow),
    };
    let blocks = x.blocks();
    let mut y = Blocked {
        data: uninit(x.n * blocks * oh * ow * CB),
        n: x.n,
        c: x.c,
        h: oh,
        w: ow,
    };
    // An activation on the depthwise input is applied once per input
    // pixel, into a scratch plane, rather than once per tap that reads it.
    let in_act = match op {
        Reduce::Depthwise { in_act, .. } if in_act != Clamp::NONE => Some(in_act),
        _ => None,
    };
    y.data
        .par_chunks_mut(oh * ow * CB)
        .zip(x.data.par_chunks(x.plane()))
        .enumerate()
        .for_each_init(Vec::new, |scratch, (nb, (dst, src))| {
            let blk = nb % blocks;
            let src = match in_act {
                Some(a) => {
                    scratch.clear();
                    scratch.extend(src.iter().map(|&v| a.apply(v)));
                    &scratch[..]
                }
                None => src,
            };
            // SAFETY: AVX-512F checked by the caller (`available`); the
            // plane sizes match the geometry.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                window_plane(src, dst, g, blk, op)
            };
        });
    y
}

/// One block plane of a window op. Interior output pixels (every tap in
/// bounds) run eight at a time, so eight independent FMA / max chains hide
/// the latency; border pixels check each tap.
///
/// # Safety
/// AVX-512F; `src` is `h * w * 16`, `dst` `oh * ow * 16` floats, with
/// `(16, h, w)` and `(oh, ow)` the geometry's input and output.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn window_plane(src: &[f32], dst: &mut [f32], g: ConvGeometry, blk: usize, op: Reduce) {
    let ConvGeometry {
        chw: (_, h, w),
        kernel: (kh, kw),
        stride: s,
        top_left: (t, l),
        out: (oh, ow),
    } = g;
    use std::arch::x86_64::*;
    const V: usize = 8;
    let xp = src.as_ptr();
    let yp = dst.as_mut_ptr();
    // The input activation was applied by the caller (`window`).
    let (taps, bias, out_lo, out_hi, is_max) = match op {
        Reduce::Depthwise { p, out_act, .. } => (
            p.w[blk * kh * kw * CB..].as_ptr(),
            _mm512_loadu_ps(p.bias[blk * CB..].as_ptr()),
            _mm512_set1_ps(out_act.lo),
            _mm512_set1_ps(out_act.hi),
            false,
        ),
        Reduce::Max => {
            let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
            let inf = _mm512_set1_ps(f32::INFINITY);
            (std::ptr::null(), ninf, ninf, inf, true)
        }
    };
    // Output columns whose window lies inside the image: ox * s >= l and
    // ox * s + kw - l <= w.
    let ox_lo = l.div_ceil(s).min(ow);
    let ox_hi = if w + l >= kw {
        ((w + l - kw) / s + 1).clamp(ox_lo, ow)
    } else {
        ox_lo
    };
    for oy in 0..oh {
        // Rows of the window inside the image.
        let y0 = (oy * s) as isize - t as isize;
        let ky_lo = (-y0).max(0) as usize;
        let ky_hi = ((h as isize - y0).max(0) as usize).min(kh);
        let one = |ox: usize, acc0: __m512| -> __m512 {
            let mut acc = acc0;
            let x0 = (ox * s) as isize - l as isize;
            for ky in ky_lo..ky_hi {
                let row = (y0 + ky as isize) as usize * w;
                for kx in 0..kw {
                    let ix = x0 + kx as isize;
                    if ix < 0 || ix >= w as isize {
                        continue;
                    }
                    let v = _mm512_loadu_ps(xp.add((row + ix as usize) * CB));
                    acc = if is_max {
                        _mm512_max_ps(acc, v)
                    } else {
                        _mm512_fmadd_ps(v, _mm512_loadu_ps(taps.add((ky * kw + kx) * CB)), acc)
                    };
                }
            }
            acc
        };
        let finish = |acc: __m512| _mm512_min_ps(_mm512_max_ps(acc, out_lo), out_hi);
        let out_row = yp.add(oy * ow * CB);
        for ox in (0..ox_lo).chain(ox_hi..ow) {
            _mm512_storeu_ps(out_row.add(ox * CB), finish(one(ox, bias)));
        }
        let mut ox = ox_lo;
        while ox + V <= ox_hi {
            let mut acc = [bias; V];
            let x0 = ox * s - l;
            for ky in ky_lo..ky_hi {
                let row = xp.add(((y0 + ky as isize) as usize * w + x0) * CB);
                for kx in 0..kw {
                    if is_max {
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_max_ps(*a, _mm512_loadu_ps(row.add((j * s + kx) * CB)));
                        }
                    } else {
                        let wt = _mm512_loadu_ps(taps.add((ky * kw + kx) * CB));
                        for (j, a) in acc.iter_mut().enumerate() {
                            let v = _mm512_loadu_ps(row.add((j * s + kx) * CB));
                            *a = _mm512_fmadd_ps(v, wt, *a);
                        }
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out_row.add((ox + j) * CB), finish(*a));
            }
            ox += V;
        }
        for ox in ox..ox_hi {
            _mm512_storeu_ps(out_row.add(ox * CB), finish(one(ox, bias)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nchwc::available;
    use crate::nchwc::testing::{close, RELU};
    use crate::rng::uniform_vec;

    /// Reference window op on NCHW: depthwise with `(weights, bias, input
    /// activation)`, else max pooling.
    fn reference(
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        (kh, kw): (usize, usize),
        s: usize,
        (t, b, l, r): Pad,
        dw: Option<(&[f32], &[f32], Clamp)>,
    ) -> Vec<f32> {
        let (oh, ow) = (out_len(h, t, b, kh, s), out_len(w, l, r, kw, s));
        let mut y = vec![0f32; n * c * oh * ow];
        for img in 0..n {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = match dw {
                            Some((_, bias, _)) => bias[ch],
                            None => f32::NEG_INFINITY,
                        };
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s + ky) as isize - t as isize;
                                let ix = (ox * s + kx) as isize - l as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let v = x[((img * c + ch) * h + iy as usize) * w + ix as usize];
                                acc = match dw {
                                    Some((wt, _, in_act)) => {
                                        acc + wt[(ch * kh + ky) * kw + kx] * in_act.apply(v)
                                    }
                                    None => acc.max(v),
                                };
                            }
                        }
                        y[((img * c + ch) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn depthwise_and_max_pool_match_their_definitions() {
        if !available() {
            eprintln!("no AVX-512F: NCHW16c kernels unused on this CPU");
            return;
        }
        // (n, c, h, w, k, stride, pad): Xception's same-padded 3x3 (stride
        // 1 and 2, odd and even sizes), and a 5x5.
        let cases = [
            (2, 40, 19, 19, 3, 1, (1, 1, 1, 1)),
            (1, 24, 10, 10, 3, 2, (0, 1, 0, 1)),
            (1, 17, 37, 37, 3, 2, (1, 1, 1, 1)),
            (1, 16, 12, 21, 5, 1, (2, 2, 2, 2)),
            (1, 16, 4, 4, 3, 1, (1, 1, 1, 1)),
        ];
        for (i, &(n, c, h, w, k, s, pad)) in cases.iter().enumerate() {
            let x = uniform_vec(n * c * h * w, 10 + i as u64);
            let wt = uniform_vec(c * k * k, 20 + i as u64);
            let bias = uniform_vec(c, 30 + i as u64);
            let xb = Blocked::from_nchw(&x, (n, c, h, w));
            let p = PackedDepthwise::new(&wt, &bias, c, (k, k));
            let got = depthwise(&xb, &p, s, pad, RELU, Clamp::NONE).to_nchw();
            let want = reference(&x, (n, c, h, w), (k, k), s, pad, Some((&wt, &bias, RELU)));
            close(&got, &want, 1e-5);
            let got = max_pool(&xb, (k, k), s, pad).to_nchw();
            let want = reference(&x, (n, c, h, w), (k, k), s, pad, None);
            close(&got, &want, 0.0);
        }
    }
}
