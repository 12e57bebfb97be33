//! `runner report --group-by KEY`: one row per value of the grouping
//! columns with the number of runs and each score's mean and sample
//! standard deviation, so a setting's effect can be told from seed noise.

use polars::prelude::*;

use super::cells::Cell;
use super::render::frame;
use super::{RunRecord, METRICS};

/// The grouped table: columns and rows, groups in ascending key order.
pub fn aggregate(
    runs: &[RunRecord],
    keys: &[String],
) -> anyhow::Result<(Vec<String>, Vec<Vec<Cell>>)> {
    let mut columns: Vec<String> = keys.to_vec();
    columns.extend(METRICS.iter().map(|m| m.to_string()));
    let rows: Vec<Vec<Cell>> = runs
        .iter()
        .map(|r| columns.iter().map(|c| r.cell(c)).collect())
        .collect();
    let df = frame(&columns, &rows)?;

    let mut out_columns = keys.to_vec();
    out_columns.push("runs".into());
    for m in METRICS {
        out_columns.push(format!("{m}_mean"));
        out_columns.push(format!("{m}_std"));
    }
    let mut out_rows = Vec::new();
    if df.height() > 0 {
        let by = df.group_by_stable(keys.iter().map(String::as_str))?;
        for group in by.get_groups().iter() {
            let rows: Vec<IdxSize> = match group {
                GroupsIndicator::Idx((_, all)) => all.to_vec(),
                GroupsIndicator::Slice([first, len]) => (first..first + len).collect(),
            };
            let first = rows[0] as usize;
            let mut row: Vec<Cell> = keys.iter().map(|k| runs[first].cell(k)).collect();
            row.push(Cell::Int(rows.len() as i64));
            for m in METRICS {
                let values = df.column(m)?.as_materialized_series().take_slice(&rows)?;
                let values = values.cast(&DataType::Float64)?;
                let mean = values.mean();
                row.push(mean.into());
                // Sample deviation (n - 1): none for a single run; equal
                // values give exactly 0, not the summation's rounding.
                let std = (values.len() - values.null_count() > 1)
                    .then(|| values.std(1))
                    .flatten()
                    .map(|s| {
                        if s <= 1e-12 * mean.unwrap_or(0.0).abs() {
                            0.0
                        } else {
                            s
                        }
                    });
                row.push(std.into());
            }
            out_rows.push(row);
        }
    }
    out_rows.sort_by(|a, b| {
        a[..keys.len()]
            .iter()
            .zip(&b[..keys.len()])
            .map(|(x, y)| x.compare(y))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok((out_columns, out_rows))
}
