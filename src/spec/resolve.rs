//! Raw spec -> resolved [`Spec`]: defaults, relative paths, value checks.

use std::path::{Path, PathBuf};

use super::compose::normalize;
use super::raw::{RawBackbone, RawData, RawHead, RawSpec};
use super::{
    BackboneSpec, CvSpec, DataSpec, ExtractSpec, HeadKind, HeadSpec, Layout, Optimizer, Spec,
    SpecError, View,
};

/// Defaults, in one place so README and code agree.
pub const DEFAULT_SEED: u64 = 2017;
/// Extraction batch on the CPU; on a GPU, [`DEFAULT_GPU_EXTRACT_BATCH`].
pub const DEFAULT_EXTRACT_BATCH: usize = 16;
pub const DEFAULT_GPU_EXTRACT_BATCH: usize = 128;
pub const DEFAULT_FOLDS: usize = 5;
pub const DEFAULT_DROPOUT: f64 = 0.5;
pub const DEFAULT_EPOCHS: usize = 50;
pub const DEFAULT_PATIENCE: usize = 3;
pub const DEFAULT_HEAD_BATCH: usize = 128;
/// The logistic head's candidate penalties: half-decades from 1e-4 to 1e1
/// (on woof-dev's features the chosen one sits inside, see the README).
pub const DEFAULT_L2: [f64; 11] = [
    1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0,
];
pub const DEFAULT_INNER_FOLDS: usize = 3;

/// The learning rate an optimiser gets unless the spec sets one.
fn default_lr(optimizer: Optimizer) -> f64 {
    match optimizer {
        Optimizer::Adagrad => 0.01,
        Optimizer::Adam => 0.001,
    }
}

/// `[head]` with nothing set.
pub(super) fn default_head() -> HeadSpec {
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
        calibrate: super::Calibration::None,
    }
}

/// Whether `d` names a device: `auto`, `cpu`, `cuda` or `cuda:N` (the
/// spec's `device` and `--device` accept the same names).
pub fn is_device_name(d: &str) -> bool {
    matches!(d, "auto" | "cpu" | "cuda")
        || d.strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

/// Checks a raw spec's values and fills in every default; `origin` names
/// the spec (and the sweep member) in errors. Paths arrive absolute
/// ([`super::compose`] anchored them).
pub fn resolve(raw: RawSpec, origin: &str) -> Result<Spec, SpecError> {
    Resolver { origin }.spec(raw)
}

struct Resolver<'a> {
    origin: &'a str,
}

impl Resolver<'_> {
    fn invalid(&self, key: &str, problem: String, allowed: &str) -> SpecError {
        SpecError::Invalid {
            path: self.origin.to_string(),
            key: key.to_string(),
            problem,
            allowed: allowed.to_string(),
        }
    }

    fn at_least_one(&self, key: &str, value: usize) -> Result<(), SpecError> {
        if value == 0 {
            return Err(self.invalid(key, "= 0".into(), "allowed: 1 or more"));
        }
        Ok(())
    }

    fn path(&self, p: PathBuf) -> PathBuf {
        normalize(&p)
    }

    fn spec(&self, raw: RawSpec) -> Result<Spec, SpecError> {
        let Some(raw_name) = raw.name else {
            return Err(self.invalid(
                "name",
                "is missing".into(),
                "add name = \"...\" (it names the run directories)",
            ));
        };
        let name = raw_name.trim().to_string();
        if name.len() > super::MAX_NAME_LEN {
            return Err(self.invalid(
                "name",
                format!("is {} characters long", name.len()),
                &format!(
                    "at most {} (it names run directories, which file systems limit to 255 bytes)",
                    super::MAX_NAME_LEN
                ),
            ));
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.=+,".contains(c))
        {
            return Err(self.invalid(
                "name",
                format!("= {raw_name:?} cannot name a run directory"),
                "allowed: letters, digits and - _ . = + ,",
            ));
        }
        let Some(data) = raw.data else {
            return Err(self.invalid(
                "data",
                "is missing".into(),
                "add a [data] table with `layout` and `root` (or the paths one by one)",
            ));
        };
        let views = raw.views.unwrap_or_else(|| vec![View::Original]);
        if views.is_empty() {
            return Err(self.invalid(
                "views",
                "is empty".into(),
                "allowed: \"original\", \"hflip\"",
            ));
        }
        let mut seen = views.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != views.len() {
            return Err(self.invalid(
                "views",
                format!(
                    "= [{}] lists a view twice",
                    views
                        .iter()
                        .map(|v| format!("\"{}\"", v.name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "list each of \"original\", \"hflip\" at most once",
            ));
        }
        let backbones = raw.backbones.unwrap_or_default();
        if backbones.is_empty() {
            return Err(self.invalid(
                "backbone",
                "is missing".into(),
                "add at least one [[backbone]] table with `arch` and `weights`",
            ));
        }
        let backbones = backbones
            .into_iter()
            .enumerate()
            .map(|(i, b)| self.backbone(i, b))
            .collect::<Result<Vec<_>, _>>()?;

        let extract = raw.extract.unwrap_or_default();
        if let Some(b) = extract.batch_size {
            self.at_least_one("extract.batch_size", b)?;
        }
        if let Some(t) = extract.decode_threads {
            self.at_least_one("extract.decode_threads", t)?;
        }

        let cv = raw.cv.unwrap_or_default();
        let folds = cv.folds.unwrap_or(DEFAULT_FOLDS);
        if !(1..=100).contains(&folds) {
            return Err(self.invalid(
                "cv.folds",
                format!("= {folds} is out of range"),
                "allowed: 1 (one 80/20 split) to 100",
            ));
        }

        let head = self.head(raw.head.unwrap_or_default())?;
        if head.calibrate != super::Calibration::None && folds < 2 {
            return Err(self.invalid(
                "head.calibrate",
                format!("needs cv.folds >= 2 (cv.folds = {folds})"),
                "the temperature is fitted out of fold and scored by nested cross-validation over the folds: set cv.folds >= 2, or remove head.calibrate",
            ));
        }

        if let Some(d) = &raw.device {
            if !is_device_name(d) {
                return Err(self.invalid(
                    "device",
                    format!("= {d:?} is not a device"),
                    "allowed: \"auto\", \"cpu\", \"cuda\", \"cuda:N\"",
                ));
            }
        }
        Ok(Spec {
            name,
            seed: raw.seed.unwrap_or(DEFAULT_SEED),
            views,
            device: raw.device,
            data: self.data(data)?,
            backbones,
            extract: ExtractSpec {
                batch_size: extract.batch_size,
                decode_threads: extract.decode_threads,
                // f32 is the default and is not written out.
                precision: extract.precision.filter(|p| *p != super::Precision::F32),
            },
            cv: CvSpec {
                folds,
                stratified: cv.stratified.unwrap_or(true),
            },
            head,
        })
    }

    fn head(&self, raw: RawHead) -> Result<HeadSpec, SpecError> {
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

    fn data(&self, raw: RawData) -> Result<DataSpec, SpecError> {
        let Some(layout) = raw.layout else {
            return Err(self.invalid(
                "data.layout",
                "is missing".into(),
                "allowed: \"kaggle\" (labels.csv, train/, test/) or \"folders\" (one folder per class)",
            ));
        };
        let root = raw.root.map(|r| self.path(r));
        let under_root = |key: &str, default: &str| -> Option<PathBuf> {
            root.as_ref().map(|r| r.join(default)).filter(|p| {
                // Optional paths default only when present; required ones
                // always default so the error names the missing path. A
                // path given explicitly is never dropped: a typo is an error.
                key == "train_dir" || key == "labels" || p.exists()
            })
        };
        let pick = |given: Option<PathBuf>, key: &str, default: &str| -> Option<PathBuf> {
            given
                .map(|p| self.path(p))
                .or_else(|| under_root(key, default))
        };
        let image_ext = raw.image_ext.unwrap_or_else(|| "jpg".into());
        let image_ext = image_ext.trim_start_matches('.').to_string();
        // What both layouts read the same way: the test side and the image
        // extension (the layout and training side are set below).
        let test_side = DataSpec {
            layout,
            train_dir: PathBuf::new(),
            labels: None,
            test_dir: pick(raw.test_dir, "test_dir", "test"),
            sample_submission: pick(
                raw.sample_submission,
                "sample_submission",
                "sample_submission.csv",
            ),
            test_labels: pick(raw.test_labels, "test_labels", "test_labels.csv"),
            image_ext,
            on_bad_image: raw.on_bad_image.unwrap_or_default(),
        };
        match layout {
            Layout::Kaggle => {
                let labels = pick(raw.labels, "labels", "labels.csv");
                let train_dir = pick(raw.train_dir, "train_dir", "train");
                let (Some(labels), Some(train_dir)) = (labels, train_dir) else {
                    return Err(self.invalid(
                        "data",
                        "has neither `root` nor both `labels` and `train_dir`".into(),
                        "give `root` (a folder with labels.csv, train/, test/, sample_submission.csv) or the paths one by one",
                    ));
                };
                Ok(DataSpec {
                    layout: Layout::Kaggle,
                    train_dir,
                    labels: Some(labels),
                    ..test_side
                })
            }
            Layout::Folders => {
                if raw.labels.is_some() {
                    return Err(self.invalid(
                        "data.labels",
                        "is set with layout = \"folders\"".into(),
                        "labels come from the class folder names; remove `labels` or use layout = \"kaggle\"",
                    ));
                }
                let Some(train_dir) = pick(raw.train_dir, "train_dir", "train") else {
                    return Err(self.invalid(
                        "data.train_dir",
                        "is missing".into(),
                        "give `train_dir` (one folder per class) or `root` holding train/",
                    ));
                };
                Ok(DataSpec {
                    layout: Layout::Folders,
                    train_dir,
                    labels: None,
                    ..test_side
                })
            }
        }
    }

    fn backbone(&self, i: usize, raw: RawBackbone) -> Result<BackboneSpec, SpecError> {
        let weights = self.path(raw.weights.clone());
        let (input_size, preprocess, resize) = match raw.arch.pretrained_cfg() {
            Some(cfg) => {
                for (key, set) in [
                    ("output", raw.output.is_some()),
                    ("input_layout", raw.input_layout.is_some()),
                ] {
                    if set {
                        return Err(self.invalid(
                            &format!("backbone[{i}].{key}"),
                            format!("is set for arch = \"{}\"", raw.arch.name()),
                            "it applies to arch = \"onnx\" only; remove it",
                        ));
                    }
                }
                (
                    raw.input_size.unwrap_or(cfg.input_size),
                    raw.preprocess.unwrap_or(cfg.preprocess),
                    raw.resize.unwrap_or(cfg.resize),
                )
            }
            None => {
                let (size, preprocess) = self.onnx_defaults(i, &raw, &weights)?;
                (size, preprocess, raw.resize.unwrap_or_default())
            }
        };
        if !(32..=1024).contains(&input_size) {
            return Err(self.invalid(
                &format!("backbone[{i}].input_size"),
                format!("= {input_size} is out of range"),
                "allowed: 32 to 1024 pixels",
            ));
        }
        Ok(BackboneSpec {
            arch: raw.arch,
            weights,
            input_size,
            preprocess,
            resize,
            output: raw.output,
            input_layout: raw.input_layout,
        })
    }

    /// An ONNX backbone's input size (given, or fixed by the graph) and
    /// preprocessing (always given: a graph does not say how it was trained).
    fn onnx_defaults(
        &self,
        i: usize,
        raw: &RawBackbone,
        weights: &Path,
    ) -> Result<(usize, runner_models::Preprocess), SpecError> {
        let Some(preprocess) = raw.preprocess else {
            return Err(self.invalid(
                &format!("backbone[{i}].preprocess"),
                "is missing (an ONNX graph does not record how its inputs were scaled)".into(),
                "set preprocess = \"inception\" ([-1, 1]), \"imagenet\" (torchvision mean/std) or \"efficientnet_lite\"",
            ));
        };
        if let Some(size) = raw.input_size {
            return Ok((size, preprocess));
        }
        let summary = runner_models::onnx::read_model(weights)
            .and_then(|m| runner_models::onnx::summarize(&m, weights));
        match summary {
            Ok(s) => match s.input_size {
                Some(size) => Ok((size, preprocess)),
                None => Err(self.invalid(
                    &format!("backbone[{i}].input_size"),
                    format!(
                        "is missing and the graph's input `{}` does not fix it",
                        s.input_name
                    ),
                    "set input_size (pixels, e.g. 224)",
                )),
            },
            Err(e) => Err(self.invalid(
                &format!("backbone[{i}].weights"),
                format!("cannot be read to find the input size ({e})"),
                "fix the path or set input_size",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;

    const MINIMAL: &str = r#"
name = "t"
[data]
layout = "kaggle"
root = "data"
[[backbone]]
arch = "efficientnet_lite0"
weights = "w.safetensors"
"#;

    #[test]
    fn defaults_fill_every_key() {
        let spec = parse(MINIMAL, "t.toml", Path::new("/specs")).unwrap();
        assert_eq!(spec.seed, DEFAULT_SEED);
        // Device-dependent: 16 on the CPU (crate::features::batch_size).
        assert_eq!(spec.extract.batch_size, None);
        assert_eq!(
            crate::features::batch_size(&spec, &candle_core::Device::Cpu),
            DEFAULT_EXTRACT_BATCH
        );
        assert_eq!(spec.cv.folds, 5);
        assert!(spec.cv.stratified);
        assert_eq!(spec.head.lr, 0.01);
        assert_eq!(spec.backbones[0].input_size, 224);
        assert_eq!(spec.backbones[0].weights, Path::new("/specs/w.safetensors"));
        assert_eq!(
            spec.data.labels.as_deref(),
            Some(Path::new("/specs/data/labels.csv"))
        );
        // The resolved spec round-trips through TOML.
        let again: Spec = toml::from_str(&spec.to_toml()).unwrap();
        assert_eq!(again, spec);
    }

    /// The serialised backbone (what spec hashes and cache keys read) spells
    /// the architecture by its registered name and omits the ONNX-only keys.
    #[test]
    fn a_resolved_backbone_serialises_to_its_canonical_json() {
        let spec = parse(MINIMAL, "t.toml", Path::new("/specs")).unwrap();
        assert_eq!(
            serde_json::to_string(&spec.backbones[0]).unwrap(),
            r#"{"arch":"efficientnet_lite0","weights":"/specs/w.safetensors","input_size":224,"preprocess":"efficientnet_lite","resize":"box"}"#
        );
    }

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

    #[test]
    fn backbone_defaults_come_from_the_registered_pretrained_config() {
        for entry in runner_models::registry::all() {
            let Some(cfg) = entry.pretrained_cfg else {
                continue;
            };
            let text = MINIMAL.replace("efficientnet_lite0", entry.name);
            let spec = parse(&text, "t.toml", Path::new("/specs")).unwrap();
            let b = &spec.backbones[0];
            assert_eq!(b.arch.name(), entry.name);
            assert_eq!(
                (b.input_size, b.preprocess, b.resize),
                (cfg.input_size, cfg.preprocess, cfg.resize),
                "{}",
                entry.name
            );
        }
    }
}
