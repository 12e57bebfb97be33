//! MatMul rewrites: what exporters put around a product, folded into it
//! (see [`super`]).

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;

use super::{without, Node, Uses};
use crate::onnx::ops::{self, Op};

/// Scalar `Mul`s on either operand of a `MatMul`, and a `Transpose` of its
/// right operand's last two axes, each read only by it, folded into it
/// (`alpha`, `trans_b`; a multiplier computed from shapes as inputs 4 and
/// 5): attention's `(q * s) @ (kᵀ * s)` reads `q` and `k` as they are.
pub fn matmul_operands<'g>(
    nodes: Vec<Node<'g>>,
    consts: &HashMap<String, Tensor>,
    output: &str,
) -> Vec<Node<'g>> {
    let uses = Uses::new(&nodes, output);
    let scalar = |name: &str| {
        consts
            .get(name)
            .filter(|t| t.elem_count() == 1)
            .and_then(|t| ops::to_f32s(t).ok())
            .map(|v| v[0])
    };
    let swaps_last_two = |perm: &[i64]| {
        let r = perm.len();
        r >= 2
            && perm[r - 2] == r as i64 - 1
            && perm[r - 1] == r as i64 - 2
            && perm[..r - 2]
                .iter()
                .enumerate()
                .all(|(i, &p)| p == i as i64)
    };
    // Values computed from shapes and constants only (PyTorch's attention
    // scale is `1 / sqrt(sqrt(head_dim))` of a traced `Shape`): small, and
    // never image data.
    let mut from_shapes: HashSet<&str> = HashSet::new();
    for n in &nodes {
        let derived = matches!(n.op, Op::Shape { .. })
            || n.inputs()
                .filter(|i| !i.is_empty())
                .all(|i| consts.contains_key(i) || from_shapes.contains(i));
        if derived {
            from_shapes.extend(n.output.iter().map(String::as_str));
        }
    }
    let runtime = |name: &str| from_shapes.contains(name);
    let mut rewrites = Vec::new();
    for (m, n) in nodes.iter().enumerate() {
        if !matches!(n.op, Op::MatMul { gelu: false, trans_b: false, alpha } if alpha == 1.0)
            || n.input.len() != 2
        {
            continue;
        }
        let (mut ins, mut alpha, mut trans_b, mut gone) =
            (n.input.clone(), 1.0f32, false, Vec::new());
        // Per side, a multiplier known only when the graph runs (checked to
        // be one value then, else applied as the Mul was).
        let mut multipliers = [String::new(), String::new()];
        for side in 0..2 {
            // The node reading `ins[side]`: the MatMul, then each node
            // folded into it on the way back.
            let mut reader = m;
            while let Some(&p) = uses.producer.get(ins[side].as_str()) {
                if uses.only_reader(&ins[side]) != Some(reader) {
                    break;
                }
                let pn = &nodes[p];
                match (&pn.op, pn.input.as_slice()) {
                    (Op::Mul, [x, c]) | (Op::Mul, [c, x])
                        if scalar(c).is_some() && scalar(x).is_none() =>
                    {
                        alpha *= scalar(c).expect("checked");
                        ins[side] = x.clone();
                    }
                    // Before any Transpose on the way back: `Mul(Transpose(k), r)`
                    // is what the fallback recomputes.
                    (Op::Mul, [x, r]) | (Op::Mul, [r, x])
                        if runtime(r)
                            && !runtime(x)
                            && multipliers[side].is_empty()
                            && !(side == 1 && trans_b) =>
                    {
                        multipliers[side] = r.clone();
                        ins[side] = x.clone();
                    }
                    (Op::Transpose { perm: Some(perm) }, [x])
                        if side == 1 && !trans_b && swaps_last_two(perm) =>
                    {
                        trans_b = true;
                        ins[1] = x.clone();
                    }
                    _ => break,
                }
                gone.push(p);
                reader = p;
            }
        }
        if !gone.is_empty() {
            if multipliers.iter().any(|r| !r.is_empty()) {
                // Inputs 4 and 5, after the (absent) bias and scale.
                ins.extend([String::new(), String::new()]);
                ins.extend(multipliers);
            }
            rewrites.push((m, ins, alpha, trans_b, gone));
        }
    }
    drop(uses);
    let mut nodes = nodes;
    let mut dropped = HashSet::new();
    for (m, ins, alpha, trans_b, gone) in rewrites {
        let n = &mut nodes[m];
        n.op = Op::MatMul {
            gelu: false,
            trans_b,
            alpha,
        };
        n.input = ins;
        dropped.extend(gone);
    }
    without(nodes, &dropped)
}

/// `MatMul(x, W)` with a 2-D constant `W` (`K x N`), then `Add` of a
/// constant of `N` values (either operand order), then `Gelu`, then `Mul`
/// by a constant of `N` values, each value read once: the bias becomes the
/// MatMul's third input, the scale its fourth and the GELU its flag. Any
/// step may be absent.
pub fn matmul_epilogues<'g>(
    nodes: Vec<Node<'g>>,
    consts: &HashMap<String, Tensor>,
    output: &str,
) -> Vec<Node<'g>> {
    /// What folds into the MatMul at `matmul`.
    struct Epilogue {
        matmul: usize,
        alpha: f32,
        scale: Option<String>,
        bias: Option<String>,
        gelu: bool,
        output: String,
        absorbed: Vec<usize>,
    }
    let uses = Uses::new(&nodes, output);
    let mut rewrites: Vec<Epilogue> = Vec::new();
    for (m, n) in nodes.iter().enumerate() {
        let (
            Op::MatMul {
                gelu: false,
                trans_b: false,
                alpha,
            },
            [_, w],
        ) = (&n.op, n.input.as_slice())
        else {
            continue;
        };
        let Some(cols) = consts.get(w).filter(|t| t.rank() == 2).map(|t| t.dims()[1]) else {
            continue;
        };
        let alpha = *alpha;
        let (mut out, mut gone) = (n.output().to_string(), Vec::new());
        // The sole reader of `out`, if it is `want` of `out` and a constant
        // of one value per column: that node and the constant's name.
        let per_column = |want: fn(&Op) -> bool, out: &str| -> Option<(usize, String)> {
            let r = uses.only_reader(out)?;
            let c = nodes[r].other_input(out)?;
            let fits = want(&nodes[r].op) && consts.get(c).is_some_and(|t| t.dims() == [cols]);
            fits.then(|| (r, c.to_string()))
        };
        let mut absorb = |(r, c): (usize, String), out: &mut String| {
            gone.push(r);
            *out = nodes[r].output().to_string();
            c
        };
        let bias = per_column(|op| matches!(op, Op::Add), &out).map(|f| absorb(f, &mut out));
        let mut gelu = false;
        if let Some(g) = uses.only_reader(&out) {
            if matches!(nodes[g].op, Op::Gelu { tanh: false }) {
                gelu = true;
                absorb((g, String::new()), &mut out);
            }
        }
        // A layer scale (ViT's LayerScale, ConvNeXt's gamma).
        let scale = per_column(|op| matches!(op, Op::Mul), &out).map(|f| absorb(f, &mut out));
        if !gone.is_empty() {
            rewrites.push(Epilogue {
                matmul: m,
                alpha,
                bias,
                scale,
                gelu,
                output: out,
                absorbed: gone,
            });
        }
    }
    drop(uses);
    let mut nodes = nodes;
    let mut dropped = HashSet::new();
    for e in rewrites {
        let n = &mut nodes[e.matmul];
        n.op = Op::MatMul {
            gelu: e.gelu,
            trans_b: false,
            alpha: e.alpha,
        };
        // Inputs 2 and 3: the bias and the scale ("" where absent).
        n.input.push(e.bias.unwrap_or_default());
        n.input.extend(e.scale);
        n.output = vec![e.output];
        dropped.extend(e.absorbed);
    }
    without(nodes, &dropped)
}

#[cfg(test)]
mod tests {
    use super::super::super::fold::parse_and_fold;
    use super::*;
    use crate::onnx::testutil::{init, model, node};

    #[test]
    fn a_linear_layers_bias_and_gelu_fold_into_its_matmul() {
        let m = model(
            vec![
                node("MatMul", &["x", "w"], "p"),
                node("Add", &["bias", "p"], "h"),
                node("Gelu", &["h"], "y"),
            ],
            vec![init("w", &[2, 3], &[1.0; 6]), init("bias", &[3], &[0.5; 3])],
            "y",
        );
        let folded = parse_and_fold(m.graph.as_ref().unwrap(), 20, "m.onnx").unwrap();
        let nodes = matmul_epilogues(folded.nodes, &folded.consts, "y");
        assert_eq!(nodes.len(), 1);
        assert!(matches!(nodes[0].op, Op::MatMul { gelu: true, .. }));
        assert_eq!(nodes[0].input, ["x", "w", "bias"]);
        // With a layer scale after it, and no bias.
        let m = model(
            vec![
                node("MatMul", &["x", "w"], "p"),
                node("Mul", &["p", "gamma"], "y"),
            ],
            vec![
                init("w", &[2, 3], &[1.0; 6]),
                init("gamma", &[3], &[0.5; 3]),
            ],
            "y",
        );
        let folded = parse_and_fold(m.graph.as_ref().unwrap(), 20, "m.onnx").unwrap();
        let nodes = matmul_epilogues(folded.nodes, &folded.consts, "y");
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].input, ["x", "w", "", "gamma"]);
        assert_eq!(nodes[0].output(), "y");
    }

    /// timm's attention as exported: `(q * s) @ (Transpose(k) * s)`.
    #[test]
    fn attentions_scales_and_k_transpose_fold_into_its_product() {
        use crate::onnx::testutil::with_ints;
        let m = model(
            vec![
                node("Mul", &["q", "s"], "qs"),
                with_ints(node("Transpose", &["k"], "kt"), "perm", &[0, 1, 3, 2]),
                node("Mul", &["kt", "s"], "kts"),
                node("MatMul", &["qs", "kts"], "y"),
            ],
            vec![init("s", &[], &[0.5])],
            "y",
        );
        let folded = parse_and_fold(m.graph.as_ref().unwrap(), 17, "m.onnx").unwrap();
        let nodes = matmul_operands(folded.nodes, &folded.consts, "y");
        assert_eq!(nodes.len(), 1);
        assert!(
            matches!(nodes[0].op, Op::MatMul { trans_b: true, alpha, .. } if alpha == 0.25),
            "{:?}",
            nodes[0].op
        );
        assert_eq!(nodes[0].input, ["q", "k"]);
    }

    /// The scale computed from a traced shape, as the TorchScript exporter
    /// writes it: a runtime multiplier of each operand, and the program
    /// still computes what the graph does.
    #[test]
    fn attentions_runtime_scales_fold_and_compute_the_same() {
        use crate::onnx::testutil::{tensor, values, with_ints};
        let m = model(
            vec![
                node("Shape", &["q"], "shape"),
                node("Cast", &["shape"], "dims"),
                node("Sqrt", &["dims"], "s"),
                node("Mul", &["q", "s"], "qs"),
                with_ints(node("Transpose", &["q"], "kt"), "perm", &[1, 0]),
                node("Mul", &["kt", "s"], "kts"),
                node("MatMul", &["qs", "kts"], "y"),
            ],
            vec![],
            "y",
        );
        let m = {
            // Cast to float.
            let mut m = m;
            let g = m.graph.as_mut().unwrap();
            g.node[1]
                .attribute
                .push(crate::onnx::onnx_pb::AttributeProto {
                    name: "to".into(),
                    i: 1,
                    r#type: crate::onnx::onnx_pb::attribute_proto::AttributeType::Int as i32,
                    ..Default::default()
                });
            g.input[0].name = "q".into();
            m
        };
        let folded = parse_and_fold(m.graph.as_ref().unwrap(), 17, "m.onnx").unwrap();
        let nodes = matmul_operands(folded.nodes, &folded.consts, "y");
        let mm = nodes
            .iter()
            .find(|n| matches!(n.op, Op::MatMul { .. }))
            .unwrap();
        assert!(
            matches!(mm.op, Op::MatMul { trans_b: true, .. }),
            "{:?}",
            mm.op
        );
        assert_eq!(mm.input, ["q", "q", "", "", "s", "s"]);
        // Through the whole program: (q * sqrt(dims)) @ (qᵀ * sqrt(dims)),
        // where `dims` = [2, 2] is not one value: the fallback.
        let p = crate::onnx::Program::lower(&m, None, "m.onnx").unwrap();
        let q = tensor(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
        let got = values(&p.run(q).unwrap());
        // s = [sqrt 2, sqrt 2]: q * s scales columns; (q s)(qᵀ s) = 2 q qᵀ... column-wise.
        let want = [10.0, 22.0, 22.0, 50.0];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "{got:?}");
        }
    }
}
