//! A run's inputs and context.
//!
//! [`preflight`] checks a resolved spec where it can fail cheaply and loads
//! its dataset, once: the [`Checked`] value it returns is what the run
//! consumes.
//! [`Run`] is what every stage of a run reads (spec, dataset, feature cache,
//! device, log), handed along as one value.

use std::sync::Arc;

use anyhow::{bail, Context};
use candle_core::Device;

use crate::cache::FeatureCache;
use crate::data::{Dataset, Item};
use crate::log::Log;
use crate::plan::Split;
use crate::spec::{DataSpec, Spec};

/// A spec whose weights and images exist, with its dataset loaded.
pub struct Checked {
    pub spec: Spec,
    /// Shared by the members of a sweep that read the same data.
    pub data: Arc<Dataset>,
}

impl Checked {
    /// The context of a run of this spec.
    pub fn run<'a>(&'a self, cache: &'a FeatureCache, device: &'a Device, log: &'a Log) -> Run<'a> {
        Run {
            spec: &self.spec,
            data: &self.data,
            cache,
            device,
            log,
        }
    }
}

/// What the stages of one run share.
#[derive(Clone, Copy)]
pub struct Run<'a> {
    pub spec: &'a Spec,
    pub data: &'a Dataset,
    pub cache: &'a FeatureCache,
    pub device: &'a Device,
    pub log: &'a Log,
}

impl Run<'_> {
    /// The images of one split, in row order.
    pub fn items(&self, split: Split) -> &[Item] {
        match split {
            Split::Train => &self.data.train,
            Split::Test => &self.data.test,
        }
    }
}

/// Datasets loaded so far, by the `[data]` that describes them.
#[derive(Default)]
pub struct Datasets(Vec<(DataSpec, Arc<Dataset>)>);

/// Checks what can fail cheaply before any work starts (weights present,
/// ONNX graphs lowerable, every listed image present, labels valid, every
/// fold with training and validation rows); `origin` names the spec in
/// errors. Specs reading the same data share one dataset from `datasets`.
pub fn preflight(spec: Spec, origin: &str, datasets: &mut Datasets) -> anyhow::Result<Checked> {
    for (i, b) in spec.backbones.iter().enumerate() {
        if !b.weights.is_file() {
            bail!(
                "{origin}: backbone[{i}].weights = {} does not exist; point it at a weights file (see models/README.md)",
                b.weights.display()
            );
        }
        if b.arch == runner_models::Arch::ONNX {
            // Parse and lower the graph now: an unsupported op or a missing
            // output is reported before any image is read.
            let model = runner_models::onnx::read_model(&b.weights)?;
            runner_models::onnx::Program::lower(
                &model,
                b.output.as_deref(),
                &b.weights.display().to_string(),
            )
            .with_context(|| format!("{origin}: backbone[{i}]"))?;
        }
    }
    let data = match datasets.0.iter().find(|(s, _)| *s == spec.data) {
        Some((_, d)) => d.clone(),
        None => {
            let d = Arc::new(load_data(&spec, origin)?);
            datasets.0.push((spec.data.clone(), d.clone()));
            d
        }
    };
    crate::pipeline::fold_plan(&spec, &data).with_context(|| origin.to_string())?;
    Ok(Checked { spec, data })
}

fn load_data(spec: &Spec, origin: &str) -> anyhow::Result<Dataset> {
    let data = &spec.data;
    for (key, given) in [
        ("labels", data.labels.as_ref()),
        ("train_dir", Some(&data.train_dir)),
    ] {
        if let Some(p) = given.filter(|p| !p.exists()) {
            bail!(
                "{origin}: [data] {key} = {} does not exist; set data.root to the folder holding labels.csv, train/ and test/ (or data.{key} itself); relative paths are relative to the spec file",
                p.display()
            );
        }
    }
    Dataset::load(data).with_context(|| format!("{origin}: [data]"))
}
