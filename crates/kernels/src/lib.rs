//! Compute kernels of our own where candle's are slow: a single-precision
//! GEMM for the dense convolutions of the backbones ([`gemm_packed`],
//! [`im2col`]) and sliding-window kernels for depthwise convolution and
//! pooling ([`window`]).
//!
//! candle 0.11's f32 matmul (the `gemm` crate) reaches 30-50 GFLOP/s on
//! these machines and ~13 GFLOP/s on InceptionV3's narrow shapes
//! (`DESIGN.md`); ours runs the same shapes at 150-275 GFLOP/s on two cores
//! (`BENCHMARKS.md`).
//!
//! Layout follows tract-linalg: [`generic`] holds the scalar reference every
//! SIMD path is tested against (and a portable micro-kernel), `x86_64` holds
//! the AVX-512 and AVX2+FMA micro-kernels, and [`best`] picks one once at run
//! time (cached; nothing is logged on the hot path, [`best`]`().name` says
//! which was chosen).
//!
//! The driver is BLIS-style, for row-major `C (m x n) = A (m x k) * B (k x n)`
//! per image:
//! - `A` (the convolution's weights) is packed once, at load, into `mr`-tall
//!   row panels in `k` slices of `kc` ([`PackedA`]);
//! - each rayon task owns one block of one image's C: a group of `A` panels
//!   by `nb` columns, `nb` as wide as fits the packed `B` block (`k x nb`) in
//!   L2; it packs that block once ([`PackB`]: a dense matrix, or a
//!   convolution input through an implicit im2col) and runs every `A` panel
//!   against every `B` panel of it. `k` is never split across tasks and is
//!   always summed in order, so results never depend on the thread count;
//! - the micro-kernel keeps an `mr x nr` tile of C in registers and broadcasts
//!   one `A` value against `nr / lanes` vectors of `B` per step;
//! - edges: panels are zero-padded when packed, and the micro-kernel stores
//!   only the valid `rows x cols` of its tile (masked stores on x86_64);
//! - an optional epilogue runs on each finished row of the block while it is
//!   still in cache (the convolutions fuse bias, activation and residual
//!   there).

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

pub use im2col::Im2Col;
pub use window::{Act, Clamp};

pub mod generic;
pub mod im2col;
pub mod nchwc;
pub mod rng;
pub mod window;
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
    /// `k` slice per micro-kernel call: an `A` panel slice (`kc x mr`) and a
    /// `B` panel slice (`kc x nr`) fit in L1 together.
    pub kc: usize,
    /// Most columns of C per task (a multiple of `nr`).
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

/// Batched row epilogue: `(image, row, first column, values)`.
pub type BatchEpilogue<'e> = &'e (dyn Fn(usize, usize, usize, &mut [f32]) + Sync);

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

/// [`sgemm`] with an explicit micro-kernel (one of [`available`]); packs `A`
/// on every call (the convolutions pack their weights once, [`PackedA`]).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_with(
    kern: &'static MicroKernel,
    s: GemmShape,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Option<Epilogue<'_>>,
) -> Result<(), KernelError> {
    let packed = PackedA::new(kern, a, s.m, s.k)?;
    let b = DenseB::new(b, s.k, s.n)?;
    let ld = c.ld;
    let out = Output {
        data: c.data,
        ld,
        image_stride: 0,
        accumulate,
    };
    match epilogue {
        Some(e) => gemm_packed(
            &packed,
            std::slice::from_ref(&b),
            out,
            Some(&|_, i, j, v| e(i, j, v)),
        ),
        None => gemm_packed(&packed, std::slice::from_ref(&b), out, None),
    }
}

/// C's base pointer, shared by tasks that write disjoint blocks.
#[derive(Clone, Copy)]
struct SharedC(*mut f32);
// SAFETY: every task writes a disjoint block of C (see `gemm_packed`).
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
    /// Packing buffer for B, reused across calls on each worker thread.
    static PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
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

/// `A (m x k)` packed once for one micro-kernel: `k` cut into slices of
/// `kc`, each holding `ceil(m / mr)` panels of `kb x mr` stored `p`-major
/// (`panel[p * mr + i]`), zero-padded to `mr` rows. The convolutions pack their weights at load, so a forward pass packs
/// only its activations.
pub struct PackedA {
    kern: &'static MicroKernel,
    m: usize,
    k: usize,
    /// The `k` slice the panels were packed in.
    kc: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedA {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedA({} x {}, {})", self.m, self.k, self.kern.name)
    }
}

impl PackedA {
    pub fn new(
        kern: &'static MicroKernel,
        a: MatRef<'_>,
        m: usize,
        k: usize,
    ) -> Result<Self, KernelError> {
        check("A", a.data.len(), m, k, a.ld)?;
        Ok(Self::pack(kern, m, k, |p, rows, out| {
            out.extend(rows.map(|i| a.data[i * a.ld + p]));
        }))
    }

    /// Packs the `m x k` matrix `A` given as its transpose `at` (`k x m`,
    /// row-major): the same panels as [`PackedA::new`] on `A`. Reading `Aᵀ`
    /// is the cheap direction for the panels (row `p` of `at` fills `mr`
    /// consecutive floats of each panel), so a GEMM with `Aᵀ` as its left
    /// operand (`Xᵀ G`, a dense layer's weight gradient) needs no transpose.
    pub fn new_transposed(
        kern: &'static MicroKernel,
        at: MatRef<'_>,
        m: usize,
        k: usize,
    ) -> Result<Self, KernelError> {
        check("A^T", at.data.len(), k, m, at.ld)?;
        Ok(Self::pack(kern, m, k, |p, rows, out| {
            out.extend_from_slice(&at.data[p * at.ld + rows.start..p * at.ld + rows.end]);
        }))
    }

    /// Writes the panels in storage order (k slice, panel, p, row):
    /// sequential stores and no zero-fill pass. `column(p, rows, out)`
    /// appends `A[i][p]` for `i` in `rows` (at most `mr` of them); the
    /// panel's padding rows are zeroed here.
    fn pack(
        kern: &'static MicroKernel,
        m: usize,
        k: usize,
        mut column: impl FnMut(usize, std::ops::Range<usize>, &mut Vec<f32>),
    ) -> Self {
        let (mr, kc) = (kern.mr, tuning().kc.unwrap_or(kern.kc).max(1));
        let m_pad = m.div_ceil(mr) * mr;
        let mut data = Vec::with_capacity(m_pad * k);
        for s0 in (0..k).step_by(kc) {
            let kb = kc.min(k - s0);
            for i0 in (0..m).step_by(mr) {
                let rows = mr.min(m - i0);
                for p in s0..s0 + kb {
                    column(p, i0..i0 + rows, &mut data);
                    data.extend(std::iter::repeat_n(0.0, mr - rows));
                }
            }
        }
        Self {
            kern,
            m,
            k,
            kc,
            data,
        }
    }

    /// With the best kernel for this CPU.
    pub fn best(a: MatRef<'_>, m: usize, k: usize) -> Result<Self, KernelError> {
        Self::new(best(), a, m, k)
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    /// The `m x k` row-major matrix this was packed from (to re-pack the
    /// same weights for another layout, e.g. [`nchwc::Packed1x1`]).
    pub fn to_row_major(&self) -> Vec<f32> {
        let (mr, kc, k) = (self.kern.mr, self.kc, self.k);
        let m_pad = self.m.div_ceil(mr) * mr;
        let mut a = vec![0f32; self.m * k];
        for i in 0..self.m {
            let (ir, r) = (i / mr, i % mr);
            for (p, v) in a[i * k..(i + 1) * k].iter_mut().enumerate() {
                let (s, q) = (p / kc, p % kc);
                let kb = kc.min(k - s * kc);
                *v = self.data[s * kc * m_pad + ir * kb * mr + q * mr + r];
            }
        }
        a
    }

    pub fn depth(&self) -> usize {
        self.k
    }

    /// Panel `ir` of the `k` slice starting at `p0` (a multiple of `kc`),
    /// `kb` deep.
    fn panel(&self, p0: usize, kb: usize, ir: usize) -> *const f32 {
        let m_pad = self.m.div_ceil(self.kern.mr) * self.kern.mr;
        self.data[p0 * m_pad + ir * kb * self.kern.mr..].as_ptr()
    }
}

/// A `k x n` right-hand side that packs itself into the micro-kernel's
/// `nr`-wide panels: a dense matrix ([`DenseB`]), or a convolution's input
/// read through an implicit im2col ([`Im2Col`]) so the column matrix is never
/// built.
pub trait PackB: Sync {
    fn k(&self) -> usize;
    fn n(&self) -> usize;
    /// Packs columns `j0..j0+nb`, all `k` rows, into `nr`-wide panels, each
    /// `k x nr` row by row (`panel[p * nr + j]`), zero-padded to `nr`
    /// columns; `out` holds `ceil(nb / nr) * nr * k` floats.
    fn pack(&self, j0: usize, nb: usize, nr: usize, out: &mut [f32]);
}

/// A dense row-major `k x n` matrix as a [`PackB`].
#[derive(Debug, Clone, Copy)]
pub struct DenseB<'a> {
    b: MatRef<'a>,
    k: usize,
    n: usize,
}

impl<'a> DenseB<'a> {
    pub fn new(b: MatRef<'a>, k: usize, n: usize) -> Result<Self, KernelError> {
        check("B", b.data.len(), k, n, b.ld)?;
        Ok(Self { b, k, n })
    }
}

impl PackB for DenseB<'_> {
    fn k(&self) -> usize {
        self.k
    }
    fn n(&self) -> usize {
        self.n
    }
    fn pack(&self, j0: usize, nb: usize, nr: usize, out: &mut [f32]) {
        let k = self.k;
        for jr in 0..nb.div_ceil(nr) {
            let cols = nr.min(nb - jr * nr);
            let panel = &mut out[jr * nr * k..(jr + 1) * nr * k];
            for (p, dst) in panel.chunks_exact_mut(nr).enumerate() {
                let src = &self.b.data[p * self.b.ld + j0 + jr * nr..][..cols];
                im2col::copy_run(&mut dst[..cols], src);
                dst[cols..].fill(0.0);
            }
        }
    }
}

/// Where a batched GEMM writes: image `t`'s `C` starts at
/// `data[t * image_stride]`, rows `ld` apart.
#[derive(Debug)]
pub struct Output<'a> {
    pub data: &'a mut [f32],
    pub ld: usize,
    pub image_stride: usize,
    /// `C += A * B` instead of `C = A * B`.
    pub accumulate: bool,
}

/// Blocking overrides for benchmarks (`cargo bench --bench backbones --
/// tune`): `None` keeps the kernel's defaults. Not for production use: set
/// it before packing any weights.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    pub kc: Option<usize>,
    pub nc: Option<usize>,
    pub b_block_floats: Option<usize>,
}

static TUNING: std::sync::Mutex<Tuning> = std::sync::Mutex::new(Tuning {
    kc: None,
    nc: None,
    b_block_floats: None,
});

#[doc(hidden)]
pub fn set_tuning(t: Tuning) {
    *TUNING.lock().unwrap_or_else(|e| e.into_inner()) = t;
}

fn tuning() -> Tuning {
    *TUNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Floats of packed `B` one task keeps (~1 MiB: half of a 2 MiB L2, which
/// also holds the `A` panel being streamed).
const B_BLOCK_FLOATS: usize = 256 * 1024;

/// `C_t = A * B_t` for every image `t` of `bs`, with the kernel `a` was packed
/// for, in parallel on the global rayon pool.
///
/// Each task owns one block of one image's `C`: all rows of a group of `A`
/// panels by `nb` columns, where `nb` is as wide as fits `k x nb` of packed
/// `B` in L2 (so `B` is packed once per block, and `k` is never split: no
/// partial sums go back to memory and results do not depend on the thread
/// count). Inside a task, each `A` panel (`k x mr`, streamed from L2) runs
/// against every `B` panel of the block, then `epilogue` runs on its rows
/// while they are still in cache.
pub fn gemm_packed<B: PackB>(
    a: &PackedA,
    bs: &[B],
    c: Output<'_>,
    epilogue: Option<BatchEpilogue<'_>>,
) -> Result<(), KernelError> {
    let kern = a.kern;
    let (m, k) = (a.m, a.k);
    let Some(n) = bs.first().map(|b| b.n()) else {
        return Ok(());
    };
    if let Some(b) = bs.iter().find(|b| b.k() != k || b.n() != n) {
        return Err(KernelError::Shape {
            name: "B",
            rows: b.k(),
            cols: b.n(),
            ld: n,
            need: k * n,
            len: b.k() * b.n(),
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let images = bs.len();
    let need = (images - 1) * c.image_stride + (m - 1) * c.ld + n;
    if c.ld < n || c.data.len() < need {
        return Err(KernelError::Shape {
            name: "C",
            rows: m,
            cols: n,
            ld: c.ld,
            need,
            len: c.data.len(),
        });
    }
    let (mr, nr) = (kern.mr, kern.nr);
    let m_panels = m.div_ceil(mr);
    // Column blocks as wide as fit, then evened out (361 columns run as
    // 2 x 192, not 352 + 9, so both tasks do as much work).
    let t = tuning();
    let budget = t.b_block_floats.unwrap_or(B_BLOCK_FLOATS);
    let nb_max = (budget / k.max(1) / nr * nr).clamp(nr, t.nc.unwrap_or(kern.nc));
    let n_blocks = n.div_ceil(nb_max);
    let nb = n.div_ceil(n_blocks).div_ceil(nr) * nr;
    // Enough tasks for the pool: split the rows into groups of panels only
    // when images x column blocks are too few (each group repacks its B).
    let threads = rayon::current_num_threads();
    let mut m_groups = 1;
    while images * n_blocks * m_groups < 2 * threads && m_groups < m_panels {
        m_groups += 1;
    }
    let group = m_panels.div_ceil(m_groups);
    let m_groups = m_panels.div_ceil(group);
    let (ldc, stride, accumulate) = (c.ld, c.image_stride, c.accumulate);
    let cp = SharedC(c.data.as_mut_ptr());
    let task = |t: usize| {
        let c0 = cp.ptr();
        let (img, rest) = (t / (n_blocks * m_groups), t % (n_blocks * m_groups));
        let (jb, mg) = (rest / m_groups, rest % m_groups);
        let j0 = jb * nb;
        let cols_b = nb.min(n - j0);
        let b_panels = cols_b.div_ceil(nr);
        let mut buf = PACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
        let pb = aligned(&mut buf, b_panels * nr * k);
        bs[img].pack(j0, cols_b, nr, pb);
        // SAFETY: image img's C lies inside `data` (checked above).
        let ci = unsafe { c0.add(img * stride) };
        let panels = mg * group..((mg + 1) * group).min(m_panels);
        // k in slices of kc: one A panel slice (kc x mr) stays in L1 while
        // the B panel slices (kc x nr each) stream from L2.
        let mut p0 = 0;
        loop {
            let kb = a.kc.min(k - p0);
            let last = p0 + kb >= k;
            for ir in panels.clone() {
                let rows = mr.min(m - ir * mr);
                let ap = a.panel(p0, kb, ir);
                for jr in 0..b_panels {
                    let tile = Tile {
                        // SAFETY: rows ir*mr.., columns j0+jr*nr.. are inside C.
                        c: unsafe { ci.add(ir * mr * ldc + j0 + jr * nr) },
                        ldc,
                        rows,
                        cols: nr.min(cols_b - jr * nr),
                        accumulate: accumulate || p0 > 0,
                    };
                    // SAFETY: the A panel slice holds kb*mr floats; B panel
                    // jr holds k*nr floats from which rows p0..p0+kb are
                    // read (`pb` is b_panels*nr*k long); the kernel was
                    // chosen by feature detection; the tile is this task's.
                    unsafe { (kern.run)(kb, ap, pb.as_ptr().add(jr * nr * k + p0 * nr), &tile) };
                }
                if last {
                    if let Some(epi) = epilogue {
                        for i in ir * mr..ir * mr + rows {
                            // SAFETY: this task's block; no other task touches it.
                            let row = unsafe {
                                std::slice::from_raw_parts_mut(ci.add(i * ldc + j0), cols_b)
                            };
                            epi(img, i, j0, row);
                        }
                    }
                }
            }
            p0 += kb;
            if last {
                break;
            }
        }
        PACK.with(|p| *p.borrow_mut() = buf);
    };
    let tasks = images * n_blocks * m_groups;
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::rng::uniform_vec as rand_vec;

    /// Tolerance: `|ours - ref| <= 1e-5 * sum_p |a_ip * b_pj| + 1e-30`. Both
    /// sum in `k` order; they differ only by fused vs separate rounding of
    /// each multiply-add, far below this bound (k * 2^-24 < 1e-5 for k <= 167;
    /// the errors are random-signed, so it holds for the real shapes too).
    fn compare(
        kern: &'static MicroKernel,
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
    fn packed_a_unpacks_to_what_it_was_packed_from() {
        for kern in available() {
            for (m, k) in [(1, 1), (15, 3), (40, 1300), (728, 728)] {
                let a = rand_vec(m * k, (m * k) as u64);
                let p = PackedA::new(kern, MatRef { data: &a, ld: k }, m, k).unwrap();
                assert_eq!(p.to_row_major(), a, "{} {m}x{k}", kern.name);
            }
        }
    }

    #[test]
    fn packing_a_transpose_gives_the_panels_of_a() {
        for kern in available() {
            // Edges: one row, rows not a multiple of mr, k across kc slices.
            for (m, k) in [(1, 1), (15, 3), (40, 1300), (4096, 7)] {
                let a = rand_vec(m * k, (m + k) as u64);
                let at: Vec<f32> = (0..k * m).map(|j| a[(j % m) * k + j / m]).collect();
                let want = PackedA::new(kern, MatRef { data: &a, ld: k }, m, k).unwrap();
                let got = PackedA::new_transposed(kern, MatRef { data: &at, ld: m }, m, k);
                assert_eq!(got.unwrap().data, want.data, "{} {m}x{k}", kern.name);
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
