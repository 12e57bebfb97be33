//! Sliding-window ops on NCHW planes: depthwise convolution, max pooling and
//! average pooling, one kernel shape for all three.
//!
//! Each `(image, channel)` plane is copied once into a padded scratch plane
//! (the input activation applied on the way, padding filled with 0 or -inf),
//! then the taps run over the padded plane *flattened*: output position `r`
//! of the stride-1 result is `sum_taps w * pad[r + ky * wp + kx]`, so the
//! inner loops run over 64 contiguous floats at a time whatever the plane's
//! width (Xception's 19-wide rows would otherwise leave most SIMD lanes idle
//! in scalar tails). The positions that fall in the padding columns are
//! computed and dropped; strided ops compute only the rows they keep.
//!
//! The loops are plain Rust compiled three times (AVX-512, AVX2+FMA, and the
//! build's baseline) and chosen at run time, so LLVM vectorises them with the
//! widest registers the CPU has.

use std::cell::RefCell;

use rayon::prelude::*;

/// What a window computes.
#[derive(Debug, Clone, Copy)]
pub enum WindowKind<'a> {
    /// One `kh x kw` filter per channel (`weights`: `(C, kh, kw)`), plus bias.
    Depthwise { weights: &'a [f32], bias: &'a [f32] },
    /// Maximum over the in-bounds taps (padding never wins).
    Max,
    /// Mean over the in-bounds taps (padding not counted, as Keras and
    /// `count_include_pad=False`).
    AvgExcludePad,
}

/// `v.max(lo).min(hi)`: ReLU is `(0, inf)`, ReLU6 `(0, 6)`, none `(-inf, inf)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clamp {
    pub lo: f32,
    pub hi: f32,
}

impl Clamp {
    pub const NONE: Clamp = Clamp {
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
    };

    /// Compare-and-select rather than `f32::max` / `min`, whose NaN rules
    /// keep LLVM from vectorising the loops this sits in (NaN maps to `lo`).
    #[inline(always)]
    pub fn apply(self, v: f32) -> f32 {
        let v = if v > self.lo { v } else { self.lo };
        if v < self.hi {
            v
        } else {
            self.hi
        }
    }
}

/// Activation fused into a layer's output (GEMM epilogue, window kernels,
/// the device ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
}

impl Act {
    /// The same activation as a [`Clamp`].
    pub fn clamp(self) -> Clamp {
        match self {
            Act::None => Clamp::NONE,
            Act::Relu => Clamp {
                lo: 0.0,
                hi: f32::INFINITY,
            },
            Act::Relu6 => Clamp { lo: 0.0, hi: 6.0 },
        }
    }
}

/// One sliding-window op: kernel `(kh, kw)`, stride, padding
/// `(top, bottom, left, right)`, activations before and after.
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    pub kind: WindowKind<'a>,
    pub kernel: (usize, usize),
    pub stride: usize,
    pub pad: (usize, usize, usize, usize),
    /// Applied to every input value (ReLU commutes with zero padding).
    pub in_act: Clamp,
    /// Applied to every output value.
    pub out_act: Clamp,
}

/// Floats computed per inner block: four 512-bit or eight 256-bit registers.
const BLOCK: usize = 64;

/// Per-thread buffers: the padded plane and the stride-1 results.
struct Scratch {
    pad: Vec<f32>,
    acc: Vec<f32>,
}

thread_local! {
    /// Reused across planes and calls on each worker thread.
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch {
            pad: Vec::new(),
            acc: Vec::new(),
        })
    };
}

/// One `(image, channel)` plane of a call: the channel (whose filter and
/// bias apply), the input size `(h, w)` and the output size `(oh, ow)`.
#[derive(Debug, Clone, Copy)]
struct PlaneShape {
    ch: usize,
    input: (usize, usize),
    output: (usize, usize),
}

impl Window<'_> {
    /// Output size for an `h x w` input.
    pub fn out_size(&self, (h, w): (usize, usize)) -> Option<(usize, usize)> {
        let (kh, kw) = self.kernel;
        let (t, b, l, r) = self.pad;
        let (hp, wp) = (h + t + b, w + l + r);
        if hp < kh || wp < kw || self.stride == 0 {
            return None;
        }
        Some(((hp - kh) / self.stride + 1, (wp - kw) / self.stride + 1))
    }

    /// Runs over `x` (`n x c` planes of `h x w`) into `out` (`n x c` planes
    /// of [`Self::out_size`]), planes in parallel on the global rayon pool.
    ///
    /// # Panics
    /// If the slices do not match the shapes (callers check them).
    pub fn run(&self, x: &[f32], (n, c, h, w): (usize, usize, usize, usize), out: &mut [f32]) {
        let Some((oh, ow)) = self.out_size((h, w)) else {
            return;
        };
        assert!(x.len() >= n * c * h * w && out.len() >= n * c * oh * ow);
        if oh * ow == 0 {
            return;
        }
        let isa = Isa::detect();
        out[..n * c * oh * ow]
            .par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(p, o)| {
                let shape = PlaneShape {
                    ch: p % c,
                    input: (h, w),
                    output: (oh, ow),
                };
                let plane = &x[p * h * w..(p + 1) * h * w];
                SCRATCH.with(|s| isa.plane(self, shape, plane, o, &mut s.borrow_mut()));
            });
    }
}

#[derive(Clone, Copy)]
enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Baseline,
}

impl Isa {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Baseline
    }

    fn plane(
        self,
        op: &Window<'_>,
        shape: PlaneShape,
        x: &[f32],
        out: &mut [f32],
        s: &mut Scratch,
    ) {
        match self {
            // SAFETY: the CPU has the features (detected above).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { plane_avx512(op, shape, x, out, s) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { plane_avx2(op, shape, x, out, s) },
            Isa::Baseline => plane(op, shape, x, out, s, false),
        }
    }
}

/// [`plane`] compiled for one instruction set, so that LLVM vectorises it
/// with that set's registers.
macro_rules! plane_for_isa {
    ($name:ident, $features:literal, $avx512:literal) => {
        /// # Safety
        /// The CPU has the target features.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            op: &Window<'_>,
            shape: PlaneShape,
            x: &[f32],
            out: &mut [f32],
            s: &mut Scratch,
        ) {
            plane(op, shape, x, out, s, $avx512)
        }
    };
}

plane_for_isa!(plane_avx512, "avx512f,avx512vl,avx2,fma", true);
plane_for_isa!(plane_avx2, "avx2,fma", false);

/// One plane (inlined into each ISA's copy).
#[inline(always)]
fn plane(
    op: &Window<'_>,
    shape: PlaneShape,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut Scratch,
    avx512: bool,
) {
    let PlaneShape {
        ch,
        input: (h, w),
        output: (oh, ow),
    } = shape;
    let Scratch { pad, acc } = scratch;
    let (kh, kw) = op.kernel;
    let (t, b, l, r) = op.pad;
    let (hp, wp) = (h + t + b, w + l + r);
    let s = op.stride;
    let fill = match op.kind {
        WindowKind::Max => f32::NEG_INFINITY,
        _ => 0.0,
    };
    // Padded plane, with a block of slack so the last block may read past it.
    pad.clear();
    pad.resize(hp * wp + BLOCK, fill);
    let ia = op.in_act;
    for (y, row) in x.chunks_exact(w).enumerate() {
        let dst = &mut pad[(y + t) * wp + l..][..w];
        copy_clamped(dst, row, ia, avx512);
    }
    let (taps, init): (&[f32], f32) = match op.kind {
        WindowKind::Depthwise { weights, bias } => {
            (&weights[ch * kh * kw..(ch + 1) * kh * kw], bias[ch])
        }
        WindowKind::Max => (&[], f32::NEG_INFINITY),
        WindowKind::AvgExcludePad => (&[], 0.0),
    };
    let is_max = matches!(op.kind, WindowKind::Max);
    // Stride-1 results over the runs of flat positions we keep: all rows
    // (stride 1), or only rows `oy * s`.
    let (runs, run_len, run_step) = if s == 1 {
        (1, (oh - 1) * wp + ow, 0)
    } else {
        (oh, (ow - 1) * s + 1, s * wp)
    };
    let padded_len = run_len.div_ceil(BLOCK) * BLOCK;
    acc.clear();
    acc.resize(runs * padded_len, 0.0);
    for run in 0..runs {
        let base = run * run_step;
        for (bi, dst) in acc[run * padded_len..(run + 1) * padded_len]
            .chunks_exact_mut(BLOCK)
            .enumerate()
        {
            let start = base + bi * BLOCK;
            // The last tap of this block reads up to `pad[end]`.
            let end = start + (kh - 1) * wp + kw - 1 + BLOCK;
            assert!(end <= pad.len() && (is_max || taps.len() == kh * kw || taps.is_empty()));
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // SAFETY: AVX-512F was detected by the caller that passed
                // `avx512`; every read lies below `end <= pad.len()`, the
                // block writes `dst`'s BLOCK floats.
                unsafe {
                    block_avx512(&pad[start..end], wp, op.kernel, taps, init, is_max, dst);
                }
                continue;
            }
            let mut v = [init; BLOCK];
            for ky in 0..kh {
                for kx in 0..kw {
                    let src: &[f32; BLOCK] = pad[start + ky * wp + kx..][..BLOCK]
                        .try_into()
                        .expect("BLOCK floats");
                    if is_max {
                        for (a, &x) in v.iter_mut().zip(src) {
                            *a = a.max(x);
                        }
                    } else {
                        let wt = if taps.is_empty() {
                            1.0
                        } else {
                            taps[ky * kw + kx]
                        };
                        for (a, &x) in v.iter_mut().zip(src) {
                            *a = x.mul_add(wt, *a);
                        }
                    }
                }
            }
            dst.copy_from_slice(&v);
        }
    }
    let oa = op.out_act;
    for (oy, orow) in out.chunks_exact_mut(ow).enumerate().take(oh) {
        let (src, step) = if s == 1 {
            (&acc[oy * wp..], 1)
        } else {
            (&acc[oy * padded_len..], s)
        };
        match op.kind {
            WindowKind::AvgExcludePad => {
                // In-bounds taps of this row: rows and columns of the window
                // that fall inside the image.
                let y0 = (oy * s).max(t);
                let y1 = (oy * s + kh).min(t + h);
                let rows = y1.saturating_sub(y0) as f32;
                for (ox, o) in orow.iter_mut().enumerate() {
                    let x0 = (ox * s).max(l);
                    let x1 = (ox * s + kw).min(l + w);
                    let n = rows * x1.saturating_sub(x0) as f32;
                    *o = oa.apply(src[ox * step] / n);
                }
            }
            _ => {
                if step == 1 {
                    copy_clamped(orow, &src[..ow], oa, avx512);
                } else {
                    for (o, &v) in orow.iter_mut().zip(src.iter().step_by(step)) {
                        *o = oa.apply(v);
                    }
                }
            }
        }
    }
}

/// `dst[i] = act(src[i])`. Rows here are short (19 floats in Xception's
/// middle flow), where the compiler's loop leaves a scalar tail longer than
/// its vector body; AVX-512 masks cover the tail in one step.
#[inline(always)]
fn copy_clamped(dst: &mut [f32], src: &[f32], act: Clamp, avx512: bool) {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: `avx512` is only true when AVX-512F was detected; both
        // slices have the same length.
        unsafe { copy_clamped_avx512(dst, src, act) };
        return;
    }
    let _ = avx512;
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = act.apply(v);
    }
}

/// # Safety
/// AVX-512F present; `dst.len() == src.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_clamped_avx512(dst: &mut [f32], src: &[f32], act: Clamp) {
    use std::arch::x86_64::*;
    let (lo, hi) = (_mm512_set1_ps(act.lo), _mm512_set1_ps(act.hi));
    let n = dst.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= 16 {
            0xffff
        } else {
            (1u16 << (n - i)) - 1
        };
        let v = _mm512_maskz_loadu_ps(m, s.add(i));
        let v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
        _mm512_mask_storeu_ps(d.add(i), m, v);
        i += 16;
    }
}

/// One block of 64 outputs in four zmm accumulators: `dst[i] = init (+|max)
/// over taps of src[i + ky * wp + kx] (* tap weight)`. LLVM keeps the
/// portable version's accumulator array on the stack (a load and a store per
/// tap); this keeps it in registers.
///
/// # Safety
/// AVX-512F present; `src` holds `(kh - 1) * wp + kw - 1 + 64` floats; `taps`
/// is empty (weight 1) or holds `kh * kw`; `dst` holds 64.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(
    src: &[f32],
    wp: usize,
    (kh, kw): (usize, usize),
    taps: &[f32],
    init: f32,
    is_max: bool,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    let p = src.as_ptr();
    let mut a = [_mm512_set1_ps(init); 4];
    for ky in 0..kh {
        for kx in 0..kw {
            let q = p.add(ky * wp + kx);
            if is_max {
                for (i, a) in a.iter_mut().enumerate() {
                    *a = _mm512_max_ps(*a, _mm512_loadu_ps(q.add(16 * i)));
                }
            } else {
                let wt = _mm512_set1_ps(if taps.is_empty() {
                    1.0
                } else {
                    *taps.get_unchecked(ky * kw + kx)
                });
                for (i, a) in a.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(16 * i)), wt, *a);
                }
            }
        }
    }
    let d = dst.as_mut_ptr();
    for (i, a) in a.iter().enumerate() {
        _mm512_storeu_ps(d.add(16 * i), *a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::uniform_vec as rand_vec;

    /// The op, one output at a time, straight from its definition.
    fn naive(op: &Window<'_>, x: &[f32], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<f32> {
        let (oh, ow) = op.out_size((h, w)).expect("fits");
        let (kh, kw) = op.kernel;
        let (t, _, l, _) = op.pad;
        let mut out = Vec::new();
        for p in 0..n * c {
            let ch = p % c;
            for oy in 0..oh {
                for ox in 0..ow {
                    let (mut acc, mut max, mut count) = (0f32, f32::NEG_INFINITY, 0);
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * op.stride + ky) as isize - t as isize;
                            let ix = (ox * op.stride + kx) as isize - l as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let v = op
                                .in_act
                                .apply(x[p * h * w + iy as usize * w + ix as usize]);
                            count += 1;
                            max = max.max(v);
                            acc += match op.kind {
                                WindowKind::Depthwise { weights, .. } => {
                                    v * weights[(ch * kh + ky) * kw + kx]
                                }
                                _ => v,
                            };
                        }
                    }
                    let v = match op.kind {
                        WindowKind::Depthwise { bias, .. } => acc + bias[ch],
                        WindowKind::Max => max,
                        WindowKind::AvgExcludePad => acc / count as f32,
                    };
                    out.push(op.out_act.apply(v));
                }
            }
        }
        out
    }

    #[test]
    fn every_window_op_matches_its_definition() {
        let relu6 = Clamp { lo: 0.0, hi: 6.0 };
        let relu = Clamp {
            lo: 0.0,
            hi: f32::INFINITY,
        };
        // (n, c, h, w), kernel, stride, (top, bottom, left, right)
        let shapes = [
            ((2, 3, 19, 19), (3, 3), 1, (1, 1, 1, 1)),
            ((1, 2, 70, 67), (3, 3), 2, (0, 1, 0, 1)),
            ((1, 2, 35, 35), (3, 3), 2, (0, 0, 0, 0)),
            ((2, 2, 17, 17), (5, 5), 1, (2, 2, 2, 2)),
            ((1, 3, 29, 30), (5, 5), 2, (1, 2, 1, 2)),
            ((1, 1, 8, 8), (3, 3), 1, (1, 1, 1, 1)),
        ];
        for (i, &(dims, kernel, stride, pad)) in shapes.iter().enumerate() {
            let (n, c, h, w) = dims;
            let x: Vec<f32> = rand_vec(n * c * h * w, 40 + i as u64)
                .iter()
                .map(|v| 8.0 * v)
                .collect();
            let weights = rand_vec(c * kernel.0 * kernel.1, 60 + i as u64);
            let bias = rand_vec(c, 80 + i as u64);
            let kinds = [
                (
                    WindowKind::Depthwise {
                        weights: &weights,
                        bias: &bias,
                    },
                    relu,
                    relu6,
                ),
                (
                    WindowKind::Depthwise {
                        weights: &weights,
                        bias: &bias,
                    },
                    Clamp::NONE,
                    Clamp::NONE,
                ),
                (WindowKind::Max, Clamp::NONE, Clamp::NONE),
                (WindowKind::AvgExcludePad, Clamp::NONE, Clamp::NONE),
            ];
            for (kind, in_act, out_act) in kinds {
                let op = Window {
                    kind,
                    kernel,
                    stride,
                    pad,
                    in_act,
                    out_act,
                };
                let want = naive(&op, &x, dims);
                let mut got = vec![f32::NAN; want.len()];
                op.run(&x, dims, &mut got);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "shape {i}, {kind:?}: output {j}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
