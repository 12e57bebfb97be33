//! Scores, as Kaggle computes them.
//!
//! Multi-class log loss clips each probability to `[1e-15, 1 - 1e-15]`,
//! renormalises each row to sum to 1, and averages `-ln p(true class)`.

use crate::npy::Matrix;

const EPS: f64 = 1e-15;

/// Multi-class log loss of `probs` (one row per sample) against `labels`.
pub fn log_loss(probs: &Matrix, labels: &[usize]) -> f64 {
    assert_eq!(probs.rows, labels.len(), "one label per row");
    let total: f64 = (0..probs.rows)
        .map(|r| {
            let row = probs.row(r);
            let clipped = |p: f32| (p as f64).clamp(EPS, 1.0 - EPS);
            let sum: f64 = row.iter().map(|&p| clipped(p)).sum();
            -(clipped(row[labels[r]]) / sum).ln()
        })
        .sum();
    total / probs.rows.max(1) as f64
}

/// Share of rows whose most probable class (first on ties) is the label.
pub fn accuracy(probs: &Matrix, labels: &[usize]) -> f64 {
    assert_eq!(probs.rows, labels.len(), "one label per row");
    let hits = (0..probs.rows)
        .filter(|&r| argmax(probs.row(r)) == labels[r])
        .count();
    hits as f64 / probs.rows.max(1) as f64
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_loss_matches_sklearn_on_a_worked_example() {
        // sklearn.metrics.log_loss([0, 1, 1], [[.9, .1], [.2, .8], [.6, .4]]) = 0.4149316...
        let p = Matrix::new(3, 2, vec![0.9, 0.1, 0.2, 0.8, 0.6, 0.4]);
        assert!((log_loss(&p, &[0, 1, 1]) - 0.414_931_6).abs() < 1e-6);
        assert!((accuracy(&p, &[0, 1, 1]) - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn zero_probability_is_clipped_not_infinite() {
        let p = Matrix::new(1, 2, vec![1.0, 0.0]);
        let loss = log_loss(&p, &[1]);
        assert!((loss - 34.538_776).abs() < 1e-4, "{loss}");
    }

    #[test]
    fn rows_are_renormalised() {
        let unnormalised = Matrix::new(1, 2, vec![2.0, 2.0]);
        assert!((log_loss(&unnormalised, &[0]) - std::f64::consts::LN_2).abs() < 1e-12);
    }
}
