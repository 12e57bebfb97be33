//! Pass 1: parse every node and fold the constant ones.

use std::collections::HashMap;

use candle_core::Tensor;

use super::Node;
use crate::onnx::onnx_pb as onnx;
use crate::onnx::ops::{Op, ParseError};
use crate::onnx::{proto, OnnxError};

/// The graph after parsing and constant folding.
pub struct Folded<'g> {
    /// Initializers, `Constant`s and every value computed from them alone.
    pub consts: HashMap<String, Tensor>,
    /// The nodes that read the image, in graph order.
    pub nodes: Vec<Node<'g>>,
}

/// Parses each node of `graph` in order; a node whose inputs are all
/// constants (and is not a `Conv`, which only runs lowered) is evaluated
/// here and its outputs become constants.
pub fn parse_and_fold<'g>(
    graph: &'g onnx::GraphProto,
    opset: i64,
    path: &str,
) -> Result<Folded<'g>, OnnxError> {
    let mut consts: HashMap<String, Tensor> = HashMap::new();
    for t in &graph.initializer {
        let v = proto::tensor(t).map_err(|m| OnnxError::Graph {
            path: path.into(),
            message: format!("initializer: {m}"),
        })?;
        consts.insert(t.name.clone(), v);
    }

    let mut nodes: Vec<Node> = Vec::new();
    for (i, proto) in graph.node.iter().enumerate() {
        let name = if proto.name.is_empty() {
            format!("#{i} ({})", proto.output.first().map_or("", String::as_str))
        } else {
            proto.name.clone()
        };
        let node_err = |message: String| OnnxError::Node {
            path: path.into(),
            node: name.clone(),
            op: proto.op_type.clone(),
            message,
        };
        let op = match Op::parse(proto, opset) {
            Ok(op) => op,
            Err(ParseError::Unsupported) => {
                return Err(OnnxError::Unsupported {
                    path: path.into(),
                    node: name,
                    op: if proto.domain.is_empty() {
                        proto.op_type.clone()
                    } else {
                        format!("{}::{}", proto.domain, proto.op_type)
                    },
                    opset,
                })
            }
            Err(ParseError::Invalid(m)) => return Err(node_err(m)),
        };
        let all_const = proto
            .input
            .iter()
            .all(|i| i.is_empty() || consts.contains_key(i));
        if all_const && !matches!(op, Op::Conv { .. }) {
            let ins: Vec<Option<&Tensor>> = proto.input.iter().map(|i| consts.get(i)).collect();
            let outs = op
                .eval(&ins)
                .map_err(|e| node_err(format!("constant folding failed: {e}")))?;
            for (name, t) in proto.output.iter().zip(outs) {
                consts.insert(name.clone(), t);
            }
            continue;
        }
        nodes.push(Node {
            proto,
            name,
            op,
            input: proto.input.clone(),
            output: proto.output.clone(),
        });
    }
    Ok(Folded { consts, nodes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::testutil::{init, init_i64, model, node, values, with_ints};

    fn graph(nodes: Vec<onnx::NodeProto>, inits: Vec<onnx::TensorProto>) -> onnx::GraphProto {
        model(nodes, inits, "y").graph.unwrap()
    }

    /// PyTorch's padding arithmetic pattern: a chain over constants only
    /// becomes one constant; the image path stays.
    #[test]
    fn a_chain_over_constants_becomes_a_constant_and_the_image_path_stays() {
        let g = graph(
            vec![
                node("Add", &["a", "b"], "ab"),
                node("Relu", &["x"], "r"),
                node("Mul", &["ab", "ab"], "sq"),
                node("Mul", &["r", "sq"], "y"),
            ],
            vec![init("a", &[2], &[1.0, -3.0]), init("b", &[2], &[1.0, 1.0])],
        );
        let folded = parse_and_fold(&g, 13, "m.onnx").unwrap();
        let kept: Vec<&str> = folded.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(kept, ["r", "y"]);
        assert_eq!(values(&folded.consts["sq"]), vec![4.0, 4.0]);
        assert!(!folded.consts.contains_key("r"));
    }

    /// Convolutions only run lowered onto the native layers.
    #[test]
    fn a_convolution_of_constants_is_kept_for_lowering() {
        let g = graph(
            vec![node("Conv", &["c", "w"], "y")],
            vec![
                init("c", &[1, 1, 1, 1], &[2.0]),
                init("w", &[1, 1, 1, 1], &[3.0]),
            ],
        );
        let folded = parse_and_fold(&g, 13, "m.onnx").unwrap();
        assert_eq!(folded.nodes.len(), 1);
        assert!(matches!(folded.nodes[0].op, Op::Conv { .. }));
    }

    #[test]
    fn an_op_of_another_domain_is_unsupported_naming_domain_node_and_opset() {
        let mut fused = node("FusedConv", &["x", "w"], "y");
        fused.domain = "com.microsoft".into();
        fused.name = String::new();
        let g = graph(vec![node("Relu", &["x"], "r"), fused], vec![]);
        let Err(OnnxError::Unsupported {
            node, op, opset, ..
        }) = parse_and_fold(&g, 12, "m.onnx")
        else {
            panic!("com.microsoft::FusedConv parsed");
        };
        assert_eq!(
            (node.as_str(), op.as_str(), opset),
            ("#1 (y)", "com.microsoft::FusedConv", 12)
        );
    }

    #[test]
    fn a_fold_that_fails_is_an_error_naming_the_node() {
        let unsqueeze = with_ints(node("Unsqueeze", &["a"], "y"), "axes", &[5]);
        let g = graph(vec![unsqueeze], vec![init_i64("a", &[1, 2])]);
        let Err(OnnxError::Node { node, message, .. }) = parse_and_fold(&g, 11, "m.onnx") else {
            panic!("an out-of-range Unsqueeze folded");
        };
        assert_eq!(node, "y");
        assert!(message.starts_with("constant folding failed"), "{message}");
    }
}
