//! L-BFGS with a diagonal preconditioner and a backtracking line search,
//! for the logistic head's convex objective.

use candle_core::Result;

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

/// Minimises `objective` from `params` (a warm start) by L-BFGS;
/// `objective(params, grad)` returns the value at `params` and writes its
/// gradient into `grad`, `h0` is the diagonal initial inverse Hessian.
/// Returns the iterations it took.
pub(super) fn minimise(
    mut objective: impl FnMut(&[f64], &mut [f64]) -> Result<f64>,
    h0: Vec<f64>,
    params: &mut [f64],
) -> Result<usize> {
    let n = params.len();
    let mut grad = vec![0f64; n];
    let mut f = objective(params, &mut grad)?;
    let mut history = History::new(h0);
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
            let f1 = objective(&next, &mut next_grad)?;
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

#[cfg(test)]
mod tests {
    use super::super::testutil::{fit, problem, reference_objective};
    use crate::npy::Matrix;

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
}
