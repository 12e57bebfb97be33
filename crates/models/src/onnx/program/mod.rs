//! An ONNX graph lowered, once at load, to a straight-line program over the
//! native layers.
//!
//! [`Program::lower`] runs five passes, each in its own module:
//! 1. [`fold`] (graph -> [`fold::Folded`]: constants and the nodes left):
//!    every node is parsed ([`Op::parse`]; an unsupported op or attribute is
//!    an error naming the node, before any image is read), and nodes whose
//!    inputs are all constants (initializers, `Constant`s, results of
//!    earlier folds) run once, there; exporters emit whole subgraphs of
//!    shape arithmetic this way (PyTorch's TF-"SAME" padding is ~15 nodes
//!    per convolution);
//! 2. [`prune`] (nodes -> nodes): only the ancestors of the chosen output
//!    are kept (a classifier behind the pooled features is never run);
//! 3. [`fuse`] (nodes -> [`fuse::Fused`]: convolution chains): a zero `Pad`
//!    before, and the `BatchNormalization`, per-channel `Mul` / `Add`,
//!    `Relu` / `Clip(0, 6)` and residual `Add` after a `Conv` become one
//!    [`Conv2d`] / [`DepthwiseConv2d`] call with folded weights, so an
//!    exported network runs the same kernels as the native one;
//! 4. [`emit`] (nodes and chains -> [`Program`]): values get numbered slots
//!    and nodes become steps, in graph order;
//! 5. [`liveness`] (on the [`Program`]): each intermediate is dropped right
//!    after its last reader.
//!
//! [`Program::run`] (`run.rs`) then executes the steps.

mod emit;
mod fold;
mod fuse;
mod liveness;
mod patterns;
mod prune;
mod run;

use std::collections::HashSet;

use candle_core::Tensor;

use super::onnx_pb as onnx;
use super::ops::Op;
use super::OnnxError;
use crate::layers::{Conv2d, DepthwiseConv2d};

/// What one step computes.
enum Kernel {
    /// Dense convolution with fused bias / BatchNorm / activation; with
    /// `residual`, its second input is added to the activated output.
    Conv {
        conv: Conv2d,
        residual: bool,
    },
    Depthwise(DepthwiseConv2d),
    /// `group` dense convolutions over channel slices, concatenated.
    Grouped(Vec<Conv2d>),
    Op(Op),
}

struct Step {
    /// The ONNX node (the last of a fused chain) and its op, for errors.
    node: String,
    op_type: String,
    kernel: Kernel,
    inputs: Vec<Option<usize>>,
    outputs: Vec<usize>,
    /// Slots whose last reader is this step.
    free: Vec<usize>,
}

/// The lowered graph: `steps` over numbered value slots.
pub struct Program {
    steps: Vec<Step>,
    slots: usize,
    /// Constants that runtime steps read (shape targets, biases of unfused
    /// ops), put in their slots at the start of each run.
    constants: Vec<(usize, Tensor)>,
    /// The float constants copied to the device of the first non-CPU input
    /// (integer ones, shape arithmetic, stay on the CPU where `Shape` puts
    /// its results).
    device_constants: std::sync::OnceLock<Vec<(usize, Tensor)>>,
    input: usize,
    output: usize,
    /// Names of the graph input and of the chosen output.
    pub input_name: String,
    pub output_name: String,
}

/// A node after parsing and folding. Its inputs and outputs start as the
/// ONNX node's and change where a pattern pass rewires it ([`patterns`]).
struct Node<'a> {
    proto: &'a onnx::NodeProto,
    name: String,
    op: Op,
    input: Vec<String>,
    output: Vec<String>,
}

impl Node<'_> {
    fn inputs(&self) -> impl Iterator<Item = &str> {
        self.input.iter().map(String::as_str)
    }
    fn output(&self) -> &str {
        self.output.first().map_or("", String::as_str)
    }
    /// Of a two-input node reading `known`, its other input.
    fn other_input(&self, known: &str) -> Option<&str> {
        match self.input.as_slice() {
            [a, b] if a == known => Some(b),
            [a, b] if b == known => Some(a),
            _ => None,
        }
    }
}

/// The default-domain opset the model was exported with.
pub fn opset(model: &onnx::ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version)
}

/// The graph's one non-constant input.
pub fn image_input<'a>(
    graph: &'a onnx::GraphProto,
    path: &str,
) -> Result<&'a onnx::ValueInfoProto, OnnxError> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&onnx::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .collect();
    match inputs.as_slice() {
        [one] => Ok(one),
        other => {
            Err(OnnxError::Graph {
                path: path.into(),
                message: format!(
                "the graph has {} non-constant inputs ({}); runner feeds exactly one image tensor",
                other.len(),
                other.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
            })
        }
    }
}

/// Picks the output among the values computed from the input (the nodes
/// left after folding, and the input itself): the one named, else the
/// graph's only output, else its only output of rank 2 or 4.
fn choose_output(
    graph: &onnx::GraphProto,
    wanted: Option<&str>,
    nodes: &[Node],
    input: &str,
    path: &str,
) -> Result<String, OnnxError> {
    let produced: HashSet<&str> = nodes
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .chain([input])
        .collect();
    let listing = || {
        graph
            .output
            .iter()
            .map(|o| match super::proto::declared_dims(o) {
                Some(d) => format!("`{}` {}", o.name, super::dims_text(&d)),
                None => format!("`{}`", o.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(name) = wanted {
        if produced.contains(name) {
            return Ok(name.to_string());
        }
        return Err(OnnxError::Graph {
            path: path.into(),
            message: format!(
                "`output = \"{name}\"` is not a value the graph computes from its input; \
                 graph outputs: {}; any node output name works too (see `runner inspect`)",
                listing()
            ),
        });
    }
    let candidates: Vec<&onnx::ValueInfoProto> = if graph.output.len() == 1 {
        graph.output.iter().collect()
    } else {
        graph
            .output
            .iter()
            .filter(|o| {
                super::proto::declared_dims(o).is_some_and(|d| d.len() == 2 || d.len() == 4)
            })
            .collect()
    };
    match candidates.as_slice() {
        [one] => Ok(one.name.clone()),
        _ => Err(OnnxError::Graph {
            path: path.into(),
            message: format!(
                "the graph has several outputs ({}); set `output` in the [[backbone]] table to the pooled features",
                listing()
            ),
        }),
    }
}

impl Program {
    /// Lowers `model`; `output` names the value to return (default: the
    /// graph's only output, else its only output of rank 2 or 4).
    pub fn lower(
        model: &onnx::ModelProto,
        output: Option<&str>,
        path: &str,
    ) -> Result<Program, OnnxError> {
        let Some(graph) = model.graph.as_ref() else {
            return Err(OnnxError::Graph {
                path: path.into(),
                message: "the model has no graph".into(),
            });
        };
        let opset = opset(model);
        let input_name = image_input(graph, path)?.name.clone();
        let folded = fold::parse_and_fold(graph, opset, path)?;
        let output_name = choose_output(graph, output, &folded.nodes, &input_name, path)?;
        let nodes = prune::prune(folded.nodes, &output_name);
        let nodes = patterns::rewrite(nodes, &folded.consts, &output_name);
        let fused = fuse::fuse(&nodes, &folded.consts, &output_name, path)?;
        let mut program = emit::emit(nodes, fused, &folded.consts, input_name, output_name);
        liveness::liveness(&mut program);
        Ok(program)
    }

    /// Number of steps after fusion (for `runner inspect`).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// How many ONNX convolutions became native convolution calls.
    pub fn native_convolutions(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| !matches!(s.kernel, Kernel::Op(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::testutil::{init, model, node, tensor, values, with_int};

    /// Lowers `m` and runs it on `x` of `dims`: (steps, output values).
    fn lower_and_run(m: &onnx::ModelProto, x: &[f32], dims: &[usize]) -> (Program, Vec<f32>) {
        let p = Program::lower(m, None, "m.onnx").unwrap();
        let y = p.run(tensor(x, dims)).unwrap();
        (p, values(&y))
    }

    /// tf2onnx's unfolded BatchNorm after a depthwise convolution: the
    /// per-channel Mul and Add fold into it, and the Clip after them fuses.
    #[test]
    fn per_channel_constant_scale_and_shift_fold_into_the_convolution() {
        let m = model(
            vec![
                with_int(node("Conv", &["x", "w"], "dw"), "group", 2),
                node("Mul", &["dw", "scale"], "scaled"),
                node("Add", &["shift", "scaled"], "shifted"),
                node("Relu", &["shifted"], "y"),
            ],
            vec![
                init("w", &[2, 1, 1, 1], &[1.0, 1.0]),
                init("scale", &[2, 1, 1], &[2.0, -1.0]),
                init("shift", &[2, 1, 1], &[0.5, 1.0]),
            ],
            "y",
        );
        let (p, y) = lower_and_run(&m, &[1., -1., 3., 0.5], &[1, 2, 1, 2]);
        assert_eq!(p.len(), 1, "one fused step");
        // channel 0: relu(2x + 0.5); channel 1: relu(-x + 1)
        assert_eq!(y, vec![2.5, 0.0, 0.0, 0.5]);
    }

    /// A constant that varies along W is not a per-channel affine.
    #[test]
    fn a_constant_varying_along_width_is_not_folded() {
        let m = model(
            vec![
                node("Conv", &["x", "w"], "c"),
                node("Mul", &["c", "ramp"], "y"),
            ],
            vec![
                init("w", &[1, 1, 1, 1], &[1.0]),
                init("ramp", &[1, 1, 1, 2], &[1.0, 10.0]),
            ],
            "y",
        );
        let (p, y) = lower_and_run(&m, &[1., 2.], &[1, 1, 1, 2]);
        assert_eq!(p.len(), 2);
        assert_eq!(y, vec![1.0, 20.0]);
    }

    /// A ResNet block with a downsampling shortcut: both inputs of the Add
    /// are convolutions, and both must run (each could fuse the Add).
    #[test]
    fn an_add_of_two_convolutions_runs_both() {
        let m = model(
            vec![
                node("Conv", &["x", "w2"], "main"),
                node("Conv", &["x", "w3"], "shortcut"),
                node("Add", &["main", "shortcut"], "y"),
            ],
            vec![
                init("w2", &[1, 1, 1, 1], &[2.0]),
                init("w3", &[1, 1, 1, 1], &[3.0]),
            ],
            "y",
        );
        let (p, y) = lower_and_run(&m, &[1., -2., 3., 4.], &[1, 1, 2, 2]);
        assert_eq!(p.native_convolutions(), 2);
        assert_eq!(y, vec![5., -10., 15., 20.]);
    }

    /// Two groups of two channels that are not depthwise: one dense
    /// convolution per channel slice, concatenated.
    #[test]
    fn a_grouped_convolution_runs_each_group_on_its_channels() {
        let m = model(
            vec![with_int(node("Conv", &["x", "w"], "y"), "group", 2)],
            vec![init("w", &[2, 2, 1, 1], &[1.0, 1.0, 1.0, -1.0])],
            "y",
        );
        let (p, y) = lower_and_run(&m, &[1., 2., 3., 4.], &[1, 4, 1, 1]);
        assert_eq!(p.native_convolutions(), 1);
        assert_eq!(y, vec![3., -1.]);
    }

    #[test]
    fn a_named_output_the_graph_does_not_compute_lists_the_outputs() {
        let m = model(vec![node("Relu", &["x"], "y")], vec![], "y");
        let e = Program::lower(&m, Some("logits"), "m.onnx")
            .err()
            .expect("lowered to a missing output")
            .to_string();
        assert!(
            e.contains("`output = \"logits\"`") && e.contains("`y`"),
            "{e}"
        );
    }
}
