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

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::cache::FeatureCache;
use crate::data::image::{decode_file, resize, ImageError, RgbImage};
use crate::data::{Dataset, Item};
use crate::log::Log;
use runner_models::{self as models, Backbone, ModelError};
use crate::npy::Matrix;
use crate::plan::{FeatureStage, Plan, Split};
use crate::spec::{BackboneSpec, Resize, Spec, View};

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
    #[error("{arch} ran out of device memory on a batch of {batch} images ({first}..{last}): set [extract] batch_size lower, e.g. {}", (batch / 2).max(1))]
    OutOfMemory {
        arch: &'static str,
        batch: usize,
        first: String,
        last: String,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("cannot write to the feature cache {path}")]
    CacheWrite {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the decoding threads: {0}")]
    DecodePool(String),
    #[error("[extract] precision = \"{0}\" needs a GPU (the CPU kernels compute in f32); use precision = \"f32\" or --device cuda")]
    PrecisionOnCpu(&'static str),
}

/// Features of every planned stage, by stage key.
pub struct Features {
    pub by_key: HashMap<String, Matrix>,
    /// Stages served from the cache / computed in this run.
    pub cached: usize,
    pub computed: usize,
    /// Seconds spent decoding+resizing (on the decoder thread, overlapped
    /// with the backbones) and in the backbones.
    pub decode_seconds: f64,
    pub forward_seconds: f64,
}

impl Features {
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
}

/// Converts resized RGB images into a preprocessed `(N, 3, H, W)` tensor,
/// mirrored left to right for [`View::Hflip`].
pub fn input_tensor(
    images: &[&RgbImage],
    backbone: &BackboneSpec,
    view: View,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let size = backbone.input_size;
    let plane = size * size;
    let so = backbone.preprocess.scale_offset();
    let mut data = vec![0f32; images.len() * 3 * plane];
    data.par_chunks_mut(3 * plane)
        .zip(images.par_iter())
        .for_each(|(out, img)| {
            for y in 0..size {
                for x in 0..size {
                    let sx = match view {
                        View::Original => x,
                        View::Hflip => size - 1 - x,
                    };
                    let p = &img.pixels[(y * size + sx) * 3..(y * size + sx) * 3 + 3];
                    for c in 0..3 {
                        out[c * plane + y * size + x] = p[c] as f32 * so[c].0 + so[c].1;
                    }
                }
            }
        });
    Tensor::from_vec(data, (images.len(), 3, size, size), device)
}

/// A chunk's resized images of one input size as one `(N, H, W, 3)` u8
/// tensor on `device`. Off the CPU, the images go to the device once per
/// chunk, as bytes, and every backbone and view preprocesses them there
/// ([`device_input_tensor`]): a quarter of the traffic of f32 inputs, once
/// instead of once per stage.
pub fn upload_images(images: &[RgbImage], device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = images.first().map_or((0, 0), |img| (img.width, img.height));
    let mut bytes = Vec::with_capacity(images.len() * h * w * 3);
    for img in images {
        bytes.extend_from_slice(&img.pixels);
    }
    Tensor::from_vec(bytes, (images.len(), h, w, 3), device)
}

/// [`input_tensor`] computed on the images' device from [`upload_images`]'
/// bytes, in `dtype`: the same f32 arithmetic (multiply, then add), so the
/// same values.
pub fn device_input_tensor(
    images: &Tensor,
    backbone: &BackboneSpec,
    view: View,
    dtype: candle_core::DType,
) -> candle_core::Result<Tensor> {
    let device = images.device();
    let so = backbone.preprocess.scale_offset();
    let scale = Tensor::new(&so.map(|(s, _)| s), device)?;
    let offset = Tensor::new(&so.map(|(_, o)| o), device)?;
    let x = images
        .to_dtype(candle_core::DType::F32)?
        .broadcast_mul(&scale)?
        .broadcast_add(&offset)?;
    let x = match view {
        View::Original => x,
        View::Hflip => x.flip(&[2])?,
    };
    x.permute((0, 3, 1, 2))?.contiguous()?.to_dtype(dtype)
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

/// Makes sure every stage of `plan` is in the cache, computing what is
/// missing, and returns all features.
pub fn ensure(
    spec: &Spec,
    data: &Dataset,
    plan: &Plan,
    cache: &FeatureCache,
    device: &Device,
    log: &Log,
) -> Result<Features, FeatureError> {
    check_precision(spec, device)?;
    let mut out = Features {
        by_key: HashMap::new(),
        cached: 0,
        computed: 0,
        decode_seconds: 0.0,
        forward_seconds: 0.0,
    };
    let mut missing: Vec<&FeatureStage> = Vec::new();
    for stage in &plan.stages {
        let rows = split_items(data, stage.split).len();
        match cache.get(&stage.key, rows) {
            Ok(Some(m)) => {
                out.by_key.insert(stage.key.clone(), m);
                out.cached += 1;
            }
            Ok(None) => missing.push(stage),
            Err(why) => {
                log.info(format!("warning: corrupt cache entry: {why}"));
                missing.push(stage);
            }
        }
    }
    if missing.is_empty() {
        log.info(format!(
            "features: all {} stages served from the cache {}, nothing to compute",
            out.cached,
            cache.root().display()
        ));
        return Ok(out);
    }
    log.info(format!(
        "features: {} stage(s) from the cache, {} to compute",
        out.cached,
        missing.len()
    ));

    // Load each backbone that has work once.
    let needed: BTreeSet<usize> = missing.iter().map(|s| s.backbone).collect();
    let mut nets: HashMap<usize, Box<dyn Backbone>> = HashMap::new();
    for &b in &needed {
        let bb = &spec.backbones[b];
        let started = Instant::now();
        nets.insert(b, models::create(bb, device).map_err(Box::new)?);
        log.info(format!(
            "loaded {} from {} in {:.1}s",
            bb.arch.name(),
            bb.weights.display(),
            started.elapsed().as_secs_f64()
        ));
    }

    for split in [Split::Train, Split::Test] {
        let stages: Vec<&FeatureStage> = missing
            .iter()
            .copied()
            .filter(|s| s.split == split)
            .collect();
        if stages.is_empty() {
            continue;
        }
        let items = split_items(data, split);
        let computed = extract_split(
            spec, items, split, &stages, &nets, cache, device, log, &mut out,
        )?;
        for (stage, m) in stages.iter().zip(computed) {
            let bb = &spec.backbones[stage.backbone];
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
            cache
                .put(&stage.key, &m, &meta)
                .map_err(|source| FeatureError::CacheWrite {
                    path: cache.path(&stage.key).display().to_string(),
                    source,
                })?;
            out.by_key.insert(stage.key.clone(), m);
            out.computed += 1;
        }
    }
    if models::profile::enabled() {
        log.info(format!(
            "per-op time of the backbones (RUNNER_PROFILE):\n{}",
            models::profile::table(&models::profile::take())
        ));
    }
    Ok(out)
}

fn split_items(data: &Dataset, split: Split) -> &[Item] {
    match split {
        Split::Train => &data.train,
        Split::Test => &data.test,
    }
}

/// One chunk decoded and resized to every input size its stages need.
struct Prepared {
    images: HashMap<(usize, Resize), Vec<RgbImage>>,
    seconds: f64,
    /// Images that decoded but look damaged, to warn about.
    suspicious: Vec<String>,
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

/// Whether a backbone failed for want of device memory (the CUDA driver's
/// and cuBLAS's words for it; candle passes them through as text).
fn is_out_of_memory(e: &candle_core::Error) -> bool {
    let text = format!("{e:?}");
    ["OUT_OF_MEMORY", "ALLOC_FAILED", "out of memory"]
        .iter()
        .any(|needle| text.contains(needle))
}

/// Decodes `chunk` and resizes it to `sizes`: on the decoder thread alone,
/// or spread over `pool` (images in their order either way).
fn prepare(
    chunk: &[Item],
    sizes: &BTreeSet<(usize, Resize)>,
    pool: Option<&rayon::ThreadPool>,
) -> Result<Prepared, FeatureError> {
    let started = Instant::now();
    let one = |item: &Item| -> Result<(Vec<RgbImage>, bool), FeatureError> {
        let decoded = decode_file(&item.path)?;
        let resized = sizes
            .iter()
            .map(|&(size, filter)| resize(&decoded.image, size, size, filter))
            .collect();
        Ok((resized, decoded.truncated))
    };
    let per_image: Vec<(Vec<RgbImage>, bool)> = match pool {
        Some(pool) => pool.install(|| chunk.par_iter().map(one).collect::<Result<_, _>>())?,
        None => chunk.iter().map(one).collect::<Result<_, _>>()?,
    };
    let mut images: HashMap<(usize, Resize), Vec<RgbImage>> = sizes
        .iter()
        .map(|&k| (k, Vec::with_capacity(chunk.len())))
        .collect();
    let mut suspicious = Vec::new();
    for (item, (resized, truncated)) in chunk.iter().zip(per_image) {
        for (&key, img) in sizes.iter().zip(resized) {
            images.get_mut(&key).expect("one entry per size").push(img);
        }
        if truncated {
            suspicious.push(item.path.display().to_string());
        }
    }
    Ok(Prepared {
        images,
        seconds: started.elapsed().as_secs_f64(),
        suspicious,
    })
}

/// Computes `stages` (all of one split) chunk by chunk, reusing chunks an
/// interrupted run left behind; returns one matrix per stage.
#[allow(clippy::too_many_arguments)]
fn extract_split(
    spec: &Spec,
    items: &[Item],
    split: Split,
    stages: &[&FeatureStage],
    nets: &HashMap<usize, Box<dyn Backbone>>,
    cache: &FeatureCache,
    device: &Device,
    log: &Log,
    out: &mut Features,
) -> Result<Vec<Matrix>, FeatureError> {
    let mut chunks_per_stage: Vec<Vec<Matrix>> = vec![Vec::new(); stages.len()];
    let mut progress = log.progress(
        &format!("features {}", split.name()),
        items.len() as u64,
        "images",
    );
    progress.set_message(
        stages
            .iter()
            .map(|s| {
                format!(
                    "{}/{}",
                    spec.backbones[s.backbone].arch.name(),
                    s.view.name()
                )
            })
            .collect::<Vec<_>>()
            .join(" "),
    );
    // What earlier runs already finished of each chunk.
    let batch_size = batch_size(spec, device);
    let chunk_len = chunk_images(batch_size);
    let chunks: Vec<&[Item]> = items.chunks(chunk_len).collect();
    let mut haves: Vec<Vec<Option<Matrix>>> = chunks
        .iter()
        .enumerate()
        .map(|(c, chunk)| {
            stages
                .iter()
                .map(|s| {
                    let cols = nets[&s.backbone].num_features();
                    cache.chunk(&s.key, c * chunk_len, chunk.len(), cols)
                })
                .collect()
        })
        .collect();
    // Per chunk, the input sizes its missing stages need (empty: resumed).
    let sizes: Vec<BTreeSet<(usize, Resize)>> = haves
        .iter()
        .map(|have| {
            stages
                .iter()
                .zip(have)
                .filter(|(_, h)| h.is_none())
                .map(|(s, _)| {
                    let bb = &spec.backbones[s.backbone];
                    (bb.input_size, bb.resize)
                })
                .collect()
        })
        .collect();
    let resumed = sizes.iter().filter(|s| s.is_empty()).count();

    // Two-stage pipeline: a decoder thread decodes and resizes the next chunk
    // while the backbones run on this one (on the rayon pool). The channel
    // holds one chunk, so at most two are in memory.
    // With more than one decode thread they get a pool of their own, so
    // decoding never waits behind the backbones' tasks on the global pool.
    let threads = decode_threads(spec, device);
    let pool = if threads > 1 {
        Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("decode-{i}"))
                .build()
                .map_err(|e| FeatureError::DecodePool(e.to_string()))?,
        )
    } else {
        None
    };
    let images_to_decode: usize = chunks
        .iter()
        .zip(&sizes)
        .filter(|(_, s)| !s.is_empty())
        .map(|(c, _)| c.len())
        .sum();
    let (decode_before, forward_before) = (out.decode_seconds, out.forward_seconds);
    std::thread::scope(|scope| -> Result<(), FeatureError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared, FeatureError>>(1);
        let (chunks_ref, sizes_ref, pool_ref) = (&chunks, &sizes, pool.as_ref());
        scope.spawn(move || {
            for (chunk, sizes) in chunks_ref.iter().zip(sizes_ref) {
                if sizes.is_empty() {
                    continue;
                }
                let prepared = prepare(chunk, sizes, pool_ref);
                let failed = prepared.is_err();
                // A closed channel means the consumer stopped (it failed).
                if tx.send(prepared).is_err() || failed {
                    return;
                }
            }
        });
        for (c, chunk) in chunks.iter().enumerate() {
            let have = &mut haves[c];
            if sizes[c].is_empty() {
                progress.inc(chunk.len() as u64);
                continue;
            }
            let prepared = rx
                .recv()
                .expect("the decoder sends every chunk or an error")?;
            out.decode_seconds += prepared.seconds;
            for path in &prepared.suspicious {
                log.info(format!(
                    "warning: {path} has no JPEG end marker (truncated?); decoded anyway, with what is missing filled in: replace it and rerun"
                ));
            }
            let resized = prepared.images;
            let started = Instant::now();
            let uploaded: HashMap<(usize, Resize), Tensor> = if device.is_cpu() {
                HashMap::new()
            } else {
                resized
                    .iter()
                    .map(|(&key, images)| Ok((key, upload_images(images, device)?)))
                    .collect::<candle_core::Result<_>>()
                    .map_err(|source| FeatureError::Forward {
                        arch: "upload",
                        first: chunk[0].id.clone(),
                        last: chunk[chunk.len() - 1].id.clone(),
                        source: Box::new(source),
                    })?
            };
            // Batch by batch, every stage that still needs this chunk, so the
            // progress bar moves per batch.
            let todo: Vec<usize> = (0..stages.len()).filter(|&i| have[i].is_none()).collect();
            // Each batch's features stay on the device until the chunk is
            // done: one copy back (and one wait for the GPU) per stage and
            // chunk, not per batch, so the GPU has the next batch's work
            // queued while the host prepares more.
            let mut parts: Vec<Vec<Tensor>> = todo.iter().map(|_| Vec::new()).collect();
            let forward_error = |arch: &'static str, first: usize, last: usize| {
                let batch = last - first;
                let (first, last) = (chunk[first].id.clone(), chunk[last - 1].id.clone());
                move |source: candle_core::Error| {
                    let source = Box::new(source);
                    if is_out_of_memory(&source) {
                        FeatureError::OutOfMemory {
                            arch,
                            batch,
                            first,
                            last,
                            source,
                        }
                    } else {
                        FeatureError::Forward {
                            arch,
                            first,
                            last,
                            source,
                        }
                    }
                }
            };
            for first in (0..chunk.len()).step_by(batch_size) {
                let last = (first + batch_size).min(chunk.len());
                for (slot, &i) in todo.iter().enumerate() {
                    let stage = stages[i];
                    let bb = &spec.backbones[stage.backbone];
                    let net = &nets[&stage.backbone];
                    let key = (bb.input_size, bb.resize);
                    let forward = || -> candle_core::Result<Tensor> {
                        let dtype = spec.extract.precision().dtype();
                        let x = match uploaded.get(&key) {
                            Some(images) => device_input_tensor(
                                &images.narrow(0, first, last - first)?,
                                bb,
                                stage.view,
                                dtype,
                            )?,
                            None => {
                                let batch: Vec<&RgbImage> =
                                    resized[&key][first..last].iter().collect();
                                input_tensor(&batch, bb, stage.view, device)?.to_dtype(dtype)?
                            }
                        };
                        net.forward_features(&x)?.to_dtype(candle_core::DType::F32)
                    };
                    let feats = forward().map_err(forward_error(bb.arch.name(), first, last))?;
                    parts[slot].push(feats);
                }
                progress.inc((last - first) as u64);
            }
            for (&i, parts) in todo.iter().zip(parts) {
                let stage = stages[i];
                let arch = spec.backbones[stage.backbone].arch.name();
                let data = Tensor::cat(&parts, 0)
                    .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                    .map_err(forward_error(arch, 0, chunk.len()))?;
                let m = Matrix::new(chunk.len(), nets[&stage.backbone].num_features(), data);
                cache
                    .put_chunk(&stage.key, c * chunk_len, &m)
                    .map_err(|source| FeatureError::CacheWrite {
                        path: cache.root().display().to_string(),
                        source,
                    })?;
                have[i] = Some(m);
            }
            out.forward_seconds += started.elapsed().as_secs_f64();
        }
        Ok(())
    })?;
    for have in haves {
        for (dst, m) in chunks_per_stage.iter_mut().zip(have) {
            dst.push(m.expect("computed or resumed"));
        }
    }
    progress.finish();
    if images_to_decode > 0 {
        // Both rates, so it shows which side is the bottleneck.
        let decode = out.decode_seconds - decode_before;
        let forward = out.forward_seconds - forward_before;
        log.info(format!(
            "features {}: decoding + resizing {:.0} images/s on {threads} thread(s); backbones {:.1} images/s ({} stage(s), batches of {batch_size})",
            split.name(),
            images_to_decode as f64 / decode.max(1e-9),
            images_to_decode as f64 / forward.max(1e-9),
            stages.len()
        ));
    }
    if resumed > 0 {
        log.info(format!(
            "features {}: resumed {resumed} chunk(s) of {chunk_len} images left by an interrupted run",
            split.name()
        ));
    }
    Ok(chunks_per_stage
        .iter()
        .map(|parts| Matrix::vconcat(parts))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_out_of_memory_is_recognised_from_the_drivers_words() {
        let oom = candle_core::Error::Msg(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")".into(),
        );
        assert!(is_out_of_memory(&oom));
        assert!(!is_out_of_memory(&candle_core::Error::Msg(
            "shape mismatch".into()
        )));
    }

    /// The woof-dev training photos, sorted by name.
    fn woof_train_photos() -> Vec<std::path::PathBuf> {
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
    fn parallel_decoding_keeps_every_image_in_its_place() {
        let paths = woof_train_photos();
        let chunk: Vec<Item> = paths[..12]
            .iter()
            .map(|p| Item {
                id: p.file_stem().unwrap().to_string_lossy().into_owned(),
                path: p.clone(),
            })
            .collect();
        let sizes = BTreeSet::from([(32, Resize::Box), (48, Resize::Area)]);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let serial = prepare(&chunk, &sizes, None).unwrap();
        let parallel = prepare(&chunk, &sizes, Some(&pool)).unwrap();
        for key in &sizes {
            let (a, b) = (&serial.images[key], &parallel.images[key]);
            assert_eq!(a.len(), 12);
            for (x, y) in a.iter().zip(b) {
                assert_eq!((x.width, x.height), (key.0, key.0));
                assert_eq!(x.pixels, y.pixels);
            }
        }
        // And the images differ from each other (the check above is not vacuous).
        let first = &serial.images[&(32, Resize::Box)];
        assert_ne!(first[0].pixels, first[1].pixels);
    }

    #[test]
    fn device_preprocessing_gives_the_same_inputs_as_the_host_loop() {
        let paths = woof_train_photos();
        let images: Vec<RgbImage> = paths[..3]
            .iter()
            .map(|p| {
                resize(
                    &crate::data::image::decode_rgb(p).unwrap(),
                    40,
                    40,
                    Resize::Box,
                )
            })
            .collect();
        let refs: Vec<&RgbImage> = images.iter().collect();
        let uploaded = upload_images(&images, &Device::Cpu).unwrap();
        assert_eq!(uploaded.dims(), [3, 40, 40, 3]);
        for preprocess in [
            models::Preprocess::Inception,
            models::Preprocess::EfficientnetLite,
            models::Preprocess::Imagenet,
        ] {
            let bb = BackboneSpec {
                arch: models::Arch::from_name("xception").expect("registered"),
                weights: "unused".into(),
                input_size: 40,
                preprocess,
                resize: Resize::Box,
                output: None,
                input_layout: None,
            };
            for view in [View::Original, View::Hflip] {
                let host = input_tensor(&refs, &bb, view, &Device::Cpu).unwrap();
                let dev =
                    device_input_tensor(&uploaded, &bb, view, candle_core::DType::F32).unwrap();
                assert_eq!(dev.dims(), [3, 3, 40, 40]);
                let (a, b): (Vec<f32>, Vec<f32>) = (
                    host.flatten_all().unwrap().to_vec1().unwrap(),
                    dev.flatten_all().unwrap().to_vec1().unwrap(),
                );
                assert_eq!(a, b, "{preprocess:?} {view:?}");
            }
        }
    }

    #[test]
    fn chunks_hold_at_least_one_batch_in_multiples_of_64() {
        assert_eq!(chunk_images(1), 64);
        assert_eq!(chunk_images(64), 64);
        assert_eq!(chunk_images(65), 128);
        assert_eq!(chunk_images(256), 256);
    }
}
