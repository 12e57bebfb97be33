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
use crate::spec::{DataSpec, Layout, OnBadImage, Spec};

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

/// Datasets loaded so far, by the `[data]` that describes them, and the
/// feature cache that remembers which images `on_bad_image = "skip"`
/// leaves out (no cache: checked every time).
#[derive(Default)]
pub struct Datasets {
    loaded: Vec<(DataSpec, Arc<Dataset>)>,
    cache: Option<FeatureCache>,
}

impl Datasets {
    pub fn new(cache: FeatureCache) -> Datasets {
        Datasets {
            loaded: Vec::new(),
            cache: Some(cache),
        }
    }
}

/// Checks what can fail cheaply before any work starts (weights present,
/// ONNX graphs lowerable, every listed image present, labels valid, every
/// fold with training and validation rows); `origin` names the spec in
/// errors. Specs reading the same data share one dataset from `datasets`.
pub fn preflight(spec: Spec, origin: &str, datasets: &mut Datasets) -> anyhow::Result<Checked> {
    for (i, b) in spec.backbones.iter().enumerate() {
        if b.weights.is_dir() {
            bail!(
                "{origin}: backbone[{i}].weights = {} is a folder; point it at the weights file inside it (see models/README.md)",
                b.weights.display()
            );
        }
        if !b.weights.is_file() {
            bail!(
                "{origin}: backbone[{i}].weights = {} does not exist; point it at a weights file (see models/README.md)",
                b.weights.display()
            );
        }
        if b.arch != runner_models::Arch::ONNX {
            // Truncated, of another architecture, or holding NaN: refused
            // before any run directory exists (memoised: paid once per file).
            crate::plan::checked_fingerprint(b, datasets.cache.as_ref()).with_context(|| {
                format!("{origin}: backbone[{i}] (arch = \"{}\")", b.arch.name())
            })?;
        }
        if b.arch == runner_models::Arch::ONNX {
            // Lower the graph and run one blank image through it now: an
            // unsupported op, a missing output, a shape that does not fit
            // the input size or a token output without a pool is reported
            // before any image is read.
            runner_models::onnx::OnnxBackbone::load(&b.weights, &b.onnx_options(), b.input_size)
                .with_context(|| format!("{origin}: backbone[{i}]"))?;
        }
    }
    let data = match datasets.loaded.iter().find(|(s, _)| *s == spec.data) {
        Some((_, d)) => d.clone(),
        None => {
            let mut d = load_data(&spec, origin)?;
            if spec.data.on_bad_image == OnBadImage::Skip {
                skip_bad_images(&spec, &mut d, datasets.cache.as_ref())
                    .with_context(|| format!("{origin}: [data]"))?;
            }
            let d = Arc::new(d);
            datasets.loaded.push((spec.data.clone(), d.clone()));
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

/// What version of the image check a memo holds: a change to what counts as
/// a bad image must not be served from an older memo.
const IMAGE_CHECK_MEMO: &str = "bad-training-images-1";

/// `on_bad_image = "skip"`: decodes every training image before the folds
/// are planned (the fold plan depends on which images there are) and leaves
/// out those that are damaged or do not decode. The verdict is memoised on
/// the image files, so it is paid once.
fn skip_bad_images(
    spec: &Spec,
    data: &mut Dataset,
    cache: Option<&FeatureCache>,
) -> anyhow::Result<()> {
    let paths: Vec<&std::path::Path> = data.train.iter().map(|i| i.path.as_path()).collect();
    // A pool of its own: the global one is sized by --threads after every
    // spec is checked.
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("check-{i}"))
        .build()
        .context("cannot start the image-checking threads")?;
    let check = || -> Result<String, std::convert::Infallible> {
        let bad = bad_images(&data.train);
        Ok(serde_json::to_string(&bad).expect("pairs serialise"))
    };
    let memo = pool.install(|| match cache {
        Some(cache) => cache.memoised(IMAGE_CHECK_MEMO, &paths, check),
        None => check(),
    });
    let memo = memo.unwrap_or_else(|never| match never {});
    let bad: Vec<(usize, String)> = serde_json::from_str(&memo)
        .context("the memo of damaged images does not parse (delete the cache's memo folder)")?;
    let source = match spec.data.layout {
        Layout::Kaggle => spec.data.labels.clone().unwrap_or_default(),
        Layout::Folders => spec.data.train_dir.clone(),
    };
    data.leave_out(&bad, &source)?;
    Ok(())
}

/// The training images that are damaged or do not decode, by index, each
/// with a message naming it and what is wrong.
fn bad_images(items: &[crate::data::Item]) -> Vec<(usize, String)> {
    use rayon::prelude::*;
    items
        .par_iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let why = match crate::data::image::decode_file(&item.path) {
                Ok(d) => format!("{} {}", item.path.display(), d.damage?),
                Err(e) => {
                    let mut why = e.to_string();
                    let mut source = std::error::Error::source(&e);
                    while let Some(s) = source {
                        why.push_str(&format!(": {s}"));
                        source = s.source();
                    }
                    why
                }
            };
            Some((i, why))
        })
        .collect()
}
