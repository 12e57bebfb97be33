//! Portable reference kernels: simple loops that are obviously correct. Every
//! SIMD path is property-tested against these, and the portable micro-kernel
//! here is the fallback on CPUs without a native one.

use super::{GemmShape, MatMut, MatRef, MicroKernel, Tile};

/// Reference `C = A * B` (or `C += A * B`): one dot product per element,
/// summed in `k` order as the packed kernels do.
pub fn generic_sgemm_f32(
    s: GemmShape,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
) {
    for i in 0..s.m {
        for j in 0..s.n {
            let mut acc = if accumulate {
                c.data[i * c.ld + j]
            } else {
                0.0
            };
            for p in 0..s.k {
                acc += a.data[i * a.ld + p] * b.data[p * b.ld + j];
            }
            c.data[i * c.ld + j] = acc;
        }
    }
}

const MR: usize = 4;
const NR: usize = 16;

/// Portable 4x16 micro-kernel over packed panels (fixed-size arrays, which
/// LLVM vectorises with whatever SIMD the target baseline has).
///
/// # Safety
/// `a` holds `k * MR` and `b` `k * NR` floats; `t` describes a writable tile.
unsafe fn generic_sgemm_f32_4x16(k: usize, a: *const f32, b: *const f32, t: &Tile) {
    let mut acc = [[0f32; NR]; MR];
    for p in 0..k {
        let bp = std::slice::from_raw_parts(b.add(p * NR), NR);
        let ap = std::slice::from_raw_parts(a.add(p * MR), MR);
        for (row, &av) in acc.iter_mut().zip(ap) {
            for (c, &bv) in row.iter_mut().zip(bp) {
                *c += av * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(t.rows) {
        let cr = std::slice::from_raw_parts_mut(t.c.add(i * t.ldc), t.cols);
        for (c, &v) in cr.iter_mut().zip(row) {
            *c = if t.accumulate { *c + v } else { v };
        }
    }
}

/// The portable micro-kernel and its blocking.
pub(crate) static GENERIC_4X16: MicroKernel = MicroKernel {
    name: "generic_sgemm_f32_4x16",
    mr: MR,
    nr: NR,
    kc: 256,
    nc: 256,
    run: generic_sgemm_f32_4x16,
};
