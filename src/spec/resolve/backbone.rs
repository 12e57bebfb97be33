//! `[[backbone]]`: defaults from the registry's pretrained configuration,
//! or, for an ONNX graph, from the graph.

use std::path::Path;

use super::Resolver;
use crate::spec::raw::RawBackbone;
use crate::spec::{BackboneSpec, SpecError};

impl Resolver<'_> {
    pub(super) fn backbone(&self, i: usize, raw: RawBackbone) -> Result<BackboneSpec, SpecError> {
        let weights = self.path(raw.weights.clone());
        let given = self.preprocess(i, &raw)?;
        let (input_size, preprocess, resize) = match raw.arch.pretrained_cfg() {
            Some(cfg) => {
                for (key, set) in [
                    ("output", raw.output.is_some()),
                    ("input_layout", raw.input_layout.is_some()),
                    ("pool", raw.pool.is_some()),
                    ("prefix_tokens", raw.prefix_tokens.is_some()),
                ] {
                    if set {
                        return Err(self.invalid(
                            &format!("backbone[{i}].{key}"),
                            format!("is set for arch = \"{}\"", raw.arch.name()),
                            "it applies to arch = \"onnx\" only; remove it",
                        ));
                    }
                }
                (
                    raw.input_size.unwrap_or(cfg.input_size),
                    given.unwrap_or(cfg.preprocess),
                    raw.resize.unwrap_or(cfg.resize),
                )
            }
            None => {
                let (size, preprocess) = self.onnx_defaults(i, &raw, given, &weights)?;
                (size, preprocess, raw.resize.unwrap_or_default())
            }
        };
        if !(32..=1024).contains(&input_size) {
            return Err(self.invalid(
                &format!("backbone[{i}].input_size"),
                format!("= {input_size} is out of range"),
                "allowed: 32 to 1024 pixels",
            ));
        }
        let prefix_tokens =
            match (raw.pool, raw.prefix_tokens) {
                (Some(p), given) if p.averages_patches() => Some(given.unwrap_or(1)),
                (_, None) => None,
                (_, Some(_)) => return Err(self.invalid(
                    &format!("backbone[{i}].prefix_tokens"),
                    "is set without a pool over the patch tokens".into(),
                    "it counts the tokens before the patches for pool = \"mean\" or \"cls+mean\"; \
                     set one of those or remove prefix_tokens",
                )),
            };
        Ok(BackboneSpec {
            arch: raw.arch,
            weights,
            input_size,
            preprocess,
            resize,
            output: raw.output,
            input_layout: raw.input_layout,
            pool: raw.pool,
            prefix_tokens,
            crop_pct: self.crop_pct(i, raw.crop_pct)?,
        })
    }

    /// A preset (`preprocess`) or statistics (`mean` and `std`), not both;
    /// `None` when neither is given.
    fn preprocess(
        &self,
        i: usize,
        raw: &RawBackbone,
    ) -> Result<Option<runner_models::Preprocess>, SpecError> {
        match (raw.preprocess, &raw.mean, &raw.std) {
            (p, None, None) => Ok(p),
            (Some(_), _, _) => Err(self.invalid(
                &format!("backbone[{i}].preprocess"),
                "is set together with mean / std".into(),
                "give a preset (preprocess) or the statistics (mean and std), not both",
            )),
            (None, Some(mean), Some(std)) => runner_models::Preprocess::mean_std(mean, std)
                .map(Some)
                .map_err(|e| {
                    self.invalid(
                        &format!("backbone[{i}].mean / std"),
                        e,
                        "e.g. mean = [0.485, 0.456, 0.406] and std = [0.229, 0.224, 0.225]",
                    )
                }),
            (None, m, _) => Err(self.invalid(
                &format!("backbone[{i}].{}", if m.is_some() { "std" } else { "mean" }),
                "is missing".into(),
                "mean and std go together: three values each, R, G, B",
            )),
        }
    }

    /// `crop_pct` in (0, 1]: above 1 the crop would need padding.
    fn crop_pct(&self, i: usize, given: Option<f64>) -> Result<Option<f64>, SpecError> {
        match given {
            Some(p) if !(p > 0.0 && p <= 1.0) => Err(self.invalid(
                &format!("backbone[{i}].crop_pct"),
                format!("= {p} is out of range"),
                "allowed: above 0 and at most 1 (timm's crop_pct, e.g. 0.875; 1 crops the centre square)",
            )),
            p => Ok(p),
        }
    }

    /// An ONNX backbone's input size (given, or fixed by the graph) and
    /// preprocessing (always given: a graph does not say how it was trained).
    fn onnx_defaults(
        &self,
        i: usize,
        raw: &RawBackbone,
        given: Option<runner_models::Preprocess>,
        weights: &Path,
    ) -> Result<(usize, runner_models::Preprocess), SpecError> {
        let Some(preprocess) = given else {
            return Err(self.invalid(
                &format!("backbone[{i}].preprocess"),
                "is missing (an ONNX graph does not record how its inputs were scaled)".into(),
                "set preprocess = \"inception\" ([-1, 1]), \"imagenet\" (torchvision mean/std), \"clip\" or \"efficientnet_lite\", \
                 or mean = [R, G, B] and std = [R, G, B] (timm's pretrained_cfg)",
            ));
        };
        if let Some(size) = raw.input_size {
            return Ok((size, preprocess));
        }
        let summary = runner_models::onnx::read_model(weights)
            .and_then(|m| runner_models::onnx::summarize(&m, weights));
        match summary {
            Ok(s) => match s.input_size {
                Some(size) => Ok((size, preprocess)),
                None => Err(self.invalid(
                    &format!("backbone[{i}].input_size"),
                    format!(
                        "is missing and the graph's input `{}` does not fix it",
                        s.input_name
                    ),
                    "set input_size (pixels, e.g. 224)",
                )),
            },
            Err(e) => Err(self.invalid(
                &format!("backbone[{i}].weights"),
                format!("cannot be read to find the input size ({e})"),
                "fix the path or set input_size",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::MINIMAL;
    use super::*;
    use crate::spec::parse;

    /// The serialised backbone (what spec hashes and cache keys read) spells
    /// the architecture by its registered name and omits the ONNX-only keys.
    #[test]
    fn a_resolved_backbone_serialises_to_its_canonical_json() {
        let spec = parse(MINIMAL, "t.toml", Path::new("/specs")).unwrap();
        assert_eq!(
            serde_json::to_string(&spec.backbones[0]).unwrap(),
            r#"{"arch":"efficientnet_lite0","weights":"/specs/w.safetensors","input_size":224,"preprocess":"efficientnet_lite","resize":"box"}"#
        );
    }

    /// timm's preprocessing keys resolve to values the run directory's
    /// spec.toml writes back and a rerun reads the same.
    #[test]
    fn mean_std_bicubic_and_crop_pct_survive_the_saved_spec() {
        let text = MINIMAL.replace(
            "weights = \"w.safetensors\"",
            "weights = \"w.safetensors\"\nmean = [0.5, 0.25, 0.125]\nstd = [0.5, 0.5, 0.5]\n\
             resize = \"bicubic\"\ncrop_pct = 0.875",
        );
        let spec = parse(&text, "t.toml", Path::new("/specs")).unwrap();
        let b = &spec.backbones[0];
        assert_eq!(
            b.preprocess,
            runner_models::Preprocess::mean_std(&[0.5, 0.25, 0.125], &[0.5; 3]).unwrap()
        );
        assert_eq!(b.resize, runner_models::Resize::Bicubic);
        assert_eq!(b.shorter_side(), Some(256));
        let saved = spec.to_toml();
        assert!(saved.contains("crop_pct = 0.875"), "{saved}");
        let again = parse(&saved, "spec.toml", Path::new("/runs/r")).unwrap();
        assert_eq!(again.backbones[0], *b);
    }

    #[test]
    fn backbone_defaults_come_from_the_registered_pretrained_config() {
        for entry in runner_models::registry::all() {
            let Some(cfg) = entry.pretrained_cfg else {
                continue;
            };
            let text = MINIMAL.replace("efficientnet_lite0", entry.name);
            let spec = parse(&text, "t.toml", Path::new("/specs")).unwrap();
            let b = &spec.backbones[0];
            assert_eq!(b.arch.name(), entry.name);
            assert_eq!(
                (b.input_size, b.preprocess, b.resize),
                (cfg.input_size, cfg.preprocess, cfg.resize),
                "{}",
                entry.name
            );
        }
    }
}
