//! The NCHW16c layout (channels blocked by 16: `[N][C/16][H*W][16]`) and the
//! AVX-512 kernels that run Xception, InceptionV3 and EfficientNet-Lite0 in
//! it, from their first convolution.
//!
//! Why: in NCHW, a depthwise convolution or a pooling window works on one
//! channel plane at a time and pays for padded copies and per-plane set-up
//! (BENCHMARKS.md: 12% + 4% of Xception at ~30 GFLOP/s). In NCHW16c the 16
//! channels of one pixel are one AVX-512 register: a depthwise tap is one
//! FMA for 16 channels, pooling one `max`, with no padding copies. A dense
//! convolution is, per tap, a GEMM whose left operand is the activation
//! tensor itself (pixels x input channels, one cache line per pixel and
//! channel block): nothing is gathered per call, the weights were packed at
//! load, and the output comes out in the same layout for the next layer
//! (`benches/nchwc_probe.rs` measured the 1x1 case at 0.98-1.5x our packed
//! GEMM). A branch can write its output at a channel-block offset of a
//! wider map, so a concatenation is free.
//!
//! Channel counts that are not a multiple of 16 (Xception's 728) are padded
//! with zero lanes; every kernel here keeps padded lanes at zero (zero
//! weights and bias, `max` of zeros), so they never leak into real channels.
//!
//! Only AVX-512F machines use these kernels ([`available`]); elsewhere the
//! NCHW path runs.
//!
//! Files: this one holds the layout ([`Blocked`]); [`mod@conv`] dense
//! convolution (1x1 and `kh x kw`), [`window`] depthwise convolution and
//! max and average pooling.

// Elsewhere than x86-64 the kernels are compiled (the models name them)
// but never run: `available` is false, and their bodies are x86-64 only.
#![cfg_attr(not(target_arch = "x86_64"), allow(unused))]

use rayon::prelude::*;

use crate::uninit;

pub mod conv;
pub mod fused;
pub mod window;
pub mod winograd;

pub use conv::{conv, conv_interleaved, conv_into, ConvArgs, PackedConv};
pub use fused::{depthwise_then_1x1, DepthwiseArgs};
pub use window::{avg_pool_into, depthwise, max_pool, max_pool_into, PackedDepthwise, Pad};
pub use winograd::{winograd_into, PackedWinograd};

/// The output height and width of a `kh x kw` window with stride `s` and
/// padding `(top, bottom, left, right)` over an `h x w` map.
pub fn out_size(
    (h, w): (usize, usize),
    (kh, kw): (usize, usize),
    s: usize,
    (t, b, l, r): Pad,
) -> (usize, usize) {
    let len = |n: usize, before: usize, after: usize, k: usize| {
        (n + before + after).saturating_sub(k) / s + 1
    };
    (len(h, t, b, kh), len(w, l, r, kw))
}

/// `len` cut into the fewest parts of at most `most` items, of near-equal
/// size: `(size, parts)` (tasks of balanced work).
fn even_parts(len: usize, most: usize) -> (usize, usize) {
    let parts = len.div_ceil(most.max(1)).max(1);
    let size = len.div_ceil(parts).max(1);
    (size, len.div_ceil(size))
}

/// `span` in the fewest runs of at most `most`, their lengths differing by
/// at most one (tiles of balanced width).
fn runs(span: std::ops::Range<usize>, most: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let len = span.len();
    let parts = len.div_ceil(most.max(1));
    let mut start = span.start;
    (0..parts).map(move |i| {
        let run = start..start + len / parts + usize::from(i < len % parts);
        start = run.end;
        run
    })
}

/// Channels per block: one AVX-512 register of f32.
pub const CB: usize = 16;

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

    /// A map whose every block its producers will write (the branches of a
    /// concatenation, a convolution's output): nothing is initialised.
    pub fn uninit(n: usize, c: usize, h: usize, w: usize) -> Self {
        Self {
            data: uninit(n * c.div_ceil(CB) * h * w * CB),
            n,
            c,
            h,
            w,
        }
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
}

#[cfg(test)]
mod testing {
    use crate::window::Clamp;

    pub const RELU: Clamp = Clamp {
        lo: 0.0,
        hi: f32::INFINITY,
    };

    /// Elementwise `|a - b| <= tol * (1 + |b|)`.
    pub fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{i}: {x} vs {y}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::uniform_vec;

    #[test]
    fn runs_and_parts_cover_their_span_in_near_equal_pieces() {
        let r: Vec<_> = runs(3..52, 14).collect();
        assert_eq!(r, vec![3..16, 16..28, 28..40, 40..52]);
        assert_eq!(runs(0..0, 14).count(), 0);
        // 17 rows of at most 16: two parts of 9 and 8, not 16 and 1.
        assert_eq!(even_parts(17, 16), (9, 2));
        assert_eq!(even_parts(5, 64), (5, 1));
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
}
