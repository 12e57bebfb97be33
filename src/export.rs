//! `runner export RUN_DIR --out model.onnx`: a run's model as one ONNX
//! graph, for serving it without runner.
//!
//! ```text
//! --from image      image (N, 3, S, S): RGB 0..255, resized as the run resized
//!                   -> per view (hflip: columns reversed)
//!                      -> per backbone: preprocessing, the backbone, pooling
//!                      -> features side by side
//!                   -> every head: softmax(features[view] @ W + b)
//!                   -> mean over heads [-> temperature] -> probabilities (N, K)
//! --from features   features (N, V, D): the run's features per view
//!                   -> the same heads, mean and temperature
//! ```
//!
//! Resizing is the one step left outside: its filters (box, area) are not
//! ONNX ops; the graph's metadata names the filter and size. `--from
//! image` needs every backbone's architecture to have an ONNX emitter in
//! the registry and one input size and filter for all of them.

use std::path::Path;

use anyhow::{bail, Context as _};
use prost::Message as _;

use crate::model::Model;
use crate::spec::{Spec, View};
use runner_models::onnx::build::{Attr, GraphBuilder};

/// What the exported graph takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// Resized RGB images (`image`, `(N, 3, S, S)`, values 0..255).
    Image,
    /// The run's features (`features`, `(N, views, features)`).
    Features,
}

/// What was written, for the command's summary.
pub struct Exported {
    pub input: String,
    pub input_dims: String,
    pub heads: usize,
    pub bytes: usize,
}

/// Writes the model of the run in `run_dir` as ONNX to `out`.
pub fn export(run_dir: &Path, from: Source, out: &Path) -> anyhow::Result<Exported> {
    let (spec, model) = Model::load_with_spec(run_dir)?;
    let (graph, input, input_dims) = build(&spec, &model, from)?;
    let bytes = graph.encode_to_vec();
    crate::cache::write_atomic(out, &bytes)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(Exported {
        input,
        input_dims,
        heads: model.heads.len(),
        bytes: bytes.len(),
    })
}

/// The graph, its input's name and its dims as text.
pub fn build(
    spec: &Spec,
    model: &Model,
    from: Source,
) -> anyhow::Result<(runner_models::onnx::onnx_pb::ModelProto, String, String)> {
    let m = &model.manifest;
    let (views, d, k) = (m.views.len(), m.features, m.classes.len());
    let mut g = GraphBuilder::new("runner");
    let mut metadata = vec![
        ("classes".to_string(), serde_json::to_string(&m.classes)?),
        (
            "views".to_string(),
            serde_json::to_string(&m.views.iter().map(|v| v.name()).collect::<Vec<_>>())?,
        ),
    ];
    let (input, input_dims, per_view) = match from {
        Source::Features => {
            g.input("features", &[None, Some(views as i64), Some(d as i64)]);
            let per_view = (0..views)
                .map(|v| {
                    let index = g.constant_i64("view", &[], vec![v as i64]);
                    g.node(
                        "Gather",
                        &["features", &index],
                        vec![("axis", Attr::Int(1))],
                    )
                })
                .collect::<Vec<_>>();
            ("features", format!("(N, {views}, {d})"), per_view)
        }
        Source::Image => {
            let size = image_size(spec)?;
            g.input(
                "image",
                &[None, Some(3), Some(size as i64), Some(size as i64)],
            );
            metadata.push(("input_size".into(), size.to_string()));
            metadata.push((
                "resize".into(),
                serde_json::to_string(&spec.backbones[0].resize)?
                    .trim_matches('"')
                    .to_string(),
            ));
            if let Some(p) = spec.backbones[0].crop_pct {
                // The photo's shorter side resized, then its centre cropped.
                metadata.push(("crop_pct".into(), p.to_string()));
            }
            let mut per_view = Vec::new();
            for &view in &m.views {
                let x = match view {
                    View::Original => "image".to_string(),
                    View::Hflip => {
                        let reversed = g.constant_i64(
                            "reversed_columns",
                            &[size],
                            (0..size as i64).rev().collect(),
                        );
                        g.node(
                            "Gather",
                            &["image", &reversed],
                            vec![("axis", Attr::Int(3))],
                        )
                    }
                };
                per_view.push(backbones(spec, &mut g, &x)?);
            }
            ("image", format!("(N, 3, {size}, {size})"), per_view)
        }
    };

    // Every head in the manifest's order, summed in that order, as the run
    // averaged them.
    let mut sum: Option<String> = None;
    for (head, w) in &model.heads {
        let v = m
            .views
            .iter()
            .position(|&x| x == head.view)
            .context("a head of a view the manifest does not list")?;
        let weight = g.constant("head_weight", &[d, k], w.weight.data.clone());
        let bias = g.constant("head_bias", &[k], w.bias.clone());
        let logits = g.node("MatMul", &[&per_view[v], &weight], vec![]);
        let logits = g.node("Add", &[&logits, &bias], vec![]);
        let p = g.node("Softmax", &[&logits], vec![("axis", Attr::Int(-1))]);
        sum = Some(match sum {
            None => p,
            Some(s) => g.node("Add", &[&s, &p], vec![]),
        });
    }
    let sum = sum.context("the model has no heads")?;
    let inverse_count = g.constant(
        "inverse_head_count",
        &[],
        vec![1.0 / model.heads.len() as f32],
    );
    let mean = g.node("Mul", &[&sum, &inverse_count], vec![]);
    let probabilities = match m.inverse_temperature {
        None => mean,
        Some(t) => {
            // p ∝ p^(1/T) = softmax(log(p) / T), with p clipped as the run
            // clipped it.
            let clipped = g.clip(&mean, 1e-15, 1.0);
            let log = g.node("Log", &[&clipped], vec![]);
            let scale = g.constant("inverse_temperature", &[], vec![t as f32]);
            let scaled = g.node("Mul", &[&log, &scale], vec![]);
            metadata.push(("inverse_temperature".into(), t.to_string()));
            g.node("Softmax", &[&scaled], vec![("axis", Attr::Int(-1))])
        }
    };
    g.node_into("Identity", &[&probabilities], vec![], "probabilities");
    g.output("probabilities", &[None, Some(k as i64)]);
    Ok((
        g.finish(env!("CARGO_PKG_VERSION"), metadata),
        input.to_string(),
        input_dims,
    ))
}

/// The one input size (and filter) of every backbone, or why not.
fn image_size(spec: &Spec) -> anyhow::Result<usize> {
    let first = &spec.backbones[0];
    for (i, b) in spec.backbones.iter().enumerate() {
        if b.arch.entry().to_onnx.is_none() {
            bail!(
                "backbone[{i}] ({}) has no ONNX writer yet: export with --from features (the heads and their average, fed the run's features; `runner extract` writes them)",
                b.arch.name()
            );
        }
        if b.input_size != first.input_size
            || b.resize != first.resize
            || b.crop_pct != first.crop_pct
        {
            bail!(
                "backbone[{i}] ({}) takes {} px resized by {:?}, backbone[0] {} px by {:?}: one image input cannot feed both; export with --from features",
                b.arch.name(),
                b.input_size,
                b.resize,
                first.input_size,
                first.resize
            );
        }
    }
    Ok(first.input_size)
}

/// Every backbone on the view `x` (resized 0..255 RGB): its preprocessing,
/// network and pooling; the features side by side.
fn backbones(spec: &Spec, g: &mut GraphBuilder, x: &str) -> anyhow::Result<String> {
    let mut features = Vec::new();
    for (i, b) in spec.backbones.iter().enumerate() {
        let so = b.preprocess.scale_offset();
        let scale = g.constant(
            "preprocess_scale",
            &[1, 3, 1, 1],
            so.map(|(s, _)| s).to_vec(),
        );
        let offset = g.constant(
            "preprocess_offset",
            &[1, 3, 1, 1],
            so.map(|(_, o)| o).to_vec(),
        );
        let scaled = g.node("Mul", &[x, &scale], vec![]);
        let pre = g.node("Add", &[&scaled, &offset], vec![]);
        let emit = b.arch.entry().to_onnx.expect("checked by image_size");
        features
            .push(emit(b, g, &pre).with_context(|| format!("backbone[{i}] ({})", b.arch.name()))?);
    }
    Ok(match features.as_slice() {
        [one] => one.clone(),
        many => {
            let refs: Vec<&str> = many.iter().map(String::as_str).collect();
            g.node("Concat", &refs, vec![("axis", Attr::Int(1))])
        }
    })
}
