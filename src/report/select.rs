//! Which runs a report lists and in what order: `--sweep`, `--name`,
//! `--last`, `--where`, `--sort`.

use std::cmp::Ordering;

use anyhow::bail;

use super::cells::Cell;
use super::RunRecord;

/// The runs to list.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// A sweep id, or a prefix naming one sweep.
    pub sweep: Option<String>,
    /// A glob over the spec's `name` (`*`, `?`).
    pub name: Option<String>,
    /// Only the N most recently started runs.
    pub last: Option<usize>,
    /// `KEY=VALUE`, `KEY!=VALUE`, `KEY<VALUE`, `<=`, `>`, `>=`; all must hold.
    pub wheres: Vec<String>,
}

impl Selection {
    /// The runs of one sweep.
    pub fn sweep(id: &str) -> Selection {
        Selection {
            sweep: Some(id.to_string()),
            ..Selection::default()
        }
    }

    /// Keeps the selected runs of `runs`.
    pub fn apply(&self, mut runs: Vec<RunRecord>) -> anyhow::Result<Vec<RunRecord>> {
        if let Some(prefix) = &self.sweep {
            let id = sweep_id(&runs, prefix)?;
            runs.retain(|r| r.sweep.as_deref() == Some(id.as_str()));
        }
        if let Some(glob) = &self.name {
            runs.retain(|r| r.name.as_deref().is_some_and(|n| glob_match(glob, n)));
        }
        if let Some(n) = self.last {
            runs.sort_by(|a, b| b.started.cmp(&a.started).then_with(|| b.run.cmp(&a.run)));
            runs.truncate(n);
        }
        for text in &self.wheres {
            let condition = Condition::parse(text)?;
            if !runs.is_empty() && runs.iter().all(|r| !r.has_column(&condition.key)) {
                let mut columns: Vec<String> = Vec::new();
                for r in &runs {
                    for c in r.column_names() {
                        if !columns.contains(&c) {
                            columns.push(c);
                        }
                    }
                }
                bail!(
                    "--where {text:?}: no run has a column `{}`; columns: {}",
                    condition.key,
                    columns.join(", ")
                );
            }
            runs.retain(|r| condition.holds(&r.cell(&condition.key)));
        }
        Ok(runs)
    }
}

/// The one sweep id `prefix` names among the runs.
fn sweep_id(runs: &[RunRecord], prefix: &str) -> anyhow::Result<String> {
    let mut ids: Vec<&str> = runs
        .iter()
        .filter_map(|r| r.sweep.as_deref())
        .filter(|id| id.starts_with(prefix))
        .collect();
    ids.sort();
    ids.dedup();
    if let Some(exact) = ids.iter().find(|id| **id == prefix) {
        return Ok(exact.to_string());
    }
    match ids.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!("--sweep {prefix}: no run belongs to a sweep with that id (the id is printed when a sweep starts and kept in each run's run.json)"),
        several => bail!(
            "--sweep {prefix}: names {} sweeps ({}); give more of the id",
            several.len(),
            several.join(", ")
        ),
    }
}

/// `*` matches any run of characters, `?` any one.
pub fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t): (Vec<char>, Vec<char>) = (glob.chars().collect(), text.chars().collect());
    // Iterative wildcard matching with one backtrack point.
    let (mut gi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == t[ti]) {
            gi += 1;
            ti += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some(gi);
            mark = ti;
            gi += 1;
        } else if let Some(s) = star {
            gi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == '*')
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One `--where` condition.
#[derive(Debug)]
struct Condition {
    key: String,
    op: Op,
    value: String,
}

impl Condition {
    fn parse(text: &str) -> anyhow::Result<Condition> {
        // Two-character operators first, so `<=` is not read as `<`.
        const OPS: [(&str, Op); 7] = [
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("=", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let found = OPS
            .iter()
            .filter_map(|(s, op)| text.find(s).map(|at| (at, *s, *op)))
            .min_by_key(|(at, s, _)| (*at, std::cmp::Reverse(s.len())));
        let Some((at, s, op)) = found else {
            bail!("--where {text:?}: cannot parse; use KEY=VALUE, KEY!=VALUE, KEY<VALUE, KEY<=VALUE, KEY>VALUE or KEY>=VALUE (e.g. 'cv.folds=5')");
        };
        let key = text[..at].trim();
        if key.is_empty() {
            bail!("--where {text:?}: no column before `{s}`; e.g. 'head.dropout<0.5'");
        }
        Ok(Condition {
            key: key.to_string(),
            op,
            value: text[at + s.len()..].trim().to_string(),
        })
    }

    /// Numbers compare numerically, anything else as text; a run without
    /// the column never matches.
    fn holds(&self, cell: &Cell) -> bool {
        if cell.is_null() {
            return false;
        }
        let order = match (cell.as_f64(), self.value.parse::<f64>()) {
            (Some(a), Ok(b)) => a.total_cmp(&b),
            _ => cell.text().as_str().cmp(self.value.trim_matches('"')),
        };
        match self.op {
            Op::Eq => order == Ordering::Equal,
            Op::Ne => order != Ordering::Equal,
            Op::Lt => order == Ordering::Less,
            Op::Le => order != Ordering::Greater,
            Op::Gt => order == Ordering::Greater,
            Op::Ge => order != Ordering::Less,
        }
    }
}

/// Sorts by `key` (`-key`: descending), runs without a value last, ties in
/// run-name order.
pub fn sort(runs: &mut [RunRecord], key: &str) -> anyhow::Result<()> {
    let (key, descending) = match key.strip_prefix('-') {
        Some(k) => (k, true),
        None => (key, false),
    };
    if !runs.is_empty() && runs.iter().all(|r| !r.has_column(key)) {
        bail!("--sort {key}: no run has that column; e.g. oof_log_loss, test_accuracy, seconds, head.dropout");
    }
    runs.sort_by(|a, b| a.run.cmp(&b.run));
    runs.sort_by(|a, b| {
        let (x, y) = (a.cell(key), b.cell(key));
        match (x.is_null(), y.is_null()) {
            (false, false) if descending => y.compare(&x),
            (false, false) => x.compare(&y),
            (false, true) => Ordering::Less,
            (true, false) => Ordering::Greater,
            (true, true) => Ordering::Equal,
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_stars_and_question_marks() {
        assert!(glob_match("ablations*", "ablations-cv.folds=1"));
        assert!(glob_match(
            "*folds=?-*",
            "ablations-cv.folds=5-views=original"
        ));
        assert!(!glob_match("ablations", "ablations-x"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a?c", "ac"));
    }

    #[test]
    fn conditions_compare_numbers_numerically_and_text_as_text() {
        let c = Condition::parse("head.dropout<=0.5").unwrap();
        assert_eq!(
            (c.key.as_str(), c.op, c.value.as_str()),
            ("head.dropout", Op::Le, "0.5")
        );
        assert!(c.holds(&Cell::Float(0.5)));
        assert!(!c.holds(&Cell::Float(0.7)));
        assert!(!c.holds(&Cell::Null));
        let c = Condition::parse("cv.folds=5").unwrap();
        assert!(c.holds(&Cell::Int(5)));
        let c = Condition::parse("views != original").unwrap();
        assert!(c.holds(&Cell::Str("original+hflip".into())));
        assert!(!c.holds(&Cell::Str("original".into())));
        let err = Condition::parse("cv.folds~5").unwrap_err().to_string();
        assert!(err.contains("KEY=VALUE"), "{err}");
    }
}
