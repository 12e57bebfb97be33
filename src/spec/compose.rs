//! Spec files as TOML tables: `extends` chains merged, relative paths
//! anchored to the file that wrote them.
//!
//! Each file is checked against the spec's schema on its own text first, so
//! a typo is reported with its file, line and column; then its relative
//! paths are made absolute against its own folder (a spec that extends
//! `../recipe.toml` inherits the recipe's data and weights where the recipe
//! points, not relative to itself); then the chain is merged, the extending
//! file winning.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::raw::RawSpec;
use super::SpecError;

/// Keys whose values are file paths (relative to the spec that sets them).
/// `backbone.N.weights` is matched by [`is_path_key`].
const DATA_PATH_KEYS: [&str; 6] = [
    "root",
    "labels",
    "train_dir",
    "test_dir",
    "sample_submission",
    "test_labels",
];

/// Whether a dotted key names a file path.
pub fn is_path_key(dotted: &str) -> bool {
    let parts: Vec<&str> = dotted.split('.').collect();
    match parts.as_slice() {
        ["data", key] => DATA_PATH_KEYS.contains(key),
        ["backbone", index, "weights"] => index.parse::<usize>().is_ok(),
        _ => false,
    }
}

/// Reads `path` and every spec it extends into one table. `extends` is
/// removed: the result is what the chain means, not how it was written.
pub fn load_file(path: &Path) -> Result<Table, SpecError> {
    let mut chain = Vec::new();
    load_chain(path, &mut chain)
}

/// Spec text already in memory; `base` anchors its relative paths and its
/// `extends`.
pub fn load_text(text: &str, origin: &str, base: &Path) -> Result<Table, SpecError> {
    let mut chain = Vec::new();
    from_text(text, origin, base, &mut chain)
}

fn load_chain(path: &Path, chain: &mut Vec<PathBuf>) -> Result<Table, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
        path: path.display().to_string(),
        source,
    })?;
    // Cycle detection needs one name per file, whatever the spelling.
    let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if let Some(at) = chain.iter().position(|p| *p == canonical) {
        let cycle: Vec<String> = chain[at..]
            .iter()
            .chain(std::iter::once(&canonical))
            .map(|p| p.display().to_string())
            .collect();
        return Err(SpecError::Invalid {
            path: path.display().to_string(),
            key: "extends".into(),
            problem: format!("forms a cycle: {}", cycle.join(" -> ")),
            allowed: "a spec may extend a chain of specs that ends in one without `extends`".into(),
        });
    }
    chain.push(canonical);
    let base = path.parent().unwrap_or(Path::new("."));
    let table = from_text(&text, &path.display().to_string(), base, chain)?;
    chain.pop();
    Ok(table)
}

fn from_text(
    text: &str,
    origin: &str,
    base: &Path,
    chain: &mut Vec<PathBuf>,
) -> Result<Table, SpecError> {
    let parse_error = |e: toml::de::Error| SpecError::Parse {
        path: origin.to_string(),
        message: e.to_string().trim_end().to_string(),
    };
    // The schema check on the text itself: errors carry line and column.
    toml::from_str::<RawSpec>(text).map_err(parse_error)?;
    let mut table: Table = toml::from_str(text).map_err(parse_error)?;
    let base = absolute(base);
    anchor_paths(&mut table, &base);
    let Some(parent) = table.remove("extends") else {
        return Ok(table);
    };
    let parent = parent.as_str().expect("checked by the schema");
    let parent_path = normalize(&base.join(parent));
    if !parent_path.is_file() {
        return Err(SpecError::Invalid {
            path: origin.to_string(),
            key: "extends".into(),
            problem: format!("= {parent:?}: {} does not exist", parent_path.display()),
            allowed: "give a spec file's path relative to this spec".into(),
        });
    }
    let mut merged = load_chain(&parent_path, chain)?;
    merge(&mut merged, table);
    Ok(merged)
}

/// Merges `top` into `base`: tables key by key (recursively), anything else
/// (numbers, strings, arrays, `[[backbone]]` lists) replaced as a whole.
pub fn merge(base: &mut Table, top: Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(b)), Value::Table(t)) => merge(b, t),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Makes every relative path a spec file sets absolute against `base`.
fn anchor_paths(table: &mut Table, base: &Path) {
    if let Some(Value::Table(data)) = table.get_mut("data") {
        for key in DATA_PATH_KEYS {
            if let Some(v) = data.get_mut(key) {
                anchor(v, base);
            }
        }
    }
    if let Some(Value::Array(backbones)) = table.get_mut("backbone") {
        for b in backbones {
            if let Some(w) = b.as_table_mut().and_then(|t| t.get_mut("weights")) {
                anchor(w, base);
            }
        }
    }
}

/// A path value made absolute against `base` (non-strings are left for the
/// schema to reject).
pub fn anchor(value: &mut Value, base: &Path) {
    if let Value::String(s) = value {
        *s = normalize(&base.join(&*s)).display().to_string();
    }
}

/// `path` as an absolute path (against the working directory when relative).
pub fn absolute(path: &Path) -> PathBuf {
    // `a.toml`'s parent is the empty path: the working directory.
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// Removes `.` and folds `dir/..` lexically, so logs and the resolved spec
/// show `/work/shared/x` rather than `/work/main/experiments/../../shared/x`.
pub fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn relative_paths_fold_lexically() {
        assert_eq!(
            normalize(Path::new("experiments/../../shared/m")),
            Path::new("../shared/m")
        );
        assert_eq!(normalize(Path::new("./a/./b/../c")), Path::new("a/c"));
        assert_eq!(normalize(Path::new("/x/../y")), Path::new("/y"));
    }

    #[test]
    fn tables_merge_key_by_key_and_arrays_are_replaced_whole() {
        let mut base: Table = toml::from_str(
            "seed = 1\nviews = [\"original\", \"hflip\"]\n[head]\nlr = 0.01\nepochs = 50\n[[backbone]]\narch = \"xception\"\n[[backbone]]\narch = \"inception_v3\"\n",
        )
        .unwrap();
        let top: Table = toml::from_str(
            "views = [\"original\"]\n[head]\nlr = 0.1\n[[backbone]]\narch = \"resnet50\"\n",
        )
        .unwrap();
        merge(&mut base, top);
        assert_eq!(base["seed"].as_integer(), Some(1));
        assert_eq!(base["views"].as_array().unwrap().len(), 1);
        assert_eq!(base["head"]["lr"].as_float(), Some(0.1));
        assert_eq!(base["head"]["epochs"].as_integer(), Some(50));
        let backbones = base["backbone"].as_array().unwrap();
        assert_eq!(backbones.len(), 1);
        assert_eq!(backbones[0]["arch"].as_str(), Some("resnet50"));
    }

    #[test]
    fn an_extended_specs_paths_stay_relative_to_that_spec() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        write(
            dir.path(),
            "base.toml",
            "name = \"b\"\n[data]\nlayout = \"kaggle\"\nroot = \"data\"\n[[backbone]]\narch = \"xception\"\nweights = \"w.safetensors\"\n",
        );
        let top = write(
            &dir.path().join("sub"),
            "top.toml",
            "extends = \"../base.toml\"\n[data]\ntest_labels = \"answers.csv\"\n",
        );
        let t = load_file(&top).unwrap();
        let root = absolute(dir.path());
        assert_eq!(
            t["data"]["root"].as_str().unwrap(),
            root.join("data").display().to_string()
        );
        assert_eq!(
            t["data"]["test_labels"].as_str().unwrap(),
            root.join("sub/answers.csv").display().to_string()
        );
        assert_eq!(
            t["backbone"][0]["weights"].as_str().unwrap(),
            root.join("w.safetensors").display().to_string()
        );
        assert!(!t.contains_key("extends"));
    }

    #[test]
    fn an_extends_cycle_is_an_error_naming_the_files() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.toml", "extends = \"b.toml\"\nseed = 1\n");
        write(dir.path(), "b.toml", "extends = \"c.toml\"\n");
        write(dir.path(), "c.toml", "extends = \"a.toml\"\n");
        let err = load_file(&dir.path().join("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cycle"), "{err}");
        for f in ["a.toml -> ", "b.toml -> ", "c.toml -> "] {
            assert!(err.contains(f), "{err}");
        }
    }

    #[test]
    fn a_missing_extended_spec_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.toml", "extends = \"nope.toml\"\n");
        let err = load_file(&a).unwrap_err().to_string();
        assert!(
            err.contains("a.toml") && err.contains("nope.toml") && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn a_typo_in_an_extended_spec_names_that_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "base.toml", "seed = 1\n[head]\nlrr = 0.1\n");
        let top = write(dir.path(), "top.toml", "extends = \"base.toml\"\n");
        let err = load_file(&top).unwrap_err().to_string();
        assert!(
            err.contains("base.toml") && err.contains("line 3") && err.contains("`lrr`"),
            "{err}"
        );
    }

    #[test]
    fn a_spec_in_the_working_directory_gets_absolute_paths() {
        assert!(absolute(Path::new("")).is_absolute());
        assert_eq!(absolute(Path::new("")), absolute(Path::new(".")));
    }

    #[test]
    fn path_keys_are_the_data_files_and_backbone_weights() {
        assert!(is_path_key("data.root"));
        assert!(is_path_key("backbone.1.weights"));
        assert!(!is_path_key("data.layout"));
        assert!(!is_path_key("backbone.weights"));
        assert!(!is_path_key("head.lr"));
    }
}
