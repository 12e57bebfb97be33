//! An ONNX graph lowered, once at load, to a straight-line program over the
//! native layers.
//!
//! Load-time passes, in order:
//! 1. every node is parsed ([`Op::parse`]): an unsupported op or attribute
//!    is an error naming the node, before any image is read;
//! 2. constant folding: nodes whose inputs are all constants (initializers,
//!    `Constant`s, results of earlier folds) run once, here; exporters emit
//!    whole subgraphs of shape arithmetic this way (PyTorch's TF-"SAME"
//!    padding is ~15 nodes per convolution);
//! 3. pruning to the ancestors of the chosen output (a classifier behind the
//!    pooled features is never run);
//! 4. convolution fusion: a zero `Pad` before, and the `BatchNormalization`,
//!    `Relu` / `Clip(0, 6)` and residual `Add` after a `Conv` become one
//!    [`Conv2d`] / [`DepthwiseConv2d`] call with folded weights, so an
//!    exported network runs the same kernels as the native one;
//! 5. liveness: each intermediate is dropped right after its last reader.

use std::collections::{HashMap, HashSet};

use candle_core::{Device, Tensor};
use candle_onnx::onnx;

use super::ops::{self, Op, ParseError};
use super::OnnxError;
use crate::layers::{
    Act, BatchNorm, Conv2d, Conv2dConfig, DepthwiseConfig, DepthwiseConv2d, Pad4, Padding,
};

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

/// A node after parsing and folding.
struct Node<'a> {
    proto: &'a onnx::NodeProto,
    name: String,
    op: Op,
}

impl Node<'_> {
    fn inputs(&self) -> impl Iterator<Item = &str> {
        self.proto.input.iter().map(String::as_str)
    }
    fn output(&self) -> &str {
        self.proto.output.first().map_or("", String::as_str)
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

/// Picks the output: the one named, else the graph's only output, else its
/// only output of rank 2 or 4.
fn choose_output(
    graph: &onnx::GraphProto,
    wanted: Option<&str>,
    produced: &HashSet<&str>,
    path: &str,
) -> Result<String, OnnxError> {
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
    /// Lowers `model`; `output` names the value to return (see
    /// [`choose_output`]).
    pub fn lower(
        model: &onnx::ModelProto,
        output: Option<&str>,
        path: &str,
    ) -> Result<Program, OnnxError> {
        let graph_err = |message: String| OnnxError::Graph {
            path: path.into(),
            message,
        };
        let Some(graph) = model.graph.as_ref() else {
            return Err(graph_err("the model has no graph".into()));
        };
        let opset = opset(model);
        let input_name = image_input(graph, path)?.name.clone();

        let mut consts: HashMap<String, Tensor> = HashMap::new();
        for t in &graph.initializer {
            let v = super::proto::tensor(t).map_err(|m| graph_err(format!("initializer: {m}")))?;
            consts.insert(t.name.clone(), v);
        }

        // 1. Parse every node; 2. fold the constant ones.
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
            nodes.push(Node { proto, name, op });
        }

        let mut produced: HashSet<&str> = nodes
            .iter()
            .flat_map(|n| n.proto.output.iter().map(String::as_str))
            .collect();
        produced.insert(input_name.as_str());
        let output_name = choose_output(graph, output, &produced, path)?;

        // 3. Prune to the output's ancestors.
        let mut needed: HashSet<&str> = HashSet::from([output_name.as_str()]);
        let mut keep = vec![false; nodes.len()];
        for (i, n) in nodes.iter().enumerate().rev() {
            if n.proto.output.iter().any(|o| needed.contains(o.as_str())) {
                keep[i] = true;
                needed.extend(n.inputs().filter(|i| !i.is_empty()));
            }
        }
        let nodes: Vec<Node> = nodes
            .into_iter()
            .zip(keep)
            .filter_map(|(n, k)| k.then_some(n))
            .collect();

        // 4. Fuse around convolutions.
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for inp in n.inputs().filter(|s| !s.is_empty()) {
                readers.entry(inp).or_default().push(i);
            }
        }
        let producer: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.proto.output.iter().map(move |o| (o.as_str(), i)))
            .collect();
        // The only reader of `value`, when the value is not also the output.
        let sole_reader = |value: &str| -> Option<usize> {
            match readers.get(value).map(Vec::as_slice) {
                Some([one]) if value != output_name => Some(*one),
                _ => None,
            }
        };
        let is_const = |s: &str| consts.contains_key(s);

        let mut fused_into: HashMap<usize, usize> = HashMap::new(); // node -> conv node
        let mut lowered: HashMap<usize, FusedConv> = HashMap::new(); // by conv node
        for (ci, n) in nodes.iter().enumerate() {
            let Op::Conv { window, group } = &n.op else {
                continue;
            };
            let node_err = |message: String| OnnxError::Node {
                path: path.into(),
                node: n.name.clone(),
                op: "Conv".into(),
                message,
            };
            let ins: Vec<&str> = n.inputs().collect();
            let Some(w) = ins.get(1).and_then(|w| consts.get(*w)) else {
                return Err(node_err(
                    "the weights are not a constant initializer".into(),
                ));
            };
            let (o, cg, kh, kw) = w.dims4().map_err(|_| {
                node_err(format!(
                    "weights of shape {:?}, expected (O, C/group, kh, kw)",
                    w.dims()
                ))
            })?;
            if let Some(k) = window.kernel {
                if k != (kh, kw) {
                    return Err(node_err(format!(
                        "kernel_shape {k:?} but weights {:?}",
                        w.dims()
                    )));
                }
            }
            let mut weights = ops::to_f32s(w).map_err(|e| node_err(e.to_string()))?;
            let mut bias = match ins.get(2).filter(|b| !b.is_empty()) {
                Some(b) => match consts.get(*b) {
                    Some(t) => ops::to_f32s(t).map_err(|e| node_err(e.to_string()))?,
                    None => return Err(node_err("the bias is not a constant initializer".into())),
                },
                None => vec![0.0; o],
            };
            if bias.len() != o {
                return Err(node_err(format!(
                    "{} biases for {o} output channels",
                    bias.len()
                )));
            }
            let group = *group;
            let depthwise = group > 1 && group == o && cg == 1;
            if o % group != 0 {
                return Err(node_err(format!(
                    "{o} output channels do not split into {group} groups"
                )));
            }

            // A zero Pad feeding only this convolution becomes its padding.
            let mut x = ins[0];
            let mut padding = window.padding;
            if let (Some(&pi), Padding::Explicit(p)) = (producer.get(x), padding) {
                let pad_node = &nodes[pi];
                if let Some(extra) = zero_spatial_pad(pad_node, &consts) {
                    if sole_reader(x) == Some(ci) {
                        padding = Padding::Explicit(Pad4::new(
                            p.top + extra.top,
                            p.bottom + extra.bottom,
                            p.left + extra.left,
                            p.right + extra.right,
                        ));
                        fused_into.insert(pi, ci);
                        x = pad_node.proto.input[0].as_str();
                    }
                }
            }

            // BatchNorm, activation and residual Add after it.
            let mut last = ci;
            let mut out = n.output();
            let mut act = Act::None;
            let mut residual: Option<&str> = None;
            if let Some(r) = sole_reader(out) {
                if let Op::BatchNormalization { eps } = nodes[r].op {
                    let p: Vec<&str> = nodes[r].inputs().collect();
                    if p.len() == 5 && p[1..].iter().all(|s| is_const(s)) {
                        let v =
                            |s: &str| ops::to_f32s(&consts[s]).map_err(|e| node_err(e.to_string()));
                        let bn = BatchNorm {
                            gamma: Some(v(p[1])?),
                            beta: Some(v(p[2])?),
                            mean: v(p[3])?,
                            var: v(p[4])?,
                            eps,
                        };
                        if bn.mean.len() == o {
                            bias = bn.fold_into(&mut weights, Some(&bias));
                            fused_into.insert(r, ci);
                            (last, out) = (r, nodes[r].output());
                        }
                    }
                }
            }
            // Per-channel constant scales and shifts: tf2onnx writes a
            // BatchNorm it does not fold (Keras MobileNetV2's, after each
            // depthwise convolution) as Mul + Add; folded, the ReLU6 after
            // them fuses too.
            while let Some(r) = sole_reader(out) {
                let Some((op, per_channel)) = channel_affine(&nodes[r], out, o, &consts) else {
                    break;
                };
                let taps = weights.len() / o;
                for (c, v) in per_channel.into_iter().enumerate() {
                    if matches!(op, Op::Mul) {
                        weights[c * taps..(c + 1) * taps]
                            .iter_mut()
                            .for_each(|w| *w *= v);
                        bias[c] *= v;
                    } else {
                        bias[c] += v;
                    }
                }
                fused_into.insert(r, ci);
                (last, out) = (r, nodes[r].output());
            }
            if let Some(r) = sole_reader(out) {
                if let Some(a) = fusable_act(&nodes[r], &consts) {
                    act = a;
                    fused_into.insert(r, ci);
                    (last, out) = (r, nodes[r].output());
                }
            }
            if group == 1 {
                // When both inputs of the Add are convolutions (a ResNet
                // block with a downsampling shortcut), the first claims it
                // and the other stays a plain convolution: two chains ending
                // at one node would leave one of them never emitted.
                if let Some(r) = sole_reader(out).filter(|r| !fused_into.contains_key(r)) {
                    if matches!(nodes[r].op, Op::Add) {
                        let ab: Vec<&str> = nodes[r].inputs().collect();
                        let other = if ab.first() == Some(&out) {
                            ab.get(1)
                        } else {
                            ab.first()
                        };
                        if let Some(&other) = other.filter(|s| !is_const(s) && **s != out) {
                            residual = Some(other);
                            fused_into.insert(r, ci);
                            (last, out) = (r, nodes[r].output());
                        }
                    }
                }
            }

            let dev = &Device::Cpu;
            let cfg = Conv2dConfig {
                stride: window.stride,
                padding,
                act,
            };
            let kernel = if depthwise {
                Kernel::Depthwise(
                    DepthwiseConv2d::new(
                        weights,
                        (o, kh, kw),
                        Some(bias),
                        DepthwiseConfig {
                            stride: window.stride,
                            padding,
                            in_act: Act::None,
                            out_act: act,
                        },
                    )
                    .map_err(|e| node_err(e.to_string()))?,
                )
            } else if group == 1 {
                let w = Tensor::from_vec(weights, (o, cg, kh, kw), dev)
                    .map_err(|e| node_err(e.to_string()))?;
                Kernel::Conv {
                    conv: Conv2d::new(w, bias, cfg).map_err(|e| node_err(e.to_string()))?,
                    residual: residual.is_some(),
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
                    .map_err(|e| node_err(e.to_string()))?;
                Kernel::Grouped(convs)
            };
            let mut inputs = vec![x.to_string()];
            inputs.extend(residual.map(str::to_string));
            let op_type = if last == ci {
                "Conv".to_string()
            } else {
                format!("Conv+{}", nodes[last].proto.op_type)
            };
            lowered.insert(
                ci,
                FusedConv {
                    node: nodes[last].name.clone(),
                    op_type,
                    kernel,
                    last,
                    inputs,
                    output: out.to_string(),
                },
            );
        }

        // Emit in graph order; a fused chain runs where its last node was
        // (its residual may be computed after the convolution's node).
        let mut program = Program {
            steps: Vec::new(),
            slots: 0,
            constants: Vec::new(),
            device_constants: std::sync::OnceLock::new(),
            input: 0,
            output: 0,
            input_name,
            output_name: output_name.clone(),
        };
        let mut slot_of: HashMap<String, usize> = HashMap::new();
        let mut slot = |name: &str, program: &mut Program| -> usize {
            if let Some(&s) = slot_of.get(name) {
                return s;
            }
            let s = program.slots;
            program.slots += 1;
            slot_of.insert(name.to_string(), s);
            if let Some(t) = consts.get(name) {
                program.constants.push((s, t.clone()));
            }
            s
        };
        program.input = slot(&program.input_name.clone(), &mut program);
        let mut by_last: HashMap<usize, FusedConv> =
            lowered.into_values().map(|f| (f.last, f)).collect();
        for (i, n) in nodes.into_iter().enumerate() {
            if let Some(f) = by_last.remove(&i) {
                let inputs = f
                    .inputs
                    .iter()
                    .map(|s| Some(slot(s, &mut program)))
                    .collect();
                let outputs = vec![slot(&f.output, &mut program)];
                program.steps.push(Step {
                    node: f.node,
                    op_type: f.op_type,
                    kernel: f.kernel,
                    inputs,
                    outputs,
                    free: Vec::new(),
                });
                continue;
            }
            if fused_into.contains_key(&i) || matches!(n.op, Op::Conv { .. }) {
                continue;
            }
            let inputs = n
                .proto
                .input
                .iter()
                .map(|s| (!s.is_empty()).then(|| slot(s, &mut program)))
                .collect();
            let outputs = n
                .proto
                .output
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| slot(s, &mut program))
                .collect();
            program.steps.push(Step {
                node: n.name,
                op_type: n.proto.op_type.clone(),
                kernel: Kernel::Op(n.op),
                inputs,
                outputs,
                free: Vec::new(),
            });
        }
        program.output = slot(&output_name, &mut program);

        // 5. Liveness.
        let constant_slots: HashSet<usize> = program.constants.iter().map(|(s, _)| *s).collect();
        let mut last_read: HashMap<usize, usize> = HashMap::new();
        for (i, step) in program.steps.iter().enumerate() {
            for s in step.inputs.iter().flatten() {
                last_read.insert(*s, i);
            }
        }
        for (s, i) in last_read {
            if s != program.output && !constant_slots.contains(&s) {
                program.steps[i].free.push(s);
            }
        }
        Ok(program)
    }

    /// Runs the program on `x` (the graph input) and returns the output.
    pub fn run(&self, x: Tensor) -> candle_core::Result<Tensor> {
        let mut slots: Vec<Option<Tensor>> = vec![None; self.slots];
        let device = x.device().clone();
        let uncached;
        let on_device = |t: &Tensor| -> candle_core::Result<Tensor> {
            match t.dtype() {
                candle_core::DType::I64 => Ok(t.clone()),
                _ => t.to_device(&device)?.to_dtype(x.dtype()),
            }
        };
        let constants = if device.is_cpu() && x.dtype() == candle_core::DType::F32 {
            &self.constants
        } else {
            let cached = self.device_constants.get().filter(|c| {
                c.iter().all(|(_, t)| {
                    t.dtype() == candle_core::DType::I64
                        || (t.device().same_device(&device) && t.dtype() == x.dtype())
                })
            });
            match cached {
                Some(c) => c,
                None => {
                    let moved = self
                        .constants
                        .iter()
                        .map(|(s, t)| Ok((*s, on_device(t)?)))
                        .collect::<candle_core::Result<Vec<_>>>()?;
                    // Kept for the next runs unless another device or
                    // precision was cached first.
                    match self.device_constants.set(moved) {
                        Ok(()) => self.device_constants.get().expect("just set"),
                        Err(moved) => {
                            uncached = moved;
                            &uncached
                        }
                    }
                }
            }
        };
        for (s, t) in constants {
            slots[*s] = Some(t.clone());
        }
        slots[self.input] = Some(x);
        for step in &self.steps {
            let outs = {
                let ins: Vec<Option<&Tensor>> = step
                    .inputs
                    .iter()
                    .map(|s| s.and_then(|s| slots[s].as_ref()))
                    .collect();
                step.run(&ins).map_err(|e| {
                    candle_core::Error::Msg(format!(
                        "ONNX node `{}` ({}): {e}",
                        step.node, step.op_type
                    ))
                })?
            };
            for (&s, t) in step.outputs.iter().zip(outs) {
                slots[s] = Some(t);
            }
            for &s in &step.free {
                slots[s] = None;
            }
        }
        slots[self.output].take().ok_or_else(|| {
            candle_core::Error::Msg(format!("output `{}` was not computed", self.output_name))
        })
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

/// A convolution with what was fused into it, before slot numbering.
struct FusedConv {
    /// The last node of the chain, where the step runs.
    node: String,
    op_type: String,
    kernel: Kernel,
    last: usize,
    /// The convolution's input and, when an Add was fused, the residual.
    inputs: Vec<String>,
    output: String,
}

impl Step {
    fn run(&self, ins: &[Option<&Tensor>]) -> candle_core::Result<Vec<Tensor>> {
        let first = || -> candle_core::Result<&Tensor> {
            match ins.first() {
                Some(Some(t)) => Ok(*t),
                _ => candle_core::bail!("its input was not computed"),
            }
        };
        Ok(vec![match &self.kernel {
            Kernel::Op(op) => return op.eval(ins),
            Kernel::Conv {
                conv,
                residual: false,
            } => conv.forward(first()?)?,
            Kernel::Conv {
                conv,
                residual: true,
            } => {
                let x = first()?;
                let Some(Some(r)) = ins.get(1) else {
                    candle_core::bail!("its residual input was not computed")
                };
                if conv.out_dims(x.dims()).as_ref().map(|d| d.as_slice()) == Some(r.dims()) {
                    conv.forward_add(x, r)?
                } else {
                    // A broadcasting Add: not the fused residual shape.
                    conv.forward(x)?.broadcast_add(r)?
                }
            }
            Kernel::Depthwise(dw) => dw.forward(first()?)?,
            Kernel::Grouped(convs) => {
                let x = first()?;
                let per = x.dim(1)? / convs.len();
                if per * convs.len() != x.dim(1)? || per != convs[0].in_channels() {
                    candle_core::bail!(
                        "input has {} channels, the {} groups take {} each",
                        x.dim(1)?,
                        convs.len(),
                        convs[0].in_channels()
                    )
                }
                let parts = convs
                    .iter()
                    .enumerate()
                    .map(|(g, c)| c.forward(&x.narrow(1, g * per, per)?.contiguous()?))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&parts, 1)?
            }
        }])
    }
}

/// The spatial padding of a constant-zero `Pad` on an NCHW tensor, when
/// that is what `node` is.
fn zero_spatial_pad(node: &Node, consts: &HashMap<String, Tensor>) -> Option<Pad4> {
    let Op::Pad {
        mode: ops::PadMode::Constant,
        pads,
        value,
    } = &node.op
    else {
        return None;
    };
    let ins: Vec<&str> = node.inputs().collect();
    let value = match ins.get(2).filter(|s| !s.is_empty()) {
        Some(v) => *ops::to_f32s(consts.get(*v)?).ok()?.first()?,
        None => *value,
    };
    if value != 0.0 || ins.get(3).is_some_and(|s| !s.is_empty()) {
        return None;
    }
    let pads = match ins.get(1).filter(|s| !s.is_empty()) {
        Some(p) => ops::to_i64s(consts.get(*p)?).ok()?,
        None => pads.clone()?,
    };
    // [n, c, h, w] begins then ends; only h and w may be padded.
    match pads.as_slice() {
        [0, 0, t, l, 0, 0, b, r] if [t, l, b, r].iter().all(|v| **v >= 0) => Some(Pad4::new(
            *t as usize,
            *b as usize,
            *l as usize,
            *r as usize,
        )),
        _ => None,
    }
}

/// When `node` multiplies `value` (the output of a convolution with `o`
/// channels) by, or adds to it, a constant that varies only along the
/// channel axis: the op and the constant's `o` values. A constant that
/// would broadcast along N, H or W, or raise the rank, does not qualify.
fn channel_affine(
    node: &Node,
    value: &str,
    o: usize,
    consts: &HashMap<String, Tensor>,
) -> Option<(Op, Vec<f32>)> {
    let op = match node.op {
        Op::Mul => Op::Mul,
        Op::Add => Op::Add,
        _ => return None,
    };
    let ins: Vec<&str> = node.inputs().collect();
    let other = match ins.as_slice() {
        [a, b] if *a == value && *b != value => *b,
        [a, b] if *b == value && *a != value => *a,
        _ => return None,
    };
    let c = consts.get(other)?;
    if c.dtype() != candle_core::DType::F32 || c.rank() > 4 {
        return None;
    }
    // Right-aligned against (N, C, H, W), as ONNX broadcasts.
    let mut dims = vec![1; 4 - c.rank()];
    dims.extend_from_slice(c.dims());
    if dims[0] != 1 || dims[2] != 1 || dims[3] != 1 || (dims[1] != 1 && dims[1] != o) {
        return None;
    }
    let v = ops::to_f32s(c).ok()?;
    Some((
        op,
        if v.len() == o {
            v
        } else {
            vec![*v.first()?; o]
        },
    ))
}

/// `Relu`, `Clip(0, 6)` or `Clip(0, +inf)` as a fused activation.
fn fusable_act(node: &Node, consts: &HashMap<String, Tensor>) -> Option<Act> {
    let bound = |i: usize, default: f32| -> Option<f32> {
        match node.proto.input.get(i).filter(|s| !s.is_empty()) {
            Some(s) => ops::to_f32s(consts.get(s)?).ok()?.first().copied(),
            None => Some(default),
        }
    };
    match &node.op {
        Op::Relu => Some(Act::Relu),
        Op::Clip { min, max } => match (bound(1, *min)?, bound(2, *max)?) {
            (lo, hi) if lo == 0.0 && hi == 6.0 => Some(Act::Relu6),
            (lo, hi) if lo == 0.0 && hi == f32::INFINITY => Some(Act::Relu),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, inputs: &[&str], output: &str) -> onnx::NodeProto {
        onnx::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn init(name: &str, dims: &[i64], values: &[f32]) -> onnx::TensorProto {
        onnx::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: onnx::tensor_proto::DataType::Float as i32,
            float_data: values.to_vec(),
            ..Default::default()
        }
    }

    fn model(
        nodes: Vec<onnx::NodeProto>,
        inits: Vec<onnx::TensorProto>,
        output: &str,
    ) -> onnx::ModelProto {
        let value = |name: &str| onnx::ValueInfoProto {
            name: name.into(),
            ..Default::default()
        };
        onnx::ModelProto {
            opset_import: vec![onnx::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(onnx::GraphProto {
                node: nodes,
                initializer: inits,
                input: vec![value("x")],
                output: vec![value(output)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// tf2onnx's unfolded BatchNorm after a depthwise convolution: the
    /// per-channel Mul and Add fold into it, and the Clip after them fuses.
    #[test]
    fn per_channel_constant_scale_and_shift_fold_into_the_convolution() {
        let m = model(
            vec![
                node("Conv", &["x", "w"], "dw"),
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
        let mut m = m;
        let g = m.graph.as_mut().unwrap();
        g.node[0].attribute.push(onnx::AttributeProto {
            name: "group".into(),
            i: 2,
            ..Default::default()
        });
        let p = Program::lower(&m, None, "dw.onnx").unwrap();
        assert_eq!(p.len(), 1, "one fused step");
        let x = Tensor::new(&[1f32, -1., 3., 0.5], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 1, 2))
            .unwrap();
        let y = p.run(x).unwrap();
        // channel 0: relu(2x + 0.5); channel 1: relu(-x + 1)
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![2.5, 0.0, 0.0, 0.5]
        );
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
        let p = Program::lower(&m, None, "ramp.onnx").unwrap();
        assert_eq!(p.len(), 2);
        let x = Tensor::new(&[1f32, 2.], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 2))
            .unwrap();
        let y = p.run(x).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![1.0, 20.0]
        );
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
        let p = Program::lower(&m, None, "block.onnx").unwrap();
        assert_eq!(p.native_convolutions(), 2);
        let x = Tensor::new(&[1f32, -2., 3., 4.], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let y = p.run(x).unwrap();
        assert_eq!(
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![5., -10., 15., 20.]
        );
    }
}
