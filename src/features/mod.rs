//! The feature stage: images -> pooled backbone features, cached.
//!
//! For each split, the stages that the cache lacks are computed together in
//! one pass over the images: each chunk of images is decoded once, resized
//! once per input size, and fed to every backbone that still needs it, in
//! both views. Finished chunks are written to the cache as they complete, so
//! an interrupted extraction resumes at the first missing chunk. Decoding and
//! resizing run on their own thread (or pool), one chunk ahead of the
//! backbones. On a GPU each chunk goes to the device once, as bytes, and the
//! preprocessing (scale, flip, NCHW, precision) runs there.
//!
//! `input` turns resized images into backbone inputs, `decode` is the
//! decoding side of the pipeline, `extract` the chunked extraction of one
//! split ([`SplitExtraction`]).

mod decode;
mod extract;
mod input;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;

use crate::data::image::ImageError;
use crate::lock::{Attempt, Holder, LockFile};
use crate::npy::Matrix;
use crate::plan::{FeatureStage, Plan, Split};
use crate::run::Run;
use crate::rundir::BackboneSeconds;
use crate::spec::{Spec, View};
use runner_models::{self as models, ModelError};

pub use extract::{Nets, ShardWork, SplitExtraction};
pub use input::{device_input_tensor, input_tensor, upload_images};

/// Images per cache chunk, the unit of resumption after an interruption:
/// this many, or the smallest multiple of it that holds one batch (a GPU
/// wants batches of 128 or more). A resumed run with another batch size
/// finds no chunk of its size and recomputes (correct, only slower).
pub const CHUNK_IMAGES: usize = 64;

/// Images per cache chunk for extraction batches of `batch_size`.
pub fn chunk_images(batch_size: usize) -> usize {
    batch_size.div_ceil(CHUNK_IMAGES).max(1) * CHUNK_IMAGES
}

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error("extraction stopped")]
    Interrupted(#[from] crate::interrupt::Interrupted),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Model(#[from] Box<ModelError>),
    #[error("{arch} failed on images {first}..{last}")]
    Forward {
        arch: &'static str,
        first: String,
        last: String,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("{arch} ran out of device memory on a batch of {batch} images ({first}..{last}): {}", match fits {
        Some(n) => format!("a batch of {n} fits: set [extract] batch_size = {n}"),
        None => "not even one image fits: free device memory (other processes?), or use precision = \"f16\" or a smaller input_size".to_string(),
    })]
    OutOfMemory {
        arch: &'static str,
        batch: usize,
        first: String,
        last: String,
        /// The largest batch found to fit (halving from `batch`).
        fits: Option<usize>,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("cannot read the feature cache {path}")]
    CacheRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to the feature cache {path}")]
    CacheWrite {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the feature cache {path} needs about {needed} for the stages to compute and has {free} free: free some space or pass --cache DIR on a larger disk (chunks already computed are kept and reused)")]
    NoSpace {
        path: String,
        needed: String,
        free: String,
    },
    #[error("cannot start the decoding threads: {0}")]
    DecodePool(String),
    #[error("[extract] precision = \"{0}\" needs a GPU (the CPU kernels compute in f32); use precision = \"f32\" or --device cuda")]
    PrecisionOnCpu(&'static str),
}

/// Feature matrices already in memory, by stage key: the members of a
/// sweep share them, so each stage is read from the cache once.
pub type Loaded = HashMap<String, Arc<Matrix>>;

/// Features of every planned stage, by stage key.
#[derive(Default)]
pub struct Features {
    pub by_key: Loaded,
    /// Stages served from the cache / computed in this run.
    pub cached: usize,
    pub computed: usize,
    /// Seconds spent decoding+resizing (on the decoder thread, overlapped
    /// with the backbones) and in the backbones.
    pub decode_seconds: f64,
    pub forward_seconds: f64,
    /// `forward_seconds` by backbone, indexed as the spec lists them (on a
    /// GPU, where a result is waited for rather than where work is queued).
    pub backbone_seconds: Vec<f64>,
}

impl Features {
    /// Each backbone's forward seconds under a name that tells repeated
    /// architectures apart.
    pub fn seconds_by_backbone(&self, spec: &Spec) -> Vec<BackboneSeconds> {
        self.backbone_seconds
            .iter()
            .enumerate()
            .map(|(i, &seconds)| {
                let arch = spec.backbones[i].arch.name();
                let earlier = spec.backbones[..i]
                    .iter()
                    .filter(|b| b.arch.name() == arch)
                    .count();
                BackboneSeconds {
                    backbone: match earlier {
                        0 => arch.to_string(),
                        n => format!("{arch}#{}", n + 1),
                    },
                    seconds,
                }
            })
            .collect()
    }

    pub fn get(&self, stage: &FeatureStage) -> &Matrix {
        &self.by_key[&stage.key]
    }

    /// The backbones' features of one view and split, side by side in spec
    /// order (e.g. Xception 2048 + InceptionV3 2048 = 4096 columns).
    pub fn concat(&self, plan: &Plan, n_backbones: usize, view: View, split: Split) -> Matrix {
        let parts: Vec<&Matrix> = (0..n_backbones)
            .map(|b| self.get(plan.stage(b, view, split)))
            .collect();
        Matrix::hconcat(&parts)
    }

    /// Takes every stage of `plan` the cache holds; returns the others. A
    /// corrupt entry is warned about and counts as missing.
    fn take_cached<'p>(
        &mut self,
        run: &Run<'_>,
        plan: &'p Plan,
        loaded: &Loaded,
    ) -> Vec<&'p FeatureStage> {
        let mut missing = Vec::new();
        for stage in &plan.stages {
            if self.by_key.contains_key(&stage.key) {
                continue;
            }
            if let Some(m) = loaded.get(&stage.key) {
                self.by_key.insert(stage.key.clone(), m.clone());
                self.cached += 1;
                continue;
            }
            let rows = run.items(stage.split).len();
            match run.cache.get(&stage.key, rows) {
                Ok(Some(m)) => {
                    self.by_key.insert(stage.key.clone(), Arc::new(m));
                    self.cached += 1;
                }
                Ok(None) => missing.push(stage),
                Err(why) => {
                    run.log.info(format!("warning: corrupt cache entry: {why}"));
                    missing.push(stage);
                }
            }
        }
        missing
    }
}

/// `[extract] precision` other than f32 needs a GPU: the CPU kernels are
/// f32 (checked before a run starts, and again here for other callers).
pub fn check_precision(spec: &Spec, device: &Device) -> Result<(), FeatureError> {
    match spec.extract.precision() {
        crate::spec::Precision::F32 => Ok(()),
        _ if !device.is_cpu() => Ok(()),
        crate::spec::Precision::Bf16 => Err(FeatureError::PrecisionOnCpu("bf16")),
        crate::spec::Precision::F16 => Err(FeatureError::PrecisionOnCpu("f16")),
    }
}

/// Images per forward pass: `[extract] batch_size`, else 16 on the CPU
/// (the CPU kernels gain little from more) and 128 on a GPU (which needs
/// large batches to be busy).
pub fn batch_size(spec: &Spec, device: &Device) -> usize {
    spec.extract.batch_size.unwrap_or(if device.is_cpu() {
        crate::spec::DEFAULT_EXTRACT_BATCH
    } else {
        crate::spec::DEFAULT_GPU_EXTRACT_BATCH
    })
}

/// How many threads decode and resize: `[extract] decode_threads`, else one
/// beside CPU backbones (which use every core) and every core for a GPU,
/// which needs all of them to keep it fed.
pub fn decode_threads(spec: &Spec, device: &Device) -> usize {
    spec.extract.decode_threads.unwrap_or_else(|| {
        if device.is_cpu() {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    })
}

/// Makes sure every stage of `plan` is in the cache, computing what is
/// missing, and returns all features.
pub fn ensure(run: &Run<'_>, plan: &Plan) -> Result<Features, FeatureError> {
    ensure_with(run, plan, &Loaded::new())
}

/// How often a run waiting for another process's stages looks again.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// [`ensure`], taking the stages `loaded` holds from memory.
///
/// Several processes may share one cache: before computing a stage, a run
/// takes its lock; stages another live process is computing are left to
/// it, and once their locks go, read from the cache (or, if that process
/// died, taken over and resumed from its chunks).
pub fn ensure_with(run: &Run<'_>, plan: &Plan, loaded: &Loaded) -> Result<Features, FeatureError> {
    check_precision(run.spec, run.device)?;
    let mut out = Features::default();
    let mut first_look = true;
    let mut waiting_on: Option<BTreeSet<String>> = None;
    loop {
        let missing = out.take_cached(run, plan, loaded);
        if first_look {
            first_look = false;
            if missing.is_empty() {
                run.log.info(format!(
                    "features: all {} stages served from the cache {}, nothing to compute",
                    out.cached,
                    run.cache.location()
                ));
                return Ok(out);
            }
            run.log.info(format!(
                "features: {} stage(s) from the cache, {} to compute",
                out.cached,
                missing.len()
            ));
        }
        if missing.is_empty() {
            break;
        }
        let (locks, held) = lock_stages(run, &missing)?;
        if locks.is_empty() {
            let keys: BTreeSet<String> = held.iter().map(|(s, _)| s.key.clone()).collect();
            if waiting_on.as_ref() != Some(&keys) {
                run.log.info(format!(
                    "features: waiting for {} stage(s) that {} is computing in the same cache",
                    keys.len(),
                    held[0]
                        .1
                        .as_ref()
                        .map_or("another process".to_string(), |h| h.to_string())
                ));
                waiting_on = Some(keys);
            }
            crate::interrupt::check()?;
            std::thread::sleep(WAIT_POLL);
            continue;
        }
        compute_locked(run, locks, &mut out)?;
    }
    if models::profile::enabled() {
        run.log.info(format!(
            "per-op time of the backbones (RUNNER_PROFILE):\n{}",
            models::profile::table(&models::profile::take())
        ));
    }
    Ok(out)
}

/// `runner extract --shard I/N`: computes `shard`'s chunks of every stage
/// of `plan` that the cache lacks, into the cache, and returns what it did.
///
/// No stage lock is taken: shards write disjoint chunks side by side (a
/// shard run twice writes the same chunks again, harmlessly), and no shard
/// builds a finished stage; the first full run after them (`runner SPEC`
/// or `runner extract SPEC`) finds every chunk and builds it without a
/// forward pass.
pub fn extract_shard(
    run: &Run<'_>,
    plan: &Plan,
    shard: crate::shard::Shard,
) -> Result<ShardWork, FeatureError> {
    check_precision(run.spec, run.device)?;
    let todo: Vec<&FeatureStage> = plan
        .stages
        .iter()
        .filter(|s| !run.cache.contains(&s.key))
        .collect();
    run.log.info(format!(
        "shard {shard}: {} of {} stage(s) unfinished in the cache {}",
        todo.len(),
        plan.stages.len(),
        run.cache.location()
    ));
    let mut work = ShardWork::default();
    if todo.is_empty() {
        return Ok(work);
    }
    let nets = load_backbones(run, &todo)?;
    let mut out = Features::default();
    for split in [Split::Train, Split::Test] {
        let stages: Vec<&FeatureStage> =
            todo.iter().copied().filter(|s| s.split == split).collect();
        if stages.is_empty() {
            continue;
        }
        let done = SplitExtraction::new(run, split, &stages, &nets)
            .for_shard(shard)
            .compute_shard(&mut out)?;
        work.computed += done.computed;
        work.found += done.found;
        work.images += done.images;
    }
    Ok(work)
}

/// The stages whose locks this process took, and those another live
/// process holds (with who holds them).
type LockedStages<'p> = (
    Vec<(&'p FeatureStage, LockFile)>,
    Vec<(&'p FeatureStage, Option<Holder>)>,
);

fn lock_stages<'p>(
    run: &Run<'_>,
    missing: &[&'p FeatureStage],
) -> Result<LockedStages<'p>, FeatureError> {
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for &stage in missing {
        match run.cache.lock_stage(&stage.key) {
            Ok(Attempt::Acquired(lock)) => mine.push((stage, lock)),
            Ok(Attempt::HeldBy(holder)) => theirs.push((stage, holder)),
            Err(source) => {
                return Err(FeatureError::CacheWrite {
                    path: run.cache.path(&stage.key).display().to_string(),
                    source,
                })
            }
        }
    }
    Ok((mine, theirs))
}

/// Computes the stages whose locks are held, split by split, and stores
/// them; a stage another process finished just before the lock was taken
/// is read instead.
fn compute_locked(
    run: &Run<'_>,
    locks: Vec<(&FeatureStage, LockFile)>,
    out: &mut Features,
) -> Result<(), FeatureError> {
    let mut todo = Vec::new();
    let mut held = HashMap::new();
    for (stage, lock) in locks {
        match run.cache.get(&stage.key, run.items(stage.split).len()) {
            Ok(Some(m)) => {
                out.by_key.insert(stage.key.clone(), Arc::new(m));
                out.cached += 1;
            }
            _ => {
                todo.push(stage);
                held.insert(stage.key.as_str(), lock);
            }
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    let nets = load_backbones(run, &todo)?;
    check_space(run, &todo, &nets)?;
    for split in [Split::Train, Split::Test] {
        let stages: Vec<&FeatureStage> =
            todo.iter().copied().filter(|s| s.split == split).collect();
        if stages.is_empty() {
            continue;
        }
        let computed = SplitExtraction::new(run, split, &stages, &nets).compute(out)?;
        for (stage, m) in stages.iter().zip(computed) {
            store_stage(run, stage, &m)?;
            // Stored: waiting processes may read it now.
            held.remove(stage.key.as_str());
            out.by_key.insert(stage.key.clone(), Arc::new(m));
            out.computed += 1;
        }
    }
    Ok(())
}

/// Refuses to start an extraction whose results cannot fit in the cache:
/// the chunks of every stage, plus, while the largest stage's entry is
/// written, a second copy of it. Better than failing after an hour.
fn check_space(run: &Run<'_>, stages: &[&FeatureStage], nets: &Nets) -> Result<(), FeatureError> {
    let bytes = |s: &FeatureStage| {
        let rows = run.items(s.split).len() as u64;
        rows * nets[&s.backbone].num_features() as u64 * 4
    };
    let needed = stages.iter().map(|s| bytes(s)).sum::<u64>()
        + stages.iter().map(|s| bytes(s)).max().unwrap_or(0);
    match crate::disk::available_bytes(run.cache.root()) {
        Some(free) if free < needed => Err(FeatureError::NoSpace {
            path: run.cache.root().display().to_string(),
            needed: crate::disk::human(needed),
            free: crate::disk::human(free),
        }),
        _ => Ok(()),
    }
}

/// Loads each backbone that has work, once.
fn load_backbones(run: &Run<'_>, missing: &[&FeatureStage]) -> Result<Nets, FeatureError> {
    let needed: BTreeSet<usize> = missing.iter().map(|s| s.backbone).collect();
    let mut nets = Nets::new();
    for &b in &needed {
        let bb = &run.spec.backbones[b];
        let started = Instant::now();
        nets.insert(b, models::create(bb, run.device).map_err(Box::new)?);
        run.log.info(format!(
            "loaded {} from {} in {:.1}s",
            bb.arch.name(),
            bb.weights.display(),
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(nets)
}

/// Stores a computed stage in the cache with its provenance.
fn store_stage(run: &Run<'_>, stage: &FeatureStage, m: &Matrix) -> Result<(), FeatureError> {
    let bb = &run.spec.backbones[stage.backbone];
    let meta = serde_json::json!({
        "arch": bb.arch,
        "weights": bb.weights,
        "input_size": bb.input_size,
        "preprocess": bb.preprocess,
        "view": stage.view,
        "split": stage.split,
        "rows": m.rows,
        "cols": m.cols,
        "feature_code_version": crate::plan::FEATURE_CODE_VERSION,
    });
    run.cache
        .put(&stage.key, m, &meta)
        .map_err(|source| FeatureError::CacheWrite {
            path: run.cache.path(&stage.key).display().to_string(),
            source,
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The woof-dev training photos, sorted by name.
    pub fn woof_train_photos() -> Vec<std::path::PathBuf> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/woof-dev/train");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .expect("woof-dev")
            .map(|e| e.expect("entry").path())
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn chunks_hold_at_least_one_batch_in_multiples_of_64() {
        assert_eq!(chunk_images(1), 64);
        assert_eq!(chunk_images(64), 64);
        assert_eq!(chunk_images(65), 128);
        assert_eq!(chunk_images(256), 256);
    }
}
