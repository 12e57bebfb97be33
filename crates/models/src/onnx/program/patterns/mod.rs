//! Pass 2b: op patterns exporters spell out node by node, rewritten as
//! the one op they compute:
//! - the exact GELU, which PyTorch exports as `Div(x, sqrt 2) -> Erf ->
//!   Add 1 -> Mul x -> Mul 0.5` (the last two in either order): five passes
//!   over the widest tensor of every transformer and ConvNeXt block, one
//!   after the rewrite ([`gelu`]);
//! - LayerNorm over the channels of an NCHW map, exported as `Transpose ->
//!   LayerNormalization -> Transpose` (ConvNeXt's LayerNorm2d): normalised
//!   in place of the two copies ([`channel_layer_norm`]);
//! - a linear layer's `MatMul(x, W) -> Add(bias)`, and a GELU after it,
//!   folded into the product, which applies them to each row of the result
//!   while it is in cache ([`matmul_epilogues`]).

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;

use super::Node;
use crate::onnx::ops::{self, Op, Unary};

mod matmul;

pub use matmul::{matmul_epilogues, matmul_operands};

/// Every rewrite, in turn.
pub fn rewrite<'g>(
    nodes: Vec<Node<'g>>,
    consts: &HashMap<String, Tensor>,
    output: &str,
) -> Vec<Node<'g>> {
    let nodes = gelu(nodes, consts, output);
    let nodes = channel_layer_norm(nodes, output);
    let nodes = matmul_operands(nodes, consts, output);
    matmul_epilogues(nodes, consts, output)
}

/// Who reads and who writes each value of `nodes`.
struct Uses<'n> {
    readers: HashMap<&'n str, Vec<usize>>,
    producer: HashMap<&'n str, usize>,
    output: &'n str,
}

impl<'n> Uses<'n> {
    fn new(nodes: &'n [Node<'_>], output: &'n str) -> Self {
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for inp in n.inputs() {
                readers.entry(inp).or_default().push(i);
            }
            for o in &n.output {
                producer.insert(o, i);
            }
        }
        Uses {
            readers,
            producer,
            output,
        }
    }

    /// The one reader of `value`, if it has exactly one and is not the output.
    fn only_reader(&self, value: &str) -> Option<usize> {
        match self.readers.get(value).map(Vec::as_slice) {
            Some([r]) if value != self.output => Some(*r),
            _ => None,
        }
    }
}

/// `nodes` without the nodes at `dropped`.
fn without<'g>(nodes: Vec<Node<'g>>, dropped: &HashSet<usize>) -> Vec<Node<'g>> {
    nodes
        .into_iter()
        .enumerate()
        .filter_map(|(i, n)| (!dropped.contains(&i)).then_some(n))
        .collect()
}

/// `Transpose(0,2,3,1) -> LayerNormalization(last axis) ->
/// Transpose(0,3,1,2)`, each value read once, as one channel LayerNorm.
pub fn channel_layer_norm<'g>(nodes: Vec<Node<'g>>, output: &str) -> Vec<Node<'g>> {
    let uses = Uses::new(&nodes, output);
    let perm = |n: &Node, want: [i64; 4]| matches!(&n.op, Op::Transpose { perm: Some(p) } if p.as_slice() == want);
    let mut rewrites = Vec::new();
    for (l, n) in nodes.iter().enumerate() {
        let Op::LayerNormalization { axis, eps } = n.op else {
            continue;
        };
        let found = || -> Option<(String, String, [usize; 2])> {
            if axis != -1 && axis != 3 {
                return None;
            }
            let t1 = *uses.producer.get(n.input.first()?.as_str())?;
            if !perm(&nodes[t1], [0, 2, 3, 1]) || uses.only_reader(nodes[t1].output())? != l {
                return None;
            }
            let t2 = uses.only_reader(n.output())?;
            if !perm(&nodes[t2], [0, 3, 1, 2]) {
                return None;
            }
            Some((
                nodes[t1].input.first()?.clone(),
                nodes[t2].output().to_string(),
                [t1, t2],
            ))
        };
        if let Some((x, out, gone)) = found() {
            rewrites.push((l, eps, x, out, gone));
        }
    }
    drop(uses);
    let mut nodes = nodes;
    let mut dropped = HashSet::new();
    for (l, eps, x, out, gone) in rewrites {
        let n = &mut nodes[l];
        n.op = Op::ChannelLayerNorm { eps };
        n.input[0] = x;
        n.output = vec![out];
        dropped.extend(gone);
    }
    without(nodes, &dropped)
}

/// `nodes` with every GELU chain replaced by one `Gelu` node (the `Erf`
/// node, rewired from `x` to the chain's output). A chain whose
/// intermediate values are read elsewhere (or are the graph's output) is
/// left as it is.
pub fn gelu<'g>(
    nodes: Vec<Node<'g>>,
    consts: &HashMap<String, Tensor>,
    output: &str,
) -> Vec<Node<'g>> {
    let uses = Uses::new(&nodes, output);
    let scalar = |name: &str, want: f32| {
        consts
            .get(name)
            .and_then(|t| ops::to_f32s(t).ok())
            .is_some_and(|v| v.len() == 1 && (v[0] - want).abs() <= 1e-6 * want.abs().max(1.0))
    };
    let only_reader = |value: &str| uses.only_reader(value);
    let mut rewrites: Vec<(usize, String, String, [usize; 4])> = Vec::new();
    for (e, n) in nodes.iter().enumerate() {
        if !matches!(n.op, Op::Unary(Unary::Erf)) {
            continue;
        }
        let chain = || -> Option<(String, String, [usize; 4])> {
            let d = *uses.producer.get(n.input.first()?.as_str())?;
            let div = &nodes[d];
            if !matches!(div.op, Op::Div)
                || div.input.len() != 2
                || !scalar(&div.input[1], std::f32::consts::SQRT_2)
            {
                return None;
            }
            let x = div.input[0].clone();
            if only_reader(div.output())? != e {
                return None;
            }
            let a = only_reader(n.output())?;
            let add = &nodes[a];
            if !matches!(add.op, Op::Add) || !scalar(add.other_input(n.output())?, 1.0) {
                return None;
            }
            let m1 = only_reader(add.output())?;
            let first = &nodes[m1];
            let m2 = only_reader(first.output())?;
            let second = &nodes[m2];
            if !matches!(first.op, Op::Mul) || !matches!(second.op, Op::Mul) {
                return None;
            }
            // (x * (1 + erf)) * 0.5, or (0.5 * (1 + erf)) * x.
            let f = first.other_input(add.output())?;
            let s = second.other_input(first.output())?;
            let ok = (f == x && scalar(s, 0.5)) || (scalar(f, 0.5) && s == x);
            ok.then(|| (x, second.output().to_string(), [d, a, m1, m2]))
        };
        if let Some((x, out, dropped)) = chain() {
            rewrites.push((e, x, out, dropped));
        }
    }
    drop(uses);
    let mut dropped = HashSet::new();
    let mut nodes = nodes;
    for (e, x, out, gone) in rewrites {
        let n = &mut nodes[e];
        n.op = Op::Gelu { tanh: false };
        n.input = vec![x];
        n.output = vec![out];
        dropped.extend(gone);
    }
    without(nodes, &dropped)
}

#[cfg(test)]
mod tests {
    use super::super::fold::parse_and_fold;
    use super::*;
    use crate::onnx::testutil::{init, model, node};

    /// The constants of PyTorch's GELU chain.
    fn gelu_constants() -> Vec<crate::onnx::onnx_pb::TensorProto> {
        vec![
            init("sqrt2", &[], &[std::f32::consts::SQRT_2]),
            init("one", &[], &[1.0]),
            init("half", &[], &[0.5]),
        ]
    }

    /// PyTorch's two spellings of the exact GELU, each becomes one node;
    /// the result is unchanged (checked through the whole program).
    #[test]
    fn both_exported_gelu_chains_become_one_gelu() {
        for half_first in [false, true] {
            let (m1, m2) = if half_first {
                (
                    node("Mul", &["half", "a"], "m1"),
                    node("Mul", &["m1", "x"], "y"),
                )
            } else {
                (
                    node("Mul", &["x", "a"], "m1"),
                    node("Mul", &["m1", "half"], "y"),
                )
            };
            let m = model(
                vec![
                    node("Div", &["x", "sqrt2"], "d"),
                    node("Erf", &["d"], "e"),
                    node("Add", &["e", "one"], "a"),
                    m1,
                    m2,
                ],
                gelu_constants(),
                "y",
            );
            let folded = parse_and_fold(m.graph.as_ref().unwrap(), 13, "m.onnx").unwrap();
            let nodes = gelu(folded.nodes, &folded.consts, "y");
            assert_eq!(nodes.len(), 1);
            assert!(matches!(nodes[0].op, Op::Gelu { tanh: false }));
            assert_eq!(
                (nodes[0].input.as_slice(), nodes[0].output()),
                (&["x".to_string()][..], "y")
            );
        }
    }

    #[test]
    fn transposed_layer_norm_becomes_a_channel_layer_norm() {
        use crate::onnx::testutil::with_ints;
        let m = model(
            vec![
                with_ints(node("Transpose", &["x"], "t"), "perm", &[0, 2, 3, 1]),
                node("LayerNormalization", &["t", "s", "b"], "n"),
                with_ints(node("Transpose", &["n"], "y"), "perm", &[0, 3, 1, 2]),
            ],
            vec![init("s", &[2], &[1.0, 2.0]), init("b", &[2], &[0.0, 1.0])],
            "y",
        );
        let folded = parse_and_fold(m.graph.as_ref().unwrap(), 17, "m.onnx").unwrap();
        let nodes = channel_layer_norm(folded.nodes, "y");
        assert_eq!(nodes.len(), 1);
        assert!(matches!(nodes[0].op, Op::ChannelLayerNorm { .. }));
        assert_eq!(nodes[0].input, ["x", "s", "b"]);
        assert_eq!(nodes[0].output(), "y");
    }

    #[test]
    fn a_chain_whose_middle_is_read_elsewhere_is_kept() {
        let m = model(
            vec![
                node("Div", &["x", "sqrt2"], "d"),
                node("Erf", &["d"], "e"),
                node("Add", &["e", "one"], "a"),
                node("Mul", &["x", "a"], "m1"),
                node("Mul", &["m1", "half"], "g"),
                node("Add", &["g", "e"], "y"),
            ],
            gelu_constants(),
            "y",
        );
        let folded = parse_and_fold(m.graph.as_ref().unwrap(), 13, "m.onnx").unwrap();
        assert_eq!(gelu(folded.nodes, &folded.consts, "y").len(), 6);
    }
}
