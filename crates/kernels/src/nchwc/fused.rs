//! A depthwise convolution followed by a 1x1 convolution (Xception's
//! separable convolutions, the depthwise and projection of an MBConv), run
//! band by band: a task computes the depthwise output of a band of rows
//! for every channel block into a buffer that stays in L2, and the 1x1
//! convolution reads it there. The depthwise output never reaches memory,
//! which unfused costs a write and a read of the widest map of the pair.

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::conv::pointwise_span;
use super::conv::PackedConv;
#[cfg(target_arch = "x86_64")]
use super::window::depthwise_padded;
use super::window::{has_sliding_kernel, PackedDepthwise};
use super::{even_parts, out_size, Blocked, Pad, CB};
use crate::window::Clamp;
use crate::{ConvGeometry, SyncPtr};

/// The depthwise half: weights, stride, padding and activations (before
/// and after).
#[derive(Clone, Copy)]
pub struct DepthwiseArgs<'a> {
    pub p: &'a PackedDepthwise,
    pub stride: usize,
    pub pad: Pad,
    pub in_act: Clamp,
    pub out_act: Clamp,
}

/// `act(pw(dw(x)) + b) (+ residual)`, or `None` (nothing done) when the
/// depthwise window has no sliding-window kernel (3x3 and 5x5, stride 1
/// or 2, do). `pw` is a 1x1 convolution; `residual` has the output's shape.
pub fn depthwise_then_1x1(
    x: &Blocked,
    dw: DepthwiseArgs,
    pw: &PackedConv,
    act: Clamp,
    residual: Option<&Blocked>,
) -> Option<Blocked> {
    let (kh, kw) = dw.p.k;
    if !has_sliding_kernel((kh, kw), dw.stride) {
        return None;
    }
    assert_eq!(x.c, dw.p.c, "depthwise: channels");
    assert_eq!(pw.k, (1, 1), "fused: a 1x1 convolution");
    assert_eq!(pw.c, x.c, "fused: 1x1 input channels");
    let (t, _, l, _) = dw.pad;
    let s = dw.stride;
    let (oh, ow) = out_size((x.h, x.w), (kh, kw), s, dw.pad);
    if let Some(res) = residual {
        assert_eq!(
            (res.n, res.c, res.h, res.w),
            (x.n, pw.o, oh, ow),
            "fused: residual shape"
        );
    }
    let mut y = Blocked::uninit(x.n, pw.o, oh, ow);
    if x.n == 0 || oh * ow == 0 {
        return Some(y);
    }
    let g = ConvGeometry {
        chw: (CB, x.h, x.w),
        kernel: (kh, kw),
        stride: s,
        top_left: (t, l),
        out: (oh, ow),
    };
    // Rows per task: the band's depthwise output (every channel block)
    // within ~256 KB, at least one row.
    let xb = x.blocks();
    let (rows, bands) = even_parts(oh, (65536 / (xb * ow * CB)).clamp(1, oh));
    let (ob, plane) = (pw.o.div_ceil(CB), oh * ow * CB);
    let yp = SyncPtr::new(y.data.as_mut_ptr());
    let in_plane = x.h * x.w * CB;
    (0..x.n * bands).into_par_iter().for_each_init(
        || (Vec::<f32>::new(), Vec::<f32>::new()),
        |(d, pad_scratch), task| {
            let (img, bi) = (task / bands, task % bands);
            let oys = bi * rows..((bi + 1) * rows).min(oh);
            let px = oys.len() * ow;
            d.resize(xb * px * CB, 0.0);
            for cb in 0..xb {
                let src = &x.data[(img * xb + cb) * in_plane..][..in_plane];
                let dst = &mut d[cb * px * CB..][..px * CB];
                let acts = (dw.in_act, dw.out_act);
                // SAFETY: AVX-512F checked by the caller (`available`);
                // the plane and band sizes match the geometry.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    depthwise_padded(src, dst, g, oys.clone(), (dw.p, cb), acts, pad_scratch)
                };
            }
            // The 1x1 convolution over the band's pixels, in balanced runs
            // of at most 14.
            let at_out = img * ob * plane + oys.start * ow * CB;
            let res = residual.map_or(std::ptr::null(), |r| r.data[at_out..].as_ptr());
            // SAFETY: AVX-512F checked by the caller (`available`); this
            // task writes its image's pixels of the band, whose every block
            // is inside `y` (and `residual`).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                pointwise_span(
                    pw,
                    (d.as_ptr(), px * CB, px),
                    (true, act),
                    (yp.get().add(at_out), res, plane),
                )
            };
        },
    );
    Some(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nchwc::testing::{close, RELU};
    use crate::nchwc::{available, conv, depthwise, ConvArgs};
    use crate::rng::uniform_vec;

    #[test]
    fn fused_equals_depthwise_then_1x1() {
        if !available() {
            return;
        }
        // (n, c, o, h, w, k, stride, pad, residual): Xception's middle flow
        // (728 channels, ReLU before the depthwise, a residual), an MBConv's
        // 5x5/2 projection, and a map wider than one band.
        let cases = [
            (2, 40, 48, 19, 19, 3, 1, (1, 1, 1, 1), true),
            (1, 24, 16, 14, 14, 5, 2, (1, 2, 1, 2), false),
            (1, 200, 32, 37, 37, 3, 1, (1, 1, 1, 1), false),
        ];
        for (i, &(n, c, o, h, w, k, s, pad, with_res)) in cases.iter().enumerate() {
            let x = Blocked::from_nchw(&uniform_vec(n * c * h * w, 140 + i as u64), (n, c, h, w));
            let dwp = PackedDepthwise::new(
                &uniform_vec(c * k * k, 150 + i as u64),
                &uniform_vec(c, 160 + i as u64),
                c,
                (k, k),
            );
            let pw = PackedConv::new(
                &uniform_vec(o * c, 170 + i as u64),
                &uniform_vec(o, 180 + i as u64),
                o,
                c,
                (1, 1),
                2,
            );
            let mid = depthwise(&x, &dwp, s, pad, RELU, Clamp::NONE);
            let res = Blocked::from_nchw(
                &uniform_vec(n * o * mid.h * mid.w, 190 + i as u64),
                (n, o, mid.h, mid.w),
            );
            let residual = with_res.then_some(&res);
            let args = ConvArgs {
                stride: 1,
                pad: (0, 0, 0, 0),
                act: RELU,
                residual,
            };
            let want = conv(&mid, &pw, args);
            let dw = DepthwiseArgs {
                p: &dwp,
                stride: s,
                pad,
                in_act: RELU,
                out_act: Clamp::NONE,
            };
            let got = depthwise_then_1x1(&x, dw, &pw, RELU, residual).expect("a 3x3 or 5x5");
            close(&got.to_nchw(), &want.to_nchw(), 1e-4);
        }
    }
}
