//! Probe of the NCHW16c layout that onnxruntime's MLAS uses (channels
//! blocked by 16: `[C/16][H*W][16]`; BENCHMARKS.md, "Where the time goes"):
//! a 1x1 convolution in it against runner's packed GEMM on the same shape,
//! in one process, alternating, with `kernels::nchwc::conv` (the layout's
//! kernel that Xception runs) alongside.
//!
//! In NCHW16c a 1x1 convolution is a GEMM whose left operand (pixels x input
//! channels) is the activation tensor itself: the micro-kernel broadcasts one
//! input value of 14 pixels per step straight from the tensor (each pixel's
//! 16 channels are one cache line) against 32 output channels of weights
//! packed at load. Nothing is packed per call, and the output is written in
//! the same layout, ready for the next layer.
//!
//! A k x k stride-1 convolution in NCHW16c is the same kernel run over the
//! taps, each reading the padded input shifted by its offset; here the
//! output is computed on the padded width (the `kw - 1` extra columns per row
//! are dropped by a compaction pass, timed), against runner's `Conv2d`
//! (implicit-im2col packing) on InceptionV3's shapes.
//!
//! `cargo bench --bench nchwc_probe` (AVX-512 machines only; prints GFLOP/s
//! and the max difference between the two results).

use std::time::Instant;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use runner_kernels::rng::uniform_vec as rand_vec;
use runner_kernels::window::Clamp;
use runner_kernels::{self as kernels, nchwc, DenseB, MatRef, Output, PackedA};
use runner_models::layers::{Conv2d, Conv2dConfig, Padding};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CB: usize = 16;
const MR: usize = 14;

/// Weights `(O, C)` as `[O/32][C][32]` (zero-padded).
fn pack_weights(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let o2 = o.div_ceil(32);
    let mut p = vec![0f32; o2 * c * 32];
    for oc in 0..o {
        for ic in 0..c {
            p[((oc / 32) * c + ic) * 32 + oc % 32] = w[oc * c + ic];
        }
    }
    p
}

/// `(C, HW)` -> `[C/16][HW][16]`, zero-padded channels.
fn to_nchwc(x: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let cb = c.div_ceil(CB);
    let mut y = vec![0f32; cb * hw * CB];
    for ch in 0..c {
        for p in 0..hw {
            y[((ch / CB) * hw + p) * CB + ch % CB] = x[ch * hw + p];
        }
    }
    y
}

/// 14 pixels x 32 output channels, summed over all `c` input channels and
/// `offsets.len()` taps, tap `t` reading the input `offsets[t]` pixels
/// further on (a 1x1 convolution is the single tap `[0]`); weights
/// `[tap][c][32]`.
///
/// # Safety
/// AVX-512F; `x` points at pixel p0 of channel block 0 (`x_stride` floats
/// between channel blocks), every shifted read of 14 pixels in bounds; `w`
/// holds `taps x c x 32` floats; `y0` / `y1` point at pixel p0 of the two
/// output blocks with 14 pixels writable.
#[target_feature(enable = "avx512f")]
unsafe fn kernel_taps<const R: usize>(
    c: usize,
    x: *const f32,
    x_stride: usize,
    offsets: &[usize],
    w: *const f32,
    y0: *mut f32,
    y1: *mut f32,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let mut wp = w;
    for &off in offsets {
        let xt = x.add(off * CB);
        for cb in 0..c.div_ceil(CB) {
            let xb = xt.add(cb * x_stride);
            for ci in 0..CB.min(c - cb * CB) {
                let b0 = _mm512_loadu_ps(wp);
                let b1 = _mm512_loadu_ps(wp.add(16));
                for (i, row) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*xb.add(i * CB + ci));
                    row[0] = _mm512_fmadd_ps(a, b0, row[0]);
                    row[1] = _mm512_fmadd_ps(a, b1, row[1]);
                }
                wp = wp.add(32);
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        _mm512_storeu_ps(y0.add(i * CB), row[0]);
        _mm512_storeu_ps(y1.add(i * CB), row[1]);
    }
}

/// The padded input and the output on the padded width of
/// [`conv_kxk_nchwc`], kept across calls.
#[derive(Default)]
struct KxkScratch {
    xp: Vec<f32>,
    yp: Vec<f32>,
}

/// A k x k, stride-1, "same" convolution in NCHW16c: pads `x` (`[C/16][H*W][16]`),
/// runs [`kernel_taps`] over the padded grid, compacts into `y`
/// (`[O/16][H*W][16]`). `w` is `[O/32][tap][C][32]`.
fn conv_kxk_nchwc(
    w: &[f32],
    x: &[f32],
    (n, c, o, h, wd): (usize, usize, usize, usize, usize),
    (kh, kw): (usize, usize),
    scratch: &mut KxkScratch,
    y: &mut [f32],
) {
    let KxkScratch { xp, yp } = scratch;
    let (t, l) = ((kh - 1) / 2, (kw - 1) / 2);
    let (hp, wp) = (h + kh - 1, wd + kw - 1);
    let cb = c.div_ceil(CB);
    let ob = o / CB;
    // Padded input, one block per channel group, slack for the last tile.
    let xstride = (hp * wp + 2 * MR) * CB;
    xp.clear();
    xp.resize(n * cb * xstride, 0.0);
    xp.par_chunks_mut(xstride)
        .enumerate()
        .for_each(|(blk, dst)| {
            let src = &x[blk * h * wd * CB..(blk + 1) * h * wd * CB];
            for yy in 0..h {
                dst[((yy + t) * wp + l) * CB..][..wd * CB]
                    .copy_from_slice(&src[yy * wd * CB..(yy + 1) * wd * CB]);
            }
        });
    // Output on the padded width: positions oy * wp + ox.
    let flat = (h - 1) * wp + wd;
    let tiles = flat.div_ceil(MR);
    let ystride = (tiles * MR) * CB;
    yp.clear();
    yp.resize(n * ob * ystride, 0.0);
    let offsets: Vec<usize> = (0..kh * kw).map(|tap| (tap / kw) * wp + tap % kw).collect();
    const TILES_PER_TASK: usize = 4;
    let groups = tiles.div_ceil(TILES_PER_TASK);
    let ypp = Ptr(yp.as_mut_ptr());
    (0..n * groups).into_par_iter().for_each(|task| {
        let (img, g) = (task / groups, task % groups);
        let xi = &xp[img * cb * xstride..];
        let yi = unsafe { ypp.get().add(img * ob * ystride) };
        for o2 in 0..o / 32 {
            let wptr = w[o2 * kh * kw * c * 32..].as_ptr();
            for tile in g * TILES_PER_TASK..((g + 1) * TILES_PER_TASK).min(tiles) {
                let p0 = tile * MR;
                // SAFETY: AVX-512F checked in main; reads stay inside the
                // padded block (slack), writes inside this image's tiles.
                unsafe {
                    kernel_taps::<MR>(
                        c,
                        xi[p0 * CB..].as_ptr(),
                        xstride,
                        &offsets,
                        wptr,
                        yi.add(2 * o2 * ystride + p0 * CB),
                        yi.add((2 * o2 + 1) * ystride + p0 * CB),
                    )
                };
            }
        }
    });
    // Compact: drop the padding columns.
    y.par_chunks_mut(h * wd * CB)
        .enumerate()
        .for_each(|(blk, dst)| {
            let src = &yp[blk * ystride..];
            for yy in 0..h {
                dst[yy * wd * CB..(yy + 1) * wd * CB]
                    .copy_from_slice(&src[yy * wp * CB..][..wd * CB]);
            }
        });
}

#[derive(Clone, Copy)]
struct Ptr(*mut f32);
unsafe impl Send for Ptr {}
unsafe impl Sync for Ptr {}
impl Ptr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `y = W x` for `n` images in NCHW16c (`o` a multiple of 32).
fn conv1x1_nchwc(w: &[f32], x: &[f32], (n, c, o, hw): (usize, usize, usize, usize), y: &mut [f32]) {
    let (cb, ob) = (c.div_ceil(CB), o / CB);
    let tiles = hw.div_ceil(MR);
    // Tasks: (image, group of 4 pixel tiles); each runs every output pair
    // over its tiles, so its 56 pixels x C inputs stay in L1/L2.
    const TILES_PER_TASK: usize = 4;
    let groups = tiles.div_ceil(TILES_PER_TASK);
    let yp = Ptr(y.as_mut_ptr());
    (0..n * groups).into_par_iter().for_each(|t| {
        let (img, g) = (t / groups, t % groups);
        let xi = &x[img * cb * hw * CB..];
        let yi = unsafe { yp.get().add(img * ob * hw * CB) };
        for o2 in 0..o / 32 {
            let wp = w[o2 * c * 32..].as_ptr();
            for tile in g * TILES_PER_TASK..((g + 1) * TILES_PER_TASK).min(tiles) {
                let p0 = tile * MR;
                let rows = MR.min(hw - p0);
                let xp = xi[p0 * CB..].as_ptr();
                // SAFETY: pixel p0.. and blocks 2*o2, 2*o2+1 are inside y.
                let (y0, y1) = unsafe {
                    (
                        yi.add(((2 * o2) * hw + p0) * CB),
                        yi.add(((2 * o2 + 1) * hw + p0) * CB),
                    )
                };
                // SAFETY: AVX-512F checked in main; rows <= 14 in bounds.
                unsafe {
                    if rows == MR {
                        kernel_taps::<MR>(c, xp, hw * CB, &[0], wp, y0, y1)
                    } else {
                        // Edge tile: through a scratch row block.
                        let mut sx = vec![0f32; cb * MR * CB];
                        for b in 0..cb {
                            sx[b * MR * CB..b * MR * CB + rows * CB]
                                .copy_from_slice(&xi[(b * hw + p0) * CB..][..rows * CB]);
                        }
                        let mut s0 = [0f32; MR * CB];
                        let mut s1 = [0f32; MR * CB];
                        kernel_taps::<MR>(
                            c,
                            sx.as_ptr(),
                            MR * CB,
                            &[0],
                            wp,
                            s0.as_mut_ptr(),
                            s1.as_mut_ptr(),
                        );
                        std::ptr::copy_nonoverlapping(s0.as_ptr(), y0, rows * CB);
                        std::ptr::copy_nonoverlapping(s1.as_ptr(), y1, rows * CB);
                    }
                }
            }
        }
    });
}

fn main() {
    if !is_x86_feature_detected!("avx512f") {
        println!("nchwc_probe: needs AVX-512F");
        return;
    }
    runner::alloc::keep_freed_memory();
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    println!("threads: {threads}; GFLOP/s, best of 5 alternating rounds, 8 images per call");
    println!(
        "{:<30} {:>10} {:>10} {:>7}",
        "shape (C -> O @ HxW)", "runner", "NCHW16c", "ratio"
    );
    // Xception middle / exit, InceptionV3, EfficientNet-Lite0 1x1 shapes
    // (O a multiple of 32).
    for &(c, o, side) in &[
        (728usize, 736usize, 19usize),
        (1024, 1536, 10),
        (768, 192, 17),
        (288, 64, 35),
        (144, 32, 56),
        (40, 256, 28),
    ] {
        let (n, hw) = (8, side * side);
        let w = rand_vec(o * c, 1);
        let x = rand_vec(n * c * hw, 2);
        let flop = 2.0 * (n * o * c * hw) as f64;
        let reps = ((3e9 / flop) as usize).clamp(1, 200);
        // runner: PackedA + DenseB per image, NCHW.
        let pa = PackedA::best(MatRef { data: &w, ld: c }, o, c).expect("pack");
        let bs: Vec<DenseB> = x
            .chunks_exact(c * hw)
            .map(|xi| DenseB::new(MatRef { data: xi, ld: hw }, c, hw).expect("B"))
            .collect();
        let mut y_ref = vec![0f32; n * o * hw];
        // NCHW16c.
        let wn = pack_weights(&w, o, c);
        let xn: Vec<f32> = x
            .chunks_exact(c * hw)
            .flat_map(|xi| to_nchwc(xi, c, hw))
            .collect();
        let mut yn = vec![0f32; n * o * hw];
        let (mut t_ref, mut t_n, mut t_p) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
        let xb = nchwc::Blocked::from_nchw(&x, (n, c, side, side));
        let pk = nchwc::PackedConv::new(&w, &vec![0.0; o], o, c, (1, 1), 2);
        let args = nchwc::ConvArgs {
            stride: 1,
            pad: (0, 0, 0, 0),
            act: Clamp::NONE,
            residual: None,
        };
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                let out = Output::new(&mut y_ref, hw, o * hw);
                kernels::gemm_packed(&pa, &bs, out, None).expect("gemm");
            }
            t_ref = t_ref.min(t.elapsed().as_secs_f64() / reps as f64);
            let t = Instant::now();
            for _ in 0..reps {
                conv1x1_nchwc(&wn, &xn, (n, c, o, hw), &mut yn);
            }
            t_n = t_n.min(t.elapsed().as_secs_f64() / reps as f64);
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(nchwc::conv(&xb, &pk, args));
            }
            t_p = t_p.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        // Same numbers? Compare image 0, channel by channel.
        let mut max_diff = 0f32;
        for oc in 0..o {
            for p in 0..hw {
                let a = y_ref[oc * hw + p];
                let b = yn[((oc / CB) * hw + p) * CB + oc % CB];
                max_diff = max_diff.max((a - b).abs());
            }
        }
        let (g_ref, g_n) = (flop / t_ref / 1e9, flop / t_n / 1e9);
        let g_p = flop / t_p / 1e9;
        println!(
            "{:<30} {g_ref:>10.1} {g_n:>10.1} {:>6.2}x  (max |diff| {max_diff:.1e}); kernels::nchwc::conv {g_p:.1}",
            format!("{c} -> {o} @ {side}x{side}"),
            g_n / g_ref
        );
    }

    println!(
        "\n{:<30} {:>10} {:>10} {:>7}",
        "k x k shape (C -> O @ HxW)", "runner", "NCHW16c", "ratio"
    );
    for &(c, o, (kh, kw), side) in &[
        (64usize, 96usize, (3usize, 3usize), 35usize),
        (48, 64, (5, 5), 35),
        (96, 96, (3, 3), 35),
        (192, 192, (1, 7), 17),
        (192, 192, (7, 1), 17),
        (448, 384, (3, 3), 8),
    ] {
        let (n, hw) = (8, side * side);
        let w = rand_vec(o * c * kh * kw, 5);
        let x = rand_vec(n * c * hw, 6);
        let flop = 2.0 * (n * o * c * kh * kw * hw) as f64;
        let reps = ((3e9 / flop) as usize).clamp(1, 200);
        let cfg = Conv2dConfig {
            padding: Padding::Same,
            ..Conv2dConfig::default()
        };
        let w_oihw = Tensor::from_vec(w.clone(), (o, c, kh, kw), &Device::Cpu).expect("w");
        let conv = Conv2d::new(w_oihw, vec![0.0; o], cfg).expect("conv");
        let xt = Tensor::from_vec(x.clone(), (n, c, side, side), &Device::Cpu).expect("x");
        // [O/32][tap][C][32]
        let mut wn = vec![0f32; (o / 32) * kh * kw * c * 32];
        for oc in 0..o {
            for ic in 0..c {
                for tap in 0..kh * kw {
                    wn[(((oc / 32) * kh * kw + tap) * c + ic) * 32 + oc % 32] =
                        w[(oc * c + ic) * kh * kw + tap];
                }
            }
        }
        let xn: Vec<f32> = x
            .chunks_exact(c * hw)
            .flat_map(|xi| to_nchwc(xi, c, hw))
            .collect();
        let mut scratch = KxkScratch::default();
        let mut yn = vec![0f32; n * o * hw];
        let (mut t_ref, mut t_n) = (f64::INFINITY, f64::INFINITY);
        let mut y_ref = None;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                y_ref = Some(conv.forward(&xt).expect("forward"));
            }
            t_ref = t_ref.min(t.elapsed().as_secs_f64() / reps as f64);
            let t = Instant::now();
            for _ in 0..reps {
                let dims = (n, c, o, side, side);
                conv_kxk_nchwc(&wn, &xn, dims, (kh, kw), &mut scratch, &mut yn);
            }
            t_n = t_n.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        let y_ref: Vec<f32> = y_ref
            .and_then(|y| y.flatten_all().ok())
            .and_then(|y| y.to_vec1::<f32>().ok())
            .unwrap_or_default();
        let mut max_diff = 0f32;
        for oc in 0..o {
            for p in 0..hw {
                let b = yn[((oc / CB) * hw + p) * CB + oc % CB];
                max_diff = max_diff.max((y_ref[oc * hw + p] - b).abs());
            }
        }
        let (g_ref, g_n) = (flop / t_ref / 1e9, flop / t_n / 1e9);
        println!(
            "{:<30} {g_ref:>10.1} {g_n:>10.1} {:>6.2}x  (max |diff| {max_diff:.1e})",
            format!("{c} -> {o} {kh}x{kw} @ {side}x{side}"),
            g_n / g_ref
        );
    }
}
