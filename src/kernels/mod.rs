//! Compute kernels of our own where candle's are slow: a single-precision
//! GEMM for the dense convolutions of the backbones.
//!
//! candle 0.11's f32 matmul (the `gemm` crate) reaches 30-50 GFLOP/s of the
//! ~200 GFLOP/s that two Zen 4 cores peak at, and ~13 GFLOP/s on InceptionV3's
//! narrow shapes (`DESIGN.md`); the convolutions spend most of their time there.
//!
//! Layout follows tract-linalg: [`generic`] holds the scalar reference every
//! SIMD path is tested against (and a portable micro-kernel), `x86_64` holds
//! the AVX-512 and AVX2+FMA micro-kernels, and [`best`] picks one once at run
//! time (cached; nothing is logged on the hot path, [`best`]`().name` says
//! which was chosen).
//!
//! The driver is BLIS-style, for row-major `C (m x n) = A (m x k) * B (k x n)`:
//! - each rayon task owns one `mc x nc` block of C (so results never depend on
//!   the thread count: `k` is never split across tasks and is always summed
//!   in order);
//! - inside a task, `k` runs in `kc` slices; the `B` slice (`kc x nc`, L2) is
//!   packed into `nr`-wide column panels, the `A` slice (`mc x kc`) into
//!   `mr`-tall row panels (one `mr x kc` panel, ~14 KiB, stays in L1 while the
//!   micro-kernel walks every `B` panel of the block);
//! - the micro-kernel keeps an `mr x nr` tile of C in registers and broadcasts
//!   one `A` value against `nr / lanes` vectors of `B` per step;
//! - edges: panels are zero-padded when packed, and the micro-kernel stores
//!   only the valid `rows x cols` of its tile (masked stores on x86_64);
//! - an optional epilogue runs on each finished block row while it is still in
//!   cache (the convolutions fuse bias, activation and residual there).

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

pub mod generic;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

/// Kernel input errors (the shapes do not fit the slices).
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("sgemm: matrix {name} ({rows} x {cols}, leading dimension {ld}) needs {need} floats, slice has {len}")]
    Shape {
        name: &'static str,
        rows: usize,
        cols: usize,
        ld: usize,
        need: usize,
        len: usize,
    },
}

/// `C (m x n) = A (m x k) * B (k x n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// A row-major matrix view: element `(i, j)` is `data[i * ld + j]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub ld: usize,
}

/// A mutable row-major matrix view.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub ld: usize,
}

/// One micro-kernel call's output: `rows x cols` (at most `mr x nr`) of C at
/// `c`, row stride `ldc`; `accumulate` adds to C instead of overwriting it.
pub struct Tile {
    pub c: *mut f32,
    pub ldc: usize,
    pub rows: usize,
    pub cols: usize,
    pub accumulate: bool,
}

/// A register-blocked micro-kernel and the cache blocking it was tuned with.
#[derive(Clone, Copy)]
pub struct MicroKernel {
    /// `{isa}_sgemm_f32_{mr}x{nr}`.
    pub name: &'static str,
    pub mr: usize,
    pub nr: usize,
    /// `k` slice per packed panel.
    pub kc: usize,
    /// Rows of C per task (a multiple of `mr`).
    pub mc: usize,
    /// Columns of C per task (a multiple of `nr`).
    pub nc: usize,
    /// `tile += A panel (kc x mr, packed p-major) * B panel (kc x nr)`.
    ///
    /// # Safety
    /// `a` holds `k * mr` floats, `b` `k * nr`, and the tile is writable;
    /// the CPU has the kernel's target features.
    pub run: unsafe fn(usize, *const f32, *const f32, &Tile),
}

impl std::fmt::Debug for MicroKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// The best micro-kernel this CPU runs, detected once.
pub fn best() -> &'static MicroKernel {
    static BEST: OnceLock<&'static MicroKernel> = OnceLock::new();
    BEST.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if let Some(k) = x86_64::best() {
            return k;
        }
        &generic::GENERIC_4X16
    })
}

/// Every micro-kernel this CPU can run (the tests compare each to the
/// reference).
pub fn available() -> Vec<&'static MicroKernel> {
    #[allow(unused_mut)]
    let mut v = vec![&generic::GENERIC_4X16];
    #[cfg(target_arch = "x86_64")]
    v.extend(x86_64::available());
    v
}

fn check(
    name: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    ld: usize,
) -> Result<(), KernelError> {
    let need = if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * ld + cols
    };
    if ld < cols || len < need {
        return Err(KernelError::Shape {
            name,
            rows,
            cols,
            ld,
            need,
            len,
        });
    }
    Ok(())
}

/// Row epilogue: called once per finished row segment of C as
/// `(row, first column, values)`.
pub type Epilogue<'e> = &'e (dyn Fn(usize, usize, &mut [f32]) + Sync);

/// `C = A * B` (`accumulate`: `C += A * B`) with the best kernel, in parallel
/// on the global rayon pool.
pub fn sgemm(
    s: GemmShape,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
) -> Result<(), KernelError> {
    sgemm_with(best(), s, a, b, c, accumulate, None)
}

/// [`sgemm`] that also runs `epilogue` on every row segment of C once it
/// holds its final value (while the block is still in cache).
pub fn sgemm_fused(
    s: GemmShape,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Epilogue<'_>,
) -> Result<(), KernelError> {
    sgemm_with(best(), s, a, b, c, accumulate, Some(epilogue))
}

/// C's base pointer, shared by tasks that write disjoint blocks.
#[derive(Clone, Copy)]
struct SharedC(*mut f32);
// SAFETY: every task writes a disjoint block of C (see `sgemm_with`).
unsafe impl Send for SharedC {}
unsafe impl Sync for SharedC {}

impl SharedC {
    /// A method (not `.0`) so that closures capture the whole `Sync` wrapper,
    /// not the raw pointer field (edition 2021 disjoint captures).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    /// Packing buffers, reused across calls on each worker thread.
    static PACK: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Floats of padding so that a buffer can start on a 64-byte boundary.
const ALIGN_F32: usize = 16;

fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len + ALIGN_F32 {
        buf.resize(len + ALIGN_F32, 0.0);
    }
    let off = buf.as_ptr().align_offset(64).min(ALIGN_F32);
    &mut buf[off..off + len]
}

/// [`sgemm`] with an explicit micro-kernel (one of [`available`]).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with(
    kern: &MicroKernel,
    s: GemmShape,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Option<Epilogue<'_>>,
) -> Result<(), KernelError> {
    check("A", a.data.len(), s.m, s.k, a.ld)?;
    check("B", b.data.len(), s.k, s.n, b.ld)?;
    check("C", c.data.len(), s.m, s.n, c.ld)?;
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    let (mr, nr) = (kern.mr, kern.nr);
    let mc = kern.mc;
    // Enough tasks for the pool: narrow the column blocks first (the B
    // packing they repeat is cheap), never below 4 panels.
    let threads = rayon::current_num_threads();
    let m_blocks = s.m.div_ceil(mc);
    let mut nc = kern.nc;
    while nc > 4 * nr && m_blocks * s.n.div_ceil(nc) < 2 * threads {
        nc = (nc / 2).div_ceil(nr) * nr;
    }
    let n_blocks = s.n.div_ceil(nc);
    let ldc = c.ld;
    let cp = SharedC(c.data.as_mut_ptr());
    let task = |t: usize| {
        let c0 = cp.ptr();
        let (ib, jb) = (t / n_blocks, t % n_blocks);
        let (i0, j0) = (ib * mc, jb * nc);
        let (mb, nb) = (mc.min(s.m - i0), nc.min(s.n - j0));
        let (mut pa_buf, mut pb_buf) = PACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
        let kc = kern.kc.min(s.k.max(1));
        let pa = aligned(&mut pa_buf, mb.div_ceil(mr) * mr * kc);
        let pb = aligned(&mut pb_buf, nb.div_ceil(nr) * nr * kc);
        if s.k == 0 && !accumulate {
            for i in 0..mb {
                // SAFETY: row i0+i, columns j0..j0+nb lie inside C (checked).
                unsafe { std::slice::from_raw_parts_mut(c0.add((i0 + i) * ldc + j0), nb) }
                    .fill(0.0);
            }
        }
        let mut p0 = 0;
        while p0 < s.k {
            let kb = kc.min(s.k - p0);
            pack_b(b, p0, kb, j0, nb, nr, pb);
            pack_a(a, i0, mb, p0, kb, mr, pa);
            for (ir, ap) in pa.chunks_exact(mr * kb).take(mb.div_ceil(mr)).enumerate() {
                let rows = mr.min(mb - ir * mr);
                for (jr, bp) in pb.chunks_exact(nr * kb).take(nb.div_ceil(nr)).enumerate() {
                    let tile = Tile {
                        // SAFETY: inside C: rows i0+ir*mr.., columns j0+jr*nr..
                        c: unsafe { c0.add((i0 + ir * mr) * ldc + j0 + jr * nr) },
                        ldc,
                        rows,
                        cols: nr.min(nb - jr * nr),
                        accumulate: accumulate || p0 > 0,
                    };
                    // SAFETY: panels hold kb*mr / kb*nr floats; the kernel was
                    // chosen by feature detection; the tile is this task's.
                    unsafe { (kern.run)(kb, ap.as_ptr(), bp.as_ptr(), &tile) };
                }
            }
            p0 += kb;
        }
        PACK.with(|p| *p.borrow_mut() = (pa_buf, pb_buf));
        if let Some(epi) = epilogue {
            for i in i0..i0 + mb {
                // SAFETY: this task's block; no other task touches it.
                let row = unsafe { std::slice::from_raw_parts_mut(c0.add(i * ldc + j0), nb) };
                epi(i, j0, row);
            }
        }
    };
    let tasks = m_blocks * n_blocks;
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
    Ok(())
}

/// Packs rows `i0..i0+mb`, columns `p0..p0+kb` of A into `mr`-tall panels,
/// each stored `p`-major (`panel[p * mr + i]`), zero-padded to `mr` rows.
fn pack_a(a: MatRef<'_>, i0: usize, mb: usize, p0: usize, kb: usize, mr: usize, out: &mut [f32]) {
    for (ir, panel) in out
        .chunks_exact_mut(mr * kb)
        .take(mb.div_ceil(mr))
        .enumerate()
    {
        let rows = mr.min(mb - ir * mr);
        for i in 0..rows {
            let src = &a.data[(i0 + ir * mr + i) * a.ld + p0..][..kb];
            for (p, &v) in src.iter().enumerate() {
                panel[p * mr + i] = v;
            }
        }
        if rows < mr {
            for p in 0..kb {
                panel[p * mr + rows..(p + 1) * mr].fill(0.0);
            }
        }
    }
}

/// Packs rows `p0..p0+kb`, columns `j0..j0+nb` of B into `nr`-wide panels,
/// each stored row by row (`panel[p * nr + j]`), zero-padded to `nr` columns.
fn pack_b(b: MatRef<'_>, p0: usize, kb: usize, j0: usize, nb: usize, nr: usize, out: &mut [f32]) {
    for (jr, panel) in out
        .chunks_exact_mut(nr * kb)
        .take(nb.div_ceil(nr))
        .enumerate()
    {
        let cols = nr.min(nb - jr * nr);
        for (p, dst) in panel.chunks_exact_mut(nr).enumerate() {
            let src = &b.data[(p0 + p) * b.ld + j0 + jr * nr..][..cols];
            dst[..cols].copy_from_slice(src);
            dst[cols..].fill(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::train::rng::uniform_vec as rand_vec;

    /// Tolerance: `|ours - ref| <= 1e-5 * sum_p |a_ip * b_pj| + 1e-30`. Both
    /// sum in `k` order; they differ only by fused vs separate rounding of
    /// each multiply-add, far below this bound (k * 2^-24 < 1e-5 for k <= 167;
    /// the errors are random-signed, so it holds for the real shapes too).
    fn compare(
        kern: &MicroKernel,
        s: GemmShape,
        pad: (usize, usize, usize),
        accumulate: bool,
        seed: u64,
    ) {
        let (lda, ldb, ldc) = (s.k + pad.0, s.n + pad.1, s.n + pad.2);
        let a = rand_vec(s.m * lda, seed);
        let b = rand_vec(s.k * ldb, seed + 1);
        let c0 = rand_vec(s.m * ldc, seed + 2);
        let mut want = c0.clone();
        generic::generic_sgemm_f32(
            s,
            MatRef { data: &a, ld: lda },
            MatRef { data: &b, ld: ldb },
            MatMut {
                data: &mut want,
                ld: ldc,
            },
            accumulate,
        );
        let mut got = c0.clone();
        sgemm_with(
            kern,
            s,
            MatRef { data: &a, ld: lda },
            MatRef { data: &b, ld: ldb },
            MatMut {
                data: &mut got,
                ld: ldc,
            },
            accumulate,
            None,
        )
        .expect("shapes");
        for i in 0..s.m {
            for j in 0..s.n {
                let mag: f32 = (0..s.k)
                    .map(|p| (a[i * lda + p] * b[p * ldb + j]).abs())
                    .sum::<f32>()
                    + if accumulate {
                        c0[i * ldc + j].abs()
                    } else {
                        0.0
                    };
                let (g, w) = (got[i * ldc + j], want[i * ldc + j]);
                assert!(
                    (g - w).abs() <= 1e-5 * mag + 1e-30,
                    "{}: {s:?} acc {accumulate} at ({i}, {j}): {g} vs {w}",
                    kern.name
                );
            }
            // Padding columns of C are never written.
            for j in s.n..ldc {
                assert_eq!(got[i * ldc + j], c0[i * ldc + j], "{}: padding", kern.name);
            }
        }
    }

    #[test]
    fn every_kernel_matches_generic_on_random_shapes() {
        let kernels = available();
        println!("kernels: {:?}, best {:?}", kernels, best());
        let mut seed = 1u64;
        for kern in &kernels {
            for _ in 0..150 {
                let r = rand_vec(7, seed);
                let dim = |v: f32| 1 + ((v + 1.0) * 35.0) as usize % 70;
                let s = GemmShape {
                    m: dim(r[0]),
                    n: dim(r[1]),
                    k: dim(r[2]),
                };
                let pad = |v: f32| ((v + 1.0) * 2.0) as usize;
                compare(kern, s, (pad(r[3]), pad(r[4]), pad(r[5])), r[6] > 0.0, seed);
                seed += 3;
            }
        }
    }

    #[test]
    fn every_kernel_matches_generic_on_edges_and_real_shapes() {
        #[rustfmt::skip]
        let shapes = [
            (1, 1, 1), (1, 70, 1), (70, 1, 70), (13, 31, 1), (15, 33, 2), (14, 32, 257),
            (29, 65, 513), (3, 5, 0),
            // Real convolution GEMMs (m = Cout, n = OH*OW, k = Cin*kh*kw), cut
            // in n where the full plane would make the reference too slow.
            (64, 300, 288),   // Xception block1_conv2 3x3 32->64
            (728, 361, 728),  // Xception middle flow 1x1 at 19x19
            (192, 289, 1344), // InceptionV3 1x7 192 at 17x17 (k = 192*7)
            (24, 784, 144),   // EfficientNet-Lite0 1x1 144->24 at 28x28
            (1280, 49, 320),  // EfficientNet-Lite0 head 1x1 at 7x7
        ];
        for kern in available() {
            for (i, &(m, n, k)) in shapes.iter().enumerate() {
                for acc in [false, true] {
                    compare(kern, GemmShape { m, n, k }, (1, 3, 2), acc, 1000 + i as u64);
                }
            }
        }
    }

    #[test]
    fn epilogue_sees_every_element_after_the_gemm() {
        let s = GemmShape {
            m: 37,
            n: 300,
            k: 600,
        };
        let a = rand_vec(s.m * s.k, 5);
        let b = rand_vec(s.k * s.n, 6);
        let mut want = vec![0f32; s.m * s.n];
        generic::generic_sgemm_f32(
            s,
            MatRef { data: &a, ld: s.k },
            MatRef { data: &b, ld: s.n },
            MatMut {
                data: &mut want,
                ld: s.n,
            },
            false,
        );
        let mut got = vec![f32::NAN; s.m * s.n];
        let epi = |i: usize, j0: usize, row: &mut [f32]| {
            for (j, v) in row.iter_mut().enumerate() {
                // Marks each element with its coordinates, kept to compare.
                *v = *v * 0.0 + (i * 1000 + j0 + j) as f32;
            }
        };
        sgemm_fused(
            s,
            MatRef { data: &a, ld: s.k },
            MatRef { data: &b, ld: s.n },
            MatMut {
                data: &mut got,
                ld: s.n,
            },
            false,
            &epi,
        )
        .expect("shapes");
        for i in 0..s.m {
            for j in 0..s.n {
                assert_eq!(got[i * s.n + j], (i * 1000 + j) as f32);
            }
        }
    }

    #[test]
    fn short_slices_are_an_error() {
        let a = vec![0f32; 5];
        let mut c = vec![0f32; 4];
        let r = sgemm(
            GemmShape { m: 2, n: 2, k: 3 },
            MatRef { data: &a, ld: 3 },
            MatRef { data: &a, ld: 2 },
            MatMut {
                data: &mut c,
                ld: 2,
            },
            false,
        );
        assert!(matches!(r, Err(KernelError::Shape { name: "A", .. })));
    }
}
