//! ONNX image models as backbones (`arch = "onnx"`).
//!
//! The file is decoded into ONNX's protobuf messages ([`onnx_pb`],
//! generated from `onnx.proto3` in pure Rust: no `protoc`) and lowered once
//! by [`program::Program`] onto the native layers: convolutions with their
//! BatchNorm, activation, padding and residual folded run the same GEMM and
//! window kernels as the native Xception / InceptionV3 / EfficientNet, and
//! every intermediate is freed after its last reader. The ops it runs are
//! the rows of one table, `ops::OPS`, which [`supported_ops`] lists.

#[rustfmt::skip]
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod build;
mod embed;
pub use embed::to_onnx as embed_to_onnx;
pub mod onnx_pb;
mod ops;
mod program;
mod proto;
#[cfg(test)]
mod testutil;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;
use prost::Message;
use serde::{Deserialize, Serialize};

use onnx_pb as onnx;
pub use ops::supported as supported_ops;
use ops::Layout;
pub use program::{opset as program_opset, Program};

use super::Backbone;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot read ONNX model {path}: {message}")]
    Read { path: String, message: String },
    #[error(
        "{path}: node `{node}` uses op `{op}` (opset {opset}), which runner's ONNX executor does not support; supported: {}",
        ops::supported()
    )]
    Unsupported {
        path: String,
        node: String,
        op: String,
        opset: i64,
    },
    #[error("{path}: node `{node}` ({op}): {message}")]
    Node {
        path: String,
        node: String,
        op: String,
        message: String,
    },
    #[error("{path}: {message}")]
    Graph { path: String, message: String },
}

/// Axis order of the graph's image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputLayout {
    /// `(N, 3, H, W)`: PyTorch exports.
    Nchw,
    /// `(N, H, W, 3)`: Keras / TensorFlow exports (tf2onnx).
    Nhwc,
}

/// How to run an ONNX file as a backbone (the `[[backbone]]` keys).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OnnxOptions {
    /// The value holding the features; default: see [`Program::lower`].
    pub output: Option<String>,
    /// Default: read from the graph's input shape.
    pub input_layout: Option<InputLayout>,
}

/// Decodes the ONNX model at `path`.
pub fn read_model(path: &Path) -> Result<onnx::ModelProto, OnnxError> {
    let read_err = |message: String| OnnxError::Read {
        path: path.display().to_string(),
        message,
    };
    if let Err(e) = std::fs::metadata(path) {
        return Err(read_err(e.to_string()));
    }
    let not_onnx = |e: &dyn std::fmt::Display| read_err(format!("not an ONNX model ({e})"));
    let bytes = std::fs::read(path).map_err(|e| not_onnx(&e))?;
    onnx::ModelProto::decode(bytes.as_slice()).map_err(|e| not_onnx(&e))
}

/// `[n, 3, 224, 224]`, with `?` for symbolic dimensions.
pub fn dims_text(d: &[Option<usize>]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|v| v.map_or("?".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// What `runner inspect` shows and spec resolution reads of an ONNX file.
#[derive(Debug, Clone)]
pub struct GraphSummary {
    pub producer: String,
    pub opset: i64,
    pub input_name: String,
    pub input_dims: Option<Vec<Option<usize>>>,
    /// Guessed from where the size-3 channel axis is.
    pub input_layout: Option<InputLayout>,
    /// Square spatial size of the input when the graph fixes it.
    pub input_size: Option<usize>,
    pub outputs: Vec<(String, Option<Vec<Option<usize>>>)>,
    pub op_counts: BTreeMap<String, usize>,
    pub parameters: usize,
}

pub fn summarize(model: &onnx::ModelProto, path: &Path) -> Result<GraphSummary, OnnxError> {
    let p = path.display().to_string();
    let Some(graph) = model.graph.as_ref() else {
        return Err(OnnxError::Graph {
            path: p,
            message: "the model has no graph".into(),
        });
    };
    let input = program::image_input(graph, &p)?;
    let input_dims = proto::declared_dims(input);
    let (input_layout, input_size) = match input_dims.as_deref() {
        Some([_, Some(3), h, w]) => (Some(InputLayout::Nchw), h.filter(|h| Some(*h) == *w)),
        Some([_, h, w, Some(3)]) => (Some(InputLayout::Nhwc), h.filter(|h| Some(*h) == *w)),
        _ => (None, None),
    };
    let mut op_counts = BTreeMap::new();
    for n in &graph.node {
        *op_counts.entry(n.op_type.clone()).or_insert(0) += 1;
    }
    Ok(GraphSummary {
        producer: format!("{} {}", model.producer_name, model.producer_version)
            .trim()
            .to_string(),
        opset: program::opset(model),
        input_name: input.name.clone(),
        input_dims,
        input_layout,
        input_size,
        outputs: graph
            .output
            .iter()
            .map(|o| (o.name.clone(), proto::declared_dims(o)))
            .collect(),
        op_counts,
        parameters: parameters(graph, &p)?,
    })
}

/// The number of values in the graph's initializers; an error naming the
/// tensor when its declared shape cannot be a real one.
fn parameters(graph: &onnx::GraphProto, path: &str) -> Result<usize, OnnxError> {
    graph.initializer.iter().try_fold(0usize, |sum, t| {
        let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        proto::element_count(&dims)
            .and_then(|n| sum.checked_add(n))
            .ok_or_else(|| OnnxError::Graph {
                path: path.to_string(),
                message: format!(
                    "initializer `{}` has shape {:?}, more elements than can be addressed; \
                     the file is damaged",
                    t.name, t.dims
                ),
            })
    })
}

/// An ONNX graph run as a feature extractor.
pub struct OnnxBackbone {
    program: Program,
    layout: InputLayout,
    /// The H and W axes of the output when it is a 4-D feature map.
    pool_axes: (usize, usize),
    num_features: usize,
}

impl OnnxBackbone {
    /// Loads and lowers `path`, then runs one blank `input_size` image
    /// through it: that checks the whole graph (shapes, ops) before any real
    /// image is read and gives the feature width.
    pub fn load(path: &Path, opts: &OnnxOptions, input_size: usize) -> Result<Self, OnnxError> {
        let p = path.display().to_string();
        let model = read_model(path)?;
        let summary = summarize(&model, path)?;
        let layout = match (opts.input_layout, summary.input_layout) {
            (Some(l), _) | (None, Some(l)) => l,
            (None, None) => {
                return Err(OnnxError::Graph {
                    path: p,
                    message: format!(
                        "cannot tell the layout of input `{}` {}; set input_layout = \"nchw\" or \"nhwc\"",
                        summary.input_name,
                        summary.input_dims.as_deref().map_or("(no shape)".into(), dims_text)
                    ),
                })
            }
        };
        let program = Program::lower(&model, opts.output.as_deref(), &p)?;
        // Where the graph does not say, the output is taken to be in the
        // input's layout.
        let axes = model
            .graph
            .as_ref()
            .and_then(|g| traced_axes(g, &program.input_name, layout, &program.output_name))
            .unwrap_or(match layout {
                InputLayout::Nchw => *b"nchw",
                InputLayout::Nhwc => *b"nhwc",
            });
        let at = |a: u8| axes.iter().position(|&b| b == a).unwrap_or(0);
        let mut net = Self {
            program,
            layout,
            pool_axes: (at(b'h'), at(b'w')),
            num_features: 0,
        };
        let blank = Tensor::zeros(
            (1, 3, input_size, input_size),
            candle_core::DType::F32,
            &candle_core::Device::Cpu,
        )
        .and_then(|x| net.forward_features(&x))
        .map_err(|e| OnnxError::Graph {
            path: p.clone(),
            message: format!(
                "a trial run on one blank {input_size}x{input_size} image failed: {e}"
            ),
        })?;
        net.num_features = blank.dim(1).unwrap_or(0);
        Ok(net)
    }

    pub fn program(&self) -> &Program {
        &self.program
    }
}

/// Which of N, C, H, W each axis of a 4-D value holds, e.g. `*b"nhwc"`.
type Axes = [u8; 4];

/// The axis order of the graph value `target`, traced from the input's by
/// each op's [`Layout`] class. ONNX defines Conv, the pools and
/// BatchNormalization on NCHW, so their outputs are NCHW whatever the input
/// is: tf2onnx moves a Keras model to NCHW right after its NHWC input (and
/// back before a 4-D graph output), so a feature map picked inside it is
/// NCHW. Transpose permutes; elementwise ops keep their inputs' order.
/// `None` where the graph does not say (a Reshape, a reduction, inputs that
/// disagree).
fn traced_axes(
    graph: &onnx::GraphProto,
    input: &str,
    layout: InputLayout,
    target: &str,
) -> Option<Axes> {
    let mut axes: HashMap<&str, Axes> = HashMap::new();
    axes.insert(
        input,
        match layout {
            InputLayout::Nchw => *b"nchw",
            InputLayout::Nhwc => *b"nhwc",
        },
    );
    // Nodes are in topological order (the ONNX rule).
    for n in &graph.node {
        let known: Vec<Axes> = n
            .input
            .iter()
            .filter_map(|i| axes.get(i.as_str()).copied())
            .collect();
        let out = match ops::find(&n.op_type).map(|d| d.layout) {
            Some(Layout::Nchw) => Some(*b"nchw"),
            Some(Layout::Permute) => {
                let perm = proto::Attrs(n)
                    .ints("perm")
                    .unwrap_or_else(|| vec![3, 2, 1, 0]);
                match (known.first(), perm.as_slice()) {
                    (Some(a), [p0, p1, p2, p3]) => {
                        let pick = |p: i64| usize::try_from(p).ok().and_then(|p| a.get(p).copied());
                        match (pick(*p0), pick(*p1), pick(*p2), pick(*p3)) {
                            (Some(x0), Some(x1), Some(x2), Some(x3)) => Some([x0, x1, x2, x3]),
                            _ => None,
                        }
                    }
                    _ => None,
                }
            }
            Some(Layout::Keep) => match known.split_first() {
                Some((a, rest)) if rest.iter().all(|b| b == a) => Some(*a),
                _ => None,
            },
            Some(Layout::Opaque) | None => None,
        };
        if let (Some(a), Some(o)) = (out, n.output.first()) {
            axes.insert(o, a);
        }
    }
    axes.get(target).copied()
}

impl Backbone for OnnxBackbone {
    fn forward_features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match self.layout {
            InputLayout::Nchw => x.clone(),
            InputLayout::Nhwc => x.permute((0, 2, 3, 1))?.contiguous()?,
        };
        let y = self.program.run(x)?;
        match y.rank() {
            2 => Ok(y),
            // Feature maps are pooled over their own H, W, in f32 (see
            // layers::global_avg_pool).
            4 => y.to_dtype(candle_core::DType::F32)?.mean(self.pool_axes),
            r => candle_core::bail!(
                "output `{}` has shape {:?}; runner needs (N, features) or a 4-D feature map to pool",
                self.program.output_name,
                y.dims().iter().take(r).collect::<Vec<_>>()
            ),
        }
    }

    fn num_features(&self) -> usize {
        self.num_features
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testutil::{init, model, node, with_ints};

    #[test]
    fn an_initializer_shape_whose_element_count_overflows_is_a_summary_error() {
        let m = model(
            vec![node("Relu", &["x"], "y")],
            vec![init("w", &[1 << 40, 1 << 40], &[])],
            "y",
        );
        let e = summarize(&m, Path::new("m.onnx")).unwrap_err().to_string();
        assert!(e.contains("m.onnx") && e.contains("`w`"), "{e}");
    }

    /// tf2onnx's shape of a Keras graph: NHWC in, NCHW inside, NHWC out.
    #[test]
    fn axes_are_traced_through_transposes_and_layout_fixing_ops() {
        let graph = onnx::GraphProto {
            node: vec![
                with_ints(node("Transpose", &["x"], "t"), "perm", &[0, 3, 1, 2]),
                node("Relu", &["t"], "r"),
                node("Add", &["r", "bias"], "a"),
                with_ints(node("Transpose", &["a"], "back"), "perm", &[0, 2, 3, 1]),
                node("Conv", &["back", "w"], "conv"),
                node("Reshape", &["a", "shape"], "flat"),
            ],
            ..Default::default()
        };
        let at = |v: &str| traced_axes(&graph, "x", InputLayout::Nhwc, v);
        assert_eq!(at("x"), Some(*b"nhwc"));
        assert_eq!(at("r"), Some(*b"nchw"));
        assert_eq!(at("a"), Some(*b"nchw"), "a constant operand has no say");
        assert_eq!(at("back"), Some(*b"nhwc"));
        assert_eq!(
            at("conv"),
            Some(*b"nchw"),
            "ONNX Conv is NCHW by definition"
        );
        assert_eq!(at("flat"), None);
    }

    #[test]
    fn a_file_that_is_not_protobuf_is_not_an_onnx_model() {
        let dir = std::env::temp_dir().join(format!("runner-onnx-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("garbage.onnx");
        std::fs::write(&path, [0xff; 16]).unwrap();
        let e = read_model(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.contains("garbage.onnx") && e.contains("not an ONNX model ("),
            "{e}"
        );
        let e = read_model(&dir.join("absent.onnx"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains("not an ONNX model"), "{e}");
    }
}
