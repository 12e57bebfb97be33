//! `arch = "onnx"` written into an export: the backbone's own graph copied
//! node for node (every name prefixed, so two such backbones cannot
//! collide), fed the export's preprocessed NCHW image (transposed for an
//! NHWC graph), its chosen output pooled as [`OnnxBackbone`] pools it.
//!
//! The export is one model with one opset, so the copied nodes keep their
//! meaning only where the opset they were written for is the export's: the
//! export takes the backbone's opset when it is 13 or later (every op the
//! export adds means the same from 13 on) and refuses older graphs.

use candle_core::Tensor;

use super::build::{Attr, GraphBuilder, OPSET};
use super::program::opset;
use super::{read_model, InputLayout, OnnxBackbone, OnnxError, TokenPool};
use crate::config::BackboneSpec;
use crate::ModelError;

/// The [`crate::registry::OnnxEmitter`] of `arch = "onnx"`.
pub fn to_onnx(
    spec: &BackboneSpec,
    g: &mut GraphBuilder,
    input: &str,
) -> Result<String, ModelError> {
    let path = spec.weights.display().to_string();
    let refuse = |message: String| -> ModelError {
        OnnxError::Graph {
            path: path.clone(),
            message,
        }
        .into()
    };
    let net = OnnxBackbone::load(&spec.weights, &spec.onnx_options(), spec.input_size)?;
    let model = read_model(&spec.weights)?;
    let version = opset(&model);
    if version < OPSET {
        return Err(refuse(format!(
            "the graph is opset {version}; an export holds one opset, and its own ops need {OPSET} or later: re-export the backbone at opset {OPSET}+, or export the run --from features"
        )));
    }
    // tf2onnx lists `ai.onnx.ml` whether or not a node uses it: only the
    // nodes' own domains matter.
    if let Some(node) = model
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .find(|n| !(n.domain.is_empty() || n.domain == "ai.onnx"))
    {
        return Err(refuse(format!(
            "node `{}` is of the `{}` operator domain, which an export does not carry; export the run --from features",
            node.name, node.domain
        )));
    }
    let ir_version = model.ir_version;
    let graph = model
        .graph
        .ok_or_else(|| refuse("the model has no graph".into()))?;
    g.require_opset(version, ir_version);

    // The output's rank decides the pooling; a trial run tells it.
    let size = spec.input_size;
    let blank = match net.layout {
        InputLayout::Nchw => Tensor::zeros(
            (1, 3, size, size),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        ),
        InputLayout::Nhwc => Tensor::zeros(
            (1, size, size, 3),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        ),
    }
    .and_then(|x| net.program.run(x))
    .map_err(|e| refuse(format!("a trial run failed: {e}")))?;
    let rank = blank.rank();

    let x = match net.layout {
        InputLayout::Nchw => input.to_string(),
        InputLayout::Nhwc => g.node(
            "Transpose",
            &[input],
            vec![("perm", Attr::Ints(vec![0, 2, 3, 1]))],
        ),
    };
    let prefix = g.fresh("onnx_backbone");
    let rename = |name: &str| -> String {
        if name.is_empty() {
            String::new()
        } else if name == net.program.input_name {
            x.clone()
        } else {
            format!("{prefix}/{name}")
        }
    };
    for mut t in graph.initializer {
        t.name = rename(&t.name);
        g.push_initializer(t);
    }
    for (i, mut node) in graph.node.into_iter().enumerate() {
        if node
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
        {
            return Err(refuse(format!(
                "node `{}` ({}) holds a subgraph, which an export does not copy; export the run --from features",
                node.name, node.op_type
            )));
        }
        node.input = node.input.iter().map(|n| rename(n)).collect();
        node.output = node.output.iter().map(|n| rename(n)).collect();
        node.name = format!(
            "{prefix}/{}",
            if node.name.is_empty() {
                i.to_string()
            } else {
                node.name
            }
        );
        g.push_node(node);
    }

    let out = rename(&net.program.output_name);
    Ok(match rank {
        2 => out,
        4 => {
            // Channels first, then the mean over the map's own H and W.
            let (h, w) = net.pool_axes;
            let c = (1..4).find(|a| *a != h && *a != w).unwrap_or(1);
            let nchw = if (c, h, w) == (1, 2, 3) {
                out
            } else {
                g.node(
                    "Transpose",
                    &[&out],
                    vec![("perm", Attr::Ints(vec![0, c as i64, h as i64, w as i64]))],
                )
            };
            g.global_avg_pool(&nchw)
        }
        3 => match net.token_pool {
            Some((pool, prefix)) => pool_tokens(g, &out, pool, prefix, version),
            None => return Err(refuse("the output is a sequence of tokens and no pool is set".into())),
        },
        r => {
            return Err(refuse(format!(
                "output `{}` has rank {r}; runner needs (N, features), tokens (N, T, C) or a 4-D feature map",
                net.program.output_name
            )))
        }
    })
}

/// [`super::pool_tokens`] as nodes: the class token by a `Gather`, the
/// patch tokens' mean by a `Slice` and a `ReduceMean` (whose axes are an
/// input from opset 18 on, an attribute before).
fn pool_tokens(
    g: &mut GraphBuilder,
    tokens: &str,
    pool: TokenPool,
    prefix: usize,
    opset: i64,
) -> String {
    let cls = |g: &mut GraphBuilder| {
        let first = g.constant_i64("cls_token", &[], vec![0]);
        g.node("Gather", &[tokens, &first], vec![("axis", Attr::Int(1))])
    };
    let mean = |g: &mut GraphBuilder| {
        let starts = g.constant_i64("patch_start", &[1], vec![prefix as i64]);
        let ends = g.constant_i64("patch_end", &[1], vec![i64::MAX]);
        let axes = g.constant_i64("token_axis", &[1], vec![1]);
        let patches = g.node("Slice", &[tokens, &starts, &ends, &axes], vec![]);
        if opset >= 18 {
            g.node(
                "ReduceMean",
                &[&patches, &axes],
                vec![("keepdims", Attr::Int(0))],
            )
        } else {
            g.node(
                "ReduceMean",
                &[&patches],
                vec![("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(0))],
            )
        }
    };
    match pool {
        TokenPool::Cls => cls(g),
        TokenPool::Mean => mean(g),
        TokenPool::ClsMean => {
            let both = [cls(g), mean(g)];
            g.concat(&both, 1)
        }
    }
}
