//! The 1x1 convolution in NCHW16c: a GEMM whose left operand (pixels x
//! input channels) is the activation tensor itself, against weights packed
//! at load; the output comes out in the same layout for the next layer.

use rayon::prelude::*;

use super::{Blocked, CB};
use crate::window::Clamp;
use crate::{uninit, SyncPtr};

/// Pixels per 1x1-convolution tile: 14 x 2 accumulators + 2 weight
/// registers + 1 broadcast = 31 of the 32 zmm registers.
const MR: usize = 14;

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
    let mut y = Blocked {
        data: uninit(x.n * p.o.div_ceil(CB) * x.hw() * CB),
        n: x.n,
        c: p.o,
        h: x.h,
        w: x.w,
    };
    conv1x1_into(x, p, act, residual, &mut y, 0);
    y
}

/// [`conv1x1`] written to `y`'s blocks `block_offset..` (`y` has `x`'s
/// images, height and width): a branch writes its part of a
/// concatenation in place.
pub fn conv1x1_into(
    x: &Blocked,
    p: &Packed1x1,
    act: Clamp,
    residual: Option<&Blocked>,
    y: &mut Blocked,
    block_offset: usize,
) {
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
    assert_eq!((y.n, y.h, y.w), (n, x.h, x.w), "conv1x1: output shape");
    assert!(block_offset + ob <= y.blocks(), "conv1x1: output blocks");
    let yb = y.blocks();
    if hw == 0 || n == 0 {
        return;
    }
    let tiles = hw.div_ceil(MR);
    // Tasks: (image, group of tiles); each runs every pair of output blocks
    // over its tiles, so its pixels stay in L1/L2 across the weights.
    const TILES_PER_TASK: usize = 4;
    let groups = tiles.div_ceil(TILES_PER_TASK);
    let yp = SyncPtr::new(y.data.as_mut_ptr());
    (0..n * groups).into_par_iter().for_each(|task| {
        let (img, g) = (task / groups, task % groups);
        let xi = &x.data[img * xb * hw * CB..][..xb * hw * CB];
        let ri = residual.map(|r| &r.data[img * ob * hw * CB..][..ob * hw * CB]);
        // SAFETY: this task writes only its image's pixels of its tiles.
        let yi = unsafe { yp.get().add((img * yb + block_offset) * hw * CB) };
        let mut scratch_x = Vec::new();
        let mut scratch_y = [[0f32; MR * CB]; 2];
        for o2 in 0..p.o.div_ceil(32) {
            let w = &p.w[o2 * p.c * 32..][..p.c * 32];
            let bias = &p.bias[o2 * 32..][..32];
            let (b0, b1) = (2 * o2, 2 * o2 + 1);
            // An odd last block (16, 24 or 40 output channels) runs the
            // one-block tile rather than computing a block of zeros.
            let pair = b1 < ob;
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
                let at = [(b0 * hw + p0) * CB, (b1.min(ob - 1) * hw + p0) * CB];
                let direct = rows == MR;
                // Full tiles are written in place with their residual; a
                // short one goes through a scratch tile, its residual added
                // on the way out.
                // SAFETY: pixels p0..p0+14 of blocks b0, b1 of this image.
                let (dst, res) = if direct {
                    let res = ri.map_or([std::ptr::null(); 2], |r| {
                        [r[at[0]..].as_ptr(), r[at[1]..].as_ptr()]
                    });
                    (unsafe { [yi.add(at[0]), yi.add(at[1])] }, res)
                } else {
                    let d = [scratch_y[0].as_mut_ptr(), scratch_y[1].as_mut_ptr()];
                    (d, [std::ptr::null(); 2])
                };
                let epi = Epilogue {
                    bias: bias.as_ptr(),
                    act,
                    res,
                };
                // SAFETY: AVX-512F checked by the caller (`available`);
                // `xs` holds 14 pixels of each of `xb` blocks `x_stride`
                // apart; `dst` (and `res` where not null) two 14 x 16 tiles.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    if pair {
                        tile_1x1::<2>(p.c, xs.as_ptr(), x_stride, w.as_ptr(), &epi, dst)
                    } else {
                        tile_1x1::<1>(p.c, xs.as_ptr(), x_stride, w.as_ptr(), &epi, dst)
                    }
                };
                if direct {
                    continue;
                }
                for (k, &blk) in [b0, b1].iter().enumerate().take(1 + usize::from(pair)) {
                    let tile = &mut scratch_y[k][..rows * CB];
                    if let Some(r) = ri {
                        let r = &r[(blk * hw + p0) * CB..][..rows * CB];
                        tile.iter_mut().zip(r).for_each(|(v, &r)| *v += r);
                    }
                    // SAFETY: pixels p0..p0+rows of block `blk` of this image.
                    unsafe {
                        std::ptr::copy_nonoverlapping(tile.as_ptr(), yi.add(at[k]), rows * CB)
                    };
                }
            }
        }
    });
}

/// What a tile applies before storing: `act(acc + bias) (+ residual)`.
struct Epilogue {
    /// 32 floats: the bias of the tile's two output blocks.
    bias: *const f32,
    act: Clamp,
    /// The residual tile of each output block, or null.
    res: [*const f32; 2],
}

/// 14 pixels x `NB` blocks of 16 output channels: `act(sum_c x * w + b)
/// (+ residual)`, stored to `out`. The bias starts the accumulators and the
/// activation and residual are applied in registers, so each output is
/// written once.
///
/// # Safety
/// AVX-512F; `x` holds 14 pixels (16 floats each) of `ceil(c / 16)` blocks
/// `x_stride` floats apart; `w` `c x 32` floats; `out` `NB` writable
/// 14 x 16 tiles; `e.res[k]` null or a readable 14 x 16 tile for `k < NB`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_1x1<const NB: usize>(
    c: usize,
    x: *const f32,
    x_stride: usize,
    w: *const f32,
    e: &Epilogue,
    out: [*mut f32; 2],
) {
    use std::arch::x86_64::*;
    let mut bias = [_mm512_setzero_ps(); NB];
    for (k, b) in bias.iter_mut().enumerate() {
        *b = _mm512_loadu_ps(e.bias.add(16 * k));
    }
    let mut acc = [bias; MR];
    let mut wp = w;
    for cb in 0..c.div_ceil(CB) {
        let xb = x.add(cb * x_stride);
        for ci in 0..CB.min(c - cb * CB) {
            let mut wv = [_mm512_setzero_ps(); NB];
            for (k, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(wp.add(16 * k));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*xb.add(i * CB + ci));
                for k in 0..NB {
                    row[k] = _mm512_fmadd_ps(a, wv[k], row[k]);
                }
            }
            wp = wp.add(32);
        }
    }
    let (lo, hi) = (_mm512_set1_ps(e.act.lo), _mm512_set1_ps(e.act.hi));
    for (i, row) in acc.iter().enumerate() {
        for k in 0..NB {
            // `max` then `min`, as `Clamp::apply` (NaN becomes `lo`).
            let mut v = _mm512_min_ps(_mm512_max_ps(row[k], lo), hi);
            if !e.res[k].is_null() {
                v = _mm512_add_ps(v, _mm512_loadu_ps(e.res[k].add(i * CB)));
            }
            _mm512_storeu_ps(out[k].add(i * CB), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nchwc::available;
    use crate::nchwc::testing::{close, RELU};
    use crate::rng::uniform_vec;

    #[test]
    fn conv1x1_matches_the_definition_with_bias_act_and_residual() {
        if !available() {
            eprintln!("no AVX-512F: NCHW16c kernels unused on this CPU");
            return;
        }
        // 728 -> 40 channels (not multiples of 16 or 32), 19x19 and a short
        // last tile; 24 -> 16 (one output block) in whole tiles.
        for &(n, c, o, h, w) in &[(2, 728, 40, 19, 19), (1, 33, 64, 3, 5), (2, 24, 16, 6, 7)] {
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
}
