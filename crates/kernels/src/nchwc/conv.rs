//! Dense `kh x kw` convolution in NCHW16c, row-exact: a tile is up to 14
//! consecutive output pixels of one row times up to four blocks of 16
//! output channels, and each tap `(ky, kx)` is the 1x1 kernel's inner loop
//! over the input pixels that tap reads (shifted by `kx`, `stride` apart).
//! Nothing is gathered into an im2col matrix: the only copy is of the rows
//! a task reads, with zero columns either side, when the window is padded
//! left or right; rows above and below the image are skipped (their taps
//! contribute zero). This is how onnxruntime's MLAS runs its NCHWc
//! convolutions; InceptionV3's 3x3, 5x5, 1x7 and 7x1 layers are all of it.

use std::ops::Range;

use rayon::prelude::*;

use super::{even_parts, out_size, runs, Blocked, Pad, CB};
use crate::window::Clamp;
use crate::SyncPtr;

/// At most this many output pixels per tile (with 2 blocks: 28 accumulators).
pub(super) const MAX_PIXELS: usize = 14;
/// At most this many accumulator registers per tile (of 32 zmm).
pub(super) const MAX_ACC: usize = 28;

/// Dense convolution weights packed for [`conv_into`]: output channels in
/// groups of `group` blocks (the last group may be narrower), each group
/// `[in block][ky][kx][in lane][group blocks x 16]`; the bias padded to
/// whole blocks.
pub struct PackedConv {
    pub(super) w: Vec<f32>,
    /// Where each group starts in `w`, and its blocks.
    pub(super) groups: Vec<(usize, usize)>,
    pub(super) bias: Vec<f32>,
    pub o: usize,
    pub c: usize,
    pub k: (usize, usize),
}

impl PackedConv {
    /// From OIHW row-major weights and a bias; `group` output blocks per
    /// tile (1 to 4: more blocks reuse each input broadcast more, fewer
    /// leave room for more pixels).
    pub fn new(
        w: &[f32],
        bias: &[f32],
        o: usize,
        c: usize,
        k: (usize, usize),
        group: usize,
    ) -> Self {
        let (kh, kw) = k;
        assert_eq!(w.len(), o * c * kh * kw, "conv weights");
        assert_eq!(bias.len(), o, "conv bias");
        assert!((1..=4).contains(&group), "conv: 1 to 4 blocks per group");
        let ob = o.div_ceil(CB);
        let mut packed = Vec::with_capacity(ob * CB * c * kh * kw);
        let mut groups = Vec::new();
        for g0 in (0..ob).step_by(group) {
            let gb = group.min(ob - g0);
            groups.push((packed.len(), gb));
            for cb in 0..c.div_ceil(CB) {
                let lanes = CB.min(c - cb * CB);
                for ky in 0..kh {
                    for kx in 0..kw {
                        for lane in 0..lanes {
                            let ic = cb * CB + lane;
                            for oc in g0 * CB..(g0 + gb) * CB {
                                packed.push(if oc < o {
                                    w[((oc * c + ic) * kh + ky) * kw + kx]
                                } else {
                                    0.0
                                });
                            }
                        }
                    }
                }
            }
        }
        let mut b = bias.to_vec();
        b.resize(ob * CB, 0.0);
        Self {
            w: packed,
            groups,
            bias: b,
            o,
            c,
            k,
        }
    }

    /// Output blocks per group (the first group's).
    pub(super) fn group(&self) -> usize {
        self.groups.first().map_or(1, |g| g.1)
    }
}

/// A convolution's operands and options: `act(conv(x) + b) (+ residual)`
/// with padding `pad` and stride `stride`; `residual` has the output's
/// shape.
#[derive(Clone, Copy)]
pub struct ConvArgs<'a> {
    pub stride: usize,
    pub pad: Pad,
    pub act: Clamp,
    pub residual: Option<&'a Blocked>,
}

/// The output's height and width.
pub fn out_hw(x: &Blocked, p: &PackedConv, stride: usize, pad: Pad) -> (usize, usize) {
    out_size((x.h, x.w), p.k, stride, pad)
}

/// The convolution written to `y`'s blocks `block_offset..` (the
/// concatenation of branch outputs is then just where each branch
/// writes). `y` must have `x`'s images and the output's height and width.
pub fn conv_into(
    x: &Blocked,
    p: &PackedConv,
    args: ConvArgs,
    y: &mut Blocked,
    block_offset: usize,
) {
    assert_eq!(x.c, p.c, "conv: input channels");
    let (s, pad) = (args.stride, args.pad);
    let (oh, ow) = out_hw(x, p, s, pad);
    let ob = p.o.div_ceil(CB);
    assert_eq!((y.n, y.h, y.w), (x.n, oh, ow), "conv: output shape");
    assert!(block_offset + ob <= y.blocks(), "conv: output blocks");
    if let Some(r) = args.residual {
        assert_eq!(
            (r.n, r.c, r.h, r.w),
            (x.n, p.o, oh, ow),
            "conv: residual shape"
        );
    }
    let n = x.n;
    if n == 0 || oh * ow == 0 {
        return;
    }
    // A 1x1 window with stride 1 and no padding reads each output pixel's
    // own input pixel: the plane is one row of `h * w` pixels, so tiles are
    // balanced over the whole plane rather than each row.
    let flat = p.k == (1, 1) && s == 1 && pad == (0, 0, 0, 0);
    let (h, w, oh, ow) = if flat {
        (1, x.hw(), 1, oh * ow)
    } else {
        (x.h, x.w, oh, ow)
    };
    let src = Source {
        data: &x.data,
        n,
        blocks: x.blocks(),
        h,
        w,
        px: CB,
    };
    run_plan(src, p, args, (oh, ow, flat), y, block_offset);
}

/// `act(conv(x) + b)` of an image batch given as NCHW `dims` with at most
/// 16 channels (RGB), into a new NCHW16c map: the images are copied once
/// into a zero-padded pixel-interleaved layout (`c` floats per pixel), so a
/// first convolution reads 3 floats per input pixel, not a 16-lane block.
pub fn conv_interleaved(
    x: &[f32],
    (n, c, h, w): (usize, usize, usize, usize),
    p: &PackedConv,
    args: ConvArgs,
) -> Blocked {
    assert!(
        c <= CB && c == p.c,
        "conv: interleaved input of {c} channels"
    );
    assert_eq!(x.len(), n * c * h * w, "conv: input size");
    assert!(
        args.residual.is_none(),
        "conv: interleaved input has no residual"
    );
    let (t, b, l, r) = args.pad;
    let (hp, wp) = (h + t + b, w + l + r);
    let mut padded = vec![0f32; n * hp * wp * c];
    padded
        .par_chunks_mut(hp * wp * c)
        .zip(x.par_chunks(c * h * w))
        .for_each(|(dst, src)| {
            for ch in 0..c {
                for iy in 0..h {
                    let row = &src[(ch * h + iy) * w..][..w];
                    let out = &mut dst[((iy + t) * wp + l) * c + ch..];
                    for (ix, &v) in row.iter().enumerate() {
                        out[ix * c] = v;
                    }
                }
            }
        });
    let (oh, ow) = out_size((hp, wp), p.k, args.stride, (0, 0, 0, 0));
    let mut y = Blocked::uninit(n, p.o, oh, ow);
    if n == 0 || oh * ow == 0 {
        return y;
    }
    let src = Source {
        data: &padded,
        n,
        blocks: 1,
        h: hp,
        w: wp,
        px: c,
    };
    let args = ConvArgs {
        pad: (0, 0, 0, 0),
        ..args
    };
    run_plan(src, p, args, (oh, ow, false), &mut y, 0);
    y
}

/// A convolution's input as the tiles read it: `blocks` planes of `h x w`
/// pixels of `px` floats per image (NCHW16c: `px` = 16; interleaved RGB:
/// one plane, `px` = 3).
#[derive(Clone, Copy)]
struct Source<'a> {
    data: &'a [f32],
    n: usize,
    blocks: usize,
    h: usize,
    w: usize,
    px: usize,
}

/// Splits the output into tasks and runs them.
fn run_plan(
    x: Source,
    p: &PackedConv,
    args: ConvArgs,
    (oh, ow, flat): (usize, usize, bool),
    y: &mut Blocked,
    block_offset: usize,
) {
    let n = x.n;
    // Rows per task: about 256 output pixels, balanced, so that the rows a
    // padded window copies (`kh - 1` more than it computes) are amortised
    // and a task's input rows stay in L2 while every group of weights
    // passes over them.
    let (rows, row_tasks) = even_parts(oh, 256usize.div_ceil(ow).clamp(1, oh));
    // Columns per task: a flat plane is cut into runs whose input (every
    // channel) stays in L2 across the groups of weights.
    let most_cols = if flat {
        (65536 / p.c.max(1)).clamp(28, 512)
    } else {
        ow
    };
    let (cols, col_tasks) = even_parts(ow, most_cols);
    let spatial = row_tasks * col_tasks;
    // Small maps (8x8 at batch 1) also split the output groups, so that
    // every thread has work.
    let want = 4 * rayon::current_num_threads();
    let split = want.div_ceil(n * spatial).clamp(1, p.groups.len());
    let groups_per_task = p.groups.len().div_ceil(split);
    let plan = Plan {
        x,
        p,
        args,
        oh,
        ow,
        y_blocks: y.blocks(),
        block_offset,
    };
    let yp = SyncPtr::new(y.data.as_mut_ptr());
    (0..n * spatial * split)
        .into_par_iter()
        .for_each_init(Vec::new, |scratch, task| {
            let (img, rest) = (task / (spatial * split), task % (spatial * split));
            let (sp, gs) = (rest / split, rest % split);
            let (rt, ct) = (sp / col_tasks, sp % col_tasks);
            let oys = rt * rows..((rt + 1) * rows).min(oh);
            let oxs = ct * cols..((ct + 1) * cols).min(ow);
            let g = gs * groups_per_task..((gs + 1) * groups_per_task).min(p.groups.len());
            // SAFETY: this task writes only its image's pixels `oys` x
            // `oxs` of the blocks of groups `g`.
            unsafe { plan.run(img, (oys, oxs), g, scratch, yp) };
        });
}

/// [`conv_into`] into a new map.
pub fn conv(x: &Blocked, p: &PackedConv, args: ConvArgs) -> Blocked {
    let (oh, ow) = out_hw(x, p, args.stride, args.pad);
    let mut y = Blocked::uninit(x.n, p.o, oh, ow);
    conv_into(x, p, args, &mut y, 0);
    y
}

/// One call's geometry, shared by its tasks. The input's and output's
/// height and width are as tiled: one row of `h * w` pixels for a flat 1x1.
struct Plan<'a> {
    x: Source<'a>,
    p: &'a PackedConv,
    args: ConvArgs<'a>,
    oh: usize,
    ow: usize,
    y_blocks: usize,
    block_offset: usize,
}

impl Plan<'_> {
    /// Output pixels `oys x oxs` of groups `gs` for image `img`.
    ///
    /// # Safety
    /// `y` is the output's data (`y_blocks` blocks of `oh x ow` per image);
    /// no other task writes these pixels of these blocks.
    unsafe fn run(
        &self,
        img: usize,
        (oys, oxs): (Range<usize>, Range<usize>),
        gs: Range<usize>,
        scratch: &mut Vec<f32>,
        y: SyncPtr,
    ) {
        let (x, p, s) = (self.x, self.p, self.args.stride);
        let (kh, kw) = p.k;
        let (t, _, l, r) = self.args.pad;
        let (h, w, xb, px) = (x.h, x.w, x.blocks, x.px);
        // The input rows these output rows read, clipped to the image.
        let iy0 = (oys.start * s).saturating_sub(t);
        let iy1 = ((oys.end - 1) * s + kh).saturating_sub(t).min(h).max(iy0);
        let xi = &x.data[img * xb * h * w * px..][..xb * h * w * px];
        // Source: rows of every block, `src_w` pixels per row, `cstride`
        // floats between blocks, its row 0 input row `src_row0`; column 0
        // is input column -l.
        let (src, src_w, cstride, src_row0) = if l + r == 0 {
            (xi, w, h * w * px, 0)
        } else {
            // Only NCHW16c inputs come here (interleaved ones are padded
            // by `conv_interleaved`).
            let wp = w + l + r;
            let nrows = iy1 - iy0;
            scratch.resize(xb * nrows * wp * CB, 0.0);
            for cb in 0..xb {
                for (j, iy) in (iy0..iy1).enumerate() {
                    let from = &xi[((cb * h + iy) * w) * CB..][..w * CB];
                    let row = &mut scratch[(cb * nrows + j) * wp * CB..][..wp * CB];
                    row[..l * CB].fill(0.0);
                    row[l * CB..(l + w) * CB].copy_from_slice(from);
                    row[(l + w) * CB..].fill(0.0);
                }
            }
            (&scratch[..], wp, nrows * wp * CB, iy0)
        };
        let (oh, ow) = (self.oh, self.ow);
        let plane = oh * ow * CB;
        let act = self.args.act;
        let res = self.args.residual.map(|r| r.data.as_ptr());
        for gi in gs {
            let (at, gb) = p.groups[gi];
            // Balanced runs of at most `max_m` pixels.
            let max_m = MAX_PIXELS.min(MAX_ACC / gb);
            let g0 = gi * p.group();
            let out_at = |oy: usize, ox: usize| {
                ((img * self.y_blocks + self.block_offset + g0) * oh + oy) * ow * CB + ox * CB
            };
            let res_at = |oy: usize, ox: usize| {
                ((img * p.o.div_ceil(CB) + g0) * oh + oy) * ow * CB + ox * CB
            };
            for oy in oys.clone() {
                let y0 = (oy * s) as isize - t as isize;
                let ky_lo = (-y0).max(0) as usize;
                let ky_hi = ((h as isize - y0).max(0) as usize).min(kh);
                if ky_lo >= ky_hi {
                    // Every tap of this row is padding: bias only.
                    for k in 0..gb {
                        let out = y.get().add(out_at(oy, 0) + k * plane);
                        for ox in oxs.clone() {
                            for lane in 0..CB {
                                let mut v = act.apply(p.bias[(g0 + k) * CB + lane]);
                                if let Some(r) = res {
                                    v += *r.add(res_at(oy, ox) + k * plane + lane);
                                }
                                *out.add(ox * CB + lane) = v;
                            }
                        }
                    }
                    continue;
                }
                let src_y = (y0 + ky_lo as isize) as usize - src_row0;
                for run in runs(oxs.clone(), max_m) {
                    let ox0 = run.start;
                    let tile = Tile {
                        x: src.as_ptr().add((src_y * src_w + ox0 * s) * px),
                        cstride,
                        rstride: src_w * px,
                        pstride: s * px,
                        px,
                        c: p.c,
                        ky0: ky_lo,
                        kh: ky_hi - ky_lo,
                        kw,
                        w: p.w.as_ptr().add(at),
                        w_cstride: kh * kw * CB * gb * CB,
                        w_tap: CB * gb,
                        bias: p.bias.as_ptr().add(g0 * CB),
                        act,
                        out: y.get().add(out_at(oy, ox0)),
                        res: res.map_or(std::ptr::null(), |r| r.add(res_at(oy, ox0))),
                        out_bstride: plane,
                    };
                    run_tile(run.len(), gb, &tile);
                }
            }
        }
    }
}

/// One tile's operands; see [`tile`].
pub(super) struct Tile {
    /// Input pixel `(row of the first tap row, first pixel's column)` of
    /// channel block 0.
    pub(super) x: *const f32,
    /// Floats between channel blocks, rows, output pixels' inputs, and
    /// input pixels.
    pub(super) cstride: usize,
    pub(super) rstride: usize,
    pub(super) pstride: usize,
    pub(super) px: usize,
    /// Input channels.
    pub(super) c: usize,
    /// The first tap row run, how many (the in-bounds ones), and taps per row.
    pub(super) ky0: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    /// The group's weights.
    pub(super) w: *const f32,
    /// Floats between input blocks' weights (a full block's), and the
    /// weights of one input lane (`16 x blocks`).
    pub(super) w_cstride: usize,
    pub(super) w_tap: usize,
    pub(super) bias: *const f32,
    pub(super) act: Clamp,
    /// Output pixel 0 of block 0, and of the residual (or null); blocks
    /// `out_bstride` floats apart in both.
    pub(super) out: *mut f32,
    pub(super) res: *const f32,
    pub(super) out_bstride: usize,
}

/// A 1x1 convolution over a span of `px` consecutive pixels held apart
/// from any map (a fused depthwise output, Winograd's transformed tiles):
/// input block `b` at `x + b * x_bstride`, output block `b` (and the
/// residual's, when not null) at `b * out_bstride` from `out` (`res`), in
/// balanced runs of at most 14 pixels, every group of `p`. `bias` false
/// adds none (the caller adds it later).
///
/// # Safety
/// AVX-512F; the pointers address `px` pixels of every input and output
/// block.
pub(super) unsafe fn pointwise_span(
    p: &PackedConv,
    (x, x_bstride, px): (*const f32, usize, usize),
    (bias, act): (bool, Clamp),
    (out, res, out_bstride): (*mut f32, *const f32, usize),
) {
    static ZEROS: [f32; 4 * CB] = [0.0; 4 * CB];
    for (gi, &(at, gb)) in p.groups.iter().enumerate() {
        let max_m = MAX_PIXELS.min(MAX_ACC / gb);
        let g0 = gi * p.group();
        for run in runs(0..px, max_m) {
            let q = run.start;
            let at_out = g0 * out_bstride + q * CB;
            let tile = Tile {
                x: x.add(q * CB),
                cstride: x_bstride,
                rstride: 0,
                pstride: CB,
                px: CB,
                c: p.c,
                ky0: 0,
                kh: 1,
                kw: 1,
                w: p.w.as_ptr().add(at),
                w_cstride: CB * gb * CB,
                w_tap: CB * gb,
                bias: if bias {
                    p.bias.as_ptr().add(g0 * CB)
                } else {
                    ZEROS.as_ptr()
                },
                act,
                out: out.add(at_out),
                res: if res.is_null() { res } else { res.add(at_out) },
                out_bstride,
            };
            run_tile(run.len(), gb, &tile);
        }
    }
}

/// Calls [`tile`] with `m` pixels and `nb` blocks as constants.
///
/// # Safety
/// As [`tile`].
pub(super) unsafe fn run_tile(m: usize, nb: usize, t: &Tile) {
    #[cfg(target_arch = "x86_64")]
    macro_rules! dispatch {
        ($($nb:literal => [$($m:literal)*]),*) => {
            match (nb, m) {
                $($(($nb, $m) => tile::<$m, $nb>(t),)*)*
                _ => unreachable!("conv tile {m} x {nb}"),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    dispatch!(
        1 => [1 2 3 4 5 6 7 8 9 10 11 12 13 14],
        2 => [1 2 3 4 5 6 7 8 9 10 11 12 13 14],
        3 => [1 2 3 4 5 6 7 8 9],
        4 => [1 2 3 4 5 6 7]
    )
}

/// One tap's `lanes` input channels: `acc[i][k] += x[i][ci] * w[ci][k]`.
///
/// # Safety
/// AVX-512F; `x` holds `M` pixels `pstride` floats apart, `w` `lanes x NB
/// x 16` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn lane_steps<const M: usize, const NB: usize>(
    lanes: usize,
    x: *const f32,
    pstride: usize,
    w: *const f32,
    acc: &mut [[std::arch::x86_64::__m512; NB]; M],
) {
    use std::arch::x86_64::*;
    let mut wp = w;
    for ci in 0..lanes {
        let mut wv = [_mm512_setzero_ps(); NB];
        for (k, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(wp.add(16 * k));
        }
        for (i, row) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*x.add(i * pstride + ci));
            for k in 0..NB {
                row[k] = _mm512_fmadd_ps(a, wv[k], row[k]);
            }
        }
        wp = wp.add(16 * NB);
    }
}

/// `M` pixels x `NB` blocks: `act(sum over taps and input channels of
/// x * w + b)`, stored.
///
/// # Safety
/// AVX-512F; every pointer and stride in `t` addresses readable input and
/// weights, and `NB` writable rows of `M x 16` floats at `t.out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile<const M: usize, const NB: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    let mut bias = [_mm512_setzero_ps(); NB];
    for (k, b) in bias.iter_mut().enumerate() {
        *b = _mm512_loadu_ps(t.bias.add(16 * k));
    }
    let mut acc = [bias; M];
    for cb in 0..t.c.div_ceil(CB) {
        let lanes = CB.min(t.c - cb * CB);
        let xc = t.x.add(cb * t.cstride);
        // The last input block may hold fewer lanes: its taps are packed
        // `lanes` deep.
        let wc = t.w.add(cb * t.w_cstride);
        let w_tap = lanes * t.w_tap;
        for ky in 0..t.kh {
            for kx in 0..t.kw {
                let xp = xc.add(ky * t.rstride + kx * t.px);
                let wp = wc.add(((t.ky0 + ky) * t.kw + kx) * w_tap);
                // Whole blocks run a loop of constant length (unrolled).
                if lanes == CB {
                    lane_steps::<M, NB>(CB, xp, t.pstride, wp, &mut acc);
                } else {
                    lane_steps::<M, NB>(lanes, xp, t.pstride, wp, &mut acc);
                }
            }
        }
    }
    let (lo, hi) = (_mm512_set1_ps(t.act.lo), _mm512_set1_ps(t.act.hi));
    for (i, row) in acc.iter().enumerate() {
        for (k, &acc) in row.iter().enumerate() {
            // `max` then `min`, as `Clamp::apply` (NaN becomes `lo`).
            let mut v = _mm512_min_ps(_mm512_max_ps(acc, lo), hi);
            let at = k * t.out_bstride + i * CB;
            if !t.res.is_null() {
                v = _mm512_add_ps(v, _mm512_loadu_ps(t.res.add(at)));
            }
            _mm512_storeu_ps(t.out.add(at), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nchwc::available;
    use crate::nchwc::testing::{close, RELU};
    use crate::rng::uniform_vec;

    /// `relu(conv(x) + b)` on NCHW by its definition.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        wt: &[f32],
        bias: &[f32],
        o: usize,
        (kh, kw): (usize, usize),
        s: usize,
        (t, b, l, r): Pad,
    ) -> (Vec<f32>, usize, usize) {
        let (oh, ow) = out_size((h, w), (kh, kw), s, (t, b, l, r));
        let mut y = vec![0f32; n * o * oh * ow];
        for img in 0..n {
            for oc in 0..o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias[oc] as f64;
                        for ic in 0..c {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * s + ky) as isize - t as isize;
                                    let ix = (ox * s + kx) as isize - l as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let v = x[((img * c + ic) * h + iy as usize) * w + ix as usize];
                                    acc +=
                                        v as f64 * wt[((oc * c + ic) * kh + ky) * kw + kx] as f64;
                                }
                            }
                        }
                        y[((img * o + oc) * oh + oy) * ow + ox] = (acc as f32).max(0.0);
                    }
                }
            }
        }
        (y, oh, ow)
    }

    #[test]
    fn dense_conv_matches_the_definition_for_inception_shapes() {
        if !available() {
            eprintln!("no AVX-512F: NCHW16c kernels unused on this CPU");
            return;
        }
        // (n, c, o, h, w, k, stride, pad, group): same-padded 3x3, 1x7 and
        // 7x1 (padding on one axis only), valid 3x3/2, a 5x5, channel
        // counts that are not multiples of 16 (tail lanes, a narrower last
        // group), rows wider than one tile, a map smaller than the
        // padding's reach, flat 1x1s (a plane longer than one run of
        // columns) and a strided 1x1.
        let cases = [
            (2, 200, 40, 7, 7, (1, 1), 1, (0, 0, 0, 0), 2),
            (1, 24, 144, 30, 30, (1, 1), 1, (0, 0, 0, 0), 4),
            (2, 16, 32, 9, 9, (1, 1), 2, (0, 0, 0, 0), 2),
            (2, 32, 48, 9, 17, (3, 3), 1, (1, 1, 1, 1), 2),
            (1, 24, 40, 8, 8, (1, 7), 1, (0, 0, 3, 3), 4),
            (1, 20, 64, 17, 5, (7, 1), 1, (3, 3, 0, 0), 3),
            (2, 16, 32, 15, 31, (3, 3), 2, (0, 0, 0, 0), 2),
            (1, 48, 16, 11, 11, (5, 5), 1, (2, 2, 2, 2), 1),
            (1, 16, 32, 2, 2, (5, 5), 1, (2, 2, 2, 2), 2),
        ];
        for (i, &(n, c, o, h, w, k, s, pad, group)) in cases.iter().enumerate() {
            let x = uniform_vec(n * c * h * w, 40 + i as u64);
            let wt = uniform_vec(o * c * k.0 * k.1, 50 + i as u64);
            let bias = uniform_vec(o, 60 + i as u64);
            let p = PackedConv::new(&wt, &bias, o, c, k, group);
            let xb = Blocked::from_nchw(&x, (n, c, h, w));
            let (want, oh, ow) = reference(&x, (n, c, h, w), &wt, &bias, o, k, s, pad);
            let args = ConvArgs {
                stride: s,
                pad,
                act: RELU,
                residual: None,
            };
            let got = conv(&xb, &p, args);
            assert_eq!((got.h, got.w), (oh, ow), "case {i}");
            close(&got.to_nchw(), &want, 1e-4);
            // With a residual added after the activation.
            let res = uniform_vec(n * o * oh * ow, 70 + i as u64);
            let rb = Blocked::from_nchw(&res, (n, o, oh, ow));
            let residual = Some(&rb);
            let got = conv(&xb, &p, ConvArgs { residual, ..args });
            let want: Vec<f32> = want.iter().zip(&res).map(|(a, b)| a + b).collect();
            close(&got.to_nchw(), &want, 1e-4);
        }
    }

    #[test]
    fn interleaved_rgb_input_matches_the_definition() {
        if !available() {
            return;
        }
        // A stem: 3 channels, 3x3 stride 2, "same" (more padding after)
        // and valid; rows longer than one tile.
        for (i, &(h, w, pad)) in [(33, 40, (0, 1, 0, 1)), (31, 31, (0, 0, 0, 0))]
            .iter()
            .enumerate()
        {
            let (n, c, o) = (2, 3, 32);
            let x = uniform_vec(n * c * h * w, 80 + i as u64);
            let wt = uniform_vec(o * c * 9, 90 + i as u64);
            let bias = uniform_vec(o, 100 + i as u64);
            let p = PackedConv::new(&wt, &bias, o, c, (3, 3), 2);
            let args = ConvArgs {
                stride: 2,
                pad,
                act: RELU,
                residual: None,
            };
            let got = conv_interleaved(&x, (n, c, h, w), &p, args);
            let (want, oh, ow) = reference(&x, (n, c, h, w), &wt, &bias, o, (3, 3), 2, pad);
            assert_eq!((got.h, got.w), (oh, ow));
            close(&got.to_nchw(), &want, 1e-4);
        }
    }

    #[test]
    fn writes_only_its_blocks_of_a_wider_output() {
        if !available() {
            return;
        }
        let (n, c, o, h, w) = (1, 16, 32, 6, 6);
        let x = uniform_vec(n * c * h * w, 7);
        let wt = uniform_vec(o * c * 9, 8);
        let p = PackedConv::new(&wt, &[0.0; 32], o, c, (3, 3), 2);
        let mut y = Blocked {
            data: vec![7.0; n * 4 * h * w * CB],
            n,
            c: 64,
            h,
            w,
        };
        let args = ConvArgs {
            stride: 1,
            pad: (1, 1, 1, 1),
            act: RELU,
            residual: None,
        };
        conv_into(&Blocked::from_nchw(&x, (n, c, h, w)), &p, args, &mut y, 1);
        let plane = h * w * CB;
        assert!(y.data[..plane].iter().all(|&v| v == 7.0));
        assert!(y.data[3 * plane..].iter().all(|&v| v == 7.0));
        let (want, _, _) = reference(
            &x,
            (n, c, h, w),
            &wt,
            &[0.0; 32],
            o,
            (3, 3),
            1,
            (1, 1, 1, 1),
        );
        let got = Blocked {
            data: y.data[plane..3 * plane].to_vec(),
            n,
            c: o,
            h,
            w,
        };
        close(&got.to_nchw(), &want, 1e-4);
    }
}
