//! Dotted-key assignments: `--set head.lr=0.005`, `--sweep seed=1,2,3`, and
//! each member of a `[sweep]`.
//!
//! A value is read as TOML (`5`, `0.5`, `true`, `["original"]`, `"adam"`);
//! what does not parse as TOML is taken as a bare string, so
//! `--set head.optimizer=adam` needs no shell-quoted quotes. Keys index
//! arrays by number: `backbone.0.input_size=320`.

use toml::{Table, Value};

use super::compose;

/// One key set to one value.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub key: String,
    pub value: Value,
}

impl Assignment {
    /// `key=value` as a user would type it back.
    pub fn to_arg(&self) -> String {
        format!("{}={}", self.key, render(&self.value))
    }
}

/// Keys a command line may not set: they say how a spec is assembled, not
/// what it runs.
const NOT_SETTABLE: [(&str, &str); 2] = [
    ("extends", "name the spec to extend in the file itself"),
    ("sweep", "use --sweep KEY=V1,V2 or a [sweep] table"),
];

/// Parses `KEY=VALUE`.
pub fn parse_set(arg: &str) -> Result<Assignment, String> {
    let (key, value) = split_key(arg)?;
    Ok(Assignment {
        key,
        value: parse_value(value),
    })
}

/// Parses `KEY=V1,V2,...`; commas inside brackets, braces or quotes do not
/// split (`views=["original"],["original","hflip"]`).
pub fn parse_sweep(arg: &str) -> Result<(String, Vec<Value>), String> {
    let (key, values) = split_key(arg)?;
    let values: Vec<Value> = split_top_level(values)
        .into_iter()
        .map(|v| parse_value(v.trim()))
        .collect();
    if values.iter().any(|v| v.as_str() == Some("")) {
        return Err(format!(
            "{arg:?} has an empty value; use KEY=V1,V2,... with one value between commas"
        ));
    }
    Ok((key, values))
}

fn split_key(arg: &str) -> Result<(String, &str), String> {
    let Some((key, value)) = arg.split_once('=') else {
        return Err(format!("{arg:?} is not KEY=VALUE (e.g. head.lr=0.005)"));
    };
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!(
            "{arg:?}: `{key}` is not a dotted key (e.g. cv.folds, backbone.0.input_size)"
        ));
    }
    let first = key.split('.').next().unwrap_or(key);
    if let Some((k, why)) = NOT_SETTABLE.iter().find(|(k, _)| *k == first) {
        return Err(format!("{arg:?}: `{k}` cannot be set here; {why}"));
    }
    Ok((key.to_string(), value))
}

/// A TOML value, or the text itself as a string.
pub fn parse_value(text: &str) -> Value {
    let text = text.trim();
    match toml::from_str::<Table>(&format!("v = {text}")) {
        Ok(mut t) if t.len() == 1 => t.remove("v").expect("one key"),
        _ => Value::String(text.to_string()),
    }
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut quote, mut start) = (0i32, None::<char>, 0);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Sets `a.key` in `table`, creating tables on the way; a number indexes an
/// array (one past its end appends). Path values given on the command line
/// are relative to the working directory.
pub fn apply(table: &mut Table, a: &Assignment) -> Result<(), String> {
    let mut value = a.value.clone();
    if compose::is_path_key(&a.key) {
        compose::anchor(&mut value, &compose::absolute(std::path::Path::new(".")));
    }
    let parts: Vec<&str> = a.key.split('.').collect();
    let (last, walk) = parts.split_last().expect("a key has one part");
    let mut slot = Slot::Table(table);
    for (depth, part) in walk.iter().enumerate() {
        let next_is_index = parts[depth + 1].parse::<usize>().is_ok();
        slot = slot.child(part, next_is_index, &a.key)?;
    }
    slot.set(last, value, &a.key)
}

/// Where the walk down a dotted key stands.
enum Slot<'a> {
    Table(&'a mut Table),
    Array(&'a mut Vec<Value>),
}

impl<'a> Slot<'a> {
    fn child(self, part: &str, array_next: bool, key: &str) -> Result<Slot<'a>, String> {
        let fresh = || {
            if array_next {
                Value::Array(Vec::new())
            } else {
                Value::Table(Table::new())
            }
        };
        let value = match self {
            Slot::Table(t) => t.entry(part.to_string()).or_insert_with(fresh),
            Slot::Array(a) => {
                let i = index(part, a.len(), key)?;
                if i == a.len() {
                    a.push(fresh());
                }
                &mut a[i]
            }
        };
        match value {
            Value::Table(t) => Ok(Slot::Table(t)),
            Value::Array(a) => Ok(Slot::Array(a)),
            other => Err(format!(
                "`{key}`: `{part}` holds {} {other}, not a table",
                other.type_str()
            )),
        }
    }

    fn set(self, part: &str, value: Value, key: &str) -> Result<(), String> {
        match self {
            Slot::Table(t) => {
                t.insert(part.to_string(), value);
            }
            Slot::Array(a) => {
                let i = index(part, a.len(), key)?;
                if i == a.len() {
                    a.push(value);
                } else {
                    a[i] = value;
                }
            }
        }
        Ok(())
    }
}

fn index(part: &str, len: usize, key: &str) -> Result<usize, String> {
    match part.parse::<usize>() {
        Ok(i) if i <= len => Ok(i),
        Ok(i) => Err(format!(
            "`{key}`: index {i} is past the end of a list of {len}; allowed: 0 to {len}"
        )),
        Err(_) => Err(format!(
            "`{key}`: `{part}` indexes a list; use a number (e.g. backbone.0.arch)"
        )),
    }
}

/// A value as a short label: strings bare, lists joined with `+`.
pub fn render(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join("+"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_toml_else_as_bare_strings() {
        assert_eq!(parse_value("5"), Value::Integer(5));
        assert_eq!(parse_value("0.5"), Value::Float(0.5));
        assert_eq!(parse_value("true"), Value::Boolean(true));
        assert_eq!(parse_value("adam"), Value::String("adam".into()));
        assert_eq!(parse_value("\"adam\""), Value::String("adam".into()));
        assert_eq!(
            parse_value("[\"original\"]"),
            Value::Array(vec![Value::String("original".into())])
        );
    }

    #[test]
    fn sweep_values_split_on_top_level_commas_only() {
        let (key, values) = parse_sweep("views=[\"original\"], [\"original\",\"hflip\"]").unwrap();
        assert_eq!(key, "views");
        assert_eq!(values.len(), 2);
        assert_eq!(render(&values[1]), "original+hflip");
        let (_, values) = parse_sweep("head.dropout=0.3,0.5,0.7").unwrap();
        assert_eq!(
            values,
            [0.3, 0.5, 0.7].map(Value::Float).to_vec(),
            "{values:?}"
        );
        assert!(parse_sweep("seed=1,,2").is_err());
    }

    #[test]
    fn malformed_assignments_say_what_is_expected() {
        assert!(parse_set("head.lr").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_set("head..lr=1").unwrap_err().contains("dotted key"));
        assert!(parse_set("sweep.seed=1").is_err());
        assert!(parse_set("extends=a.toml")
            .unwrap_err()
            .contains("cannot be set"));
    }

    #[test]
    fn assignments_create_tables_and_index_arrays() {
        let mut t: Table =
            toml::from_str("[[backbone]]\narch = \"xception\"\nweights = \"/w\"\n").unwrap();
        apply(&mut t, &parse_set("extract.batch_size=8").unwrap()).unwrap();
        apply(&mut t, &parse_set("backbone.0.input_size=320").unwrap()).unwrap();
        assert_eq!(t["extract"]["batch_size"].as_integer(), Some(8));
        assert_eq!(t["backbone"][0]["input_size"].as_integer(), Some(320));
        let err = apply(&mut t, &parse_set("backbone.5.arch=x").unwrap()).unwrap_err();
        assert!(err.contains("past the end"), "{err}");
        let err = apply(&mut t, &parse_set("backbone.x.arch=x").unwrap()).unwrap_err();
        assert!(err.contains("use a number"), "{err}");
        let err = apply(&mut t, &parse_set("extract.batch_size.x=1").unwrap()).unwrap_err();
        assert!(err.contains("not a table"), "{err}");
    }

    #[test]
    fn command_line_paths_are_relative_to_the_working_directory() {
        let mut t = Table::new();
        apply(&mut t, &parse_set("data.root=some/data").unwrap()).unwrap();
        let root = t["data"]["root"].as_str().unwrap();
        assert!(std::path::Path::new(root).is_absolute(), "{root}");
        assert!(root.ends_with("some/data"), "{root}");
    }
}
