//! The GEMM's operands in the micro-kernel's panel layout.
//!
//! - [`PackedA`]: the left operand (a convolution's weights), packed once
//!   into `mr`-tall row panels, `k` cut into slices of `kc`;
//! - [`PackB`]: a right-hand side that packs one column block of itself into
//!   `nr`-wide panels when a GEMM task needs it: a dense matrix
//!   ([`DenseB`]) or a convolution's input read through an implicit im2col
//!   ([`crate::Im2Col`]).

use rayon::prelude::*;

use super::im2col::copy_run;
use super::{tuning, KernelError, MatRef, MicroKernel, Result};

/// Checks that a `rows x cols` matrix with leading dimension `ld` fits a
/// slice of `len` floats.
pub(crate) fn check(
    name: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    ld: usize,
) -> Result<()> {
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

/// `A (m x k)` packed once for one micro-kernel: `k` cut into slices of
/// `kc`, each holding `ceil(m / mr)` panels of `kb x mr` stored `p`-major
/// (`panel[p * mr + i]`), zero-padded to `mr` rows. The convolutions pack
/// their weights at load, so a forward pass packs only its activations.
pub struct PackedA {
    pub(crate) kern: &'static MicroKernel,
    pub(crate) m: usize,
    pub(crate) k: usize,
    /// The `k` slice the panels were packed in.
    pub(crate) kc: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedA {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedA({} x {}, {})", self.m, self.k, self.kern.name)
    }
}

impl PackedA {
    /// Packs the row-major `m x k` matrix `a`.
    pub fn new(kern: &'static MicroKernel, a: MatRef<'_>, m: usize, k: usize) -> Result<Self> {
        check("A", a.data.len(), m, k, a.ld)?;
        Ok(Self::pack(kern, m, k, |p, rows, out| {
            for (o, i) in out.iter_mut().zip(rows) {
                *o = a.data[i * a.ld + p];
            }
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
    ) -> Result<Self> {
        check("A^T", at.data.len(), k, m, at.ld)?;
        Ok(Self::pack(kern, m, k, |p, rows, out| {
            out.copy_from_slice(&at.data[p * at.ld + rows.start..p * at.ld + rows.end]);
        }))
    }

    /// Writes the panels in storage order (k slice, panel, p, row), the
    /// panels of a k slice in parallel (an activation packed per call, as a
    /// transformer's MatMul does, is megabytes), with no zero-fill pass.
    /// `column(p, rows, out)` writes `A[i][p]` for `i` in `rows` (at most
    /// `mr` of them) to `out`; the panel's padding rows are zeroed here.
    fn pack(
        kern: &'static MicroKernel,
        m: usize,
        k: usize,
        column: impl Fn(usize, std::ops::Range<usize>, &mut [f32]) + Sync,
    ) -> Self {
        let (mr, kc) = (kern.mr, tuning().kc.unwrap_or(kern.kc).max(1));
        let m_pad = m.div_ceil(mr) * mr;
        // Every value is written below: the columns, then the padding.
        let mut data = crate::uninit(m_pad * k);
        let mut slices = data.as_mut_slice();
        for s0 in (0..k).step_by(kc) {
            let kb = kc.min(k - s0);
            let (slice, rest) = slices.split_at_mut(m_pad * kb);
            slices = rest;
            let fill = |(pi, panel): (usize, &mut [f32])| {
                let i0 = pi * mr;
                let rows = mr.min(m - i0);
                for (pp, p) in (s0..s0 + kb).enumerate() {
                    let step = &mut panel[pp * mr..(pp + 1) * mr];
                    column(p, i0..i0 + rows, &mut step[..rows]);
                    step[rows..].fill(0.0);
                }
            };
            // Below ~256 KiB a task costs more than it saves.
            if m_pad * kb < 1 << 16 {
                slice.chunks_mut(mr * kb).enumerate().for_each(fill);
            } else {
                slice.par_chunks_mut(mr * kb).enumerate().for_each(fill);
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
    pub fn best(a: MatRef<'_>, m: usize, k: usize) -> Result<Self> {
        Self::new(super::best(), a, m, k)
    }

    pub fn rows(&self) -> usize {
        self.m
    }

    pub fn depth(&self) -> usize {
        self.k
    }

    /// The `m x k` row-major matrix this was packed from (to re-pack the
    /// same weights for another layout, e.g. [`crate::nchwc::PackedConv`]).
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

    /// Panel `ir` of the `k` slice starting at `p0` (a multiple of `kc`),
    /// `kb` deep.
    pub(crate) fn panel(&self, p0: usize, kb: usize, ir: usize) -> *const f32 {
        let m_pad = self.m.div_ceil(self.kern.mr) * self.kern.mr;
        self.data[p0 * m_pad + ir * kb * self.kern.mr..].as_ptr()
    }
}

/// A `k x n` right-hand side that packs itself into the micro-kernel's
/// `nr`-wide panels: a dense matrix ([`DenseB`]), or a convolution's input
/// read through an implicit im2col ([`crate::Im2Col`]) so the column matrix
/// is never built.
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
    pub fn new(b: MatRef<'a>, k: usize, n: usize) -> Result<Self> {
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
                copy_run(&mut dst[..cols], src);
                dst[cols..].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::available;
    use crate::rng::uniform_vec as rand_vec;

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
}
