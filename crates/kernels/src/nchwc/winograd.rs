//! 3x3 stride-1 convolution in NCHW16c by Winograd's minimal filtering
//! F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural
//! Networks", 2016): each 2x2 block of outputs takes 16 multiplications
//! per input and output channel instead of 36, at the price of transforms
//! (additions only) of each 4x4 input patch and each 4x4 result.
//!
//! The 16 products are 16 independent 1x1 convolutions (GEMMs over tiles x
//! channels), which run on [`super::conv`]'s tile kernel. A task transforms
//! a band of tile rows of one image, multiplies and transforms back while
//! the band is in L2; nothing but the output reaches memory.
//!
//! In f32 the transforms' rounding is of the order of the direct sum's
//! (F(2x2, 3x3) has the smallest error of the Winograd family).

#[cfg(target_arch = "x86_64")]
use std::ops::Range;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::conv::pointwise_span;
use super::conv::PackedConv;
use super::{even_parts, out_size, Blocked, Pad, CB};
use crate::window::Clamp;
use crate::SyncPtr;

/// The 16 transformed 3x3 kernels `G g G^T`, each packed as a 1x1
/// convolution, and the bias.
pub struct PackedWinograd {
    u: Vec<PackedConv>,
    bias: Vec<f32>,
    pub o: usize,
    pub c: usize,
}

impl PackedWinograd {
    /// From OIHW row-major 3x3 weights and a bias.
    pub fn new(w: &[f32], bias: &[f32], o: usize, c: usize) -> Self {
        assert_eq!(w.len(), o * c * 9, "winograd: 3x3 weights");
        assert_eq!(bias.len(), o, "winograd: bias");
        const G: [[f64; 3]; 4] = [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ];
        let mut u = vec![vec![0f32; o * c]; 16];
        for oc in 0..o {
            for ic in 0..c {
                let g = &w[(oc * c + ic) * 9..][..9];
                // G g: 4 x 3, then (G g) G^T: 4 x 4, in f64.
                let mut gg = [[0f64; 3]; 4];
                for (i, row) in gg.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|k| G[i][k] * g[k * 3 + j] as f64).sum();
                    }
                }
                for i in 0..4 {
                    for j in 0..4 {
                        let v: f64 = (0..3).map(|k| gg[i][k] * G[j][k]).sum();
                        u[i * 4 + j][oc * c + ic] = v as f32;
                    }
                }
            }
        }
        let zero = vec![0f32; o];
        let mut b = bias.to_vec();
        b.resize(o.div_ceil(CB) * CB, 0.0);
        Self {
            u: u.iter()
                .map(|u| PackedConv::new(u, &zero, o, c, (1, 1), 2))
                .collect(),
            bias: b,
            o,
            c,
        }
    }
}

/// `act(conv3x3(x) + b)`, stride 1, padding `pad`, written to `y`'s blocks
/// `block_offset..` (`y` has `x`'s images and the output's size).
pub fn winograd_into(
    x: &Blocked,
    p: &PackedWinograd,
    pad: Pad,
    act: Clamp,
    y: &mut Blocked,
    block_offset: usize,
) {
    assert_eq!(x.c, p.c, "winograd: input channels");
    let (oh, ow) = out_size((x.h, x.w), (3, 3), 1, pad);
    assert_eq!((y.n, y.h, y.w), (x.n, oh, ow), "winograd: output shape");
    assert!(
        block_offset + p.o.div_ceil(CB) <= y.blocks(),
        "winograd: output blocks"
    );
    if x.n == 0 || oh * ow == 0 {
        return;
    }
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    // Tile rows per task: about 48 tiles, balanced, so that the band's
    // transformed input and products stay in L2.
    let (band, bands) = even_parts(th, 48usize.div_ceil(tw).clamp(1, th));
    let plan = Plan {
        x,
        p,
        pad,
        act,
        oh,
        ow,
        tw,
        y_blocks: y.blocks(),
        block_offset,
    };
    let yp = SyncPtr::new(y.data.as_mut_ptr());
    (0..x.n * bands)
        .into_par_iter()
        .for_each_init(Vec::<f32>::new, |scratch, task| {
            let (img, bi) = (task / bands, task % bands);
            let rows = bi * band..((bi + 1) * band).min(th);
            // SAFETY: AVX-512F checked by the caller (`available`); this
            // task writes only its image's output rows of its tile rows.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                plan.run(img, rows, scratch, yp)
            };
        });
}

/// One call's geometry, shared by its tasks.
struct Plan<'a> {
    x: &'a Blocked,
    p: &'a PackedWinograd,
    pad: Pad,
    act: Clamp,
    oh: usize,
    ow: usize,
    /// Tiles per row.
    tw: usize,
    y_blocks: usize,
    block_offset: usize,
}

impl Plan<'_> {
    /// Tile rows `rows` of image `img`: transform, 16 products, transform
    /// back.
    ///
    /// # Safety
    /// AVX-512F; `y` is the output's data; no other task writes these rows.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn run(&self, img: usize, rows: Range<usize>, scratch: &mut Vec<f32>, y: SyncPtr) {
        use std::arch::x86_64::*;
        let (x, p) = (self.x, self.p);
        let (h, w, xb) = (x.h, x.w, x.blocks());
        let ob = p.o.div_ceil(CB);
        let (t, _, l, _) = self.pad;
        let tw = self.tw;
        let tiles = rows.len() * tw;
        // Scratch: V `[16][xb][tiles][16]`, then M `[16][ob][tiles][16]`.
        let v_len = 16 * xb * tiles * CB;
        scratch.resize(v_len + 16 * ob * tiles * CB, 0.0);
        let (v, m) = scratch.split_at_mut(v_len);
        let xi = &x.data[img * xb * h * w * CB..][..xb * h * w * CB];
        let zero = _mm512_setzero_ps();
        // Input transform: V = B^T d B for every 4x4 patch.
        for cb in 0..xb {
            let plane = xi[cb * h * w * CB..].as_ptr();
            for (tr, ty) in rows.clone().enumerate() {
                for tx in 0..tw {
                    let mut d = [[zero; 4]; 4];
                    for (i, row) in d.iter_mut().enumerate() {
                        let iy = (2 * ty + i) as isize - t as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for (j, v) in row.iter_mut().enumerate() {
                            let ix = (2 * tx + j) as isize - l as isize;
                            if ix >= 0 && ix < w as isize {
                                *v = _mm512_loadu_ps(
                                    plane.add((iy as usize * w + ix as usize) * CB),
                                );
                            }
                        }
                    }
                    // B^T d (rows), then (B^T d) B (columns).
                    let bt = |a: [__m512; 4]| {
                        [
                            _mm512_sub_ps(a[0], a[2]),
                            _mm512_add_ps(a[1], a[2]),
                            _mm512_sub_ps(a[2], a[1]),
                            _mm512_sub_ps(a[1], a[3]),
                        ]
                    };
                    let cols: [[__m512; 4]; 4] =
                        std::array::from_fn(|j| bt([d[0][j], d[1][j], d[2][j], d[3][j]]));
                    let tile = tr * tw + tx;
                    let out: [[__m512; 4]; 4] = std::array::from_fn(|i| {
                        bt([cols[0][i], cols[1][i], cols[2][i], cols[3][i]])
                    });
                    for (i, row) in out.iter().enumerate() {
                        for (j, &val) in row.iter().enumerate() {
                            let at = (((i * 4 + j) * xb + cb) * tiles + tile) * CB;
                            _mm512_storeu_ps(v.as_mut_ptr().add(at), val);
                        }
                    }
                }
            }
        }
        // The 16 products: M[k] = V[k] U[k], a 1x1 convolution over the
        // band's tiles, in balanced runs of at most 14 tiles.
        for (k, u) in p.u.iter().enumerate() {
            let at = |b: usize| (k * b * tiles) * CB;
            pointwise_span(
                u,
                (v.as_ptr().add(at(xb)), tiles * CB, tiles),
                (false, Clamp::NONE),
                (m.as_mut_ptr().add(at(ob)), std::ptr::null(), tiles * CB),
            );
        }
        // Output transform: Y = A^T M A, then bias and activation.
        let (lo, hi) = (_mm512_set1_ps(self.act.lo), _mm512_set1_ps(self.act.hi));
        let (oh, ow) = (self.oh, self.ow);
        for blk in 0..ob {
            let bias = _mm512_loadu_ps(p.bias[blk * CB..].as_ptr());
            let out = y
                .get()
                .add((img * self.y_blocks + self.block_offset + blk) * oh * ow * CB);
            for (tr, ty) in rows.clone().enumerate() {
                for tx in 0..tw {
                    let tile = tr * tw + tx;
                    let mm = |k: usize| {
                        _mm512_loadu_ps(m.as_ptr().add(((k * ob + blk) * tiles + tile) * CB))
                    };
                    // A^T m (rows): s0 = m0 + m1 + m2, s1 = m1 - m2 - m3.
                    let s: [[__m512; 4]; 2] = std::array::from_fn(|i| {
                        std::array::from_fn(|j| {
                            let (a, b, c, d) = (mm(j), mm(4 + j), mm(8 + j), mm(12 + j));
                            if i == 0 {
                                _mm512_add_ps(_mm512_add_ps(a, b), c)
                            } else {
                                _mm512_sub_ps(_mm512_sub_ps(b, c), d)
                            }
                        })
                    });
                    for (dy, row) in s.iter().enumerate() {
                        let oy = 2 * ty + dy;
                        if oy >= oh {
                            continue;
                        }
                        let pair = [
                            _mm512_add_ps(_mm512_add_ps(row[0], row[1]), row[2]),
                            _mm512_sub_ps(_mm512_sub_ps(row[1], row[2]), row[3]),
                        ];
                        for (dx, &val) in pair.iter().enumerate() {
                            let ox = 2 * tx + dx;
                            if ox < ow {
                                let val = _mm512_add_ps(val, bias);
                                let val = _mm512_min_ps(_mm512_max_ps(val, lo), hi);
                                _mm512_storeu_ps(out.add((oy * ow + ox) * CB), val);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nchwc::testing::{close, RELU};
    use crate::nchwc::{available, conv, ConvArgs};
    use crate::rng::uniform_vec;

    #[test]
    fn winograd_matches_the_direct_convolution() {
        if !available() {
            return;
        }
        // (n, c, o, h, w, pad): same and valid, odd and even sizes, channel
        // counts that are not multiples of 16, and bands of several tile
        // rows.
        let cases = [
            (2, 32, 48, 9, 17, (1, 1, 1, 1)),
            (1, 20, 40, 8, 8, (1, 1, 1, 1)),
            (1, 16, 32, 31, 30, (0, 0, 0, 0)),
            (2, 48, 64, 35, 35, (1, 1, 1, 1)),
        ];
        for (i, &(n, c, o, h, w, pad)) in cases.iter().enumerate() {
            let x = uniform_vec(n * c * h * w, 110 + i as u64);
            let wt = uniform_vec(o * c * 9, 120 + i as u64);
            let bias = uniform_vec(o, 130 + i as u64);
            let xb = Blocked::from_nchw(&x, (n, c, h, w));
            let direct = PackedConv::new(&wt, &bias, o, c, (3, 3), 2);
            let args = ConvArgs {
                stride: 1,
                pad,
                act: RELU,
                residual: None,
            };
            let want = conv(&xb, &direct, args);
            let p = PackedWinograd::new(&wt, &bias, o, c);
            let mut got = Blocked::uninit(n, o, want.h, want.w);
            winograd_into(&xb, &p, pad, RELU, &mut got, 0);
            close(&got.to_nchw(), &want.to_nchw(), 1e-4);
        }
    }
}
