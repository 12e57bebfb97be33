//! `[head]`: the defaults of each kind and the checks, among them keys
//! set for the other kind.

use super::{
    Resolver, DEFAULT_DROPOUT, DEFAULT_EPOCHS, DEFAULT_HEAD_BATCH, DEFAULT_INNER_FOLDS, DEFAULT_L2,
    DEFAULT_PATIENCE,
};
use crate::spec::raw::RawHead;
use crate::spec::{Calibration, HeadKind, HeadSpec, Optimizer, SpecError};

/// The learning rate an optimiser gets unless the spec sets one.
fn default_lr(optimizer: Optimizer) -> f64 {
    match optimizer {
        Optimizer::Adagrad => 0.01,
        Optimizer::Adam => 0.001,
    }
}

/// `[head]` with nothing set.
pub(in crate::spec) fn default_head() -> HeadSpec {
    HeadSpec {
        kind: HeadKind::Dense,
        dropout: DEFAULT_DROPOUT,
        epochs: DEFAULT_EPOCHS,
        patience: DEFAULT_PATIENCE,
        restore_best: true,
        optimizer: Optimizer::Adagrad,
        lr: default_lr(Optimizer::Adagrad),
        batch_size: DEFAULT_HEAD_BATCH,
        l2: DEFAULT_L2.to_vec(),
        inner_folds: DEFAULT_INNER_FOLDS,
        calibrate: Calibration::None,
    }
}

impl Resolver<'_> {
    pub(super) fn head(&self, raw: RawHead) -> Result<HeadSpec, SpecError> {
        let d = default_head();
        let kind = raw.kind.unwrap_or(d.kind);
        let optimizer = raw.optimizer.unwrap_or(d.optimizer);
        let head = HeadSpec {
            kind,
            dropout: raw.dropout.unwrap_or(d.dropout),
            epochs: raw.epochs.unwrap_or(d.epochs),
            patience: raw.patience.unwrap_or(d.patience),
            restore_best: raw.restore_best.unwrap_or(d.restore_best),
            optimizer,
            lr: raw.lr.unwrap_or(default_lr(optimizer)),
            batch_size: raw.batch_size.unwrap_or(d.batch_size),
            l2: raw.l2.map_or(d.l2.clone(), |p| p.0),
            inner_folds: raw.inner_folds.unwrap_or(d.inner_folds),
            calibrate: raw.calibrate.unwrap_or(d.calibrate),
        };
        // A key of the other kind that the spec set to anything but its
        // default is an error: it would silently do nothing. One written at
        // its default says nothing either kind contradicts, so specs that
        // spell out the dense defaults (the shipped ones do) can still be
        // run, or swept, with the other kind.
        let ignored: Vec<(&str, bool, String)> = match kind {
            HeadKind::Logistic => vec![
                ("dropout", head.dropout != d.dropout, d.dropout.to_string()),
                ("epochs", head.epochs != d.epochs, d.epochs.to_string()),
                (
                    "patience",
                    head.patience != d.patience,
                    d.patience.to_string(),
                ),
                (
                    "restore_best",
                    head.restore_best != d.restore_best,
                    d.restore_best.to_string(),
                ),
                (
                    "optimizer",
                    head.optimizer != d.optimizer,
                    "\"adagrad\"".into(),
                ),
                ("lr", head.lr != d.lr, d.lr.to_string()),
                (
                    "batch_size",
                    head.batch_size != d.batch_size,
                    d.batch_size.to_string(),
                ),
            ],
            HeadKind::Dense => vec![
                ("l2", head.l2 != d.l2, "the default grid".into()),
                (
                    "inner_folds",
                    head.inner_folds != d.inner_folds,
                    d.inner_folds.to_string(),
                ),
            ],
        };
        if let Some((key, _, default)) = ignored.into_iter().find(|(_, differs, _)| *differs) {
            let other = match kind {
                HeadKind::Logistic => HeadKind::Dense,
                HeadKind::Dense => HeadKind::Logistic,
            };
            return Err(self.invalid(
                &format!("head.{key}"),
                format!(
                    "is set with kind = \"{}\" (it applies to kind = \"{}\" only)",
                    kind.name(),
                    other.name()
                ),
                &format!(
                    "remove it (or leave it at its default, {default}), or set kind = \"{}\"",
                    other.name()
                ),
            ));
        }
        if !(0.0..1.0).contains(&head.dropout) {
            return Err(self.invalid(
                "head.dropout",
                format!("= {} is out of range", head.dropout),
                "allowed: 0 <= dropout < 1",
            ));
        }
        self.at_least_one("head.epochs", head.epochs)?;
        self.at_least_one("head.batch_size", head.batch_size)?;
        if !(head.lr > 0.0 && head.lr.is_finite()) {
            return Err(self.invalid(
                "head.lr",
                format!("= {} is not a positive number", head.lr),
                "allowed: lr > 0, e.g. 0.01",
            ));
        }
        if head.l2.is_empty() {
            return Err(self.invalid(
                "head.l2",
                "is an empty list".into(),
                "allowed: a penalty > 0 (e.g. 0.01) or a list of candidates",
            ));
        }
        if let Some(bad) = head.l2.iter().find(|l| !(**l > 0.0 && l.is_finite())) {
            return Err(self.invalid(
                "head.l2",
                format!("holds {bad}, not a positive number"),
                "allowed: penalties > 0, e.g. [0.001, 0.01, 0.1]",
            ));
        }
        if !(2..=20).contains(&head.inner_folds) {
            return Err(self.invalid(
                "head.inner_folds",
                format!("= {} is out of range", head.inner_folds),
                "allowed: 2 to 20",
            ));
        }
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::MINIMAL;
    use super::*;
    use crate::spec::parse;
    use std::path::Path;

    /// Specs written before head kinds existed keep their hash: the dense
    /// head serialises exactly as it did, with no `kind` and no logistic key.
    #[test]
    fn a_dense_head_serialises_as_before_kinds_existed() {
        let spec = parse(MINIMAL, "t.toml", Path::new("/specs")).unwrap();
        assert_eq!(
            serde_json::to_string(&spec.head).unwrap(),
            r#"{"dropout":0.5,"epochs":50,"patience":3,"restore_best":true,"optimizer":"adagrad","lr":0.01,"batch_size":128}"#
        );
    }

    #[test]
    fn a_logistic_head_saves_only_its_own_keys_and_reads_back() {
        let text = format!("{MINIMAL}[head]\nkind = \"logistic\"\nl2 = 1\n");
        let spec = parse(&text, "t.toml", Path::new("/specs")).unwrap();
        assert_eq!(spec.head.kind, HeadKind::Logistic);
        assert_eq!(
            serde_json::to_string(&spec.head).unwrap(),
            r#"{"kind":"logistic","l2":[1.0],"inner_folds":3}"#
        );
        // The saved spec runs again as it is, through the same checks.
        let saved = spec.to_toml();
        assert_eq!(parse(&saved, "saved.toml", Path::new("/")).unwrap(), spec);
        let default_grid = parse(
            &format!("{MINIMAL}[head]\nkind = \"logistic\"\n"),
            "t.toml",
            Path::new("/specs"),
        )
        .unwrap();
        assert_eq!(default_grid.head.l2, DEFAULT_L2.to_vec());
    }

    #[test]
    fn head_keys_of_the_other_kind_are_errors_unless_left_at_their_default() {
        let head = |keys: &str| {
            parse(
                &format!("{MINIMAL}[head]\n{keys}\n"),
                "t.toml",
                Path::new("/specs"),
            )
            .map_err(|e| e.to_string())
        };
        for (keys, names) in [
            (
                "kind = \"logistic\"\ndropout = 0.3",
                "`head.dropout` is set with kind = \"logistic\"",
            ),
            (
                "kind = \"logistic\"\noptimizer = \"adam\"",
                "`head.optimizer`",
            ),
            ("kind = \"logistic\"\nlr = 0.1", "`head.lr`"),
            ("l2 = 0.1", "`head.l2` is set with kind = \"dense\""),
            ("kind = \"dense\"\ninner_folds = 5", "`head.inner_folds`"),
            ("kind = \"linear\"", "expected `dense` or `logistic`"),
            ("kind = \"logistic\"\nl2 = []", "`head.l2` is an empty list"),
            ("kind = \"logistic\"\nl2 = [0.1, -1]", "`head.l2` holds -1"),
            ("kind = \"logistic\"\nl2 = \"big\"", "a penalty (a number"),
            (
                "kind = \"logistic\"\ninner_folds = 1",
                "`head.inner_folds` = 1 is out of range",
            ),
        ] {
            let err = head(keys).unwrap_err();
            assert!(err.contains(names), "{keys}: {err}");
        }
        // The shipped specs spell out the dense defaults: they run with
        // either kind.
        let spelled = "dropout = 0.5\nepochs = 50\npatience = 3\noptimizer = \"adagrad\"\nlr = 0.01\nbatch_size = 128";
        let spec = head(&format!("kind = \"logistic\"\n{spelled}")).unwrap();
        assert_eq!(spec.head.kind, HeadKind::Logistic);
        head(&format!("{spelled}\ninner_folds = 3")).unwrap();
    }
}
