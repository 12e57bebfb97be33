//! x86_64 micro-kernels for the GEMM ([`crate::gemm`]), chosen at run time
//! ([`crate::best`]).
//!
//! - `x86_64_avx512_sgemm_f32_14x32`: 14 rows x 2 zmm = 28 accumulators, two
//!   B loads and one broadcast per step (31 of the 32 zmm registers); 28
//!   independent chains keep two 512-bit FMA ports busy through the 4-cycle
//!   latency (96% of the FMA peak on L1-resident panels, `cargo bench --bench
//!   backbones -- peak`); column edges use AVX-512 masks.
//! - `x86_64_avx2_sgemm_f32_6x16`: the classic 6 x 2 ymm = 12 accumulators
//!   for CPUs with AVX2 + FMA only; column edges use `vmaskmovps`.
//!
//! Row edges run an instantiation with fewer rows (`R < MR`), so a 64-row
//! matrix costs 64 rows of FMAs, not 70.
//!
//! The AVX-512 intrinsics are stable since Rust 1.89, hence the crate's
//! `rust-version`.

use std::arch::x86_64::*;

use super::{MicroKernel, Tile};

const AVX512_MR: usize = 14;
const AVX512_NR: usize = 32;

/// `R` rows of the 14x32 tile.
///
/// # Safety
/// AVX-512F present; `a` holds `k * 14` floats (p-major), `b` `k * 32`;
/// the tile's `rows == R`, `cols <= 32`, and its memory is writable.
#[target_feature(enable = "avx512f")]
unsafe fn avx512_tile<const R: usize>(k: usize, a: *const f32, b: *const f32, t: &Tile) {
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (mut a, mut b) = (a, b);
    for _ in 0..k {
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(i));
            row[0] = _mm512_fmadd_ps(av, b0, row[0]);
            row[1] = _mm512_fmadd_ps(av, b1, row[1]);
        }
        a = a.add(AVX512_MR);
        b = b.add(AVX512_NR);
    }
    // Lane masks of the two vectors for `cols` valid columns.
    let m0: __mmask16 = if t.cols >= 16 {
        0xffff
    } else {
        (1u16 << t.cols) - 1
    };
    let m1: __mmask16 = if t.cols >= 32 {
        0xffff
    } else if t.cols > 16 {
        (1u16 << (t.cols - 16)) - 1
    } else {
        0
    };
    for (i, row) in acc.iter().enumerate() {
        let c = t.c.add(i * t.ldc);
        let (mut v0, mut v1) = (row[0], row[1]);
        if t.accumulate {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, c));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, c.add(16)));
        }
        _mm512_mask_storeu_ps(c, m0, v0);
        _mm512_mask_storeu_ps(c.add(16), m1, v1);
    }
}

/// # Safety
/// As [`avx512_tile`], with `1 <= t.rows <= 14`.
unsafe fn x86_64_avx512_sgemm_f32_14x32(k: usize, a: *const f32, b: *const f32, t: &Tile) {
    match t.rows {
        14 => avx512_tile::<14>(k, a, b, t),
        13 => avx512_tile::<13>(k, a, b, t),
        12 => avx512_tile::<12>(k, a, b, t),
        11 => avx512_tile::<11>(k, a, b, t),
        10 => avx512_tile::<10>(k, a, b, t),
        9 => avx512_tile::<9>(k, a, b, t),
        8 => avx512_tile::<8>(k, a, b, t),
        7 => avx512_tile::<7>(k, a, b, t),
        6 => avx512_tile::<6>(k, a, b, t),
        5 => avx512_tile::<5>(k, a, b, t),
        4 => avx512_tile::<4>(k, a, b, t),
        3 => avx512_tile::<3>(k, a, b, t),
        2 => avx512_tile::<2>(k, a, b, t),
        _ => avx512_tile::<1>(k, a, b, t),
    }
}

static AVX512_14X32: MicroKernel = MicroKernel {
    name: "x86_64_avx512_sgemm_f32_14x32",
    mr: AVX512_MR,
    nr: AVX512_NR,
    // An A slice of 512 x 14 x 4 B = 28 KiB stays in a 48 KiB L1d.
    kc: 512,
    nc: 16 * AVX512_NR,
    run: x86_64_avx512_sgemm_f32_14x32,
};

const AVX2_MR: usize = 6;
const AVX2_NR: usize = 16;

/// `vmaskmovps` mask: lanes `0..n` set.
#[target_feature(enable = "avx2")]
unsafe fn avx2_mask(n: usize) -> __m256i {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), idx)
}

/// `R` rows of the 6x16 tile.
///
/// # Safety
/// AVX2 and FMA present; `a` holds `k * 6` floats (p-major), `b` `k * 16`;
/// the tile's `rows == R`, `cols <= 16`, and its memory is writable.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_tile<const R: usize>(k: usize, a: *const f32, b: *const f32, t: &Tile) {
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let (mut a, mut b) = (a, b);
    for _ in 0..k {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (i, row) in acc.iter_mut().enumerate() {
            let av = _mm256_set1_ps(*a.add(i));
            row[0] = _mm256_fmadd_ps(av, b0, row[0]);
            row[1] = _mm256_fmadd_ps(av, b1, row[1]);
        }
        a = a.add(AVX2_MR);
        b = b.add(AVX2_NR);
    }
    let full = t.cols >= AVX2_NR;
    let m0 = avx2_mask(t.cols);
    let m1 = avx2_mask(t.cols.saturating_sub(8));
    for (i, row) in acc.iter().enumerate() {
        let c = t.c.add(i * t.ldc);
        let (mut v0, mut v1) = (row[0], row[1]);
        if full {
            if t.accumulate {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(c));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(c.add(8)));
            }
            _mm256_storeu_ps(c, v0);
            _mm256_storeu_ps(c.add(8), v1);
        } else {
            if t.accumulate {
                v0 = _mm256_add_ps(v0, _mm256_maskload_ps(c, m0));
                v1 = _mm256_add_ps(v1, _mm256_maskload_ps(c.add(8), m1));
            }
            _mm256_maskstore_ps(c, m0, v0);
            _mm256_maskstore_ps(c.add(8), m1, v1);
        }
    }
}

/// # Safety
/// As [`avx2_tile`], with `1 <= t.rows <= 6`.
unsafe fn x86_64_avx2_sgemm_f32_6x16(k: usize, a: *const f32, b: *const f32, t: &Tile) {
    match t.rows {
        6 => avx2_tile::<6>(k, a, b, t),
        5 => avx2_tile::<5>(k, a, b, t),
        4 => avx2_tile::<4>(k, a, b, t),
        3 => avx2_tile::<3>(k, a, b, t),
        2 => avx2_tile::<2>(k, a, b, t),
        _ => avx2_tile::<1>(k, a, b, t),
    }
}

static AVX2_6X16: MicroKernel = MicroKernel {
    name: "x86_64_avx2_sgemm_f32_6x16",
    mr: AVX2_MR,
    nr: AVX2_NR,
    kc: 256,
    nc: 16 * AVX2_NR,
    run: x86_64_avx2_sgemm_f32_6x16,
};

/// The kernels this CPU supports, best first.
pub fn available() -> Vec<&'static MicroKernel> {
    let mut v = Vec::new();
    if is_x86_feature_detected!("avx512f") {
        v.push(&AVX512_14X32);
    }
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        v.push(&AVX2_6X16);
    }
    v
}

/// The best kernel this CPU supports, if any beats the portable one.
pub fn best() -> Option<&'static MicroKernel> {
    available().into_iter().next()
}
