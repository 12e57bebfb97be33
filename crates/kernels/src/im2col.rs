//! A convolution's input as the GEMM's right-hand side, without building the
//! column matrix: [`Im2Col`] packs the `k x nb` panels the micro-kernel reads
//! straight from the `(C, H, W)` image, zeros standing in for padding.
//!
//! Materialising im2col costs a `C*kh*kw x OH*OW` buffer per image (25 MB for
//! Xception's second convolution) written once and read back once; packing
//! from the image writes only the L2-sized block a task is about to use.

use super::pack::{DenseB, PackB};
use super::{ConvGeometry, KernelError, MatRef, Result};

/// Row `(c, ky, kx)`, column `(oy, ox)` of the implicit matrix is input
/// `(c, oy * stride + ky - top, ox * stride + kx - left)`, or 0 outside.
#[derive(Debug, Clone, Copy)]
pub struct Im2Col<'a> {
    x: &'a [f32],
    g: ConvGeometry,
}

/// Output columns `ox` whose tap `kx` reads an in-bounds input column
/// `ox * s + kx - pad`, as `lo..hi` (empty when none does).
#[inline]
pub fn valid_range(k: usize, pad: usize, s: usize, input: usize, out: usize) -> (usize, usize) {
    // ix = ox*s + k - pad >= 0  <=> ox >= ceil((pad - k) / s)
    let lo = if pad > k { (pad - k).div_ceil(s) } else { 0 };
    // ix <= input - 1  <=> ox <= (input - 1 + pad - k) / s
    let hi = if input + pad > k {
        ((input - 1 + pad - k) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// `dst.copy_from_slice(src)`, inlined for a whole 32- or 16-float panel
/// row (the common case), which `copy_from_slice` would hand to `memmove`.
#[inline(always)]
pub(crate) fn copy_run(dst: &mut [f32], src: &[f32]) {
    match dst.len() {
        32 => {
            let (d, s): (&mut [f32; 32], &[f32; 32]) =
                (dst.try_into().unwrap(), src.try_into().unwrap());
            *d = *s;
        }
        16 => {
            let (d, s): (&mut [f32; 16], &[f32; 16]) =
                (dst.try_into().unwrap(), src.try_into().unwrap());
            *d = *s;
        }
        _ => dst.copy_from_slice(src),
    }
}

impl<'a> Im2Col<'a> {
    /// `x` holds one `(c, h, w)` image of the geometry `g`.
    pub fn new(x: &'a [f32], g: ConvGeometry) -> Result<Self> {
        let (c, h, w) = g.chw;
        if x.len() < c * h * w || g.stride == 0 {
            return Err(KernelError::Shape {
                name: "B (image)",
                rows: c,
                cols: h * w,
                ld: h * w,
                need: c * h * w,
                len: x.len(),
            });
        }
        Ok(Self { x, g })
    }

    /// A 1x1, stride-1, unpadded convolution reads the image as the matrix.
    fn is_plain(&self) -> bool {
        let g = &self.g;
        g.kernel == (1, 1) && g.stride == 1 && g.top_left == (0, 0) && g.out == (g.chw.1, g.chw.2)
    }
}

impl PackB for Im2Col<'_> {
    fn k(&self) -> usize {
        self.g.chw.0 * self.g.kernel.0 * self.g.kernel.1
    }

    fn n(&self) -> usize {
        self.g.out.0 * self.g.out.1
    }

    fn pack(&self, j0: usize, nb: usize, nr: usize, out: &mut [f32]) {
        let k = self.k();
        let (_, h, w) = self.g.chw;
        if self.is_plain() {
            // The image is the dense `C x H*W` matrix itself.
            let b = MatRef {
                data: self.x,
                ld: h * w,
            };
            let dense = DenseB::new(b, k, h * w).expect("checked by Im2Col::new");
            return dense.pack(j0, nb, nr, out);
        }
        let (kh, kw) = self.g.kernel;
        let (top, left) = self.g.top_left;
        let (_, ow) = self.g.out;
        let s = self.g.stride;
        // Per kx: the output columns that read inside the image.
        let ranges: Vec<(usize, usize)> =
            (0..kw).map(|kx| valid_range(kx, left, s, w, ow)).collect();
        let panels = nb.div_ceil(nr);
        // Every panel's columns, cut at output-row ends:
        // (panel, oy, first ox, length, offset in the panel row).
        let mut segs: Vec<(usize, usize, usize, usize, usize)> = Vec::new();
        for jr in 0..panels {
            let (first, cols) = (j0 + jr * nr, nr.min(nb - jr * nr));
            let mut d = 0;
            while d < cols {
                let (oy, ox) = ((first + d) / ow, (first + d) % ow);
                let len = (ow - ox).min(cols - d);
                segs.push((jr, oy, ox, len, d));
                d += len;
            }
        }
        // Rows in (channel, ky, kx) order, walked without divisions.
        let (mut ch, mut ky, mut kx) = (0, 0, 0);
        for p in 0..k {
            let plane = &self.x[ch * h * w..(ch + 1) * h * w];
            let (lo, hi) = ranges[kx];
            for &(jr, oy, ox0, len, d0) in &segs {
                let seg = &mut out[jr * nr * k + p * nr + d0..][..len];
                let iy = oy * s + ky;
                if iy < top || iy - top >= h {
                    seg.fill(0.0);
                    continue;
                }
                let row = &plane[(iy - top) * w..(iy - top + 1) * w];
                // Valid part of this segment: ox in a..b.
                let (a, b) = (lo.max(ox0), hi.min(ox0 + len));
                if a >= b {
                    seg.fill(0.0);
                    continue;
                }
                seg[..a - ox0].fill(0.0);
                seg[b - ox0..].fill(0.0);
                let ix0 = a * s + kx - left;
                let valid = &mut seg[a - ox0..b - ox0];
                if s == 1 {
                    copy_run(valid, &row[ix0..ix0 + (b - a)]);
                } else {
                    for (v, &x) in valid.iter_mut().zip(row[ix0..].iter().step_by(s)) {
                        *v = x;
                    }
                }
            }
            kx += 1;
            if kx == kw {
                kx = 0;
                ky += 1;
                if ky == kh {
                    ky = 0;
                    ch += 1;
                }
            }
        }
        // Zero the columns past `nb` in the last panel.
        let cols = nb - (panels - 1) * nr;
        if cols < nr {
            let last = &mut out[(panels - 1) * nr * k..panels * nr * k];
            for dst in last.chunks_exact_mut(nr) {
                dst[cols..].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::uniform_vec as rand_vec;

    /// The implicit matrix, element by element.
    fn explicit(m: &Im2Col<'_>) -> Vec<f32> {
        let (c, h, w) = m.g.chw;
        let (kh, kw) = m.g.kernel;
        let (top, left) = m.g.top_left;
        let (oh, ow) = m.g.out;
        let mut v = Vec::new();
        for ch in 0..c {
            for ky in 0..kh {
                for kx in 0..kw {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let iy = (oy * m.g.stride + ky) as isize - top as isize;
                            let ix = (ox * m.g.stride + kx) as isize - left as isize;
                            let inside =
                                (0..h as isize).contains(&iy) && (0..w as isize).contains(&ix);
                            v.push(if inside {
                                m.x[ch * h * w + iy as usize * w + ix as usize]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
        v
    }

    #[test]
    fn packs_the_same_panels_as_the_explicit_matrix() {
        // (c, h, w), (kh, kw), stride, (top, left), (bottom, right)
        let cases = [
            ((3, 9, 7), (3, 3), 1, (1, 1), (1, 1)),
            ((2, 9, 7), (3, 3), 2, (0, 0), (1, 1)),
            ((2, 8, 8), (3, 3), 2, (0, 0), (0, 0)),
            ((2, 5, 6), (1, 7), 1, (0, 3), (0, 3)),
            ((2, 6, 5), (7, 1), 1, (3, 0), (3, 0)),
            ((4, 5, 5), (1, 1), 1, (0, 0), (0, 0)),
            ((4, 6, 6), (1, 1), 2, (0, 0), (0, 0)),
            ((1, 4, 4), (5, 5), 1, (2, 2), (2, 2)),
        ];
        for (i, &((c, h, w), (kh, kw), s, (t, l), (b, r))) in cases.iter().enumerate() {
            let x = rand_vec(c * h * w, 10 + i as u64);
            let (oh, ow) = ((h + t + b - kh) / s + 1, (w + l + r - kw) / s + 1);
            let g = ConvGeometry {
                chw: (c, h, w),
                kernel: (kh, kw),
                stride: s,
                top_left: (t, l),
                out: (oh, ow),
            };
            let m = Im2Col::new(&x, g).unwrap();
            let full = explicit(&m);
            let (k, n) = (m.k(), m.n());
            for nr in [4, 16, 32] {
                for (j0, nb) in [(0, n), (1, n - 1), (n / 2, n - n / 2), (n - 1, 1)] {
                    let panels = nb.div_ceil(nr);
                    let mut out = vec![f32::NAN; panels * nr * k];
                    m.pack(j0, nb, nr, &mut out);
                    for jr in 0..panels {
                        for p in 0..k {
                            for jj in 0..nr {
                                let j = jr * nr + jj;
                                let want = if j < nb { full[p * n + j0 + j] } else { 0.0 };
                                assert_eq!(
                                    out[jr * nr * k + p * nr + jj],
                                    want,
                                    "case {i}, nr {nr}, j0 {j0}: row {p}, column {j}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
