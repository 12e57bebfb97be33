//! The backbone registry (timm's `_registry`): one [`ModelEntry`] per
//! architecture, each with its pretrained configuration, the tensor names
//! that identify its checkpoints, and its loader.
//!
//! Every architecture file exports its entries as `MODELS`; [`FAMILIES`]
//! lists the files. Spec parsing, spec defaults, loading ([`crate::create`]),
//! `runner inspect`, the device check, tests and benches all enumerate this
//! table, so a backbone is added here and in its own file only.

use std::collections::HashSet;
use std::path::Path;

use candle_core::Device;

use crate::config::{BackboneSpec, PretrainedCfg};
use crate::flavour::Flavour;
use crate::layers::Weights;
use crate::onnx::build::GraphBuilder;
use crate::onnx::OnnxBackbone;
use crate::{efficientnet_lite, inception_v3, resnet, xception, Backbone, ModelError};

/// Builds an entry's backbone from a resolved `[[backbone]]` table.
pub type Loader = fn(&BackboneSpec, &Device) -> Result<Box<dyn Backbone>, ModelError>;

/// Writes an entry's backbone into an ONNX graph: from the value `input`
/// (the preprocessed `(N, 3, H, W)` image) to the pooled `(N, features)`
/// value it returns, computing what the loaded backbone computes.
pub type OnnxEmitter = fn(&BackboneSpec, &mut GraphBuilder, &str) -> Result<String, ModelError>;

/// One registered architecture.
#[derive(Debug)]
pub struct ModelEntry {
    /// The `arch` value of a spec (`"resnet50"`).
    pub name: &'static str,
    /// Input size, preprocessing, resize filter and feature width; `None`
    /// where the weights file defines them (ONNX).
    pub pretrained_cfg: Option<PretrainedCfg>,
    /// One [`Probe`] per naming convention the loader reads.
    pub probes: fn() -> Vec<Probe>,
    pub load: Loader,
    /// How `runner export` writes it as ONNX; `None`: not yet (a run on
    /// it exports from features only).
    pub to_onnx: Option<OnnxEmitter>,
}

impl ModelEntry {
    /// An architecture built natively from a checkpoint.
    pub const fn native(
        name: &'static str,
        cfg: PretrainedCfg,
        probes: fn() -> Vec<Probe>,
        load: Loader,
    ) -> Self {
        Self {
            name,
            pretrained_cfg: Some(cfg),
            probes,
            load,
            to_onnx: None,
        }
    }

    /// The entry with its ONNX emitter.
    pub const fn with_onnx(mut self, emit: OnnxEmitter) -> Self {
        self.to_onnx = Some(emit);
        self
    }

    /// The first of the entry's probes that `has` satisfies.
    pub fn probe(&self, has: &dyn Fn(&str) -> bool) -> Option<Probe> {
        (self.probes)().into_iter().find(|p| p.matches(has))
    }
}

/// Tensor names that identify one architecture in one naming convention.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Whose names these are, for people (`"Keras-2 names"`).
    pub naming: &'static str,
    /// The framework whose numerics the loaded backbone follows.
    pub flavour: Flavour,
    /// Tensors every such checkpoint holds.
    pub present: Vec<String>,
    /// Tensors such a checkpoint never holds: what tells it from a deeper
    /// variant with the same names.
    pub absent: Vec<String>,
}

impl Probe {
    /// Keras-2 layer names (`LAYER/VAR`) that a checkpoint holds.
    pub fn keras(present: &[&str]) -> Self {
        Self::holding("Keras-2 names", Flavour::Keras, present)
    }

    /// PyTorch state-dict names of the convention `naming` that a checkpoint holds.
    pub fn torch(naming: &'static str, present: &[&str]) -> Self {
        Self::holding(naming, Flavour::Torch, present)
    }

    fn holding(naming: &'static str, flavour: Flavour, present: &[&str]) -> Self {
        Self {
            naming,
            flavour,
            present: present.iter().map(|s| s.to_string()).collect(),
            absent: Vec::new(),
        }
    }

    /// Whether a checkpoint holding exactly the names `has` accepts follows
    /// this probe's convention.
    pub fn matches(&self, has: &dyn Fn(&str) -> bool) -> bool {
        self.present.iter().all(|n| has(n)) && !self.absent.iter().any(|n| has(n))
    }
}

/// The [`Flavour`] of `w` according to the first matching probe, or an
/// error naming what each probe looks for.
pub fn detect_flavour(w: &Weights, probes: &[Probe]) -> Result<Flavour, ModelError> {
    if let Some(p) = probes.iter().find(|p| p.matches(&|n| w.contains(n))) {
        return Ok(p.flavour);
    }
    let wanted: Vec<String> = probes
        .iter()
        .map(|p| {
            let names: Vec<String> = p.present.iter().map(|n| format!("`{n}`")).collect();
            format!("{} ({})", p.naming, names.join(", "))
        })
        .collect();
    Err(w.candle_err(candle_core::Error::Msg(format!(
        "the checkpoint holds none of these sets of tensors: {}",
        wanted.join("; ")
    ))))
}

/// `arch = "onnx"`: any ONNX image model, configured by its graph and the spec.
pub static ONNX: ModelEntry = ModelEntry {
    name: "onnx",
    pretrained_cfg: None,
    probes: Vec::new,
    load: load_onnx,
    to_onnx: Some(crate::onnx::embed_to_onnx),
};

fn load_onnx(spec: &BackboneSpec, _device: &Device) -> Result<Box<dyn Backbone>, ModelError> {
    let net = OnnxBackbone::load(&spec.weights, &spec.onnx_options(), spec.input_size)?;
    Ok(Box::new(net))
}

/// Every architecture file's entries, one line per file.
static FAMILIES: &[&[ModelEntry]] = &[
    xception::MODELS,
    inception_v3::MODELS,
    efficientnet_lite::MODELS,
    resnet::MODELS,
    std::slice::from_ref(&ONNX),
];

/// Every registered architecture, in registration order.
pub fn all() -> impl Iterator<Item = &'static ModelEntry> {
    FAMILIES.iter().flat_map(|family| family.iter())
}

/// The entry registered as `name`.
pub fn find(name: &str) -> Option<&'static ModelEntry> {
    all().find(|e| e.name == name)
}

/// The architecture and naming convention of a checkpoint holding `names`.
pub fn identify<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Option<(&'static ModelEntry, Probe)> {
    let names: HashSet<&str> = names.into_iter().collect();
    let has = |n: &str| names.contains(n);
    all().find_map(|e| e.probe(&has).map(|p| (e, p)))
}

/// [`identify`] for the checkpoint at `path` (any container
/// [`Weights::read`] reads).
pub fn identify_file(path: &Path) -> Result<Option<(&'static ModelEntry, Probe)>, ModelError> {
    let w = Weights::read("the", path)?;
    let names = w.summary();
    Ok(identify(names.iter().map(|(n, _, _)| n.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_names_are_unique() {
        let mut names: Vec<&str> = all().map(|e| e.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "{names:?}");
        assert!(find("resnet50").is_some() && find("onnx").is_some());
        assert!(find("resnet9000").is_none());
    }

    /// The tensors a probe lists identify its own entry and no other.
    #[test]
    fn each_probe_identifies_only_its_own_entry() {
        for entry in all() {
            for probe in (entry.probes)() {
                let (found, naming) = identify(probe.present.iter().map(String::as_str))
                    .unwrap_or_else(|| panic!("{}: {} not identified", entry.name, probe.naming));
                assert_eq!(found.name, entry.name, "{}", probe.naming);
                assert_eq!(naming, probe);
                let others: Vec<&str> = all()
                    .filter(|e| e.name != entry.name)
                    .filter(|e| e.probe(&|n| probe.present.iter().any(|p| p == n)).is_some())
                    .map(|e| e.name)
                    .collect();
                assert!(others.is_empty(), "{}: also {others:?}", entry.name);
            }
        }
    }

    #[test]
    fn native_entries_have_a_config_and_a_probe() {
        for entry in all().filter(|e| e.name != ONNX.name) {
            assert!(entry.pretrained_cfg.is_some(), "{}", entry.name);
            assert!(!(entry.probes)().is_empty(), "{}", entry.name);
        }
        assert!(ONNX.pretrained_cfg.is_none());
    }
}
