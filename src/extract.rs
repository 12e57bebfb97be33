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
