//! Typed table cells and the spec flattened to dotted columns.

use std::cmp::Ordering;

use polars::prelude::*;
use toml::{Table, Value};

/// One value of the report: the type it had in the spec or metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Cell {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Int(i) => Some(*i as f64),
            Cell::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Cell::Null)
    }

    /// The cell as text (what `--where` compares strings with).
    pub fn text(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Bool(b) => b.to_string(),
            Cell::Int(i) => i.to_string(),
            Cell::Float(f) => f.to_string(),
            Cell::Str(s) => s.clone(),
        }
    }

    /// Order for sorting: numbers numerically, otherwise as text; nulls
    /// are placed by the caller.
    pub fn compare(&self, other: &Cell) -> Ordering {
        match (self.as_f64(), other.as_f64()) {
            (Some(a), Some(b)) => a.total_cmp(&b),
            _ => self.text().cmp(&other.text()),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        match self {
            Cell::Null => serde_json::Value::Null,
            Cell::Bool(b) => (*b).into(),
            Cell::Int(i) => (*i).into(),
            Cell::Float(f) => serde_json::Number::from_f64(*f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
            Cell::Str(s) => s.clone().into(),
        }
    }
}

impl From<Option<f64>> for Cell {
    fn from(v: Option<f64>) -> Cell {
        v.map_or(Cell::Null, Cell::Float)
    }
}

impl From<Option<String>> for Cell {
    fn from(v: Option<String>) -> Cell {
        v.map_or(Cell::Null, Cell::Str)
    }
}

/// A resolved spec as `(dotted key, value)` pairs in the file's order:
/// tables become `cv.folds`, arrays of tables `backbone.0.arch`, arrays of
/// values one string joined with `+` (`views` = `original+hflip`). `name`
/// is left out: the run's folder name already shows it.
pub fn flatten_spec(table: &Table) -> Vec<(String, Cell)> {
    let mut out = Vec::new();
    for (key, value) in table {
        if key != "name" {
            flatten(key, value, &mut out);
        }
    }
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, Cell)>) {
    match value {
        Value::Table(t) => {
            for (k, v) in t {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}.{i}"), item, out);
            }
        }
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.push((prefix.to_string(), Cell::Str(parts.join("+"))));
        }
        Value::String(s) => out.push((prefix.to_string(), Cell::Str(s.clone()))),
        Value::Integer(i) => out.push((prefix.to_string(), Cell::Int(*i))),
        Value::Float(f) => out.push((prefix.to_string(), Cell::Float(*f))),
        Value::Boolean(b) => out.push((prefix.to_string(), Cell::Bool(*b))),
        Value::Datetime(d) => out.push((prefix.to_string(), Cell::Str(d.to_string()))),
    }
}

/// A polars column of `cells`, typed by what they hold: integers, floats
/// (integers mixed with floats widen), booleans, else text.
pub fn column(name: &str, cells: &[&Cell]) -> Column {
    let name: PlSmallStr = name.into();
    let present = || cells.iter().filter(|c| !c.is_null());
    if present().all(|c| matches!(c, Cell::Int(_))) {
        let v: Vec<Option<i64>> = cells
            .iter()
            .map(|c| match c {
                Cell::Int(i) => Some(*i),
                _ => None,
            })
            .collect();
        return Column::new(name, v);
    }
    if present().all(|c| c.as_f64().is_some()) {
        let v: Vec<Option<f64>> = cells.iter().map(|c| c.as_f64()).collect();
        return Column::new(name, v);
    }
    if present().all(|c| matches!(c, Cell::Bool(_))) {
        let v: Vec<Option<bool>> = cells
            .iter()
            .map(|c| match c {
                Cell::Bool(b) => Some(*b),
                _ => None,
            })
            .collect();
        return Column::new(name, v);
    }
    let v: Vec<Option<String>> = cells
        .iter()
        .map(|c| (!c.is_null()).then(|| c.text()))
        .collect();
    Column::new(name, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_flattens_to_dotted_typed_columns_in_file_order() {
        let t: Table = toml::from_str(
            "name = \"x\"\nseed = 7\nviews = [\"original\", \"hflip\"]\n[[backbone]]\narch = \"xception\"\n[[backbone]]\narch = \"inception_v3\"\ninput_size = 299\n[cv]\nfolds = 5\nstratified = true\n[head]\nlr = 0.01\n",
        )
        .unwrap();
        let flat = flatten_spec(&t);
        let keys: Vec<&str> = flat.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "seed",
                "views",
                "backbone.0.arch",
                "backbone.1.arch",
                "backbone.1.input_size",
                "cv.folds",
                "cv.stratified",
                "head.lr"
            ]
        );
        assert_eq!(flat[0].1, Cell::Int(7));
        assert_eq!(flat[1].1, Cell::Str("original+hflip".into()));
        assert_eq!(flat[6].1, Cell::Bool(true));
        assert_eq!(flat[7].1, Cell::Float(0.01));
    }

    #[test]
    fn columns_take_the_type_their_cells_share() {
        let (i, f, n, s) = (
            Cell::Int(1),
            Cell::Float(0.5),
            Cell::Null,
            Cell::Str("a".into()),
        );
        assert_eq!(column("x", &[&i, &n]).dtype(), &DataType::Int64);
        assert_eq!(column("x", &[&i, &f]).dtype(), &DataType::Float64);
        assert_eq!(column("x", &[&i, &s]).dtype(), &DataType::String);
        assert_eq!(column("x", &[&n]).dtype(), &DataType::Int64);
    }
}
