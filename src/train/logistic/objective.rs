//! The logistic head's penalised objective and its gradient on a fixed set
//! of rows: two f32 GEMMs per evaluation, everything else in f64.

use candle_core::Result;

use super::lbfgs;
use crate::npy::Matrix;
use crate::train::head::Labels;
use runner_kernels::{self as kernels, DenseB, MatRef, Output, PackedA};

/// The penalised objective on a fixed set of rows: the rows gathered once,
/// `Xᵀ` packed once for every gradient, scratch buffers reused.
pub(super) struct Objective {
    rows: usize,
    d: usize,
    k: usize,
    /// `X` and `Xᵀ`, packed for the GEMM once for every evaluation.
    xp: PackedA,
    xt: PackedA,
    labels: Vec<usize>,
    /// Mean of each feature's square over the rows: with the penalty, the
    /// diagonal of the Hessian's bound (see [`Objective::preconditioner`]).
    mean_squares: Vec<f64>,
    l2: f64,
    w32: Vec<f32>,
    g32: Vec<f32>,
    gw32: Vec<f32>,
}

impl Objective {
    pub(super) fn new(x: &Matrix, idx: &[usize], labels: Labels<'_>) -> Result<Objective> {
        let (rows, d, k) = (idx.len(), x.cols, labels.classes);
        let mut data = Vec::with_capacity(rows * d);
        let mut mean_squares = vec![0f64; d];
        for &i in idx {
            data.extend_from_slice(x.row(i));
            for (m, &v) in mean_squares.iter_mut().zip(x.row(i)) {
                *m += (v as f64) * (v as f64);
            }
        }
        mean_squares
            .iter_mut()
            .for_each(|m| *m /= rows.max(1) as f64);
        let view = MatRef { data: &data, ld: d };
        let xp = PackedA::new(kernels::best(), view, rows, d).map_err(candle_core::Error::wrap)?;
        let xt = PackedA::new_transposed(kernels::best(), view, d, rows)
            .map_err(candle_core::Error::wrap)?;
        Ok(Objective {
            rows,
            d,
            k,
            xp,
            xt,
            labels: idx.iter().map(|&i| labels.rows[i]).collect(),
            mean_squares,
            l2: 0.0,
            w32: vec![0.0; d * k],
            g32: vec![0.0; rows * k],
            gw32: vec![0.0; d * k],
        })
    }

    /// Parameters: `W` row-major, then `b`.
    pub(super) fn len(&self) -> usize {
        self.d * self.k + self.k
    }

    /// `f(params)`; writes its gradient into `grad`.
    fn eval(&mut self, params: &[f64], grad: &mut [f64]) -> Result<f64> {
        let (rows, d, k) = (self.rows, self.d, self.k);
        let (w, b) = params.split_at(d * k);
        self.w32
            .iter_mut()
            .zip(w)
            .for_each(|(dst, &v)| *dst = v as f32);
        // Logits (rows x k) = X W, in the buffer that becomes G.
        product(&self.xp, &self.w32, d, k, &mut self.g32)?;

        // Per row: log-sum-exp in f64, then G = (softmax - onehot) / rows
        // in place of the logits; db = column sums of G.
        let (gw, gb) = grad.split_at_mut(d * k);
        gb.iter_mut().for_each(|v| *v = 0.0);
        let inv_rows = 1.0 / rows as f64;
        let mut z = vec![0f64; k];
        let mut loss = 0f64;
        for (row, &y) in self.g32.chunks_exact_mut(k).zip(&self.labels) {
            z.iter_mut()
                .zip(row.iter().zip(b))
                .for_each(|(z, (&l, &b))| *z = l as f64 + b);
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|&v| (v - max).exp()).sum::<f64>().ln();
            loss += lse - z[y];
            for (j, (out, &zj)) in row.iter_mut().zip(&z).enumerate() {
                let g = ((zj - lse).exp() - (j == y) as u8 as f64) * inv_rows;
                gb[j] += g;
                *out = g as f32;
            }
        }
        product(&self.xt, &self.g32, rows, k, &mut self.gw32)?;

        let mut penalty = 0f64;
        for ((g, &g32), &w) in gw.iter_mut().zip(&self.gw32).zip(w) {
            *g = g32 as f64 + self.l2 * w;
            penalty += w * w;
        }
        Ok(loss * inv_rows + 0.5 * self.l2 * penalty)
    }

    /// The inverse of a diagonal that bounds the Hessian's: a softmax's
    /// curvature per logit is at most 1/4, so `W[a, j]` gets
    /// `l2 + mean(x_a²) / 4` and `b[j]` gets 1/4. Without it L-BFGS's
    /// scalar initial Hessian has to serve a bias with curvature ~0.25 and
    /// weights with curvature up to `l2` (1e-4 to 10): many iterations, and
    /// with a large penalty it stalls far from the optimum.
    fn preconditioner(&self) -> Vec<f64> {
        let mut h0 = Vec::with_capacity(self.len());
        for &m in &self.mean_squares {
            let inv = 1.0 / (self.l2 + 0.25 * m);
            h0.extend(std::iter::repeat_n(inv, self.k));
        }
        h0.extend(std::iter::repeat_n(4.0, self.k));
        h0
    }

    /// Minimises the objective with penalty `l2` from `params` (a warm
    /// start) by L-BFGS; returns the iterations it took.
    pub(super) fn minimise(&mut self, l2: f64, params: &mut [f64]) -> Result<usize> {
        self.l2 = l2;
        let h0 = self.preconditioner();
        lbfgs::minimise(|p, grad| self.eval(p, grad), h0, params)
    }
}

/// `out = a b` on the f32 GEMM: `a` packed, `b` row-major `inner x k`.
fn product(a: &PackedA, b: &[f32], inner: usize, k: usize, out: &mut [f32]) -> Result<()> {
    let b = DenseB::new(MatRef { data: b, ld: k }, inner, k).map_err(candle_core::Error::wrap)?;
    let out = Output {
        data: out,
        ld: k,
        image_stride: 0,
        accumulate: false,
    };
    kernels::gemm_packed(a, &[b], out, None).map_err(candle_core::Error::wrap)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{labels_of, problem, reference_objective};
    use super::*;

    #[test]
    fn the_gradient_matches_finite_differences() {
        let (k, l2) = (4, 0.3);
        let (x, y) = problem(40, 6, k, 1.0, 1);
        let rows: Vec<usize> = (0..40).collect();
        let mut obj = Objective::new(&x, &rows, labels_of(&y, k)).unwrap();
        obj.l2 = l2;
        let params: Vec<f64> = runner_kernels::rng::uniform_vec(obj.len(), 2)
            .iter()
            .map(|&v| v as f64 - 0.5)
            .collect();
        let mut grad = vec![0f64; obj.len()];
        let f = obj.eval(&params, &mut grad).unwrap();
        assert!((f - reference_objective(&x, &y, k, l2, &params)).abs() < 1e-5);
        let h = 1e-5;
        for i in 0..params.len() {
            let (mut up, mut down) = (params.clone(), params.clone());
            up[i] += h;
            down[i] -= h;
            let numeric = (reference_objective(&x, &y, k, l2, &up)
                - reference_objective(&x, &y, k, l2, &down))
                / (2.0 * h);
            assert!(
                (grad[i] - numeric).abs() < 1e-5,
                "[{i}] {} vs {numeric}",
                grad[i]
            );
        }
    }
}
