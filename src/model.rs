//! A run's model: what `runner predict` needs to classify new images the
//! way the run classified its test set.
//!
//! ```text
//! model/heads.safetensors   every head's dense layer: `fold<F>.<view>.weight`
//!                           (features x classes) and `.bias` (classes)
//! model/manifest.json       classes in column order, views, folds, each
//!                           backbone (arch, weights file and fingerprint,
//!                           input size, preprocessing, resize, feature
//!                           columns), the heads in averaging order
//! ```
//!
//! A prediction is the mean, over every head in the manifest's order, of
//! the head's softmax over its view's features: the backbones' features
//! side by side in manifest order; then the run's temperature, if it was
//! calibrated (what the run's `submission.csv` holds for its test images).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::npy::Matrix;
use crate::spec::{Spec, View};
use crate::train::dense::DenseWeights;

/// Folder of the model inside a run directory.
pub const MODEL_DIR: &str = "model";
const HEADS_FILE: &str = "heads.safetensors";
const MANIFEST_FILE: &str = "manifest.json";
/// Bumped when the layout changes incompatibly.
const FORMAT_VERSION: u32 = 1;

/// One backbone as the run used it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedBackbone {
    /// The resolved `[[backbone]]` table (arch, weights, input size,
    /// preprocessing, resize, ...).
    pub spec: serde_json::Value,
    pub weights: PathBuf,
    /// What the feature cache keys the weights by
    /// ([`crate::plan::weights_fingerprint`]).
    pub weights_fingerprint: String,
    /// This backbone's columns in the concatenated features: `first..end`.
    pub columns: [usize; 2],
}

/// One head: which fold and view, and its tensors' names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedHead {
    /// 1-based, as the run reports folds.
    pub fold: usize,
    pub view: View,
}

impl SavedHead {
    fn tensor(&self, part: &str) -> String {
        format!("fold{}.{}.{part}", self.fold, self.view.name())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub runner_version: String,
    /// Class names in probability-column order.
    pub classes: Vec<String>,
    pub views: Vec<View>,
    pub folds: usize,
    pub features: usize,
    pub backbones: Vec<SavedBackbone>,
    /// In the order the run averaged them.
    pub heads: Vec<SavedHead>,
    /// How heads combine, for readers of the file.
    pub combine: String,
    /// `1 / T` of the run's temperature scaling (`[head] calibrate`),
    /// applied to the mean of the heads; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inverse_temperature: Option<f64>,
}

/// A run's heads, ready to predict.
pub struct Model {
    pub manifest: Manifest,
    pub heads: Vec<(SavedHead, DenseWeights)>,
}

impl Model {
    /// The model of a run of `spec` whose heads are `heads` (averaging
    /// order), `fingerprints` the weights fingerprints in backbone order
    /// and `widths` each backbone's feature count.
    pub fn new(
        spec: &Spec,
        classes: &[String],
        folds: usize,
        fingerprints: Vec<String>,
        widths: &[usize],
        heads: Vec<(SavedHead, DenseWeights)>,
        inverse_temperature: Option<f64>,
    ) -> Model {
        let mut first = 0;
        let backbones = spec
            .backbones
            .iter()
            .zip(fingerprints)
            .zip(widths)
            .map(|((b, fingerprint), &width)| {
                first += width;
                SavedBackbone {
                    spec: serde_json::to_value(b).expect("a backbone serialises"),
                    weights: b.weights.clone(),
                    weights_fingerprint: fingerprint,
                    columns: [first - width, first],
                }
            })
            .collect();
        Model {
            manifest: Manifest {
                format_version: FORMAT_VERSION,
                runner_version: env!("CARGO_PKG_VERSION").to_string(),
                classes: classes.to_vec(),
                views: spec.views.clone(),
                folds,
                features: first,
                backbones,
                heads: heads.iter().map(|(h, _)| h.clone()).collect(),
                combine: match inverse_temperature {
                    None => "mean over heads (in this order) of softmax(features[view] @ weight + bias)",
                    Some(_) => "mean over heads (in this order) of softmax(features[view] @ weight + bias), then p ∝ p^inverse_temperature",
                }
                .into(),
                inverse_temperature,
            },
            heads,
        }
    }

    /// Writes `model/` into `run_dir` (each file atomically).
    pub fn save(&self, run_dir: &Path) -> anyhow::Result<()> {
        let dir = run_dir.join(MODEL_DIR);
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let le = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        for (head, w) in &self.heads {
            let (rows, cols) = (w.weight.rows, w.weight.cols);
            tensors.push((head.tensor("weight"), vec![rows, cols], le(&w.weight.data)));
            tensors.push((head.tensor("bias"), vec![w.bias.len()], le(&w.bias)));
        }
        let views = tensors
            .iter()
            .map(|(name, shape, data)| {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    shape.clone(),
                    data,
                )
                .expect("shape matches data");
                (name.clone(), view)
            })
            .collect::<Vec<_>>();
        let bytes = safetensors::serialize(views, None).context("cannot serialise the heads")?;
        crate::cache::write_atomic(&dir.join(HEADS_FILE), &bytes)?;
        crate::cache::write_atomic(
            &dir.join(MANIFEST_FILE),
            &serde_json::to_vec_pretty(&self.manifest)?,
        )?;
        Ok(())
    }

    /// The saved spec and the model of the finished run in `run_dir` (what
    /// `runner predict` and `runner export` start from).
    pub fn load_with_spec(run_dir: &Path) -> anyhow::Result<(Spec, Model)> {
        let spec_path = run_dir.join("spec.toml");
        if !spec_path.is_file() {
            bail!(
                "{} is not a run directory (it has no spec.toml)",
                run_dir.display()
            );
        }
        let spec = crate::spec::load(&spec_path)?;
        Ok((spec, Model::load(run_dir)?))
    }

    /// Reads `model/` of a run directory.
    pub fn load(run_dir: &Path) -> anyhow::Result<Model> {
        let dir = run_dir.join(MODEL_DIR);
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.is_file() {
            bail!(
                "{} has no {MODEL_DIR}/{MANIFEST_FILE}: only runs that finished with this version of runner hold a model (`runner rerun {}` makes one)",
                run_dir.display(),
                run_dir.display()
            );
        }
        let manifest: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path)?)
            .with_context(|| format!("cannot parse {}", manifest_path.display()))?;
        if manifest.format_version != FORMAT_VERSION {
            bail!(
                "{} is format {}; this runner reads format {FORMAT_VERSION}",
                manifest_path.display(),
                manifest.format_version
            );
        }
        let heads_path = dir.join(HEADS_FILE);
        let bytes = std::fs::read(&heads_path)
            .with_context(|| format!("cannot read {}", heads_path.display()))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("cannot parse {}", heads_path.display()))?;
        let (d, k) = (manifest.features, manifest.classes.len());
        let read = |name: &str, len: usize| -> anyhow::Result<Vec<f32>> {
            let t = file
                .tensor(name)
                .with_context(|| format!("{}: no tensor `{name}`", heads_path.display()))?;
            if t.dtype() != safetensors::Dtype::F32 || t.data().len() != len * 4 {
                bail!(
                    "{}: tensor `{name}` is not {len} f32 values",
                    heads_path.display()
                );
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        let heads = manifest
            .heads
            .iter()
            .map(|h| {
                Ok((
                    h.clone(),
                    DenseWeights {
                        weight: Matrix::new(d, k, read(&h.tensor("weight"), d * k)?),
                        bias: read(&h.tensor("bias"), k)?,
                    },
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Model { manifest, heads })
    }

    /// Checks that each backbone's weights file is where the run read it
    /// and unchanged (the same fingerprint), so that a prediction means
    /// what the run measured.
    pub fn check_backbones(
        &self,
        spec: &Spec,
        cache: &crate::cache::FeatureCache,
    ) -> anyhow::Result<()> {
        if spec.backbones.len() != self.manifest.backbones.len() {
            bail!("the run's spec.toml and model/manifest.json list different backbones");
        }
        for (i, (b, saved)) in spec
            .backbones
            .iter()
            .zip(&self.manifest.backbones)
            .enumerate()
        {
            if !b.weights.is_file() {
                bail!(
                    "backbone[{i}] ({}): the weights file {} the run used is missing; put it back to predict with this run",
                    b.arch.name(),
                    b.weights.display()
                );
            }
            let now = crate::plan::checked_fingerprint(b, Some(cache))
                .with_context(|| format!("backbone[{i}] ({})", b.arch.name()))?;
            if now != saved.weights_fingerprint {
                bail!(
                    "backbone[{i}] ({}): {} changed since the run (its fingerprint was {}, is {}): its features would not be the ones the heads learned from; restore the file or run the experiment again",
                    b.arch.name(),
                    b.weights.display(),
                    &saved.weights_fingerprint[..12.min(saved.weights_fingerprint.len())],
                    &now[..12.min(now.len())]
                );
            }
        }
        Ok(())
    }

    /// Class probabilities for rows of features, one matrix per view
    /// (`features[i]` for `manifest.views[i]`): the mean over the heads.
    pub fn predict(&self, features: &[Matrix]) -> anyhow::Result<Matrix> {
        let engine = crate::train::dense::Engine::Host;
        let mut parts = Vec::with_capacity(self.heads.len());
        for (head, w) in &self.heads {
            let v = self
                .manifest
                .views
                .iter()
                .position(|&v| v == head.view)
                .context("a head of a view the manifest does not list")?;
            parts.push(engine.probabilities(w, &features[v])?);
        }
        let mean = crate::pipeline::mean(&parts.iter().collect::<Vec<_>>());
        Ok(match self.manifest.inverse_temperature {
            None => mean,
            Some(t) => crate::pipeline::temperature_scaling(t).apply(&[&mean]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_model_reads_back_and_predicts_the_mean_of_its_heads() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::spec::test_spec(dir.path(), "views = [\"original\", \"hflip\"]");
        let w = |s: f32| DenseWeights {
            weight: Matrix::new(2, 3, vec![s, 0.0, -s, 0.5, s, 0.0]),
            bias: vec![0.1, 0.0, -0.1],
        };
        let heads = vec![
            (
                SavedHead {
                    fold: 1,
                    view: View::Original,
                },
                w(1.0),
            ),
            (
                SavedHead {
                    fold: 1,
                    view: View::Hflip,
                },
                w(-2.0),
            ),
        ];
        let classes = vec!["a".to_string(), "b".into(), "c".into()];
        let model = Model::new(&spec, &classes, 1, vec!["fp".into()], &[2], heads, None);
        model.save(dir.path()).unwrap();
        let back = Model::load(dir.path()).unwrap();
        assert_eq!(back.heads, model.heads);
        assert_eq!(back.manifest.classes, classes);
        assert_eq!(back.manifest.backbones[0].columns, [0, 2]);

        let x = Matrix::new(1, 2, vec![1.0, 2.0]);
        let p = back.predict(&[x.clone(), x.clone()]).unwrap();
        let engine = crate::train::dense::Engine::Host;
        let (a, b) = (
            engine.probabilities(&w(1.0), &x).unwrap(),
            engine.probabilities(&w(-2.0), &x).unwrap(),
        );
        for j in 0..3 {
            assert_eq!(p.data[j], (a.data[j] + b.data[j]) / 2.0);
        }
    }
}
