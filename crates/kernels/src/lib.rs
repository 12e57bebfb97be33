//! CPU compute kernels of our own where candle's are slow. Nothing here
//! knows about tensors, graphs or models: every kernel takes slices and
//! shapes.
//!
//! Where to find what:
//! - [`gemm`]: the single-precision GEMM driver ([`gemm_packed`], [`sgemm`])
//!   behind every dense convolution and the dense heads; [`pack`]: its
//!   operands in panel layout ([`PackedA`], [`PackB`], [`DenseB`]);
//!   [`im2col`]: a convolution's input as the GEMM's right-hand side, packed
//!   straight from the image ([`Im2Col`]).
//! - [`generic`]: the scalar reference every SIMD path is tested against,
//!   and the portable micro-kernel; `x86_64`: the AVX-512 and AVX2+FMA
//!   micro-kernels. [`best`] picks one once at run time (cached;
//!   [`best`]`().name` says which).
//! - [`window`]: sliding-window kernels on NCHW planes (depthwise
//!   convolution, max and average pooling) and the fused activations
//!   ([`Act`], [`Clamp`]).
//! - [`nchwc`]: the NCHW16c layout and its AVX-512 kernels (1x1
//!   convolution, depthwise convolution, max pooling).
//! - [`rng`]: the seeded generator of the folds, the heads' initialisation
//!   and the tests.
//!
//! candle 0.11's f32 matmul (the `gemm` crate) reaches 30-50 GFLOP/s on
//! the project's machines and ~13 GFLOP/s on InceptionV3's narrow shapes;
//! ours runs the same shapes at 150-275 GFLOP/s on two cores
//! (`BENCHMARKS.md`, `cargo bench --bench backbones`).
//!
//! The GEMM is BLIS-style, for row-major `C (m x n) = A (m x k) * B (k x n)`
//! per image:
//! - `A` (the convolution's weights) is packed once, at load, into `mr`-tall
//!   row panels in `k` slices of `kc` ([`PackedA`]);
//! - each rayon task owns one block of one image's C and packs its `B`
//!   block once ([`PackB`]: a dense matrix, or a convolution input through an
//!   implicit im2col), then runs every `A` panel against every `B` panel of
//!   it. `k` is never split across tasks and is always summed in order, so
//!   results never depend on the thread count;
//! - the micro-kernel ([`MicroKernel`]) keeps an `mr x nr` tile of C in
//!   registers and broadcasts one `A` value against `nr / lanes` vectors of
//!   `B` per step;
//! - edges: panels are zero-padded when packed, and the micro-kernel stores
//!   only the valid `rows x cols` of its tile (masked stores on x86_64);
//! - an optional epilogue runs on each finished row of the block while it is
//!   still in cache (the convolutions fuse bias, activation and residual
//!   there).

use std::sync::OnceLock;

pub use gemm::{
    gemm_packed, set_tuning, sgemm, sgemm_with, BatchEpilogue, Epilogue, GemmShape, MatMut, MatRef,
    Output, Tuning,
};
pub use im2col::Im2Col;
pub use pack::{DenseB, PackB, PackedA};
pub use window::{Act, Clamp};

pub mod gemm;
pub mod generic;
pub mod im2col;
pub mod map;
pub mod nchwc;
pub mod pack;
pub mod rng;
pub mod window;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

use gemm::tuning;

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

/// Where a sliding window (a convolution's or a pool's) sits on one image:
/// input `(C, H, W)`, kernel `(kh, kw)`, stride, the padding before the
/// first row and column, and the output size (which says how much padding
/// follows). [`Im2Col`] and the NCHW16c window kernels read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub chw: (usize, usize, usize),
    pub kernel: (usize, usize),
    pub stride: usize,
    pub top_left: (usize, usize),
    pub out: (usize, usize),
}

/// The crate's results.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

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
    /// `k` slice per micro-kernel call: one `A` panel slice (`kc x mr`)
    /// stays in L1 while the `B` panel slices (`kc x nr` each) stream from
    /// L2.
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

/// A buffer's base pointer, shared by parallel tasks that write disjoint
/// parts of it.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(*mut f32);

// SAFETY: every user writes through it only to a range no other task
// touches (see `gemm_packed`, `nchwc`).
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    pub(crate) fn new(p: *mut f32) -> Self {
        Self(p)
    }

    /// A method (not `.0`) so that closures capture the whole `Sync`
    /// wrapper, not the raw pointer field (edition 2021 disjoint captures).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A buffer of `len` floats every one of which the caller overwrites before
/// reading it (zeroing it first would cost a pass over memory).
#[allow(clippy::uninit_vec)]
pub(crate) fn uninit(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: f32 has no invalid bit patterns; callers write all `len`.
    unsafe { v.set_len(len) };
    v
}
