//! Chunked extraction of one split: the stages the cache lacks computed
//! together, chunk by chunk, each finished chunk written to the cache so
//! an interrupted extraction resumes at the first missing one. A shard
//! ([`Shard`]) computes only its own chunks and keeps none in memory.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use candle_core::Tensor;

use super::decode::{self, Decoded, InputSize};
use super::input::{device_input_tensor, input_tensor, upload_images};
use super::{batch_size, chunk_images, decode_threads, FeatureError, Features};
use crate::data::image::{Fit, RgbImage};
use crate::data::Item;
use crate::log::Progress;
use crate::npy::Matrix;
use crate::plan::{FeatureStage, Split};
use crate::run::Run;
use crate::shard::Shard;
use runner_models::Backbone;

/// The loaded backbones, by index into `spec.backbones`.
pub type Nets = HashMap<usize, Box<dyn Backbone>>;

/// What the extraction has of one stage's chunk.
enum Have {
    Missing,
    /// In the cache (a shard does not keep its chunks in memory).
    Stored,
    /// In the cache and here, for the finished stage.
    Held(Matrix),
}

/// Per chunk and stage, what the extraction has.
type Haves = Vec<Vec<Have>>;

/// What a shard's extraction of one split did, in stage chunks.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardWork {
    pub computed: usize,
    /// Found in the cache (an earlier run of this shard, or a duplicate).
    pub found: usize,
    pub images: usize,
}

/// The extraction of `stages` (all of one split) over the split's images.
pub struct SplitExtraction<'a> {
    run: &'a Run<'a>,
    split: Split,
    stages: &'a [&'a FeatureStage],
    nets: &'a Nets,
    items: &'a [Item],
    batch_size: usize,
    chunk_len: usize,
    /// Only this shard's chunks, none kept in memory.
    shard: Option<Shard>,
}

impl<'a> SplitExtraction<'a> {
    pub fn new(
        run: &'a Run<'a>,
        split: Split,
        stages: &'a [&'a FeatureStage],
        nets: &'a Nets,
    ) -> SplitExtraction<'a> {
        let batch_size = batch_size(run.spec, run.device);
        SplitExtraction {
            run,
            split,
            stages,
            nets,
            items: run.items(split),
            batch_size,
            chunk_len: chunk_images(batch_size),
            shard: None,
        }
    }

    /// Computes only `shard`'s chunks ([`SplitExtraction::compute_shard`]).
    pub fn for_shard(self, shard: Shard) -> SplitExtraction<'a> {
        SplitExtraction {
            shard: Some(shard),
            ..self
        }
    }

    fn wanted(&self, chunk: usize) -> bool {
        self.shard.is_none_or(|s| s.owns(chunk))
    }

    /// Computes every stage chunk by chunk, reusing chunks an interrupted
    /// run or shards left behind; returns one matrix per stage. Decoding
    /// and resizing run on the decoder thread one chunk ahead of the
    /// backbones (which run on the rayon pool); their seconds add to
    /// `out`'s.
    pub fn compute(&self, out: &mut Features) -> Result<Vec<Matrix>, FeatureError> {
        let (haves, _) = self.fill(out)?;
        let mut per_stage: Vec<Vec<Matrix>> = vec![Vec::new(); self.stages.len()];
        for have in haves {
            for (dst, h) in per_stage.iter_mut().zip(have) {
                match h {
                    Have::Held(m) => dst.push(m),
                    Have::Missing | Have::Stored => unreachable!("every chunk is computed or read"),
                }
            }
        }
        Ok(per_stage
            .iter()
            .map(|parts| Matrix::vconcat(parts))
            .collect())
    }

    /// The shard's chunks of every stage, computed into the cache unless
    /// found there.
    pub fn compute_shard(&self, out: &mut Features) -> Result<ShardWork, FeatureError> {
        self.fill(out).map(|(_, work)| work)
    }

    /// Makes every wanted chunk of every stage present: found in the cache
    /// or computed and stored.
    fn fill(&self, out: &mut Features) -> Result<(Haves, ShardWork), FeatureError> {
        let chunks: Vec<&[Item]> = self.items.chunks(self.chunk_len).collect();
        let mut progress = self.progress(
            chunks
                .iter()
                .enumerate()
                .filter(|&(c, _)| self.wanted(c))
                .map(|(_, chunk)| chunk.len() as u64)
                .sum(),
        );
        let mut haves = self.resume_lookup(&chunks)?;
        // Chunks of single stages count: a kill between the stages of one
        // chunk leaves some of them cached.
        let resumed = haves
            .iter()
            .flatten()
            .filter(|h| !matches!(h, Have::Missing))
            .count();
        let sizes = self.plan_chunks(&haves);
        let to_compute = (haves.iter().enumerate())
            .filter(|&(c, _)| self.wanted(c))
            .flat_map(|(_, have)| have)
            .filter(|h| matches!(h, Have::Missing))
            .count();
        let threads = decode_threads(self.run.spec, self.run.device);
        let pool = decode::pool(threads)?;
        let (decode_before, forward_before) = (out.decode_seconds, out.forward_seconds);
        std::thread::scope(|scope| -> Result<(), FeatureError> {
            let decoded = decode::spawn(
                scope,
                &chunks,
                &sizes,
                pool.as_ref(),
                self.run.spec.data.on_bad_image,
            );
            for (c, chunk) in chunks.iter().enumerate() {
                crate::interrupt::check()?;
                if sizes[c].is_empty() {
                    if self.wanted(c) {
                        progress.inc(chunk.len() as u64);
                    }
                    continue;
                }
                let next = decoded
                    .recv()
                    .expect("the decoder sends every chunk or an error")?;
                out.decode_seconds += next.seconds;
                self.warn_suspicious(&next);
                let started = Instant::now();
                self.forward_chunk(c, chunk, next.images, &mut haves[c], &mut progress, out)?;
                out.forward_seconds += started.elapsed().as_secs_f64();
            }
            Ok(())
        })?;
        progress.finish();
        let decoded_images: usize = chunks
            .iter()
            .zip(&sizes)
            .filter(|(_, s)| !s.is_empty())
            .map(|(c, _)| c.len())
            .sum();
        if decoded_images > 0 {
            self.log_rates(
                decoded_images,
                threads,
                out.decode_seconds - decode_before,
                out.forward_seconds - forward_before,
            );
        }
        if resumed > 0 {
            self.run.log.info(format!(
                "features {}: found {resumed} stage chunk(s) of {} images in the cache (left by an interrupted run or by shards)",
                self.split.name(),
                self.chunk_len
            ));
        }
        let work = ShardWork {
            computed: to_compute,
            found: resumed,
            images: decoded_images,
        };
        Ok((haves, work))
    }

    /// A progress bar over the images to go through, naming the stages.
    fn progress(&self, images: u64) -> Progress<'a> {
        let mut progress =
            self.run
                .log
                .progress(&format!("features {}", self.split.name()), images, "images");
        progress.set_message(
            self.stages
                .iter()
                .map(|s| {
                    format!(
                        "{}/{}",
                        self.run.spec.backbones[s.backbone].arch.name(),
                        s.view.name()
                    )
                })
                .collect::<Vec<_>>()
                .join(" "),
        );
        progress
    }

    /// What the cache already holds of each wanted chunk, per stage: the
    /// chunk itself, or chunks of another size (an extraction with another
    /// batch size, a shard on a GPU) that tile its rows exactly. One
    /// listing per stage; the chunks are fetched in parallel (from the
    /// object store, for a remote cache). A shard only checks its own.
    fn resume_lookup(&self, chunks: &[&[Item]]) -> Result<Haves, FeatureError> {
        use rayon::prelude::*;
        let present = self
            .stages
            .iter()
            .map(|s| self.run.cache.chunks_present(&s.key))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| FeatureError::CacheRead {
                path: self.run.cache.location(),
                source,
            })?;
        Ok(chunks
            .par_iter()
            .enumerate()
            .map(|(c, chunk)| {
                let rows = c * self.chunk_len..c * self.chunk_len + chunk.len();
                (self.stages.iter().zip(&present))
                    .map(|(s, present)| match self.wanted(c) {
                        false => Have::Missing,
                        true => self.read_rows(s, present, rows.clone()),
                    })
                    .collect()
            })
            .collect())
    }

    /// Rows `rows` of stage `s` from the chunks `present` in the cache.
    fn read_rows(
        &self,
        s: &FeatureStage,
        present: &[(usize, usize)],
        rows: std::ops::Range<usize>,
    ) -> Have {
        let cols = self.nets[&s.backbone].num_features();
        let Some(pieces) = tiling(present, rows.clone()) else {
            return Have::Missing;
        };
        let parts: Option<Vec<Matrix>> = pieces
            .iter()
            .map(|&(first, n)| {
                let m = self.run.cache.chunk(&s.key, first, n, cols)?;
                // The rows of `rows` this piece holds.
                let (from, to) = (
                    rows.start.max(first) - first,
                    rows.end.min(first + n) - first,
                );
                Some(match (from, to) {
                    (0, to) if to == n => m,
                    _ => Matrix::new(to - from, cols, m.data[from * cols..to * cols].to_vec()),
                })
            })
            .collect();
        match (parts, self.shard) {
            (None, _) => Have::Missing,
            (Some(_), Some(_)) => Have::Stored,
            (Some(parts), None) if parts.len() == 1 => {
                Have::Held(parts.into_iter().next().expect("one part"))
            }
            (Some(parts), None) => Have::Held(Matrix::vconcat(&parts)),
        }
    }

    /// Per chunk, the input sizes its missing stages need (empty: found
    /// in the cache, or another shard's).
    fn plan_chunks(&self, haves: &Haves) -> Vec<BTreeSet<InputSize>> {
        haves
            .iter()
            .enumerate()
            .map(|(c, have)| {
                (self.stages.iter().zip(have))
                    .filter(|(_, h)| self.wanted(c) && matches!(h, Have::Missing))
                    .map(|(s, _)| Fit::of(&self.run.spec.backbones[s.backbone]))
                    .collect()
            })
            .collect()
    }

    fn warn_suspicious(&self, decoded: &Decoded) {
        // Under "skip", damaged training images were left out before the
        // folds were planned; a test image is a submission row and stays.
        let kept = match (self.run.spec.data.on_bad_image, self.split) {
            (crate::spec::OnBadImage::Skip, Split::Test) => {
                " ([data] on_bad_image = \"skip\" leaves out training images only: the submission needs a row for every test image)"
            }
            _ => "",
        };
        for (path, damage) in &decoded.damaged {
            self.run.log.info(format!(
                "warning: {path} {damage}; decoded anyway, with what is missing filled in{kept}: replace it and rerun"
            ));
        }
    }

    /// Runs chunk `c` through every stage that still needs it, batch by
    /// batch (so the progress bar moves per batch), and stores the result.
    /// Each batch's features stay on the device until the chunk is done:
    /// one copy back (and one wait for the GPU) per stage and chunk, not per
    /// batch, so the GPU has the next batch's work queued while the host
    /// prepares more.
    fn forward_chunk(
        &self,
        c: usize,
        chunk: &[Item],
        resized: HashMap<InputSize, Vec<RgbImage>>,
        have: &mut [Have],
        progress: &mut Progress<'_>,
        out: &mut Features,
    ) -> Result<(), FeatureError> {
        let backbones = self.run.spec.backbones.len();
        if out.backbone_seconds.len() < backbones {
            out.backbone_seconds.resize(backbones, 0.0);
        }
        let device = self.run.device;
        let uploaded: HashMap<InputSize, Tensor> = if device.is_cpu() {
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
        let todo: Vec<usize> = (0..self.stages.len())
            .filter(|&i| matches!(have[i], Have::Missing))
            .collect();
        let mut parts: Vec<Vec<Tensor>> = todo.iter().map(|_| Vec::new()).collect();
        for first in (0..chunk.len()).step_by(self.batch_size) {
            let last = (first + self.batch_size).min(chunk.len());
            // A stop request waits at most one batch; the chunks stored so
            // far are what a resumed run starts from.
            crate::interrupt::check()?;
            for (slot, &i) in todo.iter().enumerate() {
                let stage = self.stages[i];
                let bb = &self.run.spec.backbones[stage.backbone];
                let key = Fit::of(bb);
                let x = match uploaded.get(&key) {
                    Some(images) => Input::Device(images),
                    None => Input::Host(&resized[&key]),
                };
                let started = Instant::now();
                let feats = self.forward_batch(stage, x, first, last).map_err(|e| {
                    // Out of memory: find a batch that fits before failing,
                    // so the message says what to set.
                    let fits = is_out_of_memory(&e).then(|| {
                        largest_fitting_batch(last - first, |n| {
                            self.forward_batch(stage, x, first, first + n).map(drop)
                        })
                    });
                    forward_error(chunk, bb.arch.name(), first, last, fits.flatten())(e)
                })?;
                parts[slot].push(feats);
                out.backbone_seconds[stage.backbone] += started.elapsed().as_secs_f64();
            }
            progress.inc((last - first) as u64);
        }
        for (&i, parts) in todo.iter().zip(parts) {
            let stage = self.stages[i];
            let arch = self.run.spec.backbones[stage.backbone].arch.name();
            let started = Instant::now();
            let data = Tensor::cat(&parts, 0)
                .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
                .map_err(forward_error(chunk, arch, 0, chunk.len(), None))?;
            out.backbone_seconds[stage.backbone] += started.elapsed().as_secs_f64();
            let m = Matrix::new(chunk.len(), self.nets[&stage.backbone].num_features(), data);
            self.store_chunk(stage, c, &m)?;
            have[i] = match self.shard {
                Some(_) => Have::Stored,
                None => Have::Held(m),
            };
        }
        Ok(())
    }

    /// Features of images `first..last` of a chunk for one stage, as f32 on
    /// the device.
    fn forward_batch(
        &self,
        stage: &FeatureStage,
        images: Input<'_>,
        first: usize,
        last: usize,
    ) -> candle_core::Result<Tensor> {
        let bb = &self.run.spec.backbones[stage.backbone];
        let dtype = self.run.spec.extract.precision().dtype();
        let x = match images {
            Input::Device(images) => device_input_tensor(
                &images.narrow(0, first, last - first)?,
                bb,
                stage.view,
                dtype,
            )?,
            Input::Host(images) => {
                let batch: Vec<&RgbImage> = images[first..last].iter().collect();
                input_tensor(&batch, bb, stage.view, self.run.device)?.to_dtype(dtype)?
            }
        };
        self.nets[&stage.backbone]
            .forward_features(&x)?
            .to_dtype(candle_core::DType::F32)
    }

    /// Writes a finished chunk of one stage to the cache.
    fn store_chunk(&self, stage: &FeatureStage, c: usize, m: &Matrix) -> Result<(), FeatureError> {
        let cache = self.run.cache;
        cache
            .put_chunk(&stage.key, c * self.chunk_len, m)
            .map_err(|source| FeatureError::CacheWrite {
                path: cache
                    .chunk_file(&stage.key, c * self.chunk_len, m.rows)
                    .display()
                    .to_string(),
                source,
            })
    }

    /// Both rates, so it shows which side is the bottleneck.
    fn log_rates(&self, images: usize, threads: usize, decode: f64, forward: f64) {
        self.run.log.info(format!(
            "features {}: decoding + resizing {:.0} images/s on {threads} thread(s); backbones {:.1} images/s ({} stage(s), batches of {})",
            self.split.name(),
            images as f64 / decode.max(1e-9),
            images as f64 / forward.max(1e-9),
            self.stages.len(),
            self.batch_size
        ));
    }
}

/// Chunks from `present` (sorted by first row) that cover `rows` one after
/// another, in order, if some do: the first holds row `rows.start`, each
/// next one starts where the one before ends, the last reaches `rows.end`
/// (the ends may stick out: a run with chunks of 64 reads a GPU shard's
/// chunks of 128). The chunk of exactly those rows where there is one.
fn tiling(present: &[(usize, usize)], rows: std::ops::Range<usize>) -> Option<Vec<(usize, usize)>> {
    if present.contains(&(rows.start, rows.len())) {
        return Some(vec![(rows.start, rows.len())]);
    }
    // The chunk that reaches each row boundary first (sorted by first
    // row: every chunk ending at `first` is seen before those starting
    // there).
    let mut reached: HashMap<usize, (usize, usize)> = HashMap::new();
    for &(first, n) in present {
        let end = first + n;
        let holds_start = first <= rows.start && rows.start < end;
        let continues = first > rows.start && first < rows.end && reached.contains_key(&first);
        if holds_start || continues {
            reached.entry(end).or_insert((first, n));
        }
    }
    let mut at = *reached.keys().filter(|&&end| end >= rows.end).min()?;
    let mut pieces = Vec::new();
    loop {
        let piece = reached[&at];
        pieces.push(piece);
        if piece.0 <= rows.start {
            break;
        }
        at = piece.0;
    }
    pieces.reverse();
    Some(pieces)
}

/// A chunk's resized images of one input size: uploaded to the device as
/// bytes, or on the host.
#[derive(Clone, Copy)]
enum Input<'a> {
    Device(&'a Tensor),
    Host(&'a [RgbImage]),
}

/// The error of a backbone that failed on images `first..last` of `chunk`,
/// naming them, and saying so when the device ran out of memory.
fn forward_error(
    chunk: &[Item],
    arch: &'static str,
    first: usize,
    last: usize,
    fits: Option<usize>,
) -> impl FnOnce(candle_core::Error) -> FeatureError {
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
                fits,
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
}

/// The largest of `batch / 2`, `batch / 4`, ... 1 images that `run`
/// computes without running out of memory; `None` if not even one does.
fn largest_fitting_batch(
    batch: usize,
    mut run: impl FnMut(usize) -> candle_core::Result<()>,
) -> Option<usize> {
    let mut n = batch / 2;
    while n >= 1 {
        match run(n) {
            Ok(()) => return Some(n),
            Err(e) if is_out_of_memory(&e) => n /= 2,
            Err(_) => return None,
        }
    }
    None
}

/// Whether a backbone failed for want of device memory (the CUDA driver's
/// and cuBLAS's words for it; candle passes them through as text).
fn is_out_of_memory(e: &candle_core::Error) -> bool {
    let text = format!("{e:?}");
    ["OUT_OF_MEMORY", "ALLOC_FAILED", "out of memory"]
        .iter()
        .any(|needle| text.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_read_from_chunks_of_other_sizes_that_tile_them() {
        let present = [(0, 64), (64, 32), (64, 64), (96, 32), (128, 128), (256, 10)];
        assert_eq!(tiling(&present, 64..128), Some(vec![(64, 64)]));
        assert_eq!(tiling(&present, 0..128), Some(vec![(0, 64), (64, 64)]));
        assert_eq!(
            tiling(&present, 128..266),
            Some(vec![(128, 128), (256, 10)])
        );
        assert_eq!(tiling(&present, 266..300), None);
        assert_eq!(tiling(&[(0, 32), (64, 64)], 0..128), None, "a gap");
        // Larger chunks cut down: a GPU's 128 or 192 rows for chunks of 64.
        assert_eq!(
            tiling(&[(0, 128), (128, 128)], 64..128),
            Some(vec![(0, 128)])
        );
        assert_eq!(
            tiling(&[(0, 192), (192, 192)], 128..256),
            Some(vec![(0, 192), (192, 192)])
        );
        assert_eq!(tiling(&present, 0..100), Some(vec![(0, 64), (64, 64)]));
    }

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

    #[test]
    fn the_largest_batch_that_fits_is_found_by_halving() {
        let oom = || candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY".into());
        let mut tried = Vec::new();
        let fits = largest_fitting_batch(128, |n| {
            tried.push(n);
            if n > 20 {
                Err(oom())
            } else {
                Ok(())
            }
        });
        assert_eq!(fits, Some(16));
        assert_eq!(tried, [64, 32, 16]);
        assert_eq!(largest_fitting_batch(8, |_| Err(oom())), None);
        assert_eq!(largest_fitting_batch(1, |_| Ok(())), None);
    }
}
