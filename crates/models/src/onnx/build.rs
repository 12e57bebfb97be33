//! Writing ONNX graphs: a [`GraphBuilder`] that names values, holds
//! initializers and adds nodes, for exports (`runner export`) and for the
//! native architectures' own ONNX emitters ([`crate::registry::OnnxEmitter`]).
//!
//! Opset 13 throughout: every op used here has its current semantics there
//! (`Clip` with min/max inputs, `Squeeze`/`Unsqueeze` with axes inputs),
//! and onnxruntime and runner's own evaluator both read it.

use super::onnx_pb as onnx;
use crate::layers::{Padding, Weights};
use crate::ModelError;
use onnx::attribute_proto::AttributeType;
use onnx::tensor_proto::DataType;
use onnx::tensor_shape_proto::{dimension, Dimension};

/// The opset exports are written in.
pub const OPSET: i64 = 13;
/// ONNX IR version 7 (what opset 13 shipped with).
const IR_VERSION: i64 = 7;

/// A node attribute value.
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

/// A `Conv` node's attributes besides its kernel: one stride for both
/// axes, pads `[top, left, bottom, right]`, and the number of groups (`C`
/// for a depthwise convolution).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvAttrs {
    pub stride: usize,
    pub pads: [usize; 4],
    pub groups: usize,
}

impl Default for ConvAttrs {
    /// Stride 1, no padding, one group.
    fn default() -> Self {
        Self {
            stride: 1,
            pads: [0; 4],
            groups: 1,
        }
    }
}

/// A graph under construction: nodes in topological order (each added
/// after its inputs), initializers, inputs and outputs.
#[derive(Default)]
pub struct GraphBuilder {
    graph: onnx::GraphProto,
    counter: usize,
    /// Initializers by content: a constant written twice (a backbone run on
    /// two views) is stored once.
    constants: std::collections::HashMap<(i32, Vec<i64>, Vec<u8>), String>,
    /// The opset the graph is written in: [`OPSET`], or a later one that a
    /// copied graph needs ([`GraphBuilder::require_opset`]).
    opset: i64,
    /// Likewise the IR version: a copied graph's, when later.
    ir_version: i64,
}

fn value_info(name: &str, dims: &[Option<i64>], elem: DataType) -> onnx::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam("batch".into()),
            }),
            ..Default::default()
        })
        .collect();
    onnx::ValueInfoProto {
        name: name.into(),
        r#type: Some(onnx::TypeProto {
            value: Some(onnx::type_proto::Value::TensorType(
                onnx::type_proto::Tensor {
                    elem_type: elem as i32,
                    shape: Some(onnx::TensorShapeProto { dim }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    pub fn new(name: &str) -> GraphBuilder {
        GraphBuilder {
            graph: onnx::GraphProto {
                name: name.into(),
                ..Default::default()
            },
            opset: OPSET,
            ir_version: IR_VERSION,
            ..Default::default()
        }
    }

    /// A fresh value name starting with `hint`.
    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Declares a float graph input; `None` dims are the batch.
    pub fn input(&mut self, name: &str, dims: &[Option<i64>]) {
        self.graph
            .input
            .push(value_info(name, dims, DataType::Float));
    }

    /// Declares `value` a float graph output.
    pub fn output(&mut self, value: &str, dims: &[Option<i64>]) {
        self.graph
            .output
            .push(value_info(value, dims, DataType::Float));
    }

    /// A float constant of shape `dims`; returns its name.
    pub fn constant(&mut self, hint: &str, dims: &[usize], data: Vec<f32>) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(hint, dims, DataType::Float, data.len(), raw)
    }

    /// An int64 constant of shape `dims`; returns its name.
    pub fn constant_i64(&mut self, hint: &str, dims: &[usize], data: Vec<i64>) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(hint, dims, DataType::Int64, data.len(), raw)
    }

    fn initializer(
        &mut self,
        hint: &str,
        dims: &[usize],
        dtype: DataType,
        len: usize,
        raw_data: Vec<u8>,
    ) -> String {
        assert_eq!(dims.iter().product::<usize>(), len, "{hint}");
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let key = (dtype as i32, dims, raw_data);
        if let Some(name) = self.constants.get(&key) {
            return name.clone();
        }
        let name = self.fresh(hint);
        self.graph.initializer.push(onnx::TensorProto {
            name: name.clone(),
            dims: key.1.clone(),
            data_type: key.0,
            raw_data: key.2.clone(),
            ..Default::default()
        });
        self.constants.insert(key, name.clone());
        name
    }

    /// Raises the graph's opset to `version` (a copied graph's nodes keep
    /// their meaning only at their own opset).
    pub fn require_opset(&mut self, version: i64, ir_version: i64) {
        self.opset = self.opset.max(version);
        self.ir_version = self.ir_version.max(ir_version);
    }

    /// Adds a node as it is (names already unique).
    pub fn push_node(&mut self, node: onnx::NodeProto) {
        self.graph.node.push(node);
    }

    /// Adds an initializer as it is (name already unique).
    pub fn push_initializer(&mut self, tensor: onnx::TensorProto) {
        self.graph.initializer.push(tensor);
    }

    /// Adds a node of `op` with one output; returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.node_into(op, inputs, attrs, &out);
        out
    }

    /// Adds a node of `op` writing the value `out`.
    pub fn node_into(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>, out: &str) {
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = onnx::AttributeProto {
                    name: name.into(),
                    ..Default::default()
                };
                match a {
                    Attr::Int(i) => {
                        p.r#type = AttributeType::Int as i32;
                        p.i = i;
                    }
                    Attr::Ints(v) => {
                        p.r#type = AttributeType::Ints as i32;
                        p.ints = v;
                    }
                    Attr::Float(f) => {
                        p.r#type = AttributeType::Float as i32;
                        p.f = f;
                    }
                }
                p
            })
            .collect();
        self.graph.node.push(onnx::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            name: out.into(),
            op_type: op.into(),
            attribute,
            ..Default::default()
        });
    }

    /// `Conv` of `x` with an OIHW kernel (`dims`), a bias, and the stride,
    /// pads and groups of `attrs`.
    pub fn conv(
        &mut self,
        x: &str,
        kernel: Vec<f32>,
        dims: [usize; 4],
        bias: Vec<f32>,
        attrs: ConvAttrs,
    ) -> String {
        let w = self.constant("weight", &dims, kernel);
        let b = self.constant("bias", &[dims[0]], bias);
        self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                (
                    "kernel_shape",
                    Attr::Ints(vec![dims[2] as i64, dims[3] as i64]),
                ),
                ("strides", Attr::Ints(vec![attrs.stride as i64; 2])),
                (
                    "pads",
                    Attr::Ints(attrs.pads.iter().map(|&p| p as i64).collect()),
                ),
                ("group", Attr::Int(attrs.groups as i64)),
            ],
        )
    }

    /// `min(max(x, lo), hi)`.
    pub fn clip(&mut self, x: &str, lo: f32, hi: f32) -> String {
        let lo = self.constant("min", &[], vec![lo]);
        let hi = self.constant("max", &[], vec![hi]);
        self.node("Clip", &[x, &lo, &hi], vec![])
    }

    /// `max(x, 0)`.
    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    /// `MaxPool` with a `kernel` window, one stride for both axes and pads
    /// `[top, left, bottom, right]`; padded positions never win.
    pub fn max_pool(
        &mut self,
        x: &str,
        kernel: (usize, usize),
        stride: usize,
        pads: [usize; 4],
    ) -> String {
        let attrs = pool_attrs(kernel, stride, pads);
        self.node("MaxPool", &[x], attrs)
    }

    /// `AveragePool` like [`GraphBuilder::max_pool`]; `count_include_pad`:
    /// whether padded positions count in the mean (PyTorch's default) or
    /// not (Keras / TF).
    pub fn avg_pool(
        &mut self,
        x: &str,
        kernel: (usize, usize),
        stride: usize,
        pads: [usize; 4],
        count_include_pad: bool,
    ) -> String {
        let mut attrs = pool_attrs(kernel, stride, pads);
        attrs.push(("count_include_pad", Attr::Int(count_include_pad.into())));
        self.node("AveragePool", &[x], attrs)
    }

    /// `Concat` of `xs` along `axis`.
    pub fn concat(&mut self, xs: &[String], axis: i64) -> String {
        let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
        self.node("Concat", &refs, vec![("axis", Attr::Int(axis))])
    }

    /// `(N, C, H, W)` -> `(N, C)`: the mean over height and width.
    pub fn global_avg_pool(&mut self, x: &str) -> String {
        let pooled = self.node("GlobalAveragePool", &[x], vec![]);
        self.node("Flatten", &[&pooled], vec![("axis", Attr::Int(1))])
    }

    /// The finished model; `metadata` goes into `metadata_props`.
    pub fn finish(
        self,
        producer_version: &str,
        metadata: Vec<(String, String)>,
    ) -> onnx::ModelProto {
        onnx::ModelProto {
            ir_version: self.ir_version,
            opset_import: vec![onnx::OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            producer_name: "runner".into(),
            producer_version: producer_version.into(),
            graph: Some(self.graph),
            metadata_props: metadata
                .into_iter()
                .map(|(key, value)| onnx::StringStringEntryProto { key, value })
                .collect(),
            ..Default::default()
        }
    }
}

fn pool_attrs(
    kernel: (usize, usize),
    stride: usize,
    pads: [usize; 4],
) -> Vec<(&'static str, Attr)> {
    vec![
        (
            "kernel_shape",
            Attr::Ints(vec![kernel.0 as i64, kernel.1 as i64]),
        ),
        ("strides", Attr::Ints(vec![stride as i64; 2])),
        ("pads", Attr::Ints(pads.iter().map(|&p| p as i64).collect())),
    ]
}

/// A native layer's padding rule resolved as its forward call resolves it,
/// for an `hw` input and a `kernel` window with `stride`: ONNX `pads`
/// (`[top, left, bottom, right]`) and the output size.
pub fn window_pads(
    padding: Padding,
    hw: (usize, usize),
    kernel: (usize, usize),
    stride: usize,
) -> candle_core::Result<([usize; 4], (usize, usize))> {
    let g = padding.window(hw, kernel, stride);
    let out = g.out_size(hw)?;
    let p = g.pad;
    Ok(([p.top, p.left, p.bottom, p.right], out))
}

/// [`window_pads`] for a layer of checkpoint `w`, whose name the error
/// carries (a window larger than its padded input: an input size the
/// network cannot take).
pub fn layer_pads(
    w: &Weights,
    padding: Padding,
    hw: (usize, usize),
    kernel: (usize, usize),
    stride: usize,
) -> Result<([usize; 4], (usize, usize)), ModelError> {
    window_pads(padding, hw, kernel, stride).map_err(|e| w.candle_err(e))
}

/// TF "SAME" padding of a square `len x len` input for a `k x k` window
/// with `stride`: ONNX `pads` (`[top, left, bottom, right]`, the extra pixel
/// at the end) and the output length.
pub fn same_pads(len: usize, k: usize, stride: usize) -> ([usize; 4], usize) {
    let (begin, end) = crate::layers::same_pad_1d(len, k, stride);
    ([begin, begin, end, end], len.div_ceil(stride))
}
