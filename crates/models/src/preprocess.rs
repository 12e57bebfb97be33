//! How `u8` RGB pixels become network input: the presets of the common
//! model families, or any per-channel mean and standard deviation (timm's
//! `pretrained_cfg` `mean` / `std`).
//!
//! A preset serialises as its name (`"imagenet"`), values as a table
//! (`{ mean = [...], std = [...] }`), so a resolved spec reads back as it
//! was written and the cache keys of the presets never change.

use std::fmt;
use std::hash::{Hash, Hasher};

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// ImageNet's channel statistics (torchvision, timm's default).
const IMAGENET: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
/// OpenAI CLIP's (also open_clip's CLIP models), as f32 rounds the
/// published decimals.
#[allow(clippy::excessive_precision)]
const CLIP: ([f32; 3], [f32; 3]) = (
    [0.481_454_66, 0.457_827_5, 0.408_210_73],
    [0.268_629_54, 0.261_302_58, 0.275_777_1],
);

/// The preset names, as error messages list them.
pub const PRESETS: &str = "inception, efficientnet_lite, imagenet, clip";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Preprocess {
    /// `x / 127.5 - 1`, range [-1, 1] (Keras `preprocess_input` for
    /// Xception / InceptionV3; timm's "inception" mean = std = 0.5).
    Inception,
    /// `(x - 127) / 128` (EfficientNet-Lite's TF preprocessing).
    EfficientnetLite,
    /// `(x / 255 - mean) / std` with ImageNet statistics (torchvision).
    Imagenet,
    /// `(x / 255 - mean) / std` with CLIP's statistics.
    Clip,
    /// `(x / 255 - mean) / std` with the given statistics.
    MeanStd { mean: [f32; 3], std: [f32; 3] },
}

// Values compare and hash by their bits: a spec's statistics are exact
// numbers, and NaN is refused when the spec is read.
impl Eq for Preprocess {}

impl Hash for Preprocess {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        if let Preprocess::MeanStd { mean, std } = self {
            for v in mean.iter().chain(std) {
                v.to_bits().hash(state);
            }
        }
    }
}

impl Preprocess {
    /// Per-channel `(scale, offset)` such that `input = x * scale + offset`.
    pub fn scale_offset(self) -> [(f32, f32); 3] {
        let normalise = |(mean, std): ([f32; 3], [f32; 3])| {
            [0, 1, 2].map(|c| (1.0 / (255.0 * std[c]), -mean[c] / std[c]))
        };
        match self {
            Preprocess::Inception => [(1.0 / 127.5, -1.0); 3],
            Preprocess::EfficientnetLite => [(1.0 / 128.0, -127.0 / 128.0); 3],
            Preprocess::Imagenet => normalise(IMAGENET),
            Preprocess::Clip => normalise(CLIP),
            Preprocess::MeanStd { mean, std } => normalise((mean, std)),
        }
    }

    /// The preset of this name.
    pub fn preset(name: &str) -> Option<Preprocess> {
        Some(match name {
            "inception" => Preprocess::Inception,
            "efficientnet_lite" => Preprocess::EfficientnetLite,
            "imagenet" => Preprocess::Imagenet,
            "clip" => Preprocess::Clip,
            _ => return None,
        })
    }

    /// `mean` and `std` as a spec gives them, checked: three finite values
    /// each, every `std` above zero.
    pub fn mean_std(mean: &[f64], std: &[f64]) -> Result<Preprocess, String> {
        let three = |v: &[f64], what: &str| -> Result<[f32; 3], String> {
            match v {
                [a, b, c] if v.iter().all(|x| x.is_finite()) => {
                    Ok([*a as f32, *b as f32, *c as f32])
                }
                _ => Err(format!(
                    "{what} must be three finite numbers (R, G, B), got {v:?}"
                )),
            }
        };
        let (mean, std) = (three(mean, "mean")?, three(std, "std")?);
        if std.iter().any(|&s| s <= 0.0) {
            return Err(format!("std must be above 0, got {std:?}"));
        }
        Ok(Preprocess::MeanStd { mean, std })
    }

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Preprocess::Inception => "inception",
            Preprocess::EfficientnetLite => "efficientnet_lite",
            Preprocess::Imagenet => "imagenet",
            Preprocess::Clip => "clip",
            Preprocess::MeanStd { .. } => return None,
        })
    }
}

impl Serialize for Preprocess {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (self.name(), self) {
            (Some(name), _) => s.serialize_str(name),
            (None, Preprocess::MeanStd { mean, std }) => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("mean", mean)?;
                m.serialize_entry("std", std)?;
                m.end()
            }
            (None, _) => unreachable!("every preset has a name"),
        }
    }
}

impl<'de> Deserialize<'de> for Preprocess {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Preprocess;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "one of {PRESETS}, or {{ mean = [R, G, B], std = [R, G, B] }}"
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Preprocess, E> {
                Preprocess::preset(v).ok_or_else(|| {
                    E::custom(format!(
                        "unknown preprocess `{v}`, expected one of {PRESETS}, or {{ mean = [R, G, B], std = [R, G, B] }}"
                    ))
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Preprocess, A::Error> {
                let (mut mean, mut std): (Option<Vec<f64>>, Option<Vec<f64>>) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "mean" => mean = Some(map.next_value()?),
                        "std" => std = Some(map.next_value()?),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}` in preprocess, expected `mean` and `std`"
                            )))
                        }
                    }
                }
                match (mean, std) {
                    (Some(m), Some(s)) => Preprocess::mean_std(&m, &s).map_err(de::Error::custom),
                    _ => Err(de::Error::custom("preprocess needs both `mean` and `std`")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_read_and_write_as_their_names_and_values_as_a_table() {
        for p in [
            Preprocess::Inception,
            Preprocess::Imagenet,
            Preprocess::Clip,
        ] {
            let json = serde_json::to_string(&p).unwrap();
            assert!(json.starts_with('"'), "{json}");
            assert_eq!(serde_json::from_str::<Preprocess>(&json).unwrap(), p);
        }
        let p = Preprocess::mean_std(&[0.5, 0.5, 0.5], &[0.5, 0.5, 0.5]).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, r#"{"mean":[0.5,0.5,0.5],"std":[0.5,0.5,0.5]}"#);
        assert_eq!(serde_json::from_str::<Preprocess>(&json).unwrap(), p);
        // mean = std = 0.5 is the inception scaling, by other arithmetic.
        for ((a, b), (c, d)) in p
            .scale_offset()
            .iter()
            .zip(Preprocess::Inception.scale_offset())
        {
            assert!((a - c).abs() < 1e-9 && (b - d).abs() < 1e-9);
        }
    }

    #[test]
    fn bad_values_and_names_are_refused_saying_what_is_allowed() {
        let e = Preprocess::mean_std(&[0.5, 0.5], &[1.0; 3]).unwrap_err();
        assert!(e.contains("three finite numbers"), "{e}");
        let e = Preprocess::mean_std(&[0.5; 3], &[1.0, 0.0, 1.0]).unwrap_err();
        assert!(e.contains("above 0"), "{e}");
        let e = serde_json::from_str::<Preprocess>(r#""imagenet21k""#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("clip") && e.contains("mean = [R, G, B]"), "{e}");
        let e = serde_json::from_str::<Preprocess>(r#"{"mean":[0,0,0]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("both"), "{e}");
    }
}
