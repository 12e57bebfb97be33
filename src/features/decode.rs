//! The decoding side of extraction: each chunk of images decoded once and
//! resized once per input size, on a thread of its own (and a pool of its
//! own with more than one decode thread), one chunk ahead of the backbones.

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::Scope;
use std::time::Instant;

use rayon::prelude::*;

use super::FeatureError;
use crate::data::image::{decode_file, Damage, Fit, ImageError, RgbImage};
use crate::data::Item;
use crate::spec::OnBadImage;

/// An input size: side length, resize filter and crop.
pub type InputSize = Fit;

/// One chunk decoded and resized to every input size its stages need.
pub struct Decoded {
    pub images: HashMap<InputSize, Vec<RgbImage>>,
    pub seconds: f64,
    /// Images that decoded but are damaged, to warn about: path and what
    /// is wrong.
    pub damaged: Vec<(String, Damage)>,
}

/// A pool of `threads` decoders; `None` for one, which decodes on the
/// decoder thread itself. A pool of their own means decoding never waits
/// behind the backbones' tasks on the global pool.
pub fn pool(threads: usize) -> Result<Option<rayon::ThreadPool>, FeatureError> {
    if threads <= 1 {
        return Ok(None);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("decode-{i}"))
        .build()
        .map(Some)
        .map_err(|e| FeatureError::DecodePool(e.to_string()))
}

/// Starts the decoder thread: it decodes every chunk with input sizes to
/// make (skipping resumed ones) and sends them in order. The channel holds
/// one chunk, so at most two are in memory; the thread stops after an error
/// or when the receiver is dropped.
pub fn spawn<'scope, 'env>(
    scope: &'scope Scope<'scope, 'env>,
    chunks: &'env [&'env [Item]],
    sizes: &'env [BTreeSet<InputSize>],
    pool: Option<&'env rayon::ThreadPool>,
    on_bad_image: OnBadImage,
) -> Receiver<Result<Decoded, FeatureError>> {
    let (tx, rx) = sync_channel(1);
    scope.spawn(move || {
        for (chunk, sizes) in chunks.iter().zip(sizes) {
            if sizes.is_empty() {
                continue;
            }
            let decoded = decode_chunk(chunk, sizes, pool, on_bad_image);
            let failed = decoded.is_err();
            // A closed channel means the consumer stopped (it failed).
            if tx.send(decoded).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Decodes `chunk` and resizes it to `sizes`: on the calling thread alone,
/// or spread over `pool` (images in their order either way). A damaged
/// image is an error under `on_bad_image = "error"`, else passed on to be
/// warned about.
pub fn decode_chunk(
    chunk: &[Item],
    sizes: &BTreeSet<InputSize>,
    pool: Option<&rayon::ThreadPool>,
    on_bad_image: OnBadImage,
) -> Result<Decoded, FeatureError> {
    let started = Instant::now();
    let one = |item: &Item| -> Result<(Vec<RgbImage>, Option<Damage>), FeatureError> {
        let decoded = decode_file(&item.path)?;
        if let (OnBadImage::Error, Some(damage)) = (on_bad_image, &decoded.damage) {
            return Err(ImageError::Damaged {
                path: item.path.display().to_string(),
                damage: damage.clone(),
            }
            .into());
        }
        let resized = sizes.iter().map(|fit| fit.apply(&decoded.image)).collect();
        Ok((resized, decoded.damage))
    };
    let per_image: Vec<(Vec<RgbImage>, Option<Damage>)> = match pool {
        Some(pool) => pool.install(|| chunk.par_iter().map(one).collect::<Result<_, _>>())?,
        None => chunk.iter().map(one).collect::<Result<_, _>>()?,
    };
    let mut images: HashMap<InputSize, Vec<RgbImage>> = sizes
        .iter()
        .map(|&k| (k, Vec::with_capacity(chunk.len())))
        .collect();
    let mut damaged = Vec::new();
    for (item, (resized, damage)) in chunk.iter().zip(per_image) {
        for (&key, img) in sizes.iter().zip(resized) {
            images.get_mut(&key).expect("one entry per size").push(img);
        }
        if let Some(damage) = damage {
            damaged.push((item.path.display().to_string(), damage));
        }
    }
    Ok(Decoded {
        images,
        seconds: started.elapsed().as_secs_f64(),
        damaged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::tests::woof_train_photos;
    use crate::spec::Resize;

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
        let fit = |size, filter, shorter_side| Fit {
            size,
            filter,
            shorter_side,
        };
        let sizes = BTreeSet::from([
            fit(32, Resize::Box, None),
            fit(48, Resize::Area, None),
            fit(40, Resize::Bicubic, Some(45)),
        ]);
        let pool = pool(3).unwrap().expect("a pool for 3 threads");
        let serial = decode_chunk(&chunk, &sizes, None, OnBadImage::Warn).unwrap();
        let parallel = decode_chunk(&chunk, &sizes, Some(&pool), OnBadImage::Warn).unwrap();
        for key in &sizes {
            let (a, b) = (&serial.images[key], &parallel.images[key]);
            assert_eq!(a.len(), 12);
            for (x, y) in a.iter().zip(b) {
                assert_eq!((x.width, x.height), (key.size, key.size));
                assert_eq!(x.pixels, y.pixels);
            }
        }
        // And the images differ from each other (the check above is not vacuous).
        let first = &serial.images[&fit(32, Resize::Box, None)];
        assert_ne!(first[0].pixels, first[1].pixels);
    }
}
