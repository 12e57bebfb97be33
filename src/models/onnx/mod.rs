//! ONNX image models as backbones (`arch = "onnx"`).
//!
//! The file is parsed with candle-onnx's protobuf types and lowered once by
//! [`program::Program`] onto the native layers: convolutions with their
//! BatchNorm, activation, padding and residual folded run the same GEMM and
//! window kernels as the native Xception / InceptionV3 / EfficientNet, and
//! every intermediate is freed after its last reader. candle-onnx's own
//! evaluator is not used (it lacks padded pooling, constant `Pad` and
//! `GlobalAveragePool`, and keeps every intermediate alive).

mod ops;
mod program;
mod proto;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Tensor;
use candle_onnx::onnx;
use serde::{Deserialize, Serialize};

pub use ops::SUPPORTED;
pub use program::Program;

use super::Backbone;

#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("cannot read ONNX model {path}: {message}")]
    Read { path: String, message: String },
    #[error(
        "{path}: node `{node}` uses op `{op}` (opset {opset}), which runner's ONNX executor does not support; supported: {}",
        ops::SUPPORTED
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

pub fn read_model(path: &Path) -> Result<onnx::ModelProto, OnnxError> {
    if let Err(e) = std::fs::metadata(path) {
        return Err(OnnxError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        });
    }
    candle_onnx::read_file(path).map_err(|e| OnnxError::Read {
        path: path.display().to_string(),
        message: format!("not an ONNX model ({e})"),
    })
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
        parameters: graph
            .initializer
            .iter()
            .map(|t| t.dims.iter().product::<i64>().max(0) as usize)
            .sum(),
    })
}

/// An ONNX graph run as a feature extractor.
pub struct OnnxBackbone {
    program: Program,
    layout: InputLayout,
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
        let mut net = Self {
            program,
            layout,
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

impl Backbone for OnnxBackbone {
    fn forward_features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = match self.layout {
            InputLayout::Nchw => x.clone(),
            InputLayout::Nhwc => x.permute((0, 2, 3, 1))?.contiguous()?,
        };
        let y = self.program.run(x)?;
        match y.rank() {
            2 => Ok(y),
            // Feature maps are pooled: over H, W of the graph's own layout.
            4 => match self.layout {
                InputLayout::Nchw => y.mean((2, 3)),
                InputLayout::Nhwc => y.mean((1, 2)),
            },
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
