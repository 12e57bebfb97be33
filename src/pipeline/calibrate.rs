//! `[head] calibrate = "temperature"`: one temperature applied to the run's
//! averaged probabilities, `p ∝ p^(1/T)`.
//!
//! The temperature that goes into `submission.csv` and the saved model is
//! fitted on every out-of-fold row. The out-of-fold scores cannot use that
//! one (it has seen the rows it would be scored on), so each fold's rows
//! are calibrated by a temperature fitted on the other folds' rows: nested
//! cross-validation, as `runner ensemble` scores its blends.

use crate::ensemble::blend::{Blend, Method};
use crate::npy::Matrix;
use crate::train::FoldPlan;

/// The run's probabilities after temperature scaling.
pub struct Calibrated {
    /// Out of fold, each fold's rows by the other folds' temperature.
    pub oof: Matrix,
    /// With the temperature fitted on every out-of-fold row.
    pub test: Option<Matrix>,
    /// `1 / T` fitted on every out-of-fold row.
    pub inverse_temperature: f64,
}

/// The temperature scaling `inverse_temperature` stands for, as the saved
/// model applies it to a prediction.
pub fn scaling(inverse_temperature: f64) -> Blend {
    Blend {
        method: Method::Mean,
        weights: vec![1.0],
        inverse_temperature,
    }
}

/// Fits the temperature on `oof` (rows of `folds`, labels `labels`) and
/// applies it. Needs two folds or more (the spec checks).
pub fn temperature(
    folds: &FoldPlan,
    labels: &[usize],
    oof: &Matrix,
    test: Option<&Matrix>,
) -> Calibrated {
    let validated = folds.validated_rows();
    let mut nested = oof.clone();
    let k = oof.cols;
    for fold in &folds.folds {
        let held: std::collections::HashSet<usize> = fold.valid.iter().copied().collect();
        let others: Vec<usize> = validated
            .iter()
            .copied()
            .filter(|r| !held.contains(r))
            .collect();
        let scaled = Blend::fit(Method::Mean, &[oof], labels, &others, true).apply(&[oof]);
        for &r in &fold.valid {
            nested.data[r * k..(r + 1) * k].copy_from_slice(scaled.row(r));
        }
    }
    let all = Blend::fit(Method::Mean, &[oof], labels, &validated, true);
    let scaling = scaling(all.inverse_temperature);
    Calibrated {
        oof: nested,
        test: test.map(|t| scaling.apply(&[t])),
        inverse_temperature: all.inverse_temperature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Overconfident predictions (the right class at 0.99 for 70% of rows,
    /// the wrong one otherwise) are softened: `T > 1`, and the nested
    /// out-of-fold log loss is far below the raw one.
    #[test]
    fn overconfident_predictions_are_softened_and_scored_out_of_fold() {
        let (n, k) = (100, 3);
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let mut data = Vec::new();
        for (i, &y) in labels.iter().enumerate() {
            let top = if i % 10 < 7 { y } else { (y + 1) % k };
            data.extend((0..k).map(|j| if j == top { 0.99 } else { 0.005 }));
        }
        let oof = Matrix::new(n, k, data);
        let folds = FoldPlan::new(&labels, 5, true, 1);
        let test = Matrix::new(1, k, vec![0.99, 0.005, 0.005]);
        let c = temperature(&folds, &labels, &oof, Some(&test));
        assert!(c.inverse_temperature < 1.0, "{}", c.inverse_temperature);
        let raw = crate::metrics::log_loss(&oof, &labels);
        let nested = crate::metrics::log_loss(&c.oof, &labels);
        assert!(nested < 0.7 * raw, "{nested} vs {raw}");
        let t = c.test.unwrap();
        assert!(t.row(0)[0] < 0.99 && t.row(0)[0] > 0.5, "{:?}", t.row(0));
        assert_eq!(
            t.data,
            scaling(c.inverse_temperature).apply(&[&test]).data,
            "the saved model's scaling is the run's"
        );
    }
}
