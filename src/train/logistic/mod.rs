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

mod lbfgs;
mod objective;
#[cfg(test)]
mod testutil;

use candle_core::Result;

use super::dense::{DenseWeights, Engine};
use super::head::{HeadReport, Labels, TrainedHead};
use super::{Fold, FoldPlan};
use crate::metrics;
use crate::npy::Matrix;
use crate::spec::HeadSpec;
use objective::Objective;
use runner_kernels::rng::Rng;

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
            history: Vec::new(),
        },
        weights,
        valid_probs,
    })
}

#[cfg(test)]
mod tests {
    use super::testutil::{fit, labels_of, problem};
    use super::*;
    use crate::train::on_threads;

    /// Rows `0..train` to train on, `train..rows` to score.
    fn holdout(train: usize, rows: usize) -> Fold {
        Fold {
            train: (0..train).collect(),
            valid: (train..rows).collect(),
        }
    }

    fn logistic_head() -> HeadSpec {
        HeadSpec {
            kind: crate::spec::HeadKind::Logistic,
            ..HeadSpec::default()
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
        let fold = holdout(120, 150);
        let cfg = logistic_head();
        let train = |threads: usize| {
            on_threads(threads, || {
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
        let fold = holdout(45, 60);
        let cfg = HeadSpec {
            l2: vec![0.02],
            ..logistic_head()
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
