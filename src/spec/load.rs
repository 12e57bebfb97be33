//! From a spec file and the command line to the resolved specs to run:
//! `extends` chain -> `--set` overrides -> sweep expansion -> one resolved
//! [`Spec`] per member, every member checked before any runs.

use std::path::Path;

use toml::Table;

use super::overrides::{self, Assignment};
use super::raw::RawSpec;
use super::sweep::{member_name, Axis, Mode, Sweep};
use super::{compose, resolve, Spec, SpecError};

/// What the command line adds to a spec file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--set KEY=VALUE`, applied in order.
    pub set: Vec<String>,
    /// `--sweep KEY=V1,V2,...`: an axis added to (or replacing one of) the
    /// spec's `[sweep]`.
    pub sweep: Vec<String>,
    /// `--sweep-mode`: overrides the spec's `sweep.mode`.
    pub sweep_mode: Option<Mode>,
}

/// One run of an experiment: its resolved spec and, in a sweep, the values
/// that make it a member.
#[derive(Debug, Clone)]
pub struct Member {
    pub spec: Spec,
    pub values: Vec<Assignment>,
    /// The spec file, its `--set`s and this member's values, for messages.
    pub origin: String,
}

/// A spec file with its overrides: one member, or a sweep's members.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// The spec file as given, for messages.
    pub origin: String,
    /// The spec's own `name` (sweep members add their values to it).
    pub name: String,
    pub sweep: Option<Sweep>,
    pub members: Vec<Member>,
}

/// Reads a spec file, applies `overrides` and expands its sweep.
pub fn load_experiment(path: &Path, overrides: &Overrides) -> Result<Experiment, SpecError> {
    let table = compose::load_file(path)?;
    expand(table, &path.display().to_string(), overrides)
}

/// Reads and resolves a spec file that is not a sweep.
pub fn load(path: &Path) -> Result<Spec, SpecError> {
    single(load_experiment(path, &Overrides::default())?)
}

/// Resolves spec text; `origin` names it in errors, `base` anchors its
/// relative paths.
pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Spec, SpecError> {
    let table = compose::load_text(text, origin, base)?;
    single(expand(table, origin, &Overrides::default())?)
}

fn single(mut experiment: Experiment) -> Result<Spec, SpecError> {
    if experiment.sweep.is_some() {
        return Err(SpecError::Invalid {
            path: experiment.origin,
            key: "sweep".into(),
            problem: format!("expands to {} runs", experiment.members.len()),
            allowed: "run it with `runner run`, which runs every member".into(),
        });
    }
    Ok(experiment.members.remove(0).spec)
}

fn expand(mut table: Table, origin: &str, overrides: &Overrides) -> Result<Experiment, SpecError> {
    let file_error = |message: String| SpecError::Parse {
        path: origin.to_string(),
        message,
    };
    let mut sweep = match table.remove("sweep") {
        Some(toml::Value::Table(t)) => Sweep::from_table(t).map_err(file_error)?,
        Some(_) => unreachable!("the schema makes `sweep` a table"),
        None => Sweep::default(),
    };
    for arg in &overrides.sweep {
        let flag_error = |message: String| SpecError::Override {
            flag: "--sweep",
            arg: arg.clone(),
            message,
        };
        let (key, values) = overrides::parse_sweep(arg).map_err(flag_error)?;
        sweep.set_axis(Axis { key, values });
    }
    if let Some(mode) = overrides.sweep_mode {
        sweep.mode = mode;
    }

    for arg in &overrides.set {
        let flag_error = |message: String| SpecError::Override {
            flag: "--set",
            arg: arg.clone(),
            message,
        };
        let a = overrides::parse_set(arg).map_err(flag_error)?;
        if sweep.axes.iter().any(|axis| axis.key == a.key) {
            return Err(flag_error(format!(
                "`{}` is also swept; set it or sweep it, not both",
                a.key
            )));
        }
        overrides::apply(&mut table, &a).map_err(flag_error)?;
        check_schema(&table).map_err(flag_error)?;
    }

    let with_sets;
    let origin = if overrides.set.is_empty() {
        origin
    } else {
        with_sets = format!("{origin} with --set {}", overrides.set.join(" --set "));
        &with_sets
    };

    // Every swept value on its own first: the error names the axis value
    // rather than a member.
    for axis in &sweep.axes {
        for value in &axis.values {
            let a = Assignment {
                key: axis.key.clone(),
                value: value.clone(),
            };
            let mut t = table.clone();
            overrides::apply(&mut t, &a)
                .and_then(|()| check_schema(&t))
                .map_err(|message| SpecError::Override {
                    flag: "sweep",
                    arg: a.to_arg(),
                    message,
                })?;
        }
    }

    let name = table
        .get("name")
        .and_then(toml::Value::as_str)
        .unwrap_or_default()
        .to_string();
    let assignments = if sweep.is_empty() {
        vec![Vec::new()]
    } else {
        sweep.members().map_err(file_error)?
    };
    let members = assignments
        .into_iter()
        .map(|values| member(&table, origin, &name, values))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Experiment {
        origin: origin.to_string(),
        name,
        sweep: (!sweep.is_empty()).then_some(sweep),
        members,
    })
}

/// One member: the spec with its values applied and its name spelling them.
fn member(
    table: &Table,
    origin: &str,
    name: &str,
    values: Vec<Assignment>,
) -> Result<Member, SpecError> {
    let mut t = table.clone();
    for a in &values {
        overrides::apply(&mut t, a).expect("checked with the axis values");
    }
    let origin = if values.is_empty() {
        origin.to_string()
    } else {
        t.insert("name".into(), member_name(name, &values).into());
        let args: Vec<String> = values.iter().map(Assignment::to_arg).collect();
        format!("{origin} (sweep member {})", args.join(", "))
    };
    let raw: RawSpec = t
        .try_into()
        .map_err(|e: toml::de::Error| SpecError::Parse {
            path: origin.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
    let spec = resolve::resolve(raw, &origin)?;
    Ok(Member {
        spec,
        values,
        origin,
    })
}

/// The table read as a spec: unknown keys and wrong types are errors naming
/// the dotted key (e.g. "unknown field `lrr`, expected one of ... in `head`").
fn check_schema(table: &Table) -> Result<(), String> {
    table
        .clone()
        .try_into::<RawSpec>()
        .map(|_| ())
        .map_err(|e| e.to_string().trim_end().replace('\n', " "))
}
