//! Pass 2b: op patterns exporters spell out node by node, rewritten as
//! the one op they compute. Today: the exact GELU, which PyTorch exports as
//! `Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5` (the last two in
//! either order): five passes over the widest tensor of every transformer
//! block and ConvNeXt block, one after the rewrite.

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;

use super::Node;
use crate::onnx::ops::{self, Op, Unary};

/// `nodes` with every GELU chain replaced by one `Gelu` node (the `Erf`
/// node, rewired from `x` to the chain's output). A chain whose
/// intermediate values are read elsewhere (or are the graph's output) is
/// left as it is.
pub fn gelu<'g>(
    nodes: Vec<Node<'g>>,
    consts: &HashMap<String, Tensor>,
    output: &str,
) -> Vec<Node<'g>> {
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
    let scalar = |name: &str, want: f32| {
        consts
            .get(name)
            .and_then(|t| ops::to_f32s(t).ok())
            .is_some_and(|v| v.len() == 1 && (v[0] - want).abs() <= 1e-6 * want.abs().max(1.0))
    };
    // The one reader of `value`, if it has exactly one and is not the output.
    let only_reader = |value: &str| -> Option<usize> {
        match readers.get(value).map(Vec::as_slice) {
            Some([r]) if value != output => Some(*r),
            _ => None,
        }
    };
    // Of a binary node, the input that is not `known`.
    let other = |n: &Node, known: &str| -> Option<String> {
        match n.input.as_slice() {
            [a, b] if a == known => Some(b.clone()),
            [a, b] if b == known => Some(a.clone()),
            _ => None,
        }
    };
    let mut rewrites: Vec<(usize, String, String, [usize; 4])> = Vec::new();
    for (e, n) in nodes.iter().enumerate() {
        if !matches!(n.op, Op::Unary(Unary::Erf)) {
            continue;
        }
        let chain = || -> Option<(String, String, [usize; 4])> {
            let d = *producer.get(n.input.first()?.as_str())?;
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
            if !matches!(add.op, Op::Add) || !scalar(&other(add, n.output())?, 1.0) {
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
            let f = other(first, add.output())?;
            let s = other(second, first.output())?;
            let ok = (f == x && scalar(&s, 0.5)) || (scalar(&f, 0.5) && s == x);
            ok.then(|| (x, second.output().to_string(), [d, a, m1, m2]))
        };
        if let Some((x, out, dropped)) = chain() {
            rewrites.push((e, x, out, dropped));
        }
    }
    let mut dropped = HashSet::new();
    let mut nodes = nodes;
    for (e, x, out, gone) in rewrites {
        let n = &mut nodes[e];
        n.op = Op::Gelu { tanh: false };
        n.input = vec![x];
        n.output = vec![out];
        dropped.extend(gone);
    }
    nodes
        .into_iter()
        .enumerate()
        .filter_map(|(i, n)| (!dropped.contains(&i)).then_some(n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fold::parse_and_fold;
    use super::*;
    use crate::onnx::testutil::{init, model, node};

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
                vec![
                    init("sqrt2", &[], &[std::f32::consts::SQRT_2]),
                    init("one", &[], &[1.0]),
                    init("half", &[], &[0.5]),
                ],
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
            vec![
                init("sqrt2", &[], &[std::f32::consts::SQRT_2]),
                init("one", &[], &[1.0]),
                init("half", &[], &[0.5]),
            ],
            "y",
        );
        let folded = parse_and_fold(m.graph.as_ref().unwrap(), 13, "m.onnx").unwrap();
        assert_eq!(gelu(folded.nodes, &folded.consts, "y").len(), 6);
    }
}
