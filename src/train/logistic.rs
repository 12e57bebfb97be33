//! The logistic head: full-batch multinomial logistic regression with an L2
//! penalty, fitted by L-BFGS, the penalty chosen per fold by inner
//! cross-validation on log loss.
//!
//! The model is the dense head's softmax layer (`W`: features x classes,
//! `b`: classes) without dropout, so it yields the same [`DenseWeights`] and
//! everything downstream (predictions, tables, saved weights) treats both
//! kinds alike. Instead of stopping early on a validation fold it minimises
//!
//! `f(W, b) = mean cross-entropy + (l2 / 2) ||W||²`   (the bias is free)
//!
//! to convergence: a convex problem with one minimum (up to a constant
//! added to every bias, which changes no probability; starting from zero,
//! L-BFGS never moves along it, since every gradient's bias part sums to 0).
//! So the fit depends on the rows and the penalty only: no seed, no epoch
//! count, no learning rate.
//!
//! Precision: the two products per evaluation (`X W` and `Xᵀ G`) run on the
//! project's f32 GEMM (the one the dense head uses), which sums `k` in order
//! whatever the thread count; everything else (log-sum-exp, the loss, the
//! parameters, L-BFGS's history and dot products) is f64, so the line
//! search and the curvature pairs are not lost in rounding near the optimum.
//! An f32 product of a 4096-wide row is accurate to ~1e-6 relative, far
//! below what changes a log loss in its fourth decimal.

use candle_core::Result;

use super::dense::{DenseWeights, Engine};
use super::head::{HeadReport, Labels, TrainedHead};
use super::{Fold, FoldPlan};
use crate::metrics;
use crate::npy::Matrix;
use crate::spec::HeadSpec;
use runner_kernels::rng::Rng;
use runner_kernels::{self as kernels, DenseB, MatRef, Output, PackedA};

/// L-BFGS stops when the largest gradient entry is below this...
const GRADIENT_TOLERANCE: f64 = 1e-6;
/// ...or after this many iterations.
const MAX_ITERATIONS: usize = 1000;
/// Curvature pairs L-BFGS keeps.
const HISTORY: usize = 10;
/// Armijo's sufficient-decrease constant and the most halvings of a step.
const ARMIJO: f64 = 1e-4;
const MAX_HALVINGS: usize = 40;
/// How finely the objective is resolved: f32 logits, relative.
const LOSS_NOISE: f64 = 1e-7;

/// The penalised objective on a fixed set of rows: the rows gathered once,
/// `Xᵀ` packed once for every gradient, scratch buffers reused.
struct Objective {
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
    fn new(x: &Matrix, idx: &[usize], labels: Labels<'_>) -> Result<Objective> {
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
    fn len(&self) -> usize {
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
        let w32 = DenseB::new(
            MatRef {
                data: &self.w32,
                ld: k,
            },
            d,
            k,
        )
        .map_err(candle_core::Error::wrap)?;
        let out = Output {
            data: &mut self.g32,
            ld: k,
            image_stride: 0,
            accumulate: false,
        };
        kernels::gemm_packed(&self.xp, &[w32], out, None).map_err(candle_core::Error::wrap)?;

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
        let g = DenseB::new(
            MatRef {
                data: &self.g32,
                ld: k,
            },
            rows,
            k,
        )
        .map_err(candle_core::Error::wrap)?;
        let out = Output {
            data: &mut self.gw32,
            ld: k,
            image_stride: 0,
            accumulate: false,
        };
        kernels::gemm_packed(&self.xt, &[g], out, None).map_err(candle_core::Error::wrap)?;

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
    fn minimise(&mut self, l2: f64, params: &mut [f64]) -> Result<usize> {
        self.l2 = l2;
        let n = self.len();
        let mut grad = vec![0f64; n];
        let mut f = self.eval(params, &mut grad)?;
        let mut history = History::new(self.preconditioner());
        let (mut next, mut next_grad, mut dir) = (vec![0f64; n], vec![0f64; n], vec![0f64; n]);
        for iteration in 0..MAX_ITERATIONS {
            if max_abs(&grad) <= GRADIENT_TOLERANCE {
                return Ok(iteration);
            }
            history.direction(&grad, &mut dir);
            let mut slope = dot(&grad, &dir);
            if slope >= 0.0 {
                // Not a descent direction (rounding): restart from the gradient.
                history = History::new(std::mem::take(&mut history.h0));
                history.direction(&grad, &mut dir);
                slope = dot(&grad, &dir);
            }
            // Backtracking on Armijo's condition; a step of 1 is L-BFGS's
            // natural one and is taken almost always after the first few.
            let mut step = 1.0;
            let mut accepted = None;
            for _ in 0..MAX_HALVINGS {
                for ((x1, &x0), &dx) in next.iter_mut().zip(&*params).zip(&dir) {
                    *x1 = x0 + step * dx;
                }
                let f1 = self.eval(&next, &mut next_grad)?;
                // Near the optimum the decrease drops below what f32 logits
                // resolve; there a step within that noise is taken if it
                // shrinks the gradient (computed to ~1e-8, far finer).
                let within_noise =
                    f1 <= f + LOSS_NOISE * f.abs().max(1.0) && max_abs(&next_grad) < max_abs(&grad);
                if f1 <= f + ARMIJO * step * slope || within_noise {
                    accepted = Some(f1);
                    break;
                }
                step *= 0.5;
            }
            // No step lowers the objective. With curvature pairs, they may
            // be stale or noisy: start again from the preconditioned
            // gradient. Without: the optimum within what f32 products
            // resolve.
            let Some(f1) = accepted else {
                if history.pairs.is_empty() {
                    return Ok(iteration);
                }
                history = History::new(std::mem::take(&mut history.h0));
                continue;
            };
            history.push(&next, params, &next_grad, &grad);
            params.copy_from_slice(&next);
            std::mem::swap(&mut grad, &mut next_grad);
            f = f1;
        }
        Ok(MAX_ITERATIONS)
    }
}

/// L-BFGS's curvature pairs `s = x1 - x0`, `y = g1 - g0`, newest last, and
/// the diagonal initial inverse Hessian they update.
struct History {
    pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)>,
    h0: Vec<f64>,
}

impl History {
    fn new(h0: Vec<f64>) -> History {
        History {
            pairs: Default::default(),
            h0,
        }
    }

    fn push(&mut self, x1: &[f64], x0: &[f64], g1: &[f64], g0: &[f64]) {
        let s: Vec<f64> = x1.iter().zip(x0).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g1.iter().zip(g0).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        // The objective is convex, so `sy >= 0`; a pair without curvature
        // (rounding) would make the inverse Hessian estimate indefinite.
        if sy > 1e-12 * dot(&y, &y).sqrt() * dot(&s, &s).sqrt() && sy > 0.0 {
            if self.pairs.len() == HISTORY {
                self.pairs.pop_front();
            }
            self.pairs.push_back((s, y, 1.0 / sy));
        }
    }

    /// `dir = -H g` by the two-loop recursion. `H₀ = γ D⁻¹` with `D⁻¹` the
    /// preconditioner and `γ = sᵀy / yᵀD⁻¹y` from the newest pair (1
    /// without pairs: `-D⁻¹g` is a Newton step on the diagonal bound).
    fn direction(&self, g: &[f64], dir: &mut [f64]) {
        dir.iter_mut().zip(g).for_each(|(d, &v)| *d = -v);
        let mut alphas = Vec::with_capacity(self.pairs.len());
        for (s, y, rho) in self.pairs.iter().rev() {
            let a = rho * dot(s, dir);
            axpy(-a, y, dir);
            alphas.push(a);
        }
        let gamma = match self.pairs.back() {
            Some((_, y, rho)) => {
                let yhy: f64 = y.iter().zip(&self.h0).map(|(v, h)| v * v * h).sum();
                1.0 / (rho * yhy)
            }
            None => 1.0,
        };
        dir.iter_mut()
            .zip(&self.h0)
            .for_each(|(d, h)| *d *= gamma * h);
        for ((s, y, rho), a) in self.pairs.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, dir);
            axpy(a - b, s, dir);
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y += a * x);
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, &x| m.max(x.abs()))
}

/// The f32 layer of the parameters `params` (`W` row-major, then `b`).
fn to_weights(params: &[f64], d: usize, k: usize) -> DenseWeights {
    let (w, b) = params.split_at(d * k);
    DenseWeights {
        weight: Matrix::new(d, k, w.iter().map(|&v| v as f32).collect()),
        bias: b.iter().map(|&v| v as f32).collect(),
    }
}

/// The candidates, largest first (the warm-start path goes from the
/// smoothest fit, near the zero start, to the sharpest), without repeats.
fn penalty_path(l2: &[f64]) -> Vec<f64> {
    let mut path = l2.to_vec();
    path.sort_by(|a, b| b.total_cmp(a));
    path.dedup();
    path
}

/// Fits along `path` from zero, warm-starting each penalty from the last
/// fit; `after_each(index, params)` sees every fit. Returns the last fit's
/// parameters and iterations.
fn fit_path(
    obj: &mut Objective,
    path: &[f64],
    mut after_each: impl FnMut(usize, &[f64]) -> Result<()>,
) -> Result<(Vec<f64>, usize)> {
    let mut params = vec![0f64; obj.len()];
    let mut iterations = 0;
    for (i, &l2) in path.iter().enumerate() {
        iterations = obj.minimise(l2, &mut params)?;
        after_each(i, &params)?;
    }
    Ok((params, iterations))
}

/// The penalty among `path` (largest first) with the lowest log loss over
/// the inner folds' validation rows (pooled); ties go to the larger penalty.
fn choose_penalty(
    x: &Matrix,
    labels: Labels<'_>,
    rows: &[usize],
    path: &[f64],
    inner_folds: usize,
    seed: u64,
) -> Result<f64> {
    let inner_labels: Vec<usize> = rows.iter().map(|&i| labels.rows[i]).collect();
    let plan = FoldPlan::new(&inner_labels, inner_folds, true, seed);
    let mut total = vec![0f64; path.len()];
    for inner in &plan.folds {
        if inner.valid.is_empty() || inner.train.is_empty() {
            continue;
        }
        let train: Vec<usize> = inner.train.iter().map(|&j| rows[j]).collect();
        let valid: Vec<usize> = inner.valid.iter().map(|&j| rows[j]).collect();
        let valid_x = gather(x, &valid);
        let valid_y: Vec<usize> = valid.iter().map(|&i| labels.rows[i]).collect();
        let mut obj = Objective::new(x, &train, labels)?;
        fit_path(&mut obj, path, |i, params| {
            let w = to_weights(params, x.cols, labels.classes);
            let probs = Engine::Host.probabilities(&w, &valid_x)?;
            total[i] += metrics::log_loss(&probs, &valid_y) * valid.len() as f64;
            Ok(())
        })?;
    }
    let mut best = 0;
    for (i, &t) in total.iter().enumerate() {
        if t < total[best] {
            best = i;
        }
    }
    Ok(path[best])
}

fn gather(x: &Matrix, idx: &[usize]) -> Matrix {
    let mut data = Vec::with_capacity(idx.len() * x.cols);
    for &i in idx {
        data.extend_from_slice(x.row(i));
    }
    Matrix::new(idx.len(), x.cols, data)
}

/// Trains the logistic head on rows `fold.train` of `x`: the penalty chosen
/// among `cfg.l2` by `cfg.inner_folds`-fold CV on those rows (folds seeded
/// by `rng`), then refitted on all of them. Scores rows `fold.valid`.
pub fn train_logistic(
    x: &Matrix,
    labels: Labels<'_>,
    fold: &Fold,
    cfg: &HeadSpec,
    rng: &mut Rng,
) -> Result<TrainedHead> {
    let path = penalty_path(&cfg.l2);
    let inner_seed = rng.next_u64();
    let chosen = match path.as_slice() {
        [only] => *only,
        _ => choose_penalty(x, labels, &fold.train, &path, cfg.inner_folds, inner_seed)?,
    };
    // The refit follows the path down to the chosen penalty: the warm
    // starts cost less than one cold fit at a small penalty.
    let down_to: Vec<f64> = path.iter().copied().filter(|&l| l >= chosen).collect();
    let mut obj = Objective::new(x, &fold.train, labels)?;
    let (params, iterations) = fit_path(&mut obj, &down_to, |_, _| Ok(()))?;
    let weights = to_weights(&params, x.cols, labels.classes);

    let valid_x = gather(x, &fold.valid);
    let valid_y: Vec<usize> = fold.valid.iter().map(|&i| labels.rows[i]).collect();
    let valid_probs = Engine::Host.probabilities(&weights, &valid_x)?;
    Ok(TrainedHead {
        report: HeadReport {
            epochs_run: iterations,
            best_epoch: iterations,
            valid_log_loss: metrics::log_loss(&valid_probs, &valid_y),
            valid_accuracy: metrics::accuracy(&valid_probs, &valid_y),
            l2: Some(chosen),
        },
        weights,
        valid_probs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` rows of `d` features in `k` classes: class means apart by
    /// `separation`, uniform noise of width 1, all features positive (as
    /// post-ReLU pooled activations are).
    fn problem(n: usize, d: usize, k: usize, separation: f32, seed: u64) -> (Matrix, Vec<usize>) {
        let mut rng = Rng::new(seed);
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let data = (0..n * d)
            .map(|j| {
                let (row, col) = (j / d, j % d);
                let signal = if col % k == labels[row] {
                    separation
                } else {
                    0.0
                };
                0.5 + signal + rng.next_f32()
            })
            .collect();
        (Matrix::new(n, d, data), labels)
    }

    fn labels_of(rows: &[usize], k: usize) -> Labels<'_> {
        Labels { rows, classes: k }
    }

    /// The objective in plain f64 loops, independent of the GEMM path.
    fn reference_objective(x: &Matrix, y: &[usize], k: usize, l2: f64, params: &[f64]) -> f64 {
        let d = x.cols;
        let mut loss = 0.0;
        for (r, &label) in y.iter().enumerate() {
            let z: Vec<f64> = (0..k)
                .map(|j| {
                    params[d * k + j]
                        + (0..d)
                            .map(|a| x.row(r)[a] as f64 * params[a * k + j])
                            .sum::<f64>()
                })
                .collect();
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            loss += lse - z[label];
        }
        let w2: f64 = params[..d * k].iter().map(|w| w * w).sum();
        loss / y.len() as f64 + 0.5 * l2 * w2
    }

    /// Newton's method in f64 with a dense Hessian, for a few parameters:
    /// the optimum computed another way.
    fn newton_optimum(x: &Matrix, y: &[usize], k: usize, l2: f64) -> Vec<f64> {
        let (n, d) = (y.len(), x.cols);
        let m = (d + 1) * k;
        let mut p = vec![0f64; m];
        for _ in 0..50 {
            let mut grad = vec![0f64; m];
            let mut hess = vec![0f64; m * m];
            for (r, &label) in y.iter().enumerate() {
                let xt: Vec<f64> = x.row(r).iter().map(|&v| v as f64).chain([1.0]).collect();
                let z: Vec<f64> = (0..k)
                    .map(|j| (0..=d).map(|a| xt[a] * p[a * k + j]).sum())
                    .collect();
                let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
                let s: f64 = e.iter().sum();
                let prob: Vec<f64> = e.iter().map(|v| v / s).collect();
                for a in 0..=d {
                    for j in 0..k {
                        grad[a * k + j] += xt[a] * (prob[j] - (j == label) as u8 as f64) / n as f64;
                        for c in 0..=d {
                            for l in 0..k {
                                let cov = prob[j] * ((j == l) as u8 as f64 - prob[l]);
                                hess[(a * k + j) * m + c * k + l] += xt[a] * xt[c] * cov / n as f64;
                            }
                        }
                    }
                }
            }
            for i in 0..m {
                // The bias is unpenalised and free along (1, ..., 1): a
                // tiny ridge keeps the system solvable without moving the
                // probabilities.
                let ridge = if i < d * k { l2 } else { 1e-12 };
                grad[i] += if i < d * k { l2 * p[i] } else { 0.0 };
                hess[i * m + i] += ridge;
            }
            let step = solve(hess, grad, m);
            p.iter_mut().zip(&step).for_each(|(p, s)| *p -= s);
        }
        p
    }

    /// `A x = b` by Gaussian elimination with partial pivoting.
    fn solve(mut a: Vec<f64>, mut b: Vec<f64>, m: usize) -> Vec<f64> {
        for c in 0..m {
            let pivot = (c..m)
                .max_by(|&i, &j| a[i * m + c].abs().total_cmp(&a[j * m + c].abs()))
                .unwrap();
            for j in 0..m {
                a.swap(c * m + j, pivot * m + j);
            }
            b.swap(c, pivot);
            for r in c + 1..m {
                let f = a[r * m + c] / a[c * m + c];
                for j in c..m {
                    a[r * m + j] -= f * a[c * m + j];
                }
                b[r] -= f * b[c];
            }
        }
        let mut x = vec![0f64; m];
        for r in (0..m).rev() {
            let s: f64 = (r + 1..m).map(|j| a[r * m + j] * x[j]).sum();
            x[r] = (b[r] - s) / a[r * m + r];
        }
        x
    }

    fn fit(x: &Matrix, y: &[usize], k: usize, l2: f64) -> (Vec<f64>, usize) {
        let rows: Vec<usize> = (0..y.len()).collect();
        let mut obj = Objective::new(x, &rows, labels_of(y, k)).unwrap();
        fit_path(&mut obj, &[l2], |_, _| Ok(())).unwrap()
    }

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

    /// On a small noisy problem L-BFGS lowers the objective from the zero
    /// start to Newton's optimum (computed in f64 with a dense Hessian).
    #[test]
    fn lbfgs_reaches_the_optimum_newton_finds() {
        let (k, l2) = (3, 0.05);
        let (x, y) = problem(90, 4, k, 0.6, 3);
        let (ours, iterations) = fit(&x, &y, k, l2);
        let newton = newton_optimum(&x, &y, k, l2);
        let at_zero = reference_objective(&x, &y, k, l2, &vec![0.0; ours.len()]);
        let (f_ours, f_newton) = (
            reference_objective(&x, &y, k, l2, &ours),
            reference_objective(&x, &y, k, l2, &newton),
        );
        assert!(iterations > 1 && f_ours < at_zero, "{f_ours} vs {at_zero}");
        // f32 logits resolve the loss to ~1e-8: the line search cannot
        // see closer than that.
        assert!((f_ours - f_newton).abs() < 1e-7, "{f_ours} vs {f_newton}");
        // W is unique; b up to a constant added to every class.
        let d = x.cols;
        for i in 0..d * k {
            assert!(
                (ours[i] - newton[i]).abs() < 1e-3,
                "W[{i}] {} vs {}",
                ours[i],
                newton[i]
            );
        }
        let shift = |p: &[f64], j: usize| p[d * k + j] - p[d * k];
        for j in 1..k {
            assert!(
                (shift(&ours, j) - shift(&newton, j)).abs() < 1e-3,
                "b[{j}] {} vs {} after {iterations}",
                shift(&ours, j),
                shift(&newton, j)
            );
        }
    }

    /// With a penalty too large for any weight to pay, the best model is
    /// the bias alone, whose softmax is the class frequencies.
    #[test]
    fn a_huge_penalty_predicts_the_class_frequencies() {
        let k = 3;
        let (x, _) = problem(50, 5, k, 1.0, 4);
        // 25, 15 and 10 rows of the three classes.
        let y: Vec<usize> = (0..50)
            .map(|i| [0, 0, 0, 0, 0, 1, 1, 1, 2, 2][i % 10])
            .collect();
        let (params, _) = fit(&x, &y, k, 1e7);
        let probs = Engine::Host
            .probabilities(&to_weights(&params, x.cols, k), &x)
            .unwrap();
        for r in 0..x.rows {
            for (p, want) in probs.row(r).iter().zip([0.5, 0.3, 0.2]) {
                assert!((p - want).abs() < 1e-4, "row {r}: {p} vs {want}");
            }
        }
    }

    #[test]
    fn larger_penalties_give_smaller_weights() {
        let k = 4;
        let (x, y) = problem(80, 12, k, 0.8, 5);
        let rows: Vec<usize> = (0..80).collect();
        let mut obj = Objective::new(&x, &rows, labels_of(&y, k)).unwrap();
        let path = penalty_path(&crate::spec::HeadSpec::default().l2);
        let mut norms = Vec::new();
        fit_path(&mut obj, &path, |_, p| {
            norms.push(p[..x.cols * k].iter().map(|w| w * w).sum::<f64>());
            Ok(())
        })
        .unwrap();
        assert!(norms.windows(2).all(|w| w[0] < w[1]), "{norms:?}");
    }

    /// The whole head (inner folds, penalty choice, refit) twice with the
    /// same generator, and on one thread and on four: the same penalty and
    /// bit-identical weights and predictions. The choice is a real one: the
    /// noisy problem picks a penalty inside the grid.
    #[test]
    fn the_chosen_penalty_and_the_weights_are_deterministic() {
        let k = 5;
        let (x, y) = problem(150, 120, k, 0.1, 6);
        let fold = Fold {
            train: (0..120).collect(),
            valid: (120..150).collect(),
        };
        let cfg = HeadSpec {
            kind: crate::spec::HeadKind::Logistic,
            ..HeadSpec::default()
        };
        let train = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                train_logistic(&x, labels_of(&y, k), &fold, &cfg, &mut Rng::new(8)).unwrap()
            })
        };
        let (a, b, c) = (train(1), train(1), train(4));
        let l2 = a.report.l2.unwrap();
        assert!(
            l2 > cfg.l2[0] && l2 < cfg.l2[cfg.l2.len() - 1],
            "chose {l2}"
        );
        for other in [&b, &c] {
            assert_eq!(other.report.l2, a.report.l2);
            assert_eq!(other.weights, a.weights);
            assert_eq!(other.valid_probs.data, a.valid_probs.data);
        }
        assert!(a.report.valid_accuracy > 0.5, "{:?}", a.report);
    }

    /// A single penalty is fitted as given, with no inner folds.
    #[test]
    fn one_penalty_is_used_as_given() {
        let k = 3;
        let (x, y) = problem(60, 6, k, 1.0, 7);
        let fold = Fold {
            train: (0..45).collect(),
            valid: (45..60).collect(),
        };
        let cfg = HeadSpec {
            kind: crate::spec::HeadKind::Logistic,
            l2: vec![0.02],
            ..HeadSpec::default()
        };
        let head = train_logistic(&x, labels_of(&y, k), &fold, &cfg, &mut Rng::new(1)).unwrap();
        assert_eq!(head.report.l2, Some(0.02));
        let (params, _) = {
            let mut obj = Objective::new(&x, &fold.train, labels_of(&y, k)).unwrap();
            fit_path(&mut obj, &[0.02], |_, _| Ok(())).unwrap()
        };
        assert_eq!(head.weights, to_weights(&params, x.cols, k));
    }
}
