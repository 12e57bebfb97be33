//! `runner extract`: a spec's features computed into the cache, and
//! written as float32 `.npy` files, one per backbone x view x split, beside
//! the row ids of each split in CSV (`--out`); or one shard's share of them
//! computed into the cache (`--shard I/N`, [`crate::shard`]).

use std::path::Path;

use anyhow::Context;

use crate::npy;
use crate::pipeline::csv_bytes;
use crate::plan::{Plan, Split};
use crate::run::Run;
use crate::shard::Shard;

/// Computes `shard`'s chunks of the spec's unfinished stages into the cache.
pub fn extract_shard(run: &Run<'_>, shard: Shard) -> anyhow::Result<()> {
    let plan = Plan::new(run.spec, run.data, Some(run.cache))?;
    let started = std::time::Instant::now();
    let work = crate::features::extract_shard(run, &plan, shard)?;
    run.log.info(format!(
        "shard {shard}: computed {} stage chunk(s) ({} images) in {:.1}s, {} found in the cache; once every shard is done, `runner extract` or a run of the spec builds the stages from the chunks",
        work.computed,
        work.images,
        started.elapsed().as_secs_f64(),
        work.found
    ));
    Ok(())
}

/// `runner extract SPEC --status`: per stage, whether the cache holds it
/// finished, in part (the rows its chunks cover) or not at all. Hashing
/// the images and weights for the stage keys leaves the hashes in the
/// cache's memo, where shards started afterwards find them.
pub fn status(run: &Run<'_>) -> anyhow::Result<String> {
    let plan = Plan::new(run.spec, run.data, Some(run.cache))?;
    let mut out = format!("{:<40} {:<12}  state\n", "stage", "key");
    for stage in &plan.stages {
        let name = format!(
            "{} {} {}",
            run.spec.backbones[stage.backbone].arch.name(),
            stage.view.name(),
            stage.split.name()
        );
        let rows = run.items(stage.split).len();
        let state = if run.cache.contains(&stage.key) {
            "finished".to_string()
        } else {
            let chunks = run.cache.chunks_present(&stage.key)?;
            match covered_rows(&chunks, rows) {
                0 => "not started".to_string(),
                n => format!("{n} of {rows} rows in {} chunk(s)", chunks.len()),
            }
        };
        out.push_str(&format!("{name:<40} {:<12}  {state}\n", &stage.key[..12]));
    }
    out.push_str(&format!("cache: {}\n", run.cache.location()));
    Ok(out)
}

/// Rows `0..rows` that the chunks (first row, rows; sorted) cover.
fn covered_rows(chunks: &[(usize, usize)], rows: usize) -> usize {
    let (mut covered, mut reached) = (0, 0);
    for &(first, n) in chunks {
        let end = (first + n).min(rows);
        let start = first.max(reached);
        if end > start {
            covered += end - start;
            reached = end;
        }
    }
    covered
}

/// Makes sure every stage of the spec is in the cache and, with `out`,
/// writes `<split>_ids.csv` and `<split>_<backbone>_<view>.npy` there for
/// every split with images. A backbone's file stem is its architecture,
/// with its index in the spec appended when two share one.
pub fn extract(run: &Run<'_>, out: Option<&Path>) -> anyhow::Result<()> {
    let (spec, data) = (run.spec, run.data);
    let plan = Plan::new(spec, data, Some(run.cache))?;
    let feats = crate::features::ensure(run, &plan)?;
    let Some(out) = out else {
        run.log.info(format!(
            "every stage of the spec is in the cache {}",
            run.cache.location()
        ));
        return Ok(());
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for split in [Split::Train, Split::Test] {
        if run.items(split).is_empty() {
            continue;
        }
        crate::cache::write_atomic(
            &out.join(format!("{}_ids.csv", split.name())),
            &ids_csv(run, split)?,
        )?;
        for (b, bb) in spec.backbones.iter().enumerate() {
            let arch = bb.arch.name();
            let dup = spec.backbones.iter().filter(|o| o.arch == bb.arch).count() > 1;
            let stem = if dup {
                format!("{arch}_{b}")
            } else {
                arch.to_string()
            };
            for &view in &spec.views {
                let path = out.join(format!("{}_{stem}_{}.npy", split.name(), view.name()));
                npy::write(&path, feats.get(plan.stage(b, view, split)))?;
                run.log.info(format!("wrote {}", path.display()));
            }
        }
    }
    Ok(())
}

/// The ids of a split's rows in order, with their labels for training.
fn ids_csv(run: &Run<'_>, split: Split) -> csv::Result<Vec<u8>> {
    let data = run.data;
    let header: Vec<&str> = match split {
        Split::Train => vec!["id", "label"],
        Split::Test => vec!["id"],
    };
    let rows = run.items(split).iter().enumerate().map(|(i, item)| {
        let mut row = vec![item.id.as_str()];
        if split == Split::Train {
            row.push(&data.classes[data.labels[i]]);
        }
        row
    });
    csv_bytes(std::iter::once(header).chain(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_covered_by_chunks_count_overlaps_once() {
        assert_eq!(covered_rows(&[], 10), 0);
        assert_eq!(covered_rows(&[(0, 64), (0, 128), (64, 64)], 200), 128);
        assert_eq!(covered_rows(&[(0, 64), (128, 128)], 200), 64 + 72);
    }
}
