//! `[[backbone]]`: defaults from the registry's pretrained configuration,
//! or, for an ONNX graph, from the graph.

use std::path::Path;

use super::Resolver;
use crate::spec::raw::RawBackbone;
use crate::spec::{BackboneSpec, SpecError};

impl Resolver<'_> {
    pub(super) fn backbone(&self, i: usize, raw: RawBackbone) -> Result<BackboneSpec, SpecError> {
        let weights = self.path(raw.weights.clone());
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
                    raw.preprocess.unwrap_or(cfg.preprocess),
                    raw.resize.unwrap_or(cfg.resize),
                )
            }
            None => {
                let (size, preprocess) = self.onnx_defaults(i, &raw, &weights)?;
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
        })
    }

    /// An ONNX backbone's input size (given, or fixed by the graph) and
    /// preprocessing (always given: a graph does not say how it was trained).
    fn onnx_defaults(
        &self,
        i: usize,
        raw: &RawBackbone,
        weights: &Path,
    ) -> Result<(usize, runner_models::Preprocess), SpecError> {
        let Some(preprocess) = raw.preprocess else {
            return Err(self.invalid(
                &format!("backbone[{i}].preprocess"),
                "is missing (an ONNX graph does not record how its inputs were scaled)".into(),
                "set preprocess = \"inception\" ([-1, 1]), \"imagenet\" (torchvision mean/std) or \"efficientnet_lite\"",
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
