//! CPU fast paths of the ops transformers spend their time in: `MatMul` on
//! the project's GEMM, a vectorisable `Erf`, and a parallel `Transpose`.
//! Each is a candle custom op on contiguous f32 CPU tensors; callers fall
//! back to candle's own ops on other devices and types.

use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use runner_kernels::map::{map_in_place, map_into};
use runner_kernels::{gemm_packed, DenseB, MatRef, Output, PackedA};

use crate::layers::{cpu_f32, output_buffer};

/// Whether `t` can take a fast path.
pub fn on_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// What a MatMul computes besides `A @ B`: see [`super::Op::MatMul`].
#[derive(Debug, Clone, Copy)]
pub struct Product {
    pub gelu: bool,
    pub trans_b: bool,
    pub alpha: f32,
}

/// `alpha * (a @ b) (+ bias) (then GELU)` for `a` of rank >= 2 and `b`
/// (or `bᵀ`, with `trans_b`) either 2-D (a weight: every row of `a`
/// against it, one GEMM) or of `a`'s rank with the same leading dimensions
/// (attention: one GEMM per leading index); `alpha`, the bias and the GELU
/// are applied to each row of the result while it is in cache. `None` when
/// the shapes need broadcasting (or a bias or GELU goes with a batched
/// product), which candle's ops handle.
pub fn matmul(
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    scale: Option<&Tensor>,
    p: Product,
) -> Result<Option<Tensor>> {
    if !(on_cpu_f32(a) && on_cpu_f32(b)) || a.rank() < 2 || b.rank() < 2 {
        return Ok(None);
    }
    let (ra, rb) = (a.rank(), b.rank());
    let (bk, bn) = if p.trans_b {
        (rb - 1, rb - 2)
    } else {
        (rb - 2, rb - 1)
    };
    let (k, n) = (a.dims()[ra - 1], b.dims()[bn]);
    if b.dims()[bk] != k {
        return Ok(None);
    }
    let per_column = |t: Option<&Tensor>| -> Result<Option<Option<Vec<f32>>>> {
        Ok(match t {
            Some(t) if rb == 2 && on_cpu_f32(t) && t.dims() == [n] => {
                Some(Some(super::to_f32s(t)?))
            }
            Some(_) => None,
            None => Some(None),
        })
    };
    let (Some(bias), Some(scale)) = (per_column(bias)?, per_column(scale)?) else {
        return Ok(None);
    };
    if p.gelu && rb > 2 {
        return Ok(None);
    }
    let batched = rb > 2;
    if batched && (ra != rb || a.dims()[..ra - 2] != b.dims()[..rb - 2]) {
        return Ok(None);
    }
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    Ok(Some(a.apply_op2_no_bwd(
        &b,
        &MatMul {
            batched,
            bias,
            scale,
            p,
            n,
        },
    )?))
}

struct MatMul {
    batched: bool,
    bias: Option<Vec<f32>>,
    scale: Option<Vec<f32>>,
    p: Product,
    n: usize,
}

/// The exact GELU of one value.
#[inline]
fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
}

impl MatMul {
    /// `C (m x n) = A (m x k) @ B` for one product, `B` read as `k x n`
    /// or, transposed, as `n x k`; the epilogue applied to C's rows.
    fn gemm(
        &self,
        m: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
    ) -> runner_kernels::Result<()> {
        let n = self.n;
        let packed = PackedA::new(runner_kernels::best(), MatRef { data: a, ld: k }, m, k)?;
        let epilogue = |_: usize, _: usize, j0: usize, v: &mut [f32]| {
            if self.p.alpha != 1.0 {
                v.iter_mut().for_each(|v| *v *= self.p.alpha);
            }
            if let Some(bias) = &self.bias {
                for (v, b) in v.iter_mut().zip(&bias[j0..]) {
                    *v += b;
                }
            }
            if self.p.gelu {
                map_in_place(&gelu_f32, v);
            }
            if let Some(scale) = &self.scale {
                for (v, s) in v.iter_mut().zip(&scale[j0..]) {
                    *v *= s;
                }
            }
        };
        let fused =
            self.p.alpha != 1.0 || self.bias.is_some() || self.p.gelu || self.scale.is_some();
        let epilogue = fused.then_some(&epilogue as runner_kernels::BatchEpilogue<'_>);
        let out = Output::new(c, n, 0);
        // Bᵀ given (attention's K): transposed here, one product at a time
        // while it is in cache, rather than by a pass over all of K.
        let transposed;
        let b = if self.p.trans_b {
            let mut t = output_buffer(k * n);
            for (j, row) in b.chunks_exact(k).enumerate() {
                for (p, &v) in row.iter().enumerate() {
                    t[p * n + j] = v;
                }
            }
            transposed = t;
            &transposed[..]
        } else {
            b
        };
        let dense = DenseB::new(MatRef { data: b, ld: n }, k, n)?;
        gemm_packed(&packed, std::slice::from_ref(&dense), out, epilogue)
    }
}

impl candle_core::CustomOp2 for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (cpu_f32("matmul", s1, l1)?, cpu_f32("matmul", s2, l2)?);
        let da = l1.dims();
        let (m, k, n) = (da[da.len() - 2], da[da.len() - 1], self.n);
        let batch: usize = da[..da.len() - 2].iter().product();
        // Every value is written by the GEMM.
        let mut out = output_buffer(batch * m * n);
        let failed = if self.batched {
            // Many small products (heads x images): one task each.
            out.par_chunks_mut(m * n)
                .enumerate()
                .map(|(i, c)| {
                    self.gemm(m, k, &a[i * m * k..][..m * k], &b[i * k * n..][..k * n], c)
                })
                .find_any(|r| r.is_err())
        } else {
            // Every row of every image against one weight.
            Some(self.gemm(batch * m, k, a, b, &mut out)).filter(|r| r.is_err())
        };
        if let Some(Err(e)) = failed {
            candle_core::bail!("matmul: {e}")
        }
        let mut dims = da.to_vec();
        *dims.last_mut().expect("rank >= 2") = n;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `erf(x)` in f32 by a rational function on [-4, 4] (beyond, +-1 to f32
/// precision), the approximation Eigen and XLA vectorise: a few
/// multiply-adds and one division per value instead of a series in f64.
#[inline]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let a = -2.726_142_3e-10 * x2 + 2.770_681_4e-8;
    let a = a * x2 - 2.101_024e-6;
    let a = a * x2 - 5.692_506_4e-5;
    let a = a * x2 - 7.349_906_3e-4;
    let a = a * x2 - 2.954_600_1e-3;
    let p = x * (a * x2 - 1.609_603_3e-2);
    let b = -1.456_607_2e-5 * x2 - 2.133_740_6e-4;
    let b = b * x2 - 1.682_827e-3;
    let b = b * x2 - 7.373_329e-3;
    let q = b * x2 - 1.426_474e-2;
    p / q
}

/// [`erf_f32`] over a tensor, in parallel.
pub fn erf(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Map {
        name: "erf",
        f: erf_f32,
    })
}

/// `e^x` in f32 (Cephes' `expf`: `2^n` times a degree-6 polynomial on
/// the remainder, relative error ~1e-7), in operations that vectorise:
/// the rounding to `n` by adding and subtracting 1.5 * 2^23.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // SAFETY: `n` is a whole number in [-126, 127] (x was clamped), so
    // the unchecked cast is exact; the checked `as` would not vectorise.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    y * f32::from_bits(((n + 127) << 23) as u32)
}

/// Softmax over the last axis, a row per task: max, `exp` and sum, scale.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(candle_core::D::Minus1)?;
    x.contiguous()?.apply_op1_no_bwd(&Softmax { n })
}

struct Softmax {
    n: usize,
}

impl candle_core::CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32("softmax", s, l)?;
        let mut out = output_buffer(x.len());
        if self.n > 0 {
            out.par_chunks_mut(self.n)
                .zip(x.par_chunks(self.n))
                .for_each(|(y, x)| {
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    // The map alone vectorises; the sum runs after it.
                    map_into(&|x| exp_f32(x - max), x, y);
                    let inv = 1.0 / y.iter().sum::<f32>();
                    y.iter_mut().for_each(|y| *y *= inv);
                });
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// The exact GELU, `x / 2 * (1 + erf(x / sqrt 2))`, in one parallel pass.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Map {
        name: "gelu",
        f: gelu_f32,
    })
}

/// An elementwise function, generic so that it inlines into the loop and
/// vectorises (a function pointer would cost a call per value).
struct Map<F> {
    name: &'static str,
    f: F,
}

impl<F: Fn(f32) -> f32 + Send + Sync> candle_core::CustomOp1 for Map<F> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(self.name, s, l)?;
        let mut out = output_buffer(x.len());
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(y, x)| map_into(&self.f, x, y));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `x` with its axes permuted by `perm`, written row by row of the output
/// in parallel (candle's strided copy is one thread).
pub fn transpose(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&Permute {
        perm: perm.to_vec(),
    })
}

struct Permute {
    perm: Vec<usize>,
}

impl candle_core::CustomOp1 for Permute {
    fn name(&self) -> &'static str {
        "transpose"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32("transpose", s, l)?;
        let dims = l.dims();
        let rank = dims.len();
        if self.perm.len() != rank {
            candle_core::bail!("transpose: perm {:?} for rank {rank}", self.perm)
        }
        let mut in_strides = vec![1usize; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * dims[i + 1];
        }
        let out_dims: Vec<usize> = self.perm.iter().map(|&p| dims[p]).collect();
        // The input stride of each output axis.
        let strides: Vec<usize> = self.perm.iter().map(|&p| in_strides[p]).collect();
        let row = out_dims.last().copied().unwrap_or(1).max(1);
        let mut out = output_buffer(x.len());
        out.par_chunks_mut(row).enumerate().for_each(|(r, y)| {
            // The input offset of this output row's first value.
            let mut rest = r;
            let mut base = 0;
            for a in (0..rank.saturating_sub(1)).rev() {
                base += (rest % out_dims[a]) * strides[a];
                rest /= out_dims[a];
            }
            let step = strides.last().copied().unwrap_or(1);
            for (j, v) in y.iter_mut().enumerate() {
                *v = x[base + j * step];
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(out_dims)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    const PLAIN: Product = Product {
        gelu: false,
        trans_b: false,
        alpha: 1.0,
    };

    fn seq(dims: &[usize]) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0)
            .collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn gemm_products_equal_candles_for_weights_and_batches() {
        let x = seq(&[2, 5, 7]);
        let w = seq(&[7, 3]);
        let ours = matmul(&x, &w, None, None, PLAIN)
            .unwrap()
            .expect("a fast path");
        let theirs = x.broadcast_matmul(&w).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-4);
        let q = seq(&[2, 3, 5, 4]);
        let k = seq(&[2, 3, 4, 6]);
        let ours = matmul(&q, &k, None, None, PLAIN)
            .unwrap()
            .expect("a fast path");
        assert!(max_diff(&ours, &q.matmul(&k).unwrap()) < 1e-4);
        // Kᵀ read from K, and a scale.
        let kt = k.transpose(2, 3).unwrap().contiguous().unwrap();
        let scaled = Product {
            trans_b: true,
            alpha: 0.125,
            ..PLAIN
        };
        let ours = matmul(&q, &kt, None, None, scaled)
            .unwrap()
            .expect("a fast path");
        let theirs = (q.matmul(&k).unwrap() * 0.125).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-4);
        // A bias, GELU and scale in the epilogue equal the ops after the
        // product.
        let bias = seq(&[3]);
        let gelu = Product {
            gelu: true,
            ..PLAIN
        };
        let ours = matmul(&x, &w, Some(&bias), Some(&bias), gelu)
            .unwrap()
            .expect("a fast path");
        let theirs = x
            .broadcast_matmul(&w)
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let theirs = theirs.gelu_erf().unwrap().broadcast_mul(&bias).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-4);
        // Leading dimensions that broadcast: left to candle.
        let k1 = seq(&[1, 3, 4, 6]);
        assert!(matmul(&q, &k1, None, None, PLAIN).unwrap().is_none());
    }

    #[test]
    fn fast_erf_is_within_a_few_ulp_of_the_exact_one() {
        let x: Vec<f32> = (-6000..=6000).map(|i| i as f32 / 1000.0).collect();
        let t = Tensor::new(x.as_slice(), &Device::Cpu).unwrap();
        let exact = t.erf().unwrap().to_vec1::<f32>().unwrap();
        let fast = erf(&t).unwrap().to_vec1::<f32>().unwrap();
        let worst = exact
            .iter()
            .zip(&fast)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "max |erf - fast erf| = {worst}");
    }

    #[test]
    fn fast_exp_and_softmax_match_the_exact_ones() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (a, b) = (exp_f32(x), x.exp());
            assert!((a - b).abs() <= 3e-7 * b, "exp({x}) = {a}, want {b}");
        }
        let x = seq(&[3, 4, 33]);
        let ours = softmax_last(&x).unwrap();
        let theirs = candle_nn::ops::softmax_last_dim(&x).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6);
    }

    #[test]
    fn transposes_equal_candles_strided_copy() {
        let x = seq(&[2, 3, 4, 5]);
        for perm in [[0, 2, 3, 1], [0, 3, 1, 2], [3, 2, 1, 0], [0, 1, 2, 3]] {
            let ours = transpose(&x, &perm).unwrap();
            let theirs = x.permute(perm.to_vec()).unwrap().contiguous().unwrap();
            assert_eq!(max_diff(&ours, &theirs), 0.0, "{perm:?}");
        }
    }
}
