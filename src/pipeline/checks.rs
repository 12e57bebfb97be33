//! Checks a run makes of its data and its predictions: classes a head
//! cannot learn or score well (warned about), non-finite predictions
//! (refused, naming the stage to blame).

use super::Predictions;
use crate::features::Features;
use crate::npy::Matrix;
use crate::run::Run;

/// Warns about classes a head cannot learn (no training image: their
/// probabilities stay near 0) or cannot score well (fewer images than folds:
/// an image alone in its class is scored by a head that never saw it).
pub(super) fn warn_about_class_sizes(run: &Run<'_>) {
    let (spec, data, log) = (run.spec, run.data, run.log);
    let counts = data.class_counts();
    let classes_where = |keep: &dyn Fn(usize) -> bool| -> Vec<(&str, usize)> {
        data.classes
            .iter()
            .zip(&counts)
            .filter(|(_, &n)| keep(n))
            .map(|(c, &n)| (c.as_str(), n))
            .collect()
    };
    let first_few = |names: Vec<String>| {
        let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if names.len() > 5 {
            shown + ", ..."
        } else {
            shown
        }
    };
    let unseen = classes_where(&|n| n == 0);
    if !unseen.is_empty() {
        log.info(format!(
            "warning: {} of {} classes have no training image ({}); their probabilities will stay near 0: check labels.csv against the sample submission's columns",
            unseen.len(),
            data.classes.len(),
            first_few(unseen.iter().map(|(c, _)| c.to_string()).collect())
        ));
    }
    let small = classes_where(&|n| n > 0 && n < spec.cv.folds);
    if !small.is_empty() {
        log.info(format!(
            "warning: {} class(es) have fewer training images than cv.folds = {}: {}; their out-of-fold scores are noisy, and an image alone in its class is scored by a head that never saw the class",
            small.len(),
            spec.cv.folds,
            first_few(small.iter().map(|(c, n)| format!("{c} ({n})")).collect())
        ));
    }
}

/// No NaN or infinity reaches the scores or the submission: the run fails
/// and says which input is to blame.
pub(super) fn check_finite(preds: &Predictions, feats: &Features) -> anyhow::Result<()> {
    let finite = |m: &Matrix| m.data.iter().all(|v| v.is_finite());
    if preds
        .oof
        .iter()
        .chain(preds.test.iter().flatten())
        .all(finite)
    {
        return Ok(());
    }
    let mut bad: Vec<&str> = feats
        .by_key
        .iter()
        .filter(|(_, m)| !finite(m))
        .map(|(key, _)| key.as_str())
        .collect();
    bad.sort();
    if bad.is_empty() {
        anyhow::bail!(
            "the heads diverged (NaN or infinite predictions) on finite features: lower [head] lr"
        );
    }
    anyhow::bail!(
        "features of stage(s) {} contain NaN or infinite values: check the backbone weights (`runner inspect`), then delete those stages from the cache to recompute",
        bad.join(", ")
    )
}
