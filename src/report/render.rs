//! Rows of cells printed as a terminal table, Markdown or CSV (through a
//! polars DataFrame) or JSON (objects with their keys in column order).

use polars::prelude::*;
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::cells::{column, Cell};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Markdown,
    Json,
}

/// The rows as a DataFrame, each column typed by its cells.
pub fn frame(columns: &[String], rows: &[Vec<Cell>]) -> PolarsResult<DataFrame> {
    let cols = columns
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let cells: Vec<&Cell> = rows.iter().map(|r| &r[i]).collect();
            column(name, &cells)
        })
        .collect();
    DataFrame::new_infer_height(cols)
}

pub fn render(columns: &[String], rows: &[Vec<Cell>], format: Format) -> anyhow::Result<String> {
    match format {
        Format::Table | Format::Markdown => {
            // polars reads its table settings from the environment; this
            // runs on the main thread before anything else reads it.
            let style = if format == Format::Markdown {
                "ASCII_MARKDOWN"
            } else {
                "UTF8_FULL_CONDENSED"
            };
            for (key, value) in [
                ("POLARS_FMT_TABLE_FORMATTING", style),
                ("POLARS_FMT_MAX_ROWS", "-1"),
                ("POLARS_FMT_MAX_COLS", "-1"),
                ("POLARS_FMT_STR_LEN", "120"),
                // Never wrap cells to the terminal: one line per run.
                ("POLARS_TABLE_WIDTH", "65535"),
                ("POLARS_FMT_TABLE_HIDE_COLUMN_DATA_TYPES", "1"),
                ("POLARS_FMT_TABLE_HIDE_DATAFRAME_SHAPE_INFORMATION", "1"),
            ] {
                std::env::set_var(key, value);
            }
            Ok(format!("{}\n", frame(columns, rows)?))
        }
        Format::Csv => {
            let mut buf = Vec::new();
            CsvWriter::new(&mut buf).finish(&mut frame(columns, rows)?)?;
            Ok(String::from_utf8(buf)?)
        }
        Format::Json => {
            let objects: Vec<Ordered<'_>> = rows.iter().map(|r| Ordered(columns, r)).collect();
            Ok(serde_json::to_string_pretty(&objects)? + "\n")
        }
    }
}

/// One row as a JSON object whose keys keep the columns' order.
struct Ordered<'a>(&'a [String], &'a [Cell]);

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0.iter().zip(self.1) {
            map.serialize_entry(k, &v.json())?;
        }
        map.end()
    }
}
