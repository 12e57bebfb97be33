//! `[data]`: the layout, and every path defaulted under `root`.

use std::path::PathBuf;

use super::Resolver;
use crate::spec::raw::RawData;
use crate::spec::{DataSpec, Layout, SpecError};

impl Resolver<'_> {
    pub(super) fn data(&self, raw: RawData) -> Result<DataSpec, SpecError> {
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
}
