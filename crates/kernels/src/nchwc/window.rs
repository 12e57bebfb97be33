//! Depthwise convolution and max and average pooling in NCHW16c: the 16
//! channels of one pixel are one AVX-512 register, so a depthwise tap is one
//! FMA for 16 channels and a pooling tap one `max` or add. The 3x3 and 5x5
//! depthwise convolutions run on a zero-padded copy of each plane with a
//! sliding window held in registers (`dw_rows`); other windows, and the
//! pools, tap by tap with border checks (`window_plane`).

use rayon::prelude::*;

use super::{out_size, Blocked, CB};
use crate::window::Clamp;
use crate::{ConvGeometry, SyncPtr};

/// Depthwise weights per channel block: `[block][tap][16]`, bias `[block][16]`.
pub struct PackedDepthwise {
    pub(super) w: Vec<f32>,
    pub(super) bias: Vec<f32>,
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
    /// `act(mean + b)`: the mean over the in-bounds taps (`exclude_pad`,
    /// Keras) or over the whole window, padding counted as zeros (PyTorch's
    /// default); `bias` has a whole number of blocks.
    Avg {
        exclude_pad: bool,
        bias: &'a [f32],
        act: Clamp,
    },
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

/// [`max_pool`] written to `y`'s blocks `block_offset..` (a branch of a
/// concatenation).
pub fn max_pool_into(
    x: &Blocked,
    k: (usize, usize),
    stride: usize,
    pad: Pad,
    y: &mut Blocked,
    block_offset: usize,
) {
    window_into(x, k, stride, pad, Reduce::Max, y, block_offset)
}

/// `act(avg_pool(x) + bias)` written to `y`'s blocks `block_offset..`:
/// average pooling, the padding excluded from the mean (`exclude_pad`) or
/// counted as zeros. With a bias and an activation this is the tail of
/// `conv1x1(avg_pool(x))` computed as `avg_pool(conv1x1(x))` (both are
/// linear), which pools the convolution's fewer output channels.
#[allow(clippy::too_many_arguments)]
pub fn avg_pool_into(
    x: &Blocked,
    k: (usize, usize),
    stride: usize,
    pad: Pad,
    exclude_pad: bool,
    bias: &[f32],
    act: Clamp,
    y: &mut Blocked,
    block_offset: usize,
) {
    assert_eq!(bias.len(), x.c, "avg pool: bias");
    let mut b = bias.to_vec();
    b.resize(x.blocks() * CB, 0.0);
    let op = Reduce::Avg {
        exclude_pad,
        bias: &b,
        act,
    };
    window_into(x, k, stride, pad, op, y, block_offset)
}

fn window(x: &Blocked, k: (usize, usize), s: usize, pad: Pad, op: Reduce) -> Blocked {
    let (oh, ow) = out_size((x.h, x.w), k, s, pad);
    let mut y = Blocked::uninit(x.n, x.c, oh, ow);
    window_into(x, k, s, pad, op, &mut y, 0);
    y
}

fn window_into(
    x: &Blocked,
    k: (usize, usize),
    s: usize,
    pad: Pad,
    op: Reduce,
    y: &mut Blocked,
    block_offset: usize,
) {
    let (t, _, l, _) = pad;
    let (oh, ow) = out_size((x.h, x.w), k, s, pad);
    let g = ConvGeometry {
        chw: (CB, x.h, x.w),
        kernel: k,
        stride: s,
        top_left: (t, l),
        out: (oh, ow),
    };
    let blocks = x.blocks();
    assert_eq!((y.n, y.h, y.w), (x.n, oh, ow), "window: output shape");
    assert!(block_offset + blocks <= y.blocks(), "window: output blocks");
    let yb = y.blocks();
    let yp = SyncPtr::new(y.data.as_mut_ptr());
    // An activation on the depthwise input is applied once per input
    // pixel, into a scratch plane, rather than once per tap that reads it.
    let in_act = match op {
        Reduce::Depthwise { in_act, .. } if in_act != Clamp::NONE => Some(in_act),
        _ => None,
    };
    x.data
        .par_chunks(x.plane())
        .enumerate()
        .for_each_init(Vec::new, |scratch, (nb, src)| {
            let (img, blk) = (nb / blocks, nb % blocks);
            // SAFETY: each task writes its own plane of `y`.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    yp.get().add((img * yb + block_offset + blk) * oh * ow * CB),
                    oh * ow * CB,
                )
            };
            if let Reduce::Depthwise { p, in_act, out_act } = op {
                // SAFETY: AVX-512F checked by the caller (`available`); the
                // plane sizes match the geometry.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    let acts = (in_act, out_act);
                    if depthwise_padded(src, dst, g, 0..oh, (p, blk), acts, scratch) {
                        return;
                    }
                }
            }
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
}

/// Output pixels per group of the padded depthwise kernel.
const DW_V: usize = 8;

/// The sliding-window depthwise kernel for a `k` window with stride `s`:
/// 3x3 and 5x5, stride 1 or 2.
#[cfg(target_arch = "x86_64")]
fn sliding_kernel(k: (usize, usize), s: usize) -> Option<unsafe fn(&Rows)> {
    Some(match (k, s) {
        ((3, 3), 1) => dw_rows::<3, 1>,
        ((5, 5), 1) => dw_rows::<5, 1>,
        ((3, 3), 2) => dw_rows::<3, 2>,
        ((5, 5), 2) => dw_rows::<5, 2>,
        _ => return None,
    })
}

/// Whether [`depthwise_padded`] runs a `k` window with stride `s` on this
/// CPU.
pub(super) fn has_sliding_kernel(k: (usize, usize), s: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::available() && sliding_kernel(k, s).is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (k, s);
        false
    }
}

/// Output rows `rows` of a depthwise plane, on a zero-padded copy of the
/// input rows they read (the input activation applied on the way), so
/// every output pixel runs the same eight-wide sliding-window kernel
/// ([`dw_rows`]): no border pixels go one tap at a time, which on 7x7 and
/// 14x14 maps was most of them. `dst` holds those rows. Returns false
/// (nothing done) for windows the kernel has no instance of.
///
/// # Safety
/// AVX-512F; `src` is `h * w * 16` floats, `dst` `rows.len() * ow * 16`,
/// with `(16, h, w)` and `(oh, ow)` the geometry's input and output.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn depthwise_padded(
    src: &[f32],
    dst: &mut [f32],
    g: ConvGeometry,
    rows: std::ops::Range<usize>,
    (p, blk): (&PackedDepthwise, usize),
    (in_act, out_act): (Clamp, Clamp),
    scratch: &mut Vec<f32>,
) -> bool {
    let ConvGeometry {
        chw: (_, h, w),
        kernel: (kh, kw),
        stride: s,
        top_left: (t, l),
        out: (_, ow),
    } = g;
    let Some(run) = sliding_kernel((kh, kw), s) else {
        return false;
    };
    if rows.is_empty() || ow == 0 {
        return true;
    }
    // The padded copy: every input row and column the rows' outputs read,
    // the last group of eight outputs included (columns and rows outside
    // the image are zeros).
    let groups = ow.div_ceil(DW_V);
    let wp = (w + l).max((groups * DW_V - 1) * s + kw);
    let rows_in = (rows.len() - 1) * s + kh;
    scratch.clear();
    scratch.resize(rows_in * wp * CB, 0.0);
    for j in 0..rows_in {
        // The input row of padded row `rows.start * s + j`.
        let Some(iy) = (rows.start * s + j).checked_sub(t).filter(|&iy| iy < h) else {
            continue;
        };
        let from = &src[iy * w * CB..][..w * CB];
        let to = &mut scratch[(j * wp + l) * CB..][..w * CB];
        if in_act == Clamp::NONE {
            to.copy_from_slice(from);
        } else {
            to.iter_mut()
                .zip(from)
                .for_each(|(d, &v)| *d = in_act.apply(v));
        }
    }
    use std::arch::x86_64::*;
    let r = Rows {
        src: scratch.as_ptr(),
        wp,
        kh,
        dst: dst.as_mut_ptr(),
        oh: rows.len(),
        ow,
        taps: p.w[blk * kh * kw * CB..].as_ptr(),
        bias: _mm512_loadu_ps(p.bias[blk * CB..].as_ptr()),
        lo: _mm512_set1_ps(out_act.lo),
        hi: _mm512_set1_ps(out_act.hi),
    };
    run(&r);
    true
}

/// The operands of [`dw_rows`].
#[cfg(target_arch = "x86_64")]
struct Rows {
    /// The padded plane, `wp` pixels per row.
    src: *const f32,
    wp: usize,
    kh: usize,
    dst: *mut f32,
    oh: usize,
    ow: usize,
    /// `[tap][16]` weights of this block.
    taps: *const f32,
    bias: std::arch::x86_64::__m512,
    lo: std::arch::x86_64::__m512,
    hi: std::arch::x86_64::__m512,
}

/// Depthwise `kh x KW`, stride `S`, over a padded plane: eight output
/// pixels at a time, each input row's `7 * S + KW` pixels loaded once into
/// registers and shared by the eight outputs and `KW` taps (a tap-by-tap
/// kernel loads nine vectors per eight FMAs).
///
/// # Safety
/// AVX-512F; `r.src` holds every pixel the outputs read, the last group of
/// eight included.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dw_rows<const KW: usize, const S: usize>(r: &Rows) {
    use std::arch::x86_64::*;
    // Input pixels one row of a group reads (at most 7 * 2 + 5).
    let span = (DW_V - 1) * S + KW;
    for oy in 0..r.oh {
        for ox0 in (0..r.ow).step_by(DW_V) {
            let mut acc = [r.bias; DW_V];
            for ky in 0..r.kh {
                let row = r.src.add(((oy * S + ky) * r.wp + ox0 * S) * CB);
                let mut inp = [_mm512_setzero_ps(); 19];
                for (q, v) in inp.iter_mut().enumerate().take(span) {
                    *v = _mm512_loadu_ps(row.add(q * CB));
                }
                for kx in 0..KW {
                    let wt = _mm512_loadu_ps(r.taps.add((ky * KW + kx) * CB));
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(inp[j * S + kx], wt, *a);
                    }
                }
            }
            let out = r.dst.add((oy * r.ow + ox0) * CB);
            for (j, a) in acc.iter().enumerate().take(r.ow - ox0) {
                let v = _mm512_min_ps(_mm512_max_ps(*a, r.lo), r.hi);
                _mm512_storeu_ps(out.add(j * CB), v);
            }
        }
    }
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
    // The input activation was applied by the caller (`window`). `init`
    // starts each accumulator; the mean's bias is added after scaling.
    let zero = _mm512_setzero_ps();
    let (taps, init, out_lo, out_hi, is_max) = match op {
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
        Reduce::Avg { act, .. } => (
            std::ptr::null(),
            zero,
            _mm512_set1_ps(act.lo),
            _mm512_set1_ps(act.hi),
            false,
        ),
    };
    // For the mean: the divisor, and the bias added after it.
    let (avg, exclude_pad, post_bias) = match op {
        Reduce::Avg {
            exclude_pad, bias, ..
        } => (
            true,
            exclude_pad,
            _mm512_loadu_ps(bias[blk * CB..].as_ptr()),
        ),
        _ => (false, false, zero),
    };
    let bias = init;
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
        // The sum or max over pixel `ox`'s in-bounds taps, and their count.
        let one = |ox: usize, acc0: __m512| -> (__m512, usize) {
            let mut acc = acc0;
            let mut count = 0;
            let x0 = (ox * s) as isize - l as isize;
            for ky in ky_lo..ky_hi {
                let row = (y0 + ky as isize) as usize * w;
                for kx in 0..kw {
                    let ix = x0 + kx as isize;
                    if ix < 0 || ix >= w as isize {
                        continue;
                    }
                    let v = _mm512_loadu_ps(xp.add((row + ix as usize) * CB));
                    count += 1;
                    acc = if is_max {
                        _mm512_max_ps(acc, v)
                    } else if avg {
                        _mm512_add_ps(acc, v)
                    } else {
                        _mm512_fmadd_ps(v, _mm512_loadu_ps(taps.add((ky * kw + kx) * CB)), acc)
                    };
                }
            }
            (acc, count)
        };
        let finish = |(acc, count): (__m512, usize)| {
            let acc = if avg {
                let n = if exclude_pad { count.max(1) } else { kh * kw };
                _mm512_fmadd_ps(acc, _mm512_set1_ps(1.0 / n as f32), post_bias)
            } else {
                acc
            };
            _mm512_min_ps(_mm512_max_ps(acc, out_lo), out_hi)
        };
        let out_row = yp.add(oy * ow * CB);
        for ox in (0..ox_lo).chain(ox_hi..ow) {
            _mm512_storeu_ps(out_row.add(ox * CB), finish(one(ox, bias)));
        }
        let interior_taps = (ky_hi - ky_lo) * kw;
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
                    } else if avg {
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = _mm512_add_ps(*a, _mm512_loadu_ps(row.add((j * s + kx) * CB)));
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
                _mm512_storeu_ps(out_row.add((ox + j) * CB), finish((*a, interior_taps)));
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
        let (oh, ow) = out_size((h, w), (kh, kw), s, (t, b, l, r));
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

    /// `relu(avg_pool(x) + bias)` on NCHW by its definition.
    fn reference_avg(
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        k: usize,
        s: usize,
        (t, b, l, r): Pad,
        exclude_pad: bool,
        bias: &[f32],
    ) -> Vec<f32> {
        let (oh, ow) = out_size((h, w), (k, k), s, (t, b, l, r));
        let mut y = vec![0f32; n * c * oh * ow];
        for img in 0..n {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (mut sum, mut count) = (0f32, 0);
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s + ky) as isize - t as isize;
                                let ix = (ox * s + kx) as isize - l as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                sum += x[((img * c + ch) * h + iy as usize) * w + ix as usize];
                                count += 1;
                            }
                        }
                        let d = if exclude_pad { count } else { k * k };
                        y[((img * c + ch) * oh + oy) * ow + ox] =
                            (sum / d as f32 + bias[ch]).max(0.0);
                    }
                }
            }
        }
        y
    }

    #[test]
    fn depthwise_and_pools_match_their_definitions() {
        if !available() {
            eprintln!("no AVX-512F: NCHW16c kernels unused on this CPU");
            return;
        }
        // (n, c, h, w, k, stride, pad): Xception's same-padded 3x3 (stride
        // 1 and 2, odd and even sizes), 5x5 with stride 1 and 2 (padding
        // after larger than before), and maps narrower than one group of
        // eight outputs, and rows of many groups; a 7x7 runs the tap-by-tap
        // kernel.
        let cases = [
            (2, 40, 19, 19, 3, 1, (1, 1, 1, 1)),
            (1, 24, 10, 10, 3, 2, (0, 1, 0, 1)),
            (1, 17, 37, 37, 3, 2, (1, 1, 1, 1)),
            (1, 16, 12, 21, 5, 1, (2, 2, 2, 2)),
            (1, 16, 4, 4, 3, 1, (1, 1, 1, 1)),
            (2, 32, 14, 14, 5, 2, (1, 2, 1, 2)),
            (1, 16, 7, 7, 5, 1, (2, 2, 2, 2)),
            (1, 16, 9, 11, 7, 1, (3, 3, 3, 3)),
            (1, 16, 15, 260, 5, 2, (1, 2, 1, 2)),
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
            for exclude_pad in [true, false] {
                let (t, b, l, r) = pad;
                let (oh, ow) = out_size((h, w), (k, k), s, (t, b, l, r));
                let mut y = Blocked {
                    data: vec![0.0; n * xb.blocks() * oh * ow * CB],
                    n,
                    c,
                    h: oh,
                    w: ow,
                };
                avg_pool_into(&xb, (k, k), s, pad, exclude_pad, &bias, RELU, &mut y, 0);
                let want = reference_avg(&x, (n, c, h, w), k, s, pad, exclude_pad, &bias);
                close(&y.to_nchw(), &want, 1e-5);
            }
        }
    }
}
