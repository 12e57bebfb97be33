//! `runner predict RUN_DIR IMAGE_OR_DIR...`: a finished run's model on new
//! images, exactly as the run predicted its test set: the run's spec
//! decodes and extracts (through the feature cache, so a set of images
//! seen before costs nothing), the run's heads are averaged.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use candle_core::Device;

use crate::cache::FeatureCache;
use crate::data::{Dataset, Item};
use crate::log::Log;
use crate::model::Model;
use crate::npy::Matrix;
use crate::plan::{Plan, Split};
use crate::run::Run;

/// Class probabilities for some images.
pub struct Predictions {
    pub items: Vec<Item>,
    pub classes: Vec<String>,
    /// A row per item, a column per class.
    pub probabilities: Matrix,
}

/// The images named: files as given, folders' JPEG and PNG files sorted by
/// name. Each image's id is its file name without the extension.
pub fn collect_images(paths: &[PathBuf]) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    for path in paths {
        if path.is_dir() {
            let found = crate::data::list_images(path)?;
            if found.is_empty() {
                bail!("{} holds no .jpg, .jpeg or .png files", path.display());
            }
            items.extend(found);
        } else if path.is_file() {
            let id = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            items.push(Item {
                id,
                path: path.clone(),
            });
        } else {
            bail!("{} does not exist", path.display());
        }
    }
    Ok(items)
}

/// Predicts `images` with the model of the run in `run_dir`.
pub fn predict(
    run_dir: &Path,
    images: &[PathBuf],
    cache: &FeatureCache,
    device: &Device,
    log: &Log,
) -> anyhow::Result<Predictions> {
    let (spec, model) = Model::load_with_spec(run_dir)?;
    model
        .check_backbones(&spec, cache)
        .with_context(|| format!("{}", run_dir.join("spec.toml").display()))?;
    let items = collect_images(images)?;
    let data = Dataset {
        classes: model.manifest.classes.clone(),
        train: Vec::new(),
        labels: Vec::new(),
        test: items,
        test_labels: None,
        submission_header: None,
        skipped: Vec::new(),
    };
    let plan = Plan::new(&spec, &data, Some(cache))?;
    let run = Run {
        spec: &spec,
        data: &data,
        cache,
        device,
        log,
    };
    let feats = crate::features::ensure(&run, &plan)?;
    let views: Vec<Matrix> = model
        .manifest
        .views
        .iter()
        .map(|&view| feats.concat(&plan, spec.backbones.len(), view, Split::Test))
        .collect();
    let probabilities = model.predict(&views)?;
    Ok(Predictions {
        items: data.test,
        classes: data.classes,
        probabilities,
    })
}

impl Predictions {
    /// Row `r`'s probabilities normalised to sum to 1 in f64, as the run's
    /// `submission.csv` writes them.
    fn normalised(&self, r: usize) -> Vec<f64> {
        let row = self.probabilities.row(r);
        let sum: f64 = row.iter().map(|&p| p as f64).sum();
        row.iter().map(|&p| p as f64 / sum).collect()
    }

    /// Each image's `k` most probable classes, most probable first.
    pub fn top(&self, k: usize) -> Vec<Vec<(&str, f64)>> {
        (0..self.items.len())
            .map(|r| {
                let mut row: Vec<(&str, f64)> = self
                    .classes
                    .iter()
                    .map(String::as_str)
                    .zip(self.normalised(r))
                    .collect();
                // Stable: ties keep the class order.
                row.sort_by(|a, b| b.1.total_cmp(&a.1));
                row.truncate(k);
                row
            })
            .collect()
    }

    /// `id,<class>...` rows, exactly as a run's `submission.csv` holds them.
    pub fn csv(&self) -> csv::Result<Vec<u8>> {
        let data = Dataset {
            classes: self.classes.clone(),
            train: Vec::new(),
            labels: Vec::new(),
            test: self.items.clone(),
            test_labels: None,
            submission_header: None,
            skipped: Vec::new(),
        };
        crate::pipeline::submission_csv(&data, &self.probabilities)
    }

    /// The top-`k` classes as text: a table, CSV (`id,rank,class,probability`)
    /// or JSON.
    pub fn render(&self, k: usize, format: Format) -> anyhow::Result<String> {
        let top = self.top(k);
        Ok(match format {
            Format::Table => {
                let width = self.items.iter().map(|i| i.id.len()).max().unwrap_or(2);
                let mut out = String::new();
                for (item, classes) in self.items.iter().zip(&top) {
                    let cells: Vec<String> =
                        classes.iter().map(|(c, p)| format!("{c} {p:.4}")).collect();
                    out.push_str(&format!("{:<width$}  {}\n", item.id, cells.join("  ")));
                }
                out
            }
            Format::Csv => {
                let mut rows = vec![vec![
                    "id".to_string(),
                    "rank".into(),
                    "class".into(),
                    "probability".into(),
                ]];
                for (item, classes) in self.items.iter().zip(&top) {
                    for (rank, (c, p)) in classes.iter().enumerate() {
                        rows.push(vec![
                            item.id.clone(),
                            (rank + 1).to_string(),
                            c.to_string(),
                            p.to_string(),
                        ]);
                    }
                }
                String::from_utf8(crate::pipeline::csv_bytes(rows)?)?
            }
            Format::Json => {
                let rows: Vec<serde_json::Value> = self
                    .items
                    .iter()
                    .zip(&top)
                    .map(|(item, classes)| {
                        serde_json::json!({
                            "id": item.id,
                            "path": item.path,
                            "top": classes.iter().map(|(c, p)| serde_json::json!({"class": c, "probability": p})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                serde_json::to_string_pretty(&rows)? + "\n"
            }
        })
    }
}

/// How `runner predict` prints its top classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}
