//! A run's inputs and context.
//!
//! [`preflight`] reads a spec, checks what can fail cheaply and loads its
//! dataset, once: the [`Checked`] value it returns is what the run consumes.
//! [`Run`] is what every stage of a run reads (spec, dataset, feature cache,
//! device, log), handed along as one value.

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::Device;

use crate::cache::FeatureCache;
use crate::data::{Dataset, Item};
use crate::log::Log;
use crate::plan::Split;
use crate::spec::{self, Spec};

/// A spec whose weights and images exist, with its dataset loaded.
pub struct Checked {
    pub spec: Spec,
    pub data: Dataset,
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

/// Loads a spec and checks what can fail cheaply (weights present, ONNX
/// graphs lowerable, every listed image present, labels valid) before any
/// work starts.
pub fn preflight(path: &Path) -> anyhow::Result<Checked> {
    let spec = spec::load(path)?;
    for (i, b) in spec.backbones.iter().enumerate() {
        if !b.weights.is_file() {
            bail!(
                "{}: backbone[{i}].weights = {} does not exist; point it at a weights file (see models/README.md)",
                path.display(),
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
            .with_context(|| format!("{}: backbone[{i}]", path.display()))?;
        }
    }
    let data = &spec.data;
    for (key, given) in [
        ("labels", data.labels.as_ref()),
        ("train_dir", Some(&data.train_dir)),
    ] {
        if let Some(p) = given.filter(|p| !p.exists()) {
            bail!(
                "{}: [data] {key} = {} does not exist; set data.root to the folder holding labels.csv, train/ and test/ (or data.{key} itself); relative paths are relative to the spec file",
                path.display(),
                p.display()
            );
        }
    }
    let data = Dataset::load(data).with_context(|| format!("{}: [data]", path.display()))?;
    Ok(Checked { spec, data })
}
