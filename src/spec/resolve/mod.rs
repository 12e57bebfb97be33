//! Raw spec -> resolved [`Spec`]: defaults, relative paths, value checks.
//! The spec's own keys here; `[head]`, `[data]` and each `[[backbone]]` in
//! `head`, `data` and `backbone`.

mod backbone;
mod data;
mod head;

use std::path::PathBuf;

use super::compose::normalize;
use super::raw::RawSpec;
use super::{CvSpec, ExtractSpec, Spec, SpecError, View};
pub(super) use head::default_head;

/// Defaults, in one place so README and code agree.
pub const DEFAULT_SEED: u64 = 2017;
/// Extraction batch on the CPU; on a GPU, [`DEFAULT_GPU_EXTRACT_BATCH`].
pub const DEFAULT_EXTRACT_BATCH: usize = 16;
pub const DEFAULT_GPU_EXTRACT_BATCH: usize = 128;
pub const DEFAULT_FOLDS: usize = 5;
pub const DEFAULT_DROPOUT: f64 = 0.5;
pub const DEFAULT_EPOCHS: usize = 50;
pub const DEFAULT_PATIENCE: usize = 3;
pub const DEFAULT_HEAD_BATCH: usize = 128;
/// The logistic head's candidate penalties: half-decades from 1e-4 to 1e1
/// (on woof-dev's features the chosen one sits inside, see the README).
pub const DEFAULT_L2: [f64; 11] = [
    1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0,
];
pub const DEFAULT_INNER_FOLDS: usize = 3;

/// Whether `d` names a device: `auto`, `cpu`, `cuda` or `cuda:N` (the
/// spec's `device` and `--device` accept the same names).
pub fn is_device_name(d: &str) -> bool {
    matches!(d, "auto" | "cpu" | "cuda")
        || d.strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

/// Checks a raw spec's values and fills in every default; `origin` names
/// the spec (and the sweep member) in errors. Paths arrive absolute
/// ([`super::compose`] anchored them).
pub fn resolve(raw: RawSpec, origin: &str) -> Result<Spec, SpecError> {
    Resolver { origin }.spec(raw)
}

struct Resolver<'a> {
    origin: &'a str,
}

impl Resolver<'_> {
    fn invalid(&self, key: &str, problem: String, allowed: &str) -> SpecError {
        SpecError::Invalid {
            path: self.origin.to_string(),
            key: key.to_string(),
            problem,
            allowed: allowed.to_string(),
        }
    }

    fn at_least_one(&self, key: &str, value: usize) -> Result<(), SpecError> {
        if value == 0 {
            return Err(self.invalid(key, "= 0".into(), "allowed: 1 or more"));
        }
        Ok(())
    }

    fn path(&self, p: PathBuf) -> PathBuf {
        normalize(&p)
    }

    fn spec(&self, raw: RawSpec) -> Result<Spec, SpecError> {
        let Some(raw_name) = raw.name else {
            return Err(self.invalid(
                "name",
                "is missing".into(),
                "add name = \"...\" (it names the run directories)",
            ));
        };
        let name = raw_name.trim().to_string();
        if name.len() > super::MAX_NAME_LEN {
            return Err(self.invalid(
                "name",
                format!("is {} characters long", name.len()),
                &format!(
                    "at most {} (it names run directories, which file systems limit to 255 bytes)",
                    super::MAX_NAME_LEN
                ),
            ));
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.=+,".contains(c))
        {
            return Err(self.invalid(
                "name",
                format!("= {raw_name:?} cannot name a run directory"),
                "allowed: letters, digits and - _ . = + ,",
            ));
        }
        let Some(data) = raw.data else {
            return Err(self.invalid(
                "data",
                "is missing".into(),
                "add a [data] table with `layout` and `root` (or the paths one by one)",
            ));
        };
        let views = raw.views.unwrap_or_else(|| vec![View::Original]);
        if views.is_empty() {
            return Err(self.invalid(
                "views",
                "is empty".into(),
                "allowed: \"original\", \"hflip\"",
            ));
        }
        let mut seen = views.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != views.len() {
            return Err(self.invalid(
                "views",
                format!(
                    "= [{}] lists a view twice",
                    views
                        .iter()
                        .map(|v| format!("\"{}\"", v.name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "list each of \"original\", \"hflip\" at most once",
            ));
        }
        let backbones = raw.backbones.unwrap_or_default();
        if backbones.is_empty() {
            return Err(self.invalid(
                "backbone",
                "is missing".into(),
                "add at least one [[backbone]] table with `arch` and `weights`",
            ));
        }
        let backbones = backbones
            .into_iter()
            .enumerate()
            .map(|(i, b)| self.backbone(i, b))
            .collect::<Result<Vec<_>, _>>()?;

        let extract = raw.extract.unwrap_or_default();
        if let Some(b) = extract.batch_size {
            self.at_least_one("extract.batch_size", b)?;
        }
        if let Some(t) = extract.decode_threads {
            self.at_least_one("extract.decode_threads", t)?;
        }

        let cv = raw.cv.unwrap_or_default();
        let folds = cv.folds.unwrap_or(DEFAULT_FOLDS);
        if !(1..=100).contains(&folds) {
            return Err(self.invalid(
                "cv.folds",
                format!("= {folds} is out of range"),
                "allowed: 1 (one 80/20 split) to 100",
            ));
        }

        let head = self.head(raw.head.unwrap_or_default())?;
        if head.calibrate != super::Calibration::None && folds < 2 {
            return Err(self.invalid(
                "head.calibrate",
                format!("needs cv.folds >= 2 (cv.folds = {folds})"),
                "the temperature is fitted out of fold and scored by nested cross-validation over the folds: set cv.folds >= 2, or remove head.calibrate",
            ));
        }

        if let Some(d) = &raw.device {
            if !is_device_name(d) {
                return Err(self.invalid(
                    "device",
                    format!("= {d:?} is not a device"),
                    "allowed: \"auto\", \"cpu\", \"cuda\", \"cuda:N\"",
                ));
            }
        }
        Ok(Spec {
            name,
            seed: raw.seed.unwrap_or(DEFAULT_SEED),
            views,
            device: raw.device,
            data: self.data(data)?,
            backbones,
            extract: ExtractSpec {
                batch_size: extract.batch_size,
                decode_threads: extract.decode_threads,
                // f32 is the default and is not written out.
                precision: extract.precision.filter(|p| *p != super::Precision::F32),
            },
            cv: CvSpec {
                folds,
                stratified: cv.stratified.unwrap_or(true),
            },
            head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;
    use std::path::Path;

    /// The fewest keys a spec runs with.
    pub(super) const MINIMAL: &str = r#"
name = "t"
[data]
layout = "kaggle"
root = "data"
[[backbone]]
arch = "efficientnet_lite0"
weights = "w.safetensors"
"#;

    #[test]
    fn defaults_fill_every_key() {
        let spec = parse(MINIMAL, "t.toml", Path::new("/specs")).unwrap();
        assert_eq!(spec.seed, DEFAULT_SEED);
        // Device-dependent: 16 on the CPU (crate::features::batch_size).
        assert_eq!(spec.extract.batch_size, None);
        assert_eq!(
            crate::features::batch_size(&spec, &candle_core::Device::Cpu),
            DEFAULT_EXTRACT_BATCH
        );
        assert_eq!(spec.cv.folds, 5);
        assert!(spec.cv.stratified);
        assert_eq!(spec.head.lr, 0.01);
        assert_eq!(spec.backbones[0].input_size, 224);
        assert_eq!(spec.backbones[0].weights, Path::new("/specs/w.safetensors"));
        assert_eq!(
            spec.data.labels.as_deref(),
            Some(Path::new("/specs/data/labels.csv"))
        );
        // The resolved spec round-trips through TOML.
        let again: Spec = toml::from_str(&spec.to_toml()).unwrap();
        assert_eq!(again, spec);
    }
}
