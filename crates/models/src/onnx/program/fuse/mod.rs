//! Pass 3: fuse around convolutions. A zero `Pad` before, and the
//! `BatchNormalization`, per-channel constant `Mul` / `Add`, activation and
//! residual `Add` after a `Conv` fold into one native convolution call.
//!
//! Only a value with one reader, and not the chosen output, is fused
//! through: a value something else reads must still be computed.

mod patterns;

use std::collections::{HashMap, HashSet};

use candle_core::{Device, Tensor};

use super::{Kernel, Node};
use crate::layers::{
    Act, BatchNorm, Conv2d, Conv2dConfig, DepthwiseConfig, DepthwiseConv2d, Pad4, Padding,
};
use crate::onnx::ops::{self, Op, Window2d};
use crate::onnx::OnnxError;
use patterns::{channel_affine, fusable_act, zero_spatial_pad};

/// The pass's result: the convolution chains and the nodes they absorbed.
pub struct Fused {
    /// Each chain by the index of its last node, where it runs.
    pub chains: HashMap<usize, FusedConv>,
    /// Every node inside a chain, the convolutions included: none of them
    /// runs on its own.
    pub absorbed: HashSet<usize>,
}

/// A convolution with what was fused into it, before slot numbering.
pub struct FusedConv {
    /// The last node of the chain, where the step runs, and the op types
    /// for errors (`Conv+Relu`).
    pub node: String,
    pub op_type: String,
    pub kernel: Kernel,
    /// The convolution's input and, when an Add was fused, the residual.
    pub inputs: Vec<String>,
    pub output: String,
}

/// Fuses around every `Conv` of `nodes` (pruned, in graph order); `output`
/// is the chosen output, which stays computed.
pub fn fuse(
    nodes: &[Node],
    consts: &HashMap<String, Tensor>,
    output: &str,
    path: &str,
) -> Result<Fused, OnnxError> {
    let g = Graph::new(nodes, consts, output);
    let mut fused = Fused {
        chains: HashMap::new(),
        absorbed: HashSet::new(),
    };
    for (ci, n) in nodes.iter().enumerate() {
        let Op::Conv { window, group } = &n.op else {
            continue;
        };
        let chain =
            Chain::fuse(&g, ci, window, *group, &mut fused.absorbed).map_err(|message| {
                OnnxError::Node {
                    path: path.into(),
                    node: n.name.clone(),
                    op: "Conv".into(),
                    message,
                }
            })?;
        fused.absorbed.insert(ci);
        fused.chains.insert(chain.last, chain.conv);
    }
    Ok(fused)
}

/// The pruned graph, with who reads and who produces each value.
struct Graph<'a, 'g> {
    nodes: &'a [Node<'g>],
    consts: &'a HashMap<String, Tensor>,
    output: &'a str,
    readers: HashMap<&'a str, Vec<usize>>,
    producer: HashMap<&'a str, usize>,
}

impl<'a, 'g> Graph<'a, 'g> {
    fn new(nodes: &'a [Node<'g>], consts: &'a HashMap<String, Tensor>, output: &'a str) -> Self {
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for inp in n.inputs().filter(|s| !s.is_empty()) {
                readers.entry(inp).or_default().push(i);
            }
        }
        let producer = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
            .collect();
        Self {
            nodes,
            consts,
            output,
            readers,
            producer,
        }
    }

    /// The only reader of `value`, when the value is not also the output.
    fn sole_reader(&self, value: &str) -> Option<usize> {
        match self.readers.get(value).map(Vec::as_slice) {
            Some([one]) if value != self.output => Some(*one),
            _ => None,
        }
    }

    fn is_const(&self, value: &str) -> bool {
        self.consts.contains_key(value)
    }
}

/// A convolution's folded weights and bias as nodes after it are absorbed.
struct Chain<'a> {
    /// The convolution node, and the last node absorbed so far.
    conv: usize,
    last: usize,
    /// The value the convolution reads, and the chain's output so far.
    x: &'a str,
    out: &'a str,
    /// `(o, c / group, kh, kw)`.
    shape: (usize, usize, usize, usize),
    weights: Vec<f32>,
    bias: Vec<f32>,
    padding: Padding,
    act: Act,
    residual: Option<&'a str>,
}

/// A fused chain and the index of its last node.
struct Lowered {
    last: usize,
    conv: FusedConv,
}

impl<'a> Chain<'a> {
    /// Reads convolution `ci`'s weights, absorbs what can fold into it (in
    /// this order: the Pad before, then BatchNorm, per-channel affines, the
    /// activation and, ungrouped, the residual Add after) and builds its
    /// kernel. `absorbed` is every node claimed so far.
    fn fuse(
        g: &Graph<'a, '_>,
        ci: usize,
        window: &Window2d,
        group: usize,
        absorbed: &mut HashSet<usize>,
    ) -> Result<Lowered, String> {
        let mut chain = Chain::read(g, ci, window, group)?;
        chain.absorb_pad(g, absorbed);
        chain.absorb_batch_norm(g, absorbed)?;
        chain.absorb_channel_affines(g, absorbed);
        chain.absorb_act(g, absorbed);
        if group == 1 {
            chain.absorb_residual(g, absorbed);
        }
        chain.lower(g, window.stride, group)
    }

    /// The convolution alone, its weights and bias read from the constants.
    fn read(g: &Graph<'a, '_>, ci: usize, window: &Window2d, group: usize) -> Result<Self, String> {
        let n = &g.nodes[ci];
        let ins: Vec<&str> = n.inputs().collect();
        let Some(w) = ins.get(1).and_then(|w| g.consts.get(*w)) else {
            return Err("the weights are not a constant initializer".into());
        };
        let (o, cg, kh, kw) = w.dims4().map_err(|_| {
            format!(
                "weights of shape {:?}, expected (O, C/group, kh, kw)",
                w.dims()
            )
        })?;
        if let Some(k) = window.kernel {
            if k != (kh, kw) {
                return Err(format!("kernel_shape {k:?} but weights {:?}", w.dims()));
            }
        }
        let weights = ops::to_f32s(w).map_err(|e| e.to_string())?;
        let bias = match ins.get(2).filter(|b| !b.is_empty()) {
            Some(b) => match g.consts.get(*b) {
                Some(t) => ops::to_f32s(t).map_err(|e| e.to_string())?,
                None => return Err("the bias is not a constant initializer".into()),
            },
            None => vec![0.0; o],
        };
        if bias.len() != o {
            return Err(format!("{} biases for {o} output channels", bias.len()));
        }
        if o % group != 0 {
            return Err(format!(
                "{o} output channels do not split into {group} groups"
            ));
        }
        Ok(Chain {
            conv: ci,
            last: ci,
            x: ins[0],
            out: n.output(),
            shape: (o, cg, kh, kw),
            weights,
            bias,
            padding: window.padding,
            act: Act::None,
            residual: None,
        })
    }

    /// Extends the chain to node `r`, the only reader of its output.
    fn absorb(&mut self, g: &Graph<'a, '_>, r: usize, absorbed: &mut HashSet<usize>) {
        absorbed.insert(r);
        self.last = r;
        self.out = g.nodes[r].output();
    }

    /// A zero Pad feeding only this convolution becomes its padding.
    fn absorb_pad(&mut self, g: &Graph<'a, '_>, absorbed: &mut HashSet<usize>) {
        let (Some(&pi), Padding::Explicit(p)) = (g.producer.get(self.x), self.padding) else {
            return;
        };
        let pad_node = &g.nodes[pi];
        let Some(extra) = zero_spatial_pad(pad_node, g.consts) else {
            return;
        };
        if g.sole_reader(self.x) == Some(self.conv) {
            self.padding = Padding::Explicit(Pad4::new(
                p.top + extra.top,
                p.bottom + extra.bottom,
                p.left + extra.left,
                p.right + extra.right,
            ));
            absorbed.insert(pi);
            self.x = pad_node.input[0].as_str();
        }
    }

    /// An inference BatchNorm with constant statistics over the output
    /// channels.
    fn absorb_batch_norm(
        &mut self,
        g: &Graph<'a, '_>,
        absorbed: &mut HashSet<usize>,
    ) -> Result<(), String> {
        let Some(r) = g.sole_reader(self.out) else {
            return Ok(());
        };
        let Op::BatchNormalization { eps } = g.nodes[r].op else {
            return Ok(());
        };
        let p: Vec<&str> = g.nodes[r].inputs().collect();
        if p.len() != 5 || !p[1..].iter().all(|s| g.is_const(s)) {
            return Ok(());
        }
        let v = |s: &str| ops::to_f32s(&g.consts[s]).map_err(|e| e.to_string());
        let bn = BatchNorm {
            gamma: Some(v(p[1])?),
            beta: Some(v(p[2])?),
            mean: v(p[3])?,
            var: v(p[4])?,
            eps,
        };
        if bn.mean.len() == self.shape.0 {
            self.bias = bn.fold_into(&mut self.weights, Some(&self.bias));
            self.absorb(g, r, absorbed);
        }
        Ok(())
    }

    /// Per-channel constant scales and shifts: tf2onnx writes a BatchNorm
    /// it does not fold (Keras MobileNetV2's, after each depthwise
    /// convolution) as Mul + Add; folded, the ReLU6 after them fuses too.
    fn absorb_channel_affines(&mut self, g: &Graph<'a, '_>, absorbed: &mut HashSet<usize>) {
        let o = self.shape.0;
        while let Some(r) = g.sole_reader(self.out) {
            let Some((op, per_channel)) = channel_affine(&g.nodes[r], self.out, o, g.consts) else {
                break;
            };
            let taps = self.weights.len() / o;
            for (c, v) in per_channel.into_iter().enumerate() {
                if matches!(op, Op::Mul) {
                    self.weights[c * taps..(c + 1) * taps]
                        .iter_mut()
                        .for_each(|w| *w *= v);
                    self.bias[c] *= v;
                } else {
                    self.bias[c] += v;
                }
            }
            self.absorb(g, r, absorbed);
        }
    }

    fn absorb_act(&mut self, g: &Graph<'a, '_>, absorbed: &mut HashSet<usize>) {
        if let Some(r) = g.sole_reader(self.out) {
            if let Some(a) = fusable_act(&g.nodes[r], g.consts) {
                self.act = a;
                self.absorb(g, r, absorbed);
            }
        }
    }

    /// An Add of the output and another computed value. When both inputs
    /// of the Add are convolutions (a ResNet block with a downsampling
    /// shortcut), the first claims it and the other stays a plain
    /// convolution: two chains ending at one node would leave one of them
    /// never emitted.
    fn absorb_residual(&mut self, g: &Graph<'a, '_>, absorbed: &mut HashSet<usize>) {
        let Some(r) = g.sole_reader(self.out).filter(|r| !absorbed.contains(r)) else {
            return;
        };
        if !matches!(g.nodes[r].op, Op::Add) {
            return;
        }
        let ab: Vec<&str> = g.nodes[r].inputs().collect();
        let other = if ab.first() == Some(&self.out) {
            ab.get(1)
        } else {
            ab.first()
        };
        if let Some(&other) = other.filter(|s| !g.is_const(s) && **s != self.out) {
            self.residual = Some(other);
            self.absorb(g, r, absorbed);
        }
    }

    /// The native kernel of the chain: depthwise, dense, or one dense
    /// convolution per group.
    fn lower(self, g: &Graph<'a, '_>, stride: usize, group: usize) -> Result<Lowered, String> {
        let (o, cg, kh, kw) = self.shape;
        let (weights, bias, padding, act) = (self.weights, self.bias, self.padding, self.act);
        let dev = &Device::Cpu;
        let cfg = Conv2dConfig {
            stride,
            padding,
            act,
        };
        let kernel = if group > 1 && group == o && cg == 1 {
            Kernel::Depthwise(
                DepthwiseConv2d::new(
                    weights,
                    (o, kh, kw),
                    Some(bias),
                    DepthwiseConfig {
                        stride,
                        padding,
                        in_act: Act::None,
                        out_act: act,
                    },
                )
                .map_err(|e| e.to_string())?,
            )
        } else if group == 1 {
            let w = Tensor::from_vec(weights, (o, cg, kh, kw), dev).map_err(|e| e.to_string())?;
            Kernel::Conv {
                conv: Conv2d::new(w, bias, cfg).map_err(|e| e.to_string())?,
                residual: self.residual.is_some(),
            }
        } else {
            let og = o / group;
            let per = og * cg * kh * kw;
            let convs = (0..group)
                .map(|g| {
                    let w = Tensor::from_vec(
                        weights[g * per..(g + 1) * per].to_vec(),
                        (og, cg, kh, kw),
                        dev,
                    )?;
                    Conv2d::new(w, bias[g * og..(g + 1) * og].to_vec(), cfg)
                })
                .collect::<candle_core::Result<Vec<_>>>()
                .map_err(|e| e.to_string())?;
            Kernel::Grouped(convs)
        };
        let mut inputs = vec![self.x.to_string()];
        inputs.extend(self.residual.map(str::to_string));
        let last = &g.nodes[self.last];
        let op_type = if self.last == self.conv {
            "Conv".to_string()
        } else {
            format!("Conv+{}", last.proto.op_type)
        };
        Ok(Lowered {
            last: self.last,
            conv: FusedConv {
                node: last.name.clone(),
                op_type,
                kernel,
                inputs,
                output: self.out.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fold::parse_and_fold;
    use super::*;
    use crate::onnx::onnx_pb::ModelProto;
    use crate::onnx::testutil::{init, init_i64, model, node};

    /// Parses `m` and fuses its nodes (not pruned) with `output` kept.
    fn fused(m: &ModelProto, output: &str) -> Fused {
        let folded = parse_and_fold(m.graph.as_ref().unwrap(), 13, "m.onnx").unwrap();
        fuse(&folded.nodes, &folded.consts, output, "m.onnx").unwrap()
    }

    fn sorted(set: &HashSet<usize>) -> Vec<usize> {
        let mut v: Vec<usize> = set.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// PyTorch's TF-"SAME" block: Pad, Conv, BatchNorm, ReLU6 become one
    /// call reading the Pad's input, run at the Clip.
    #[test]
    fn pad_batch_norm_and_relu6_fold_into_one_convolution() {
        let m = model(
            vec![
                node("Pad", &["x", "pads"], "p"),
                node("Conv", &["p", "w"], "c"),
                node("BatchNormalization", &["c", "g", "b", "m", "v"], "bn"),
                node("Clip", &["bn", "lo", "hi"], "y"),
            ],
            vec![
                init_i64("pads", &[0, 0, 1, 1, 0, 0, 1, 1]),
                init("w", &[1, 1, 3, 3], &[1.0; 9]),
                init("g", &[1], &[2.0]),
                init("b", &[1], &[0.5]),
                init("m", &[1], &[0.0]),
                init("v", &[1], &[1.0]),
                init("lo", &[], &[0.0]),
                init("hi", &[], &[6.0]),
            ],
            "y",
        );
        let f = fused(&m, "y");
        assert_eq!(sorted(&f.absorbed), [0, 1, 2, 3]);
        let chain = &f.chains[&3];
        assert_eq!(
            (chain.node.as_str(), chain.op_type.as_str()),
            ("y", "Conv+Clip")
        );
        assert_eq!(
            (chain.inputs.as_slice(), chain.output.as_str()),
            (&["x".to_string()][..], "y")
        );
        assert!(matches!(
            chain.kernel,
            Kernel::Conv {
                residual: false,
                ..
            }
        ));
    }

    /// A value something else reads must still be computed.
    #[test]
    fn a_value_with_two_readers_ends_the_chain() {
        let m = model(
            vec![
                node("Pad", &["x", "pads"], "p"),
                node("Conv", &["p", "w"], "c"),
                node("Relu", &["c"], "r"),
                node("Sigmoid", &["c"], "s"),
                node("Mul", &["p", "r"], "y"),
            ],
            vec![
                init_i64("pads", &[0, 0, 1, 1, 0, 0, 1, 1]),
                init("w", &[1, 1, 1, 1], &[1.0]),
            ],
            "y",
        );
        let f = fused(&m, "y");
        assert_eq!(sorted(&f.absorbed), [1], "the Pad and the Relu stay");
        assert_eq!(f.chains[&1].inputs, ["p"]);
        assert_eq!(f.chains[&1].output, "c");
    }

    #[test]
    fn the_chosen_output_is_not_fused_through() {
        let m = model(
            vec![node("Conv", &["x", "w"], "c"), node("Relu", &["c"], "y")],
            vec![init("w", &[1, 1, 1, 1], &[1.0])],
            "y",
        );
        let f = fused(&m, "c");
        assert_eq!(f.chains[&0].op_type, "Conv");
        assert!(!f.absorbed.contains(&1));
    }

    /// Both inputs of the Add are convolutions: the first claims it.
    #[test]
    fn a_residual_add_is_claimed_by_one_convolution_only() {
        let m = model(
            vec![
                node("Conv", &["x", "w"], "main"),
                node("Conv", &["x", "w"], "shortcut"),
                node("Add", &["main", "shortcut"], "y"),
            ],
            vec![init("w", &[1, 1, 1, 1], &[1.0])],
            "y",
        );
        let f = fused(&m, "y");
        assert_eq!(f.chains[&2].inputs, ["x", "shortcut"]);
        assert!(matches!(
            f.chains[&2].kernel,
            Kernel::Conv { residual: true, .. }
        ));
        assert_eq!(f.chains[&1].op_type, "Conv");
        assert_eq!(sorted(&f.absorbed), [0, 1, 2]);
    }

    #[test]
    fn weights_that_are_not_constant_are_an_error_naming_the_convolution() {
        let m = model(vec![node("Conv", &["x", "x"], "y")], vec![], "y");
        let folded = parse_and_fold(m.graph.as_ref().unwrap(), 13, "m.onnx").unwrap();
        let Err(OnnxError::Node {
            node, op, message, ..
        }) = fuse(&folded.nodes, &folded.consts, "y", "m.onnx")
        else {
            panic!("a Conv with computed weights fused");
        };
        assert_eq!((node.as_str(), op.as_str()), ("y", "Conv"));
        assert!(message.contains("weights are not a constant"), "{message}");
    }
}
