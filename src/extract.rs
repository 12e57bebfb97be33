//! `runner extract`: a spec's features (computed or from the cache) as
//! float32 `.npy` files, one per backbone x view x split, beside the row ids
//! of each split in CSV.

use std::path::Path;

use anyhow::Context;

use crate::npy;
use crate::pipeline::csv_bytes;
use crate::plan::{Plan, Split};
use crate::run::Run;

/// Writes `<split>_ids.csv` and `<split>_<backbone>_<view>.npy` under `out`
/// for every split with images. A backbone's file stem is its architecture,
/// with its index in the spec appended when two share one.
pub fn extract(run: &Run<'_>, out: &Path) -> anyhow::Result<()> {
    let (spec, data) = (run.spec, run.data);
    let plan = Plan::new(spec, data, Some(run.cache))?;
    let feats = crate::features::ensure(run, &plan)?;
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
