//! Dense `kh x kw` convolution in NCHW16c, row-exact: a tile is up to 14
//! consecutive output pixels of one row times up to four blocks of 16
//! output channels, and each tap `(ky, kx)` is the 1x1 kernel's inner loop
//! over the input pixels that tap reads (shifted by `kx`, `stride` apart).
//! Nothing is gathered into an im2col matrix: the only copy is of the rows
//! a task reads, with zero columns either side, when the window is padded
//! left or right; rows above and below the image are skipped (their taps
//! contribute zero). This is how onnxruntime's MLAS runs its NCHWc
//! convolutions; InceptionV3's 3x3, 5x5, 1x7 and 7x1 layers are all of it.

use rayon::prelude::*;

use super::{Blocked, Pad, CB};
use crate::window::Clamp;
use crate::SyncPtr;

/// At most this many output pixels per tile (with 2 blocks: 28 accumulators).
const MAX_PIXELS: usize = 14;
/// At most this many accumulator registers per tile (of 32 zmm).
const MAX_ACC: usize = 28;

/// Dense convolution weights packed for [`conv_into`]: output channels in
/// groups of `group` blocks (the last group may be narrower), each group
/// `[in block][ky][kx][in lane][group blocks x 16]`; the bias padded to
/// whole blocks.
pub struct PackedConv {
    w: Vec<f32>,
    /// Where each group starts in `w`, and its blocks.
    groups: Vec<(usize, usize)>,
    bias: Vec<f32>,
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
    fn group(&self) -> usize {
        self.groups.first().map_or(1, |g| g.1)
    }
}

/// Output size of a window over `len` with padding `before + after`.
fn out_len(len: usize, before: usize, after: usize, k: usize, s: usize) -> usize {
    (len + before + after).saturating_sub(k) / s + 1
}

/// `act(conv(x) + b)` with padding `pad` and stride `stride`, written to
/// `y`'s blocks `block_offset..` (the concatenation of branch outputs is
/// then just where each branch writes). `y` must have `x`'s images and the
/// output's height and width.
pub fn conv_into(
    x: &Blocked,
    p: &PackedConv,
    stride: usize,
    pad: Pad,
    act: Clamp,
    y: &mut Blocked,
    block_offset: usize,
) {
    assert_eq!(x.c, p.c, "conv: input channels");
    let (kh, kw) = p.k;
    let (t, b, l, r) = pad;
    let (oh, ow) = (
        out_len(x.h, t, b, kh, stride),
        out_len(x.w, l, r, kw, stride),
    );
    let ob = p.o.div_ceil(CB);
    assert_eq!((y.n, y.h, y.w), (x.n, oh, ow), "conv: output shape");
    assert!(block_offset + ob <= y.blocks(), "conv: output blocks");
    let n = x.n;
    if n == 0 || oh * ow == 0 {
        return;
    }
    // Rows per task: about 64 output pixels, so a task's input rows stay
    // in L1/L2 while every group of weights passes over them.
    let rows = 64usize.div_ceil(ow).clamp(1, oh);
    let row_tasks = oh.div_ceil(rows);
    // Small maps (8x8 at batch 1) also split the output groups, so that
    // every thread has work.
    let want = 4 * rayon::current_num_threads();
    let split = want.div_ceil(n * row_tasks).clamp(1, p.groups.len());
    let groups_per_task = p.groups.len().div_ceil(split);
    let plan = Plan {
        x,
        p,
        s: stride,
        pad,
        oh,
        ow,
        act,
        y_blocks: y.blocks(),
        block_offset,
    };
    let yp = SyncPtr::new(y.data.as_mut_ptr());
    (0..n * row_tasks * split)
        .into_par_iter()
        .for_each_init(Vec::new, |scratch, task| {
            let (img, rest) = (task / (row_tasks * split), task % (row_tasks * split));
            let (rt, gs) = (rest / split, rest % split);
            let oy = rt * rows..((rt + 1) * rows).min(oh);
            let g = gs * groups_per_task..((gs + 1) * groups_per_task).min(p.groups.len());
            // SAFETY: this task writes only its image's rows `oy` of the
            // blocks of groups `g`.
            unsafe { plan.run(img, oy, g, scratch, yp) };
        });
}

/// [`conv_into`] into a new map.
pub fn conv(x: &Blocked, p: &PackedConv, stride: usize, pad: Pad, act: Clamp) -> Blocked {
    let (kh, kw) = p.k;
    let (t, b, l, r) = pad;
    let (oh, ow) = (
        out_len(x.h, t, b, kh, stride),
        out_len(x.w, l, r, kw, stride),
    );
    let mut y = Blocked {
        data: crate::uninit(x.n * p.o.div_ceil(CB) * oh * ow * CB),
        n: x.n,
        c: p.o,
        h: oh,
        w: ow,
    };
    conv_into(x, p, stride, pad, act, &mut y, 0);
    y
}

/// One call's geometry, shared by its tasks.
struct Plan<'a> {
    x: &'a Blocked,
    p: &'a PackedConv,
    s: usize,
    pad: Pad,
    oh: usize,
    ow: usize,
    act: Clamp,
    y_blocks: usize,
    block_offset: usize,
}

impl Plan<'_> {
    /// Output rows `oys` of groups `gs` for image `img`.
    ///
    /// # Safety
    /// `y` is the output's data (`y_blocks` blocks of `oh x ow` per image);
    /// no other task writes these rows of these blocks.
    unsafe fn run(
        &self,
        img: usize,
        oys: std::ops::Range<usize>,
        gs: std::ops::Range<usize>,
        scratch: &mut Vec<f32>,
        y: SyncPtr,
    ) {
        let (x, p, s) = (self.x, self.p, self.s);
        let (kh, kw) = p.k;
        let (t, _, l, r) = self.pad;
        let (h, w, xb) = (x.h, x.w, x.blocks());
        // The input rows these output rows read, clipped to the image.
        let iy0 = (oys.start * s).saturating_sub(t);
        let iy1 = ((oys.end - 1) * s + kh).saturating_sub(t).min(h).max(iy0);
        let xi = &x.data[img * xb * h * w * CB..][..xb * h * w * CB];
        // Source: rows iy0..iy1 of every block, `src_w` pixels per row;
        // column 0 is input column -l.
        let (src, src_w, src_rows, src_row0) = if l + r == 0 {
            (xi, w, h, 0)
        } else {
            let wp = w + l + r;
            let nrows = iy1 - iy0;
            scratch.clear();
            scratch.resize(xb * nrows * wp * CB, 0.0);
            for cb in 0..xb {
                for (j, iy) in (iy0..iy1).enumerate() {
                    let from = &xi[((cb * h + iy) * w) * CB..][..w * CB];
                    scratch[((cb * nrows + j) * wp + l) * CB..][..w * CB].copy_from_slice(from);
                }
            }
            (&scratch[..], wp, nrows, iy0)
        };
        let (oh, ow) = (self.oh, self.ow);
        // Balanced row segments of at most `max_m` pixels.
        for gi in gs {
            let (at, gb) = p.groups[gi];
            let max_m = MAX_PIXELS.min(MAX_ACC / gb);
            let segs = ow.div_ceil(max_m);
            let g0 = gi * p.group();
            for oy in oys.clone() {
                let y0 = (oy * s) as isize - t as isize;
                let ky_lo = (-y0).max(0) as usize;
                let ky_hi = ((h as isize - y0).max(0) as usize).min(kh);
                if ky_lo >= ky_hi {
                    // Every tap of this row is padding: bias only.
                    for k in 0..gb {
                        let blk = self.block_offset + g0 + k;
                        let out = y
                            .get()
                            .add(((img * self.y_blocks + blk) * oh + oy) * ow * CB);
                        let mut v = [0f32; CB];
                        for (v, &b) in v.iter_mut().zip(&p.bias[(g0 + k) * CB..][..CB]) {
                            *v = self.act.apply(b);
                        }
                        for ox in 0..ow {
                            std::ptr::copy_nonoverlapping(v.as_ptr(), out.add(ox * CB), CB);
                        }
                    }
                    continue;
                }
                let src_y = (y0 + ky_lo as isize) as usize - src_row0;
                let mut ox0 = 0;
                for seg in 0..segs {
                    let m = ow / segs + usize::from(seg < ow % segs);
                    let tile = Tile {
                        x: src.as_ptr().add((src_y * src_w + ox0 * s) * CB),
                        cstride: src_rows * src_w * CB,
                        rstride: src_w * CB,
                        pstride: s * CB,
                        c: p.c,
                        ky0: ky_lo,
                        kh: ky_hi - ky_lo,
                        kw,
                        w: p.w.as_ptr().add(at),
                        w_cstride: kh * kw * CB * gb * CB,
                        w_tap: CB * gb,
                        bias: p.bias.as_ptr().add(g0 * CB),
                        act: self.act,
                        out: y.get().add(
                            ((img * self.y_blocks + self.block_offset + g0) * oh * ow
                                + oy * ow
                                + ox0)
                                * CB,
                        ),
                        out_bstride: oh * ow * CB,
                    };
                    run_tile(m, gb, &tile);
                    ox0 += m;
                }
            }
        }
    }
}

/// One tile's operands; see [`tile`].
struct Tile {
    /// Input pixel `(row of the first tap row, first pixel's column)` of
    /// channel block 0.
    x: *const f32,
    /// Floats between channel blocks, rows, and output pixels' inputs.
    cstride: usize,
    rstride: usize,
    pstride: usize,
    /// Input channels.
    c: usize,
    /// The first tap row run, how many (the in-bounds ones), and taps per row.
    ky0: usize,
    kh: usize,
    kw: usize,
    /// The group's weights.
    w: *const f32,
    /// Floats between input blocks' weights (a full block's), and the
    /// weights of one input lane (`16 x blocks`).
    w_cstride: usize,
    w_tap: usize,
    bias: *const f32,
    act: Clamp,
    /// Output pixel 0 of block 0; blocks `out_bstride` floats apart.
    out: *mut f32,
    out_bstride: usize,
}

/// Calls [`tile`] with `m` pixels and `nb` blocks as constants.
///
/// # Safety
/// As [`tile`].
unsafe fn run_tile(m: usize, nb: usize, t: &Tile) {
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
                let xp = xc.add(ky * t.rstride + kx * CB);
                let mut wp = wc.add(((t.ky0 + ky) * t.kw + kx) * w_tap);
                for ci in 0..lanes {
                    let mut wv = [_mm512_setzero_ps(); NB];
                    for (k, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(wp.add(16 * k));
                    }
                    for (i, row) in acc.iter_mut().enumerate() {
                        let a = _mm512_set1_ps(*xp.add(i * t.pstride + ci));
                        for k in 0..NB {
                            row[k] = _mm512_fmadd_ps(a, wv[k], row[k]);
                        }
                    }
                    wp = wp.add(16 * NB);
                }
            }
        }
    }
    let (lo, hi) = (_mm512_set1_ps(t.act.lo), _mm512_set1_ps(t.act.hi));
    for (i, row) in acc.iter().enumerate() {
        for k in 0..NB {
            // `max` then `min`, as `Clamp::apply` (NaN becomes `lo`).
            let v = _mm512_min_ps(_mm512_max_ps(row[k], lo), hi);
            _mm512_storeu_ps(t.out.add(k * t.out_bstride + i * CB), v);
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
        let (oh, ow) = (out_len(h, t, b, kh, s), out_len(w, l, r, kw, s));
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
        // group), rows wider than one tile, and a map smaller than the
        // padding's reach.
        let cases = [
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
            let got = conv(&Blocked::from_nchw(&x, (n, c, h, w)), &p, s, pad, RELU);
            let (want, oh, ow) = reference(&x, (n, c, h, w), &wt, &bias, o, k, s, pad);
            assert_eq!((got.h, got.w), (oh, ow), "case {i}");
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
        conv_into(
            &Blocked::from_nchw(&x, (n, c, h, w)),
            &p,
            1,
            (1, 1, 1, 1),
            RELU,
            &mut y,
            1,
        );
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
