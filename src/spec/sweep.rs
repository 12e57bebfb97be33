//! Sweeps: dotted keys mapped to lists of values, expanded into the members
//! of an experiment.
//!
//! ```toml
//! [sweep]
//! mode = "grid"                # every combination (default); "zip": i-th with i-th
//! "cv.folds" = [1, 5]          # quoted dotted keys ...
//! head.dropout = [0.3, 0.5]    # ... or TOML's own dotted keys: the same
//! ```

use toml::{Table, Value};

use super::overrides::{render, Assignment};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// The cartesian product of the lists.
    #[default]
    Grid,
    /// The lists side by side: the i-th value of every key together.
    Zip,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Grid => "grid",
            Mode::Zip => "zip",
        }
    }
}

/// One swept key and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub key: String,
    pub values: Vec<Value>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sweep {
    pub mode: Mode,
    pub axes: Vec<Axis>,
}

impl Sweep {
    /// Reads a `[sweep]` table; errors name the key and what is allowed.
    pub fn from_table(table: Table) -> Result<Sweep, String> {
        let mut sweep = Sweep::default();
        for (key, value) in table {
            if key == "mode" {
                sweep.mode = match value.as_str() {
                    Some("grid") => Mode::Grid,
                    Some("zip") => Mode::Zip,
                    _ => {
                        return Err(format!(
                            "`sweep.mode` = {value} is not a mode; allowed: \"grid\", \"zip\""
                        ))
                    }
                };
                continue;
            }
            flatten(&key, value, &mut sweep.axes)?;
        }
        Ok(sweep)
    }

    /// Adds an axis, replacing one of the same key (a command line's
    /// `--sweep` over a key the file also sweeps).
    pub fn set_axis(&mut self, axis: Axis) {
        match self.axes.iter_mut().find(|a| a.key == axis.key) {
            Some(existing) => *existing = axis,
            None => self.axes.push(axis),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.axes.is_empty()
    }

    /// Every member's assignments, in order: the grid varies the last key
    /// fastest (as nested loops written in the file's order would).
    pub fn members(&self) -> Result<Vec<Vec<Assignment>>, String> {
        for axis in &self.axes {
            if axis.values.is_empty() {
                return Err(format!("`sweep.{}` is an empty list", axis.key));
            }
        }
        let pick = |choice: &[usize]| -> Vec<Assignment> {
            self.axes
                .iter()
                .zip(choice)
                .map(|(axis, &i)| Assignment {
                    key: axis.key.clone(),
                    value: axis.values[i].clone(),
                })
                .collect()
        };
        match self.mode {
            Mode::Grid => {
                let count = self
                    .axes
                    .iter()
                    .try_fold(1usize, |n, a| n.checked_mul(a.values.len()))
                    .filter(|&n| n <= MAX_MEMBERS);
                let Some(count) = count else {
                    let sizes: Vec<String> = self
                        .axes
                        .iter()
                        .map(|a| a.values.len().to_string())
                        .collect();
                    return Err(format!(
                        "the grid of {} values has more than {MAX_MEMBERS} members: sweep fewer values, or use mode = \"zip\"",
                        sizes.join(" x ")
                    ));
                };
                let mut members = Vec::with_capacity(count);
                let mut choice = vec![0; self.axes.len()];
                loop {
                    members.push(pick(&choice));
                    // Odometer: bump the last axis, carrying leftwards.
                    let mut k = self.axes.len();
                    loop {
                        if k == 0 {
                            return Ok(members);
                        }
                        k -= 1;
                        choice[k] += 1;
                        if choice[k] < self.axes[k].values.len() {
                            break;
                        }
                        choice[k] = 0;
                    }
                }
            }
            Mode::Zip => {
                let n = self.axes[0].values.len();
                if let Some(a) = self.axes.iter().find(|a| a.values.len() != n) {
                    let lengths: Vec<String> = self
                        .axes
                        .iter()
                        .map(|a| format!("{} has {}", a.key, a.values.len()))
                        .collect();
                    return Err(format!(
                        "mode = \"{}\" needs lists of one length, but `{}` differs ({}); use mode = \"grid\" for every combination",
                        self.mode.name(),
                        a.key,
                        lengths.join(", ")
                    ));
                }
                Ok((0..n).map(|i| pick(&vec![i; self.axes.len()])).collect())
            }
        }
    }
}

/// `head = { dropout = [..] }` (TOML's own dotted keys) becomes the axis
/// `head.dropout`.
fn flatten(prefix: &str, value: Value, axes: &mut Vec<Axis>) -> Result<(), String> {
    match value {
        Value::Table(t) => {
            for (k, v) in t {
                flatten(&format!("{prefix}.{k}"), v, axes)?;
            }
            Ok(())
        }
        Value::Array(values) => {
            if let Some((_, why)) = [
                ("name", "each member is named after its values"),
                ("extends", "sweep over specs by running them side by side"),
                ("sweep", "a sweep cannot sweep itself"),
            ]
            .iter()
            .find(|(k, _)| prefix == *k)
            {
                return Err(format!("`sweep.{prefix}` cannot be swept: {why}"));
            }
            axes.push(Axis {
                key: prefix.to_string(),
                values,
            });
            Ok(())
        }
        other => Err(format!(
            "`sweep.{prefix}` = {other} is not a list; give the values to try, e.g. \"{prefix}\" = [{other}]"
        )),
    }
}

/// Most members a sweep may have: each is a run directory, and a grid's
/// size multiplies (ten axes of ten values would be 10^10 runs).
pub const MAX_MEMBERS: usize = 10_000;

/// A member's name: the spec's name followed by each swept `key=value`
/// (`ablations-cv.folds=1-views=original+hflip`), with characters a
/// folder name should not hold replaced by `_`.
/// A name too long for a folder is cut, with a hash of the whole name
/// keeping members apart.
pub fn member_name(base: &str, values: &[Assignment]) -> String {
    let mut name = base.to_string();
    for a in values {
        name.push('-');
        name.push_str(&a.key);
        name.push('=');
        name.push_str(&render(&a.value));
    }
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.=+,".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.len() <= super::MAX_NAME_LEN {
        return name;
    }
    let hash = blake3::hash(name.as_bytes()).to_hex();
    format!("{}-{}", &name[..super::MAX_NAME_LEN - 9], &hash[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep(text: &str) -> Result<Sweep, String> {
        let t: Table = toml::from_str(text).unwrap();
        Sweep::from_table(t["sweep"].as_table().unwrap().clone())
    }

    fn labels(members: &[Vec<Assignment>]) -> Vec<String> {
        members
            .iter()
            .map(|m| {
                m.iter()
                    .map(Assignment::to_arg)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    #[test]
    fn a_grid_is_every_combination_with_the_last_key_fastest() {
        let s = sweep(
            "[sweep]\n\"cv.folds\" = [1, 5]\nviews = [[\"original\"], [\"original\", \"hflip\"]]\n",
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Grid);
        assert_eq!(
            labels(&s.members().unwrap()),
            [
                "cv.folds=1 views=original",
                "cv.folds=1 views=original+hflip",
                "cv.folds=5 views=original",
                "cv.folds=5 views=original+hflip",
            ]
        );
    }

    #[test]
    fn zip_pairs_the_lists_and_needs_equal_lengths() {
        let s = sweep("[sweep]\nmode = \"zip\"\nseed = [1, 2]\nhead.lr = [0.1, 0.2]\n").unwrap();
        assert_eq!(
            labels(&s.members().unwrap()),
            ["seed=1 head.lr=0.1", "seed=2 head.lr=0.2"]
        );
        let s = sweep("[sweep]\nmode = \"zip\"\nseed = [1, 2, 3]\nhead.lr = [0.1, 0.2]\n").unwrap();
        let err = s.members().unwrap_err();
        assert!(err.contains("seed has 3, head.lr has 2"), "{err}");
    }

    #[test]
    fn toml_dotted_keys_and_quoted_dotted_keys_mean_the_same_axis() {
        let a = sweep("[sweep]\nhead.dropout = [0.3]\n").unwrap();
        let b = sweep("[sweep]\n\"head.dropout\" = [0.3]\n").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.axes[0].key, "head.dropout");
    }

    #[test]
    fn bad_sweep_tables_are_named() {
        assert!(sweep("[sweep]\nmode = \"random\"\nseed = [1]\n")
            .unwrap_err()
            .contains("allowed: \"grid\", \"zip\""));
        assert!(sweep("[sweep]\nseed = 3\n")
            .unwrap_err()
            .contains("not a list"));
        assert!(sweep("[sweep]\nname = [\"a\"]\n")
            .unwrap_err()
            .contains("cannot be swept"));
        let empty = sweep("[sweep]\nseed = []\n").unwrap();
        assert!(empty.members().unwrap_err().contains("empty list"));
    }

    #[test]
    fn a_command_line_axis_replaces_the_files_axis_of_the_same_key() {
        let mut s = sweep("[sweep]\nseed = [1, 2]\n").unwrap();
        s.set_axis(Axis {
            key: "seed".into(),
            values: vec![Value::Integer(7)],
        });
        assert_eq!(labels(&s.members().unwrap()), ["seed=7"]);
    }

    #[test]
    fn a_grid_too_large_to_run_is_refused_before_it_is_built() {
        let axes: Vec<String> = (0..10)
            .map(|i| format!("k{i} = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"))
            .collect();
        let s = sweep(&format!("[sweep]\n{}\n", axes.join("\n"))).unwrap();
        let err = s.members().unwrap_err();
        assert!(err.contains("more than 10000 members"), "{err}");
    }

    #[test]
    fn member_names_spell_the_values() {
        let values = vec![
            Assignment {
                key: "cv.folds".into(),
                value: Value::Integer(1),
            },
            Assignment {
                key: "views".into(),
                value: toml::Value::Array(vec!["original".into(), "hflip".into()]),
            },
            Assignment {
                key: "data.root".into(),
                value: "/data/my set".into(),
            },
        ];
        assert_eq!(
            member_name("ablations", &values),
            "ablations-cv.folds=1-views=original+hflip-data.root=_data_my_set"
        );
    }

    #[test]
    fn a_member_name_too_long_for_a_folder_is_cut_and_stays_unique() {
        let long = |v: &str| {
            vec![Assignment {
                key: "data.root".into(),
                value: v.repeat(300).into(),
            }]
        };
        let (a, b) = (member_name("s", &long("a")), member_name("s", &long("b")));
        assert_eq!(a.len(), super::super::MAX_NAME_LEN);
        assert_ne!(a, b);
    }
}
