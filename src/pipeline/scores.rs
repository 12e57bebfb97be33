//! The reference's score propagation: first fold alone -> all folds (first
//! view) -> all folds, all views, each scored out of fold and, with an
//! answer key, on the test set.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::Predictions;
use crate::data::Dataset;
use crate::metrics;
use crate::npy::Matrix;
use crate::spec::Spec;
use crate::train::FoldPlan;

/// Scores of one stage of the score propagation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Score {
    pub stage: String,
    pub oof_rows: usize,
    pub oof_log_loss: f64,
    pub oof_accuracy: f64,
    pub test_log_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
}

/// Element-wise mean of equally shaped matrices.
pub fn mean(parts: &[&Matrix]) -> Matrix {
    let first = parts[0];
    let mut out = Matrix::new(first.rows, first.cols, vec![0.0; first.data.len()]);
    for m in parts {
        for (o, &v) in out.data.iter_mut().zip(&m.data) {
            *o += v;
        }
    }
    let n = parts.len() as f32;
    out.data.iter_mut().for_each(|o| *o /= n);
    out
}

fn select_rows(m: &Matrix, rows: &[usize]) -> Matrix {
    Matrix::new(
        rows.len(),
        m.cols,
        rows.iter().flat_map(|&i| m.row(i).to_vec()).collect(),
    )
}

/// Scores `oof` on `rows` and the mean of `tests` on the answer key.
pub(super) fn score(
    data: &Dataset,
    stage: String,
    oof: &Matrix,
    rows: &[usize],
    tests: &[&Matrix],
) -> Score {
    let oof = select_rows(oof, rows);
    let y: Vec<usize> = rows.iter().map(|&i| data.labels[i]).collect();
    let (test_log_loss, test_accuracy) = match (&data.test_labels, tests.is_empty()) {
        (Some(yt), false) => {
            let p = mean(tests);
            (
                Some(metrics::log_loss(&p, yt)),
                Some(metrics::accuracy(&p, yt)),
            )
        }
        _ => (None, None),
    };
    Score {
        stage,
        oof_rows: rows.len(),
        oof_log_loss: metrics::log_loss(&oof, &y),
        oof_accuracy: metrics::accuracy(&oof, &y),
        test_log_loss,
        test_accuracy,
    }
}

/// Every stage of the propagation the run has (one fold and one view give
/// one stage).
pub fn score_propagation(
    spec: &Spec,
    data: &Dataset,
    folds: &FoldPlan,
    preds: &Predictions,
) -> Vec<Score> {
    let first_view = spec.views[0].name();
    let n_folds = folds.folds.len();
    let mut rows = vec![score(
        data,
        format!(
            "fold 1 of {}, {first_view}",
            if spec.cv.folds == 1 { 5 } else { n_folds }
        ),
        &preds.oof[0],
        &folds.folds[0].valid,
        &preds.test[0].iter().take(1).collect::<Vec<_>>(),
    )];
    let validated = folds.validated_rows();
    if n_folds > 1 {
        rows.push(score(
            data,
            format!("{n_folds} folds, {first_view}"),
            &preds.oof[0],
            &validated,
            &preds.test[0].iter().collect::<Vec<_>>(),
        ));
    }
    if spec.views.len() > 1 {
        let names: Vec<&str> = spec.views.iter().map(|v| v.name()).collect();
        rows.push(score(
            data,
            format!(
                "{n_folds} fold{}, {}",
                if n_folds == 1 { "" } else { "s" },
                names.join(" + ")
            ),
            &mean(&preds.oof.iter().collect::<Vec<_>>()),
            &validated,
            &preds.test.iter().flatten().collect::<Vec<_>>(),
        ));
    }
    rows
}

/// The propagation as an aligned text table for the log.
pub fn propagation_table(rows: &[Score]) -> String {
    let mut s = String::new();
    let fmt =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let _ = writeln!(
        s,
        "{:<36} {:>9} {:>8} {:>10} {:>9}",
        "stage", "oof loss", "oof acc", "test loss", "test acc"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<36} {:>9.4} {:>8.4} {:>10} {:>9}",
            r.stage,
            r.oof_log_loss,
            r.oof_accuracy,
            fmt(r.test_log_loss, 4),
            fmt(r.test_accuracy, 4)
        );
    }
    s.trim_end().to_string()
}
