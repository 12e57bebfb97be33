//! The GEMM driver: `C = A * B` per image, BLIS-style, on the global rayon
//! pool ([`gemm_packed`]; [`sgemm`] for plain row-major matrices).
//!
//! Each task owns one block of one image's `C`: a group of `A` panels by
//! `nb` columns, `nb` as wide as fits the packed `B` block (`k x nb`) in L2.
//! It packs that block once ([`PackB`]) and runs every `A` panel against
//! every `B` panel of it with the micro-kernel. `k` is never split across
//! tasks and is always summed in order, so results never depend on the
//! thread count. An optional epilogue runs on each finished row of the block
//! while it is still in cache (the convolutions fuse bias, activation and
//! residual there).

use std::cell::RefCell;

use rayon::prelude::*;

use super::pack::{DenseB, PackB, PackedA};
use super::{best, KernelError, MicroKernel, Result, SyncPtr, Tile};

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
) -> Result<()> {
    sgemm_with(best(), s, a, b, c, accumulate, None)
}

/// [`sgemm`] with an explicit micro-kernel (one of [`crate::available`])
/// and an optional `epilogue`, run on every row segment of C once it holds
/// its final value (while the block is still in cache). Packs `A` on every
/// call (the convolutions pack their weights once, [`PackedA`]).
pub fn sgemm_with(
    kern: &'static MicroKernel,
    s: GemmShape,
    a: MatRef<'_>,
    b: MatRef<'_>,
    c: MatMut<'_>,
    accumulate: bool,
    epilogue: Option<Epilogue<'_>>,
) -> Result<()> {
    let packed = PackedA::new(kern, a, s.m, s.k)?;
    let b = DenseB::new(b, s.k, s.n)?;
    let out = Output {
        data: c.data,
        ld: c.ld,
        image_stride: 0,
        accumulate,
    };
    let b = std::slice::from_ref(&b);
    match epilogue {
        Some(e) => gemm_packed(&packed, b, out, Some(&|_, i, j, v| e(i, j, v))),
        None => gemm_packed(&packed, b, out, None),
    }
}

thread_local! {
    /// Packing buffer for B, reused across calls on each worker thread.
    static PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Floats of padding so that a buffer can start on a 64-byte boundary.
const ALIGN_F32: usize = 16;

/// `len` floats of `buf` starting on a 64-byte boundary (grown as needed).
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len + ALIGN_F32 {
        buf.resize(len + ALIGN_F32, 0.0);
    }
    let off = buf.as_ptr().align_offset(64).min(ALIGN_F32);
    &mut buf[off..off + len]
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

impl<'a> Output<'a> {
    /// `C_t = A * B_t` into `data`, rows `ld` apart, images `image_stride`
    /// apart (overwriting what is there).
    pub fn new(data: &'a mut [f32], ld: usize, image_stride: usize) -> Self {
        Self {
            data,
            ld,
            image_stride,
            accumulate: false,
        }
    }
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

pub(crate) fn tuning() -> Tuning {
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
) -> Result<()> {
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
    let cp = SyncPtr::new(c.data.as_mut_ptr());
    let task = |t: usize| {
        let c0 = cp.get();
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
    use crate::{available, generic};

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
        let (ar, br) = (MatRef { data: &a, ld: lda }, MatRef { data: &b, ld: ldb });
        let (mut want, mut got) = (c0.clone(), c0.clone());
        let c = |data| MatMut { data, ld: ldc };
        generic::generic_sgemm_f32(s, ar, br, c(&mut want), accumulate);
        sgemm_with(kern, s, ar, br, c(&mut got), accumulate, None).expect("shapes");
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
        let mut got = vec![f32::NAN; s.m * s.n];
        let epi = |i: usize, j0: usize, row: &mut [f32]| {
            for (j, v) in row.iter_mut().enumerate() {
                // Marks each element with its coordinates, kept to compare.
                *v = *v * 0.0 + (i * 1000 + j0 + j) as f32;
            }
        };
        sgemm_with(
            best(),
            s,
            MatRef { data: &a, ld: s.k },
            MatRef { data: &b, ld: s.n },
            MatMut {
                data: &mut got,
                ld: s.n,
            },
            false,
            Some(&epi),
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
