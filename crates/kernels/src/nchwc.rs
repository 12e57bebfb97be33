//! The NCHW16c layout (channels blocked by 16: `[N][C/16][H*W][16]`) and the
//! AVX-512 kernels that run Xception's middle and exit flows in it.
//!
//! Why: in NCHW, a depthwise convolution or a pooling window works on one
//! channel plane at a time and pays for padded copies and per-plane set-up
//! (BENCHMARKS.md: 12% + 4% of Xception at ~30 GFLOP/s). In NCHW16c the 16
//! channels of one pixel are one AVX-512 register: a depthwise tap is one
//! FMA for 16 channels, pooling one `max`, with no padding copies. A 1x1
//! convolution is a GEMM whose left operand is the activation tensor itself
//! (pixels x input channels, one cache line per pixel and channel block):
//! nothing is packed per call, the weights were packed at load, and the
//! output comes out in the same layout for the next layer
//! (`benches/nchwc_probe.rs` measured it at 0.98-1.5x our packed GEMM).
//!
//! Channel counts that are not a multiple of 16 (Xception's 728) are padded
//! with zero lanes; every kernel here keeps padded lanes at zero (zero
//! weights and bias, `max` of zeros), so they never leak into real channels.
//!
//! Only AVX-512F machines use these kernels ([`available`]); elsewhere the
//! NCHW path runs.

use rayon::prelude::*;

use super::window::Clamp;

/// Channels per block: one AVX-512 register of f32.
pub const CB: usize = 16;
/// Pixels per 1x1-convolution tile: 14 x 2 accumulators + 2 weight
/// registers + 1 broadcast = 31 of the 32 zmm registers.
const MR: usize = 14;

/// Whether this CPU runs the NCHW16c kernels.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A batch of feature maps in NCHW16c: `data[((n * blocks + b) * h * w + p) * 16 + lane]`
/// holds channel `b * 16 + lane` of pixel `p` of image `n`.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub data: Vec<f32>,
    pub n: usize,
    /// Real channels; lanes from `c` up to `blocks() * 16` are zero.
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint ranges through it.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A buffer every element of which the caller overwrites.
#[allow(clippy::uninit_vec)]
fn uninit(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: f32 has no invalid bit patterns; callers write all `len`.
    unsafe { v.set_len(len) };
    v
}

impl Blocked {
    pub fn blocks(&self) -> usize {
        self.c.div_ceil(CB)
    }

    pub fn hw(&self) -> usize {
        self.h * self.w
    }

    fn plane(&self) -> usize {
        self.hw() * CB
    }

    /// From NCHW `(n, c, h, w)`, padding lanes zeroed.
    pub fn from_nchw(x: &[f32], (n, c, h, w): (usize, usize, usize, usize)) -> Self {
        let blocks = c.div_ceil(CB);
        let hw = h * w;
        let mut data = uninit(n * blocks * hw * CB);
        data.par_chunks_mut(hw * CB)
            .enumerate()
            .for_each(|(nb, dst)| {
                let (img, b) = (nb / blocks, nb % blocks);
                let lanes = CB.min(c - b * CB);
                if lanes < CB {
                    dst.fill(0.0);
                }
                for lane in 0..lanes {
                    let src = &x[(img * c + b * CB + lane) * hw..][..hw];
                    for (p, &v) in src.iter().enumerate() {
                        dst[p * CB + lane] = v;
                    }
                }
            });
        Self { data, n, c, h, w }
    }

    /// Back to NCHW (tests, debugging).
    pub fn to_nchw(&self) -> Vec<f32> {
        let (hw, blocks) = (self.hw(), self.blocks());
        let mut y = vec![0f32; self.n * self.c * hw];
        for img in 0..self.n {
            for ch in 0..self.c {
                let (b, lane) = (ch / CB, ch % CB);
                let src = &self.data[(img * blocks + b) * hw * CB..];
                for p in 0..hw {
                    y[(img * self.c + ch) * hw + p] = src[p * CB + lane];
                }
            }
        }
        y
    }

    /// Global average pooling: `(n, c)` row-major.
    pub fn global_avg(&self) -> Vec<f32> {
        let (hw, blocks) = (self.hw(), self.blocks());
        let mut out = vec![0f32; self.n * self.c];
        out.par_chunks_mut(self.c)
            .enumerate()
            .for_each(|(img, row)| {
                for b in 0..blocks {
                    let mut acc = [0f64; CB];
                    for px in self.data[(img * blocks + b) * hw * CB..][..hw * CB].chunks_exact(CB)
                    {
                        for (a, &v) in acc.iter_mut().zip(px) {
                            *a += v as f64;
                        }
                    }
                    for lane in 0..CB.min(self.c - b * CB) {
                        row[b * CB + lane] = (acc[lane] / hw as f64) as f32;
                    }
                }
            });
        out
    }

    /// Every other row and column from the first (a 1x1 convolution with
    /// stride 2 and no padding reads only these pixels).
    pub fn subsample2(&self) -> Self {
        let (oh, ow) = (self.h.div_ceil(2), self.w.div_ceil(2));
        let mut data = uninit(self.n * self.blocks() * oh * ow * CB);
        data.par_chunks_mut(oh * ow * CB)
            .zip(self.data.par_chunks(self.plane()))
            .for_each(|(dst, src)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let s = ((2 * oy) * self.w + 2 * ox) * CB;
                        dst[(oy * ow + ox) * CB..][..CB].copy_from_slice(&src[s..s + CB]);
                    }
                }
            });
        Self {
            data,
            n: self.n,
            c: self.c,
            h: oh,
            w: ow,
        }
    }
}

/// 1x1 convolution weights packed for [`conv1x1`]: `[O/32][C][32]` and the
/// bias padded to `O/32 * 32`, zeros beyond `o`.
pub struct Packed1x1 {
    w: Vec<f32>,
    bias: Vec<f32>,
    pub o: usize,
    pub c: usize,
}

impl Packed1x1 {
    /// From `w` as `(O, C)` row-major (OIHW of a 1x1 kernel) and its bias.
    pub fn new(w: &[f32], bias: &[f32], o: usize, c: usize) -> Self {
        assert_eq!(w.len(), o * c, "1x1 weights");
        assert_eq!(bias.len(), o, "1x1 bias");
        let o2 = o.div_ceil(32);
        let mut p = vec![0f32; o2 * c * 32];
        for oc in 0..o {
            for ic in 0..c {
                p[((oc / 32) * c + ic) * 32 + oc % 32] = w[oc * c + ic];
            }
        }
        let mut b = bias.to_vec();
        b.resize(o2 * 32, 0.0);
        Self {
            w: p,
            bias: b,
            o,
            c,
        }
    }
}

/// `act(W x + b) (+ residual)` for every pixel: a 1x1 convolution, stride
/// 1, NCHW16c in and out. `residual` has the output's shape.
pub fn conv1x1(x: &Blocked, p: &Packed1x1, act: Clamp, residual: Option<&Blocked>) -> Blocked {
    assert_eq!(x.c, p.c, "conv1x1: input channels");
    let (n, hw) = (x.n, x.hw());
    let (xb, ob) = (x.blocks(), p.o.div_ceil(CB));
    if let Some(r) = residual {
        assert_eq!(
            (r.n, r.c, r.h, r.w),
            (n, p.o, x.h, x.w),
            "conv1x1: residual shape"
        );
    }
    let mut y = Blocked {
        data: uninit(n * ob * hw * CB),
        n,
        c: p.o,
        h: x.h,
        w: x.w,
    };
    if hw == 0 || n == 0 {
        return y;
    }
    let tiles = hw.div_ceil(MR);
    // Tasks: (image, group of tiles); each runs every pair of output blocks
    // over its tiles, so its pixels stay in L1/L2 across the weights.
    const TILES_PER_TASK: usize = 4;
    let groups = tiles.div_ceil(TILES_PER_TASK);
    let yp = SendPtr(y.data.as_mut_ptr());
    (0..n * groups).into_par_iter().for_each(|task| {
        let (img, g) = (task / groups, task % groups);
        let xi = &x.data[img * xb * hw * CB..][..xb * hw * CB];
        let ri = residual.map(|r| &r.data[img * ob * hw * CB..][..ob * hw * CB]);
        // SAFETY: this task writes only its image's pixels of its tiles.
        let yi = unsafe { yp.get().add(img * ob * hw * CB) };
        let mut scratch_x = Vec::new();
        let mut scratch_y = [[0f32; MR * CB]; 2];
        for o2 in 0..p.o.div_ceil(32) {
            let w = &p.w[o2 * p.c * 32..][..p.c * 32];
            let bias = &p.bias[o2 * 32..][..32];
            let (b0, b1) = (2 * o2, 2 * o2 + 1);
            for tile in g * TILES_PER_TASK..((g + 1) * TILES_PER_TASK).min(tiles) {
                let p0 = tile * MR;
                let rows = MR.min(hw - p0);
                // The last tile of a plane is short: run it on a copy padded
                // to 14 pixels and store only its rows.
                let (xs, x_stride) = if rows == MR {
                    (&xi[p0 * CB..], hw * CB)
                } else {
                    scratch_x.clear();
                    scratch_x.resize(xb * MR * CB, 0.0);
                    for b in 0..xb {
                        scratch_x[b * MR * CB..][..rows * CB]
                            .copy_from_slice(&xi[(b * hw + p0) * CB..][..rows * CB]);
                    }
                    (&scratch_x[..], MR * CB)
                };
                // Full tiles of two real blocks are written in place; the
                // rest go through a scratch tile.
                let direct = rows == MR && b1 < ob;
                // SAFETY: pixels p0..p0+14 of blocks b0, b1 of this image.
                let targets = unsafe {
                    [
                        yi.add((b0 * hw + p0) * CB),
                        yi.add((b1.min(ob - 1) * hw + p0) * CB),
                    ]
                };
                let dst = if direct {
                    targets
                } else {
                    [scratch_y[0].as_mut_ptr(), scratch_y[1].as_mut_ptr()]
                };
                // SAFETY: AVX-512F checked by the caller (`available`);
                // `xs` holds 14 pixels of each of `xb` blocks `x_stride`
                // apart; `dst` two writable 14 x 16 tiles.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    tile_1x1(p.c, xs.as_ptr(), x_stride, w.as_ptr(), dst)
                };
                for (k, blk) in [b0, b1].into_iter().enumerate() {
                    if blk >= ob {
                        continue;
                    }
                    let at = (blk * hw + p0) * CB;
                    // SAFETY: `dst[k]` holds `rows * 16` computed values.
                    let tile = unsafe { std::slice::from_raw_parts_mut(dst[k], rows * CB) };
                    epilogue(
                        tile,
                        &bias[16 * k..16 * k + 16],
                        act,
                        ri.map(|r| &r[at..at + rows * CB]),
                    );
                    if !direct {
                        // SAFETY: pixels p0..p0+rows of block `blk` of this image.
                        unsafe {
                            std::ptr::copy_nonoverlapping(tile.as_ptr(), yi.add(at), rows * CB)
                        };
                    }
                }
            }
        }
    });
    y
}

/// 14 pixels x 32 output channels, `sum_c x * w`, stored raw; the caller
/// applies bias, activation and residual on the tile while it is in L1.
/// (With the epilogue inside, LLVM spilled the 28 accumulators to the
/// stack: 3x slower.)
///
/// # Safety
/// AVX-512F; `x` holds 14 pixels (16 floats each) of `ceil(c / 16)` blocks
/// `x_stride` floats apart; `w` `c x 32` floats; `out` two 14 x 16 tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_1x1(c: usize, x: *const f32, x_stride: usize, w: *const f32, out: [*mut f32; 2]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let mut wp = w;
    for cb in 0..c.div_ceil(CB) {
        let xb = x.add(cb * x_stride);
        for ci in 0..CB.min(c - cb * CB) {
            let w0 = _mm512_loadu_ps(wp);
            let w1 = _mm512_loadu_ps(wp.add(16));
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*xb.add(i * CB + ci));
                row[0] = _mm512_fmadd_ps(a, w0, row[0]);
                row[1] = _mm512_fmadd_ps(a, w1, row[1]);
            }
            wp = wp.add(32);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        _mm512_storeu_ps(out[0].add(i * CB), row[0]);
        _mm512_storeu_ps(out[1].add(i * CB), row[1]);
    }
}

/// `act(v + b) (+ r)` over a tile of `rows` pixels x 16 lanes.
fn epilogue(v: &mut [f32], bias: &[f32], act: Clamp, res: Option<&[f32]>) {
    match res {
        Some(r) => {
            for (px, rp) in v.chunks_exact_mut(CB).zip(r.chunks_exact(CB)) {
                for ((v, &b), &r) in px.iter_mut().zip(bias).zip(rp) {
                    *v = act.apply(*v + b) + r;
                }
            }
        }
        None => {
            for px in v.chunks_exact_mut(CB) {
                for (v, &b) in px.iter_mut().zip(bias) {
                    *v = act.apply(*v + b);
                }
            }
        }
    }
}

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
                window_plane(src, (x.h, x.w), dst, (oh, ow), k, s, (t, l), blk, op)
            };
        });
    y
}

/// One block plane of a window op. Interior output pixels (every tap in
/// bounds) run eight at a time, so eight independent FMA / max chains hide
/// the latency; border pixels check each tap.
///
/// # Safety
/// AVX-512F; `src` is `h * w * 16`, `dst` `oh * ow * 16` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn window_plane(
    src: &[f32],
    (h, w): (usize, usize),
    dst: &mut [f32],
    (oh, ow): (usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    (t, l): (usize, usize),
    blk: usize,
    op: Reduce,
) {
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
    use crate::rng::uniform_vec;

    const RELU: Clamp = Clamp {
        lo: 0.0,
        hi: f32::INFINITY,
    };

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{i}: {x} vs {y}");
        }
    }

    #[test]
    fn layout_round_trips_and_pads_lanes_with_zeros() {
        let (n, c, h, w) = (2, 21, 3, 5);
        let x = uniform_vec(n * c * h * w, 1);
        let b = Blocked::from_nchw(&x, (n, c, h, w));
        assert_eq!(b.to_nchw(), x);
        // Lanes 21..32 of block 1 are zero.
        let hw = h * w;
        for img in 0..n {
            for p in 0..hw {
                let px = &b.data[((img * 2 + 1) * hw + p) * CB..][..CB];
                assert!(px[5..].iter().all(|&v| v == 0.0));
            }
        }
        let avg = b.global_avg();
        for img in 0..n {
            for ch in 0..c {
                let want: f32 = x[(img * c + ch) * hw..][..hw].iter().sum::<f32>() / hw as f32;
                assert!((avg[img * c + ch] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn conv1x1_matches_the_definition_with_bias_act_and_residual() {
        if !available() {
            eprintln!("no AVX-512F: NCHW16c kernels unused on this CPU");
            return;
        }
        // 728 -> 40 channels (not multiples of 16 or 32), 19x19 and a short
        // last tile.
        for &(n, c, o, h, w) in &[(2, 728, 40, 19, 19), (1, 33, 64, 3, 5)] {
            let hw = h * w;
            let x = uniform_vec(n * c * hw, 2);
            let wt = uniform_vec(o * c, 3);
            let bias = uniform_vec(o, 4);
            let res = uniform_vec(n * o * hw, 5);
            let p = Packed1x1::new(&wt, &bias, o, c);
            let xb = Blocked::from_nchw(&x, (n, c, h, w));
            let rb = Blocked::from_nchw(&res, (n, o, h, w));
            let y = conv1x1(&xb, &p, RELU, Some(&rb)).to_nchw();
            let mut want = vec![0f32; n * o * hw];
            for img in 0..n {
                for oc in 0..o {
                    for px in 0..hw {
                        let mut acc = 0f64;
                        for ic in 0..c {
                            acc += wt[oc * c + ic] as f64 * x[(img * c + ic) * hw + px] as f64;
                        }
                        let i = (img * o + oc) * hw + px;
                        want[i] = (acc as f32 + bias[oc]).max(0.0) + res[i];
                    }
                }
            }
            close(&y, &want, 1e-4);
        }
    }

    /// Reference window op on NCHW.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        (n, c, h, w): (usize, usize, usize, usize),
        (kh, kw): (usize, usize),
        s: usize,
        (t, b, l, r): Pad,
        dw: Option<(&[f32], &[f32])>,
        relu_in: bool,
    ) -> Vec<f32> {
        let (oh, ow) = (out_len(h, t, b, kh, s), out_len(w, l, r, kw, s));
        let mut y = vec![0f32; n * c * oh * ow];
        for img in 0..n {
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = match dw {
                            Some((_, bias)) => bias[ch],
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
                                    Some((wt, _)) => {
                                        let v = if relu_in { v.max(0.0) } else { v };
                                        acc + wt[(ch * kh + ky) * kw + kx] * v
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
            let want = reference(&x, (n, c, h, w), (k, k), s, pad, Some((&wt, &bias)), true);
            close(&got, &want, 1e-5);
            let got = max_pool(&xb, (k, k), s, pad).to_nchw();
            let want = reference(&x, (n, c, h, w), (k, k), s, pad, None, false);
            close(&got, &want, 0.0);
        }
    }

    #[test]
    fn subsample_keeps_even_rows_and_columns() {
        let (n, c, h, w) = (1, 3, 5, 4);
        let x: Vec<f32> = (0..n * c * h * w).map(|v| v as f32).collect();
        let y = Blocked::from_nchw(&x, (n, c, h, w)).subsample2();
        assert_eq!((y.h, y.w), (3, 2));
        let got = y.to_nchw();
        assert_eq!(&got[..6], &[0.0, 2.0, 8.0, 10.0, 16.0, 18.0]);
    }
}
