//! The run directory's tables: `folds.csv`, `oof.csv`, `submission.csv`,
//! `per_class.csv` and `confusion.csv`,
//! written through `csv::Writer` (fields quoted only where needed). Numbers
//! are formatted here, with `Display`: probabilities at full `f64`
//! precision.

use super::HeadRow;
use crate::data::Dataset;
use crate::npy::Matrix;
use crate::train::FoldPlan;

/// CSV text of `records`, the header first.
pub fn csv_bytes<R>(records: impl IntoIterator<Item = R>) -> csv::Result<Vec<u8>>
where
    R: IntoIterator,
    R::Item: AsRef<[u8]>,
{
    let mut writer = csv::Writer::from_writer(Vec::new());
    for record in records {
        writer.write_record(record)?;
    }
    writer.into_inner().map_err(|e| e.into_error().into())
}

/// `history.csv`: every head's learning curves in long format, a row per
/// fold, view, epoch, split and metric (what plotting tools group by).
pub fn history_csv(heads: &[HeadRow]) -> csv::Result<Vec<u8>> {
    let header = ["fold", "view", "epoch", "split", "metric", "value"].map(String::from);
    let rows = heads.iter().flat_map(|h| {
        h.report.history.iter().flat_map(move |e| {
            [
                ("train", "log_loss", e.train_log_loss),
                ("train", "accuracy", e.train_accuracy),
                ("valid", "log_loss", e.valid_log_loss),
                ("valid", "accuracy", e.valid_accuracy),
            ]
            .map(|(split, metric, value)| {
                vec![
                    h.fold.to_string(),
                    h.view.name().to_string(),
                    e.epoch.to_string(),
                    split.to_string(),
                    metric.to_string(),
                    value.to_string(),
                ]
            })
        })
    });
    csv_bytes(std::iter::once(header.to_vec()).chain(rows))
}

/// A row per fold x view head; with the logistic head, a last column with
/// each head's chosen penalty (a dense run's table is as it always was).
pub fn folds_csv(heads: &[HeadRow]) -> csv::Result<Vec<u8>> {
    let penalised = heads.iter().any(|h| h.report.l2.is_some());
    let mut header: Vec<String> = [
        "fold",
        "view",
        "epochs_run",
        "best_epoch",
        "valid_log_loss",
        "valid_accuracy",
    ]
    .map(String::from)
    .to_vec();
    if penalised {
        header.push("l2".into());
    }
    let rows = heads.iter().map(move |h| {
        let mut row = vec![
            h.fold.to_string(),
            h.view.name().to_string(),
            h.report.epochs_run.to_string(),
            h.report.best_epoch.to_string(),
            h.report.valid_log_loss.to_string(),
            h.report.valid_accuracy.to_string(),
        ];
        if penalised {
            row.push(h.report.l2.map_or(String::new(), |l| l.to_string()));
        }
        row
    });
    csv_bytes(std::iter::once(header).chain(rows))
}

/// `prefix` followed by the probabilities of `row` normalised to sum to 1.
fn with_probabilities(mut prefix: Vec<String>, row: &[f32]) -> Vec<String> {
    let sum: f64 = row.iter().map(|&p| p as f64).sum();
    prefix.extend(row.iter().map(|&p| (p as f64 / sum).to_string()));
    prefix
}

/// Id, label and class probabilities of every validated training row.
pub fn oof_csv(data: &Dataset, folds: &FoldPlan, oof: &Matrix) -> csv::Result<Vec<u8>> {
    let header = ["id", "label"]
        .into_iter()
        .map(String::from)
        .chain(data.classes.iter().cloned())
        .collect();
    let rows = folds.validated_rows().into_iter().map(|i| {
        let label = data.classes[data.labels[i]].clone();
        with_probabilities(vec![data.train[i].id.clone(), label], oof.row(i))
    });
    csv_bytes(std::iter::once(header).chain(rows))
}

/// The submission: the sample submission's exact header and id order.
pub fn submission_csv(data: &Dataset, test: &Matrix) -> csv::Result<Vec<u8>> {
    let header = data.submission_header.clone().unwrap_or_else(|| {
        std::iter::once("id".to_string())
            .chain(data.classes.iter().cloned())
            .collect()
    });
    let rows = data
        .test
        .iter()
        .enumerate()
        .map(|(r, item)| with_probabilities(vec![item.id.clone()], test.row(r)));
    csv_bytes(std::iter::once(header).chain(rows))
}

/// One scored set of predictions: out-of-fold on the validated training
/// rows, or test with an answer key.
pub struct Scored<'a> {
    pub split: &'static str,
    pub probs: &'a Matrix,
    pub labels: &'a [usize],
}

/// `split,class,images,accuracy,log_loss`: how each class fares.
pub fn per_class_csv(classes: &[String], sets: &[Scored<'_>]) -> csv::Result<Vec<u8>> {
    let header = ["split", "class", "images", "accuracy", "log_loss"].map(String::from);
    let mut rows = vec![header.to_vec()];
    for set in sets {
        for (c, class) in classes.iter().enumerate() {
            let rows_of_c: Vec<usize> = (0..set.labels.len())
                .filter(|&r| set.labels[r] == c)
                .collect();
            let probs = Matrix::new(
                rows_of_c.len(),
                set.probs.cols,
                rows_of_c
                    .iter()
                    .flat_map(|&r| set.probs.row(r).iter().copied())
                    .collect(),
            );
            let labels = vec![c; rows_of_c.len()];
            let (acc, loss) = if rows_of_c.is_empty() {
                (String::new(), String::new())
            } else {
                (
                    crate::metrics::accuracy(&probs, &labels).to_string(),
                    crate::metrics::log_loss(&probs, &labels).to_string(),
                )
            };
            rows.push(vec![
                set.split.to_string(),
                class.clone(),
                rows_of_c.len().to_string(),
                acc,
                loss,
            ]);
        }
    }
    csv_bytes(rows)
}

/// `split,true_class,<predicted class>...`: how many images of each class
/// went to each predicted class (the most probable one).
pub fn confusion_csv(classes: &[String], sets: &[Scored<'_>]) -> csv::Result<Vec<u8>> {
    let header: Vec<String> = ["split", "true_class"]
        .into_iter()
        .map(String::from)
        .chain(classes.iter().cloned())
        .collect();
    let mut rows = vec![header];
    for set in sets {
        let k = classes.len();
        let mut counts = vec![0usize; k * k];
        for (r, &truth) in set.labels.iter().enumerate() {
            counts[truth * k + crate::metrics::argmax(set.probs.row(r))] += 1;
        }
        for (c, class) in classes.iter().enumerate() {
            rows.push(
                [set.split.to_string(), class.clone()]
                    .into_iter()
                    .chain(counts[c * k..(c + 1) * k].iter().map(|n| n.to_string()))
                    .collect(),
            );
        }
    }
    csv_bytes(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_they_hold_a_comma_quote_or_line_break() {
        let bytes = csv_bytes([
            ["id", "a,b"],
            ["say \"hi\"", "two\nlines"],
            ["plain", "0.1"],
        ])
        .unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "id,\"a,b\"\n\"say \"\"hi\"\"\",\"two\nlines\"\nplain,0.1\n"
        );
    }
}
