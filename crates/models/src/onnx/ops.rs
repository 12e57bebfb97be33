//! The ONNX operators runner evaluates, parsed once from each node (so a
//! bad attribute is an error at load, before any image is read), and their
//! evaluation on candle tensors.
//!
//! Convolutions are not evaluated here: the program lowers them onto the
//! native layers ([`crate::layers::Conv2d`] and friends), with their
//! BatchNorm, activation, padding and residual fused. Everything else (shape
//! arithmetic, elementwise ops, pools, the classifier) runs through
//! [`Op::eval`], which also serves constant folding at load.

use candle_core::{DType, Device, Tensor, D};

use super::proto::{self, Attrs};
use crate::layers::{self, Pad4, Padding};

/// Ops and opsets that runner's ONNX executor covers, for error messages.
pub const SUPPORTED: &str = "Add, AveragePool, BatchNormalization, Cast, Ceil, Clip, Concat, \
Constant, ConstantOfShape, Conv, Div, Dropout, Flatten, Floor, Gather, Gemm, GlobalAveragePool, \
HardSigmoid, HardSwish, Identity, LeakyRelu, MatMul, MaxPool, Mul, Pad, ReduceMean, Relu, \
Reshape, Shape, Sigmoid, Slice, Softmax, Squeeze, Sub, Tanh, Transpose, Unsqueeze (opsets 7-21)";

/// Why a node cannot be parsed.
#[derive(Debug)]
pub enum ParseError {
    Unsupported,
    Invalid(String),
}

impl From<String> for ParseError {
    fn from(s: String) -> Self {
        ParseError::Invalid(s)
    }
}

/// A 2-D window's geometry: kernel, one stride for both axes, padding rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window2d {
    pub kernel: Option<(usize, usize)>,
    pub stride: usize,
    pub padding: Padding,
}

#[derive(Debug, Clone)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
}

/// `(starts, ends, axes)` of an opset < 10 `Slice`.
pub type SliceAttrs = (Vec<i64>, Vec<i64>, Option<Vec<i64>>);

#[derive(Debug, Clone)]
pub enum Op {
    Conv {
        window: Window2d,
        group: usize,
    },
    BatchNormalization {
        eps: f32,
    },
    Relu,
    LeakyRelu {
        alpha: f32,
    },
    /// Rounding, in PyTorch's TF-"same" padding arithmetic
    /// (`ceil(in / stride)`) and `math.floor` on traced sizes.
    Ceil,
    Floor,
    Sigmoid,
    Tanh,
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    /// Bounds from attributes (opset < 11); inputs 1 and 2 override them.
    Clip {
        min: f32,
        max: f32,
    },
    Add,
    Sub,
    Mul,
    Div,
    MaxPool {
        window: Window2d,
        ceil: bool,
    },
    AveragePool {
        window: Window2d,
        ceil: bool,
        count_include_pad: bool,
    },
    GlobalAveragePool,
    ReduceMean {
        axes: Option<Vec<i64>>,
        keepdims: bool,
        noop_with_empty_axes: bool,
    },
    /// `pads` and `value` from attributes (opset < 11); inputs override them.
    Pad {
        mode: PadMode,
        pads: Option<Vec<i64>>,
        value: f32,
    },
    Concat {
        axis: i64,
    },
    Reshape {
        allowzero: bool,
    },
    Flatten {
        axis: i64,
    },
    Transpose {
        perm: Option<Vec<i64>>,
    },
    Squeeze {
        axes: Option<Vec<i64>>,
    },
    Unsqueeze {
        axes: Option<Vec<i64>>,
    },
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    /// `legacy`: opset < 13, softmax over the input flattened to 2-D at `axis`.
    Softmax {
        axis: i64,
        legacy: bool,
    },
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Gather {
        axis: i64,
    },
    /// Bounds from attributes (opset < 10); later opsets take inputs.
    Slice {
        attrs: Option<SliceAttrs>,
    },
    Cast {
        to: DType,
    },
    Constant(Tensor),
    ConstantOfShape {
        value: Tensor,
    },
    Identity,
}

fn window2d(a: &Attrs, kernel_required: bool) -> Result<Window2d, String> {
    let kernel = match a.ints("kernel_shape") {
        Some(k) if k.len() == 2 && k.iter().all(|&v| v > 0) => Some((k[0] as usize, k[1] as usize)),
        Some(k) => {
            return Err(format!(
                "kernel_shape {k:?}: only 2-D windows are supported"
            ))
        }
        None if kernel_required => return Err("kernel_shape is missing".into()),
        None => None,
    };
    let strides = a.ints("strides").unwrap_or_else(|| vec![1, 1]);
    if strides.len() != 2 || strides[0] != strides[1] || strides[0] < 1 {
        return Err(format!(
            "strides {strides:?}: runner supports 2-D windows with one stride for both axes"
        ));
    }
    if let Some(d) = a.ints("dilations") {
        if d.iter().any(|&v| v != 1) {
            return Err(format!("dilations {d:?}: only dilation 1 is supported"));
        }
    }
    let auto_pad = a.string("auto_pad").unwrap_or_else(|| "NOTSET".into());
    let padding = match auto_pad.as_str() {
        "NOTSET" | "" => {
            let p = a.ints("pads").unwrap_or_else(|| vec![0; 4]);
            if p.len() != 4 || p.iter().any(|&v| v < 0) {
                return Err(format!("pads {p:?}: expected 4 non-negative values"));
            }
            // ONNX order: [top, left, bottom, right].
            Padding::Explicit(Pad4::new(
                p[0] as usize,
                p[2] as usize,
                p[1] as usize,
                p[3] as usize,
            ))
        }
        "SAME_UPPER" => Padding::Same,
        "SAME_LOWER" => Padding::SameLower,
        "VALID" => Padding::Valid,
        other => {
            return Err(format!(
                "auto_pad = {other:?} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID"
            ))
        }
    };
    Ok(Window2d {
        kernel,
        stride: strides[0] as usize,
        padding,
    })
}

impl Op {
    /// Parses `node` of the default ONNX domain at `opset`.
    pub fn parse(node: &candle_onnx::onnx::NodeProto, opset: i64) -> Result<Op, ParseError> {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(ParseError::Unsupported);
        }
        let a = Attrs(node);
        Ok(match node.op_type.as_str() {
            "Conv" => {
                let group = a.int("group", 1);
                if group < 1 {
                    return Err(format!("group = {group}").into());
                }
                Op::Conv {
                    window: window2d(&a, false)?,
                    group: group as usize,
                }
            }
            "BatchNormalization" => {
                if a.int("training_mode", 0) != 0 {
                    return Err("training_mode = 1 (runner only runs inference)"
                        .to_string()
                        .into());
                }
                Op::BatchNormalization {
                    eps: a.float("epsilon", 1e-5),
                }
            }
            "Relu" => Op::Relu,
            "Ceil" => Op::Ceil,
            "Floor" => Op::Floor,
            "LeakyRelu" => Op::LeakyRelu {
                alpha: a.float("alpha", 0.01),
            },
            "Sigmoid" => Op::Sigmoid,
            "Tanh" => Op::Tanh,
            "HardSigmoid" => Op::HardSigmoid {
                alpha: a.float("alpha", 0.2),
                beta: a.float("beta", 0.5),
            },
            "HardSwish" => Op::HardSwish,
            "Clip" => Op::Clip {
                min: a.float("min", f32::NEG_INFINITY),
                max: a.float("max", f32::INFINITY),
            },
            "Add" => Op::Add,
            "Sub" => Op::Sub,
            "Mul" => Op::Mul,
            "Div" => Op::Div,
            "MaxPool" => {
                if node.output.len() > 1 && !node.output[1].is_empty() {
                    return Err("MaxPool's Indices output is not supported"
                        .to_string()
                        .into());
                }
                if a.int("storage_order", 0) != 0 {
                    return Err("storage_order = 1 is not supported".to_string().into());
                }
                Op::MaxPool {
                    window: window2d(&a, true)?,
                    ceil: a.int("ceil_mode", 0) != 0,
                }
            }
            "AveragePool" => Op::AveragePool {
                window: window2d(&a, true)?,
                ceil: a.int("ceil_mode", 0) != 0,
                count_include_pad: a.int("count_include_pad", 0) != 0,
            },
            "GlobalAveragePool" => Op::GlobalAveragePool,
            "ReduceMean" => Op::ReduceMean {
                axes: a.ints("axes"),
                keepdims: a.int("keepdims", 1) != 0,
                noop_with_empty_axes: a.int("noop_with_empty_axes", 0) != 0,
            },
            "Pad" => Op::Pad {
                mode: match a.string("mode").as_deref().unwrap_or("constant") {
                    "constant" => PadMode::Constant,
                    "reflect" => PadMode::Reflect,
                    "edge" => PadMode::Edge,
                    other => {
                        return Err(format!(
                            "Pad mode {other:?} (supported: constant, reflect, edge)"
                        )
                        .into())
                    }
                },
                pads: if opset < 11 { a.ints("pads") } else { None },
                value: a.float("value", 0.0),
            },
            "Concat" => Op::Concat {
                axis: a.int("axis", 0),
            },
            "Reshape" => Op::Reshape {
                allowzero: a.int("allowzero", 0) != 0,
            },
            "Flatten" => Op::Flatten {
                axis: a.int("axis", 1),
            },
            "Transpose" => Op::Transpose {
                perm: a.ints("perm"),
            },
            "Squeeze" => Op::Squeeze {
                axes: a.ints("axes"),
            },
            "Unsqueeze" => Op::Unsqueeze {
                axes: a.ints("axes"),
            },
            "Gemm" => Op::Gemm {
                alpha: a.float("alpha", 1.0),
                beta: a.float("beta", 1.0),
                trans_a: a.int("transA", 0) != 0,
                trans_b: a.int("transB", 0) != 0,
            },
            "MatMul" => Op::MatMul,
            "Softmax" => Op::Softmax {
                axis: a.int("axis", if opset < 13 { 1 } else { -1 }),
                legacy: opset < 13,
            },
            "Shape" => Op::Shape {
                start: a.int("start", 0),
                end: a.has("end").then(|| a.int("end", 0)),
            },
            "Gather" => Op::Gather {
                axis: a.int("axis", 0),
            },
            "Slice" => Op::Slice {
                attrs: match (a.ints("starts"), a.ints("ends")) {
                    (Some(s), Some(e)) => Some((s, e, a.ints("axes"))),
                    _ => None,
                },
            },
            "Cast" => Op::Cast {
                to: proto::dtype_of(a.int("to", 1))?,
            },
            "Constant" => Op::Constant(a.constant_value()?),
            "ConstantOfShape" => Op::ConstantOfShape {
                value: match a.tensor("value") {
                    Some(t) => t?,
                    None => Tensor::new(&[0f32], &Device::Cpu).map_err(|e| e.to_string())?,
                },
            },
            "Identity" | "Dropout" => {
                if node.op_type == "Dropout" && node.output.len() > 1 && !node.output[1].is_empty()
                {
                    return Err("Dropout's mask output is not supported".to_string().into());
                }
                Op::Identity
            }
            _ => return Err(ParseError::Unsupported),
        })
    }

    /// Evaluates this op. `inputs[i]` is `None` for an omitted optional input.
    pub fn eval(&self, inputs: &[Option<&Tensor>]) -> candle_core::Result<Vec<Tensor>> {
        let x = || -> candle_core::Result<&Tensor> {
            match inputs.first() {
                Some(Some(t)) => Ok(*t),
                _ => candle_core::bail!("the first input is missing"),
            }
        };
        let input = |i: usize| -> candle_core::Result<&Tensor> {
            match inputs.get(i) {
                Some(Some(t)) => Ok(*t),
                _ => candle_core::bail!("input {i} is missing"),
            }
        };
        let opt = |i: usize| inputs.get(i).copied().flatten();
        let one = |t: Tensor| Ok(vec![t]);
        match self {
            Op::Conv { .. } => candle_core::bail!("Conv is lowered onto the native layers"),
            Op::BatchNormalization { eps } => {
                let x = x()?;
                let rank = x.rank();
                if rank < 2 {
                    candle_core::bail!("BatchNormalization of a rank-{rank} input")
                }
                let c = x.dim(1)?;
                let mut shape = vec![1; rank];
                shape[1] = c;
                let v = |i| -> candle_core::Result<Vec<f32>> { to_f32s(input(i)?) };
                let bn = layers::BatchNorm {
                    gamma: Some(v(1)?),
                    beta: Some(v(2)?),
                    mean: v(3)?,
                    var: v(4)?,
                    eps: *eps,
                };
                let (scale, shift) = bn.scale_shift();
                let scale = Tensor::from_vec(scale, shape.as_slice(), x.device())?;
                let shift = Tensor::from_vec(shift, shape.as_slice(), x.device())?;
                one(x.broadcast_mul(&scale)?.broadcast_add(&shift)?)
            }
            Op::Relu => one(x()?.relu()?),
            Op::Ceil | Op::Floor => {
                let x = x()?;
                match (self, x.dtype()) {
                    // Integers are already whole (ONNX defines both for
                    // floats only).
                    (_, DType::I64) => one(x.clone()),
                    (Op::Ceil, _) => one(x.ceil()?),
                    _ => one(x.floor()?),
                }
            }
            Op::LeakyRelu { alpha } => {
                let x = x()?;
                one((x.relu()? - (x.neg()?.relu()? * *alpha as f64)?)?)
            }
            Op::Sigmoid => one(candle_nn::ops::sigmoid(x()?)?),
            Op::Tanh => one(x()?.tanh()?),
            Op::HardSigmoid { alpha, beta } => one(x()?
                .affine(*alpha as f64, *beta as f64)?
                .clamp(0f32, 1f32)?),
            Op::HardSwish => {
                let x = x()?;
                one((x * x.affine(1.0 / 6.0, 0.5)?.clamp(0f32, 1f32)?)?)
            }
            Op::Clip { min, max } => {
                let x = x()?;
                if x.dtype() == DType::I64 {
                    return one(clip_i64(x, opt(1), opt(2))?);
                }
                let lo = match opt(1) {
                    Some(t) => scalar_f32(t)?,
                    None => *min,
                };
                let hi = match opt(2) {
                    Some(t) => scalar_f32(t)?,
                    None => *max,
                };
                one(x.clamp(lo, hi)?)
            }
            Op::Add => one(input(0)?.broadcast_add(input(1)?)?),
            Op::Sub => one(input(0)?.broadcast_sub(input(1)?)?),
            Op::Mul => one(input(0)?.broadcast_mul(input(1)?)?),
            Op::Div => one(input(0)?.broadcast_div(input(1)?)?),
            Op::MaxPool { window, ceil } => {
                let x = x()?;
                let (k, s, pad) = pool_geometry(window, *ceil, x)?;
                one(layers::max_pool2d_rect(x, k, s, Padding::Explicit(pad))?)
            }
            Op::AveragePool {
                window,
                ceil,
                count_include_pad,
            } => {
                let x = x()?;
                let (k, s, pad) = pool_geometry(window, *ceil, x)?;
                let mean = layers::avg_pool2d_exclude_pad(x, k, s, Padding::Explicit(pad))?;
                if !count_include_pad {
                    return one(mean);
                }
                // Counting the padding: rescale each output by in-image taps
                // / taps inside the declared padding. `ceil_mode` only adds
                // padding at the end, and those cells are never counted.
                let (_, _, h, w) = x.dims4()?;
                let (_, _, oh, ow) = mean.dims4()?;
                let declared = window.padding.resolve((h, w), k, s);
                // (in-image taps, counted taps) of output `o` along one axis,
                // in the frame padded by `before`.
                let taps = |o: usize, kk: usize, before: usize, len: usize, after: usize| {
                    let (a, b) = (o * s, o * s + kk);
                    let inside = b.min(before + len).saturating_sub(a.max(before));
                    (inside, b.min(before + len + after) - a)
                };
                let mut factor = Vec::with_capacity(oh * ow);
                for oy in 0..oh {
                    let (iy, cy) = taps(oy, k.0, pad.top, h, declared.bottom);
                    for ox in 0..ow {
                        let (ix, cx) = taps(ox, k.1, pad.left, w, declared.right);
                        factor.push((iy * ix) as f32 / (cy * cx).max(1) as f32);
                    }
                }
                let factor = Tensor::from_vec(factor, (1, 1, oh, ow), x.device())?;
                one(mean.broadcast_mul(&factor)?)
            }
            Op::GlobalAveragePool => {
                let x = x()?;
                let mut y = x.clone();
                for d in (2..x.rank()).rev() {
                    y = y.mean_keepdim(d)?;
                }
                one(y)
            }
            Op::ReduceMean {
                axes,
                keepdims,
                noop_with_empty_axes,
            } => {
                let x = x()?;
                let axes = match (axes, opt(1)) {
                    (_, Some(t)) => to_i64s(t)?,
                    (Some(a), None) => a.clone(),
                    (None, None) if *noop_with_empty_axes => return one(x.clone()),
                    (None, None) => (0..x.rank() as i64).collect(),
                };
                let mut axes = axes
                    .iter()
                    .map(|&a| axis(a, x.rank()))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                axes.sort_unstable();
                axes.dedup();
                let mut y = x.clone();
                for &a in axes.iter().rev() {
                    y = if *keepdims {
                        y.mean_keepdim(a)?
                    } else {
                        y.mean(a)?
                    };
                }
                one(y)
            }
            Op::Pad { mode, pads, value } => {
                let x = x()?;
                let pads = match (opt(1), pads) {
                    (Some(t), _) => to_i64s(t)?,
                    (None, Some(p)) => p.clone(),
                    (None, None) => candle_core::bail!("Pad without pads"),
                };
                let value = match opt(2) {
                    Some(t) => scalar_f32(t)?,
                    None => *value,
                };
                let axes = match opt(3) {
                    Some(t) => to_i64s(t)?
                        .iter()
                        .map(|&a| axis(a, x.rank()))
                        .collect::<candle_core::Result<Vec<_>>>()?,
                    None => (0..x.rank()).collect(),
                };
                if pads.len() != 2 * axes.len() {
                    candle_core::bail!("Pad: {} pads for {} axes", pads.len(), axes.len())
                }
                let mut y = x.clone();
                for (i, &a) in axes.iter().enumerate() {
                    y = pad_axis(&y, a, pads[i], pads[i + axes.len()], mode, value)?;
                }
                one(y)
            }
            Op::Concat { axis: a } => {
                let ts: Vec<&Tensor> = inputs.iter().flatten().copied().collect();
                let Some(first) = ts.first() else {
                    candle_core::bail!("Concat of no inputs")
                };
                let a = axis(*a, first.rank())?;
                one(Tensor::cat(&ts, a)?)
            }
            Op::Reshape { allowzero } => {
                let x = x()?;
                let spec = to_i64s(input(1)?)?;
                one(x.reshape(reshape_dims(x.dims(), &spec, *allowzero)?)?)
            }
            Op::Flatten { axis: a } => {
                let x = x()?;
                let r = x.rank();
                let a = if *a < 0 { *a + r as i64 } else { *a };
                if !(0..=r as i64).contains(&a) {
                    candle_core::bail!("Flatten axis {a} for rank {r}")
                }
                let outer: usize = x.dims()[..a as usize].iter().product();
                one(x.reshape((outer, x.elem_count() / outer.max(1)))?)
            }
            Op::Transpose { perm } => {
                let x = x()?;
                let perm = match perm {
                    Some(p) => p
                        .iter()
                        .map(|&a| axis(a, x.rank()))
                        .collect::<candle_core::Result<Vec<_>>>()?,
                    None => (0..x.rank()).rev().collect(),
                };
                one(x.permute(perm)?.contiguous()?)
            }
            Op::Squeeze { axes } => {
                let x = x()?;
                let axes = match (opt(1), axes) {
                    (Some(t), _) => Some(to_i64s(t)?),
                    (None, a) => a.clone(),
                };
                let dims: Vec<usize> = match axes {
                    Some(a) => {
                        let a = a
                            .iter()
                            .map(|&v| axis(v, x.rank()))
                            .collect::<candle_core::Result<Vec<_>>>()?;
                        for &i in &a {
                            if x.dims()[i] != 1 {
                                candle_core::bail!("Squeeze axis {i} has size {}", x.dims()[i])
                            }
                        }
                        x.dims()
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !a.contains(i))
                            .map(|(_, &d)| d)
                            .collect()
                    }
                    None => x.dims().iter().copied().filter(|&d| d != 1).collect(),
                };
                one(x.reshape(dims)?)
            }
            Op::Unsqueeze { axes } => {
                let x = x()?;
                let axes = match (opt(1), axes) {
                    (Some(t), _) => to_i64s(t)?,
                    (None, Some(a)) => a.clone(),
                    (None, None) => candle_core::bail!("Unsqueeze without axes"),
                };
                let rank = x.rank() + axes.len();
                let mut axes = axes
                    .iter()
                    .map(|&a| axis(a, rank))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                axes.sort_unstable();
                let mut dims = x.dims().to_vec();
                for a in axes {
                    dims.insert(a, 1);
                }
                one(x.reshape(dims)?)
            }
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => {
                let mut a = input(0)?.clone();
                let mut b = input(1)?.clone();
                if *trans_a {
                    a = a.t()?;
                }
                if *trans_b {
                    b = b.t()?;
                }
                let mut y = a.contiguous()?.matmul(&b.contiguous()?)?;
                if *alpha != 1.0 {
                    y = (y * *alpha as f64)?;
                }
                if let Some(c) = opt(2) {
                    let c = if *beta != 1.0 {
                        (c * *beta as f64)?
                    } else {
                        c.clone()
                    };
                    y = y.broadcast_add(&c)?;
                }
                one(y)
            }
            Op::MatMul => {
                let (a, b) = (input(0)?, input(1)?);
                if a.rank() < 2 || b.rank() < 2 {
                    candle_core::bail!("MatMul of rank-1 operands is not supported")
                }
                one(a.contiguous()?.broadcast_matmul(&b.contiguous()?)?)
            }
            Op::Softmax { axis: a, legacy } => {
                let x = x()?;
                let a = axis(*a, x.rank())?;
                if *legacy {
                    let outer: usize = x.dims()[..a].iter().product();
                    let flat = x.reshape((outer, x.elem_count() / outer.max(1)))?;
                    one(candle_nn::ops::softmax(&flat, D::Minus1)?.reshape(x.dims())?)
                } else {
                    one(candle_nn::ops::softmax(x, a)?)
                }
            }
            Op::Shape { start, end } => {
                let dims = x()?.dims();
                let r = dims.len() as i64;
                let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (clampi(*start), clampi(end.unwrap_or(r)));
                let v: Vec<i64> = dims[s..e.max(s)].iter().map(|&d| d as i64).collect();
                one(Tensor::new(v.as_slice(), &Device::Cpu)?)
            }
            Op::Gather { axis: a } => {
                let (data, idx) = (input(0)?, input(1)?);
                let a = axis(*a, data.rank())?;
                let n = data.dims()[a] as i64;
                let flat: Vec<i64> = to_i64s(idx)?
                    .iter()
                    .map(|&i| if i < 0 { i + n } else { i })
                    .collect();
                if let Some(bad) = flat.iter().find(|&&i| i < 0 || i >= n) {
                    candle_core::bail!("Gather index {bad} out of range for a dimension of {n}")
                }
                let picked = data
                    .index_select(&Tensor::from_vec(flat, idx.elem_count(), data.device())?, a)?;
                let mut dims = data.dims()[..a].to_vec();
                dims.extend_from_slice(idx.dims());
                dims.extend_from_slice(&data.dims()[a + 1..]);
                one(picked.reshape(dims)?)
            }
            Op::Slice { attrs } => {
                let x = x()?;
                let (starts, ends, axes, steps) = match attrs {
                    Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), None),
                    None => (
                        to_i64s(input(1)?)?,
                        to_i64s(input(2)?)?,
                        opt(3).map(to_i64s).transpose()?,
                        opt(4).map(to_i64s).transpose()?,
                    ),
                };
                let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
                let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
                if ends.len() != starts.len()
                    || axes.len() != starts.len()
                    || steps.len() != starts.len()
                {
                    candle_core::bail!("Slice: starts, ends, axes and steps differ in length")
                }
                let mut y = x.clone();
                for i in 0..starts.len() {
                    let a = axis(axes[i], x.rank())?;
                    y = slice_axis(&y, a, starts[i], ends[i], steps[i])?;
                }
                one(y)
            }
            Op::Cast { to } => one(x()?.to_dtype(*to)?),
            Op::Constant(t) => one(t.clone()),
            Op::ConstantOfShape { value } => {
                let dims: Vec<usize> = to_i64s(x()?)?.iter().map(|&d| d.max(0) as usize).collect();
                let v = value.flatten_all()?;
                one(v.reshape(())?.broadcast_as(dims)?.contiguous()?)
            }
            Op::Identity => one(x()?.clone()),
        }
    }
}

/// Kernel, stride and explicit padding of a pool on `x`, with `ceil_mode`'s
/// extra end padding (the last window must start inside the input or the
/// leading padding, as in ONNX and PyTorch).
fn pool_geometry(
    window: &Window2d,
    ceil: bool,
    x: &Tensor,
) -> candle_core::Result<((usize, usize), usize, Pad4)> {
    let (_, _, h, w) = x.dims4()?;
    let k = window.kernel.expect("pools parse with a kernel");
    let s = window.stride;
    let mut p = window.padding.resolve((h, w), k, s);
    if ceil {
        let extra = |len: usize, before: usize, after: usize, kk: usize| -> usize {
            let span = len + before + after;
            if span < kk {
                return 0;
            }
            let mut out = (span - kk).div_ceil(s) + 1;
            if (out - 1) * s >= len + before {
                out -= 1;
            }
            ((out - 1) * s + kk).saturating_sub(span)
        };
        p.bottom += extra(h, p.top, p.bottom, k.0);
        p.right += extra(w, p.left, p.right, k.1);
    }
    Ok((k, s, p))
}

/// Normalises a possibly negative axis.
pub fn axis(a: i64, rank: usize) -> candle_core::Result<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if !(0..r.max(1)).contains(&v) {
        candle_core::bail!("axis {a} is out of range for rank {rank}")
    }
    Ok(v as usize)
}

pub fn to_i64s(t: &Tensor) -> candle_core::Result<Vec<i64>> {
    t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()
}

pub fn to_f32s(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

fn scalar_f32(t: &Tensor) -> candle_core::Result<f32> {
    match to_f32s(t)?.as_slice() {
        [v] => Ok(*v),
        v => candle_core::bail!("expected a scalar, got {} values", v.len()),
    }
}

/// Integer `Clip` (opset >= 12): shape arithmetic, e.g. PyTorch's TF-"same"
/// padding clamps its pad amounts at 0. Computed on i64 directly, since an
/// f32 round trip would round sizes above 2^24.
fn clip_i64(x: &Tensor, lo: Option<&Tensor>, hi: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let bound = |t: Option<&Tensor>, default: i64| -> candle_core::Result<i64> {
        match t.map(to_i64s).transpose()?.as_deref() {
            None => Ok(default),
            Some([v]) => Ok(*v),
            Some(v) => candle_core::bail!("Clip bound: expected a scalar, got {} values", v.len()),
        }
    };
    let (lo, hi) = (bound(lo, i64::MIN)?, bound(hi, i64::MAX)?);
    // ONNX: min(max(x, lo), hi), also when lo > hi.
    let v: Vec<i64> = to_i64s(x)?.into_iter().map(|v| v.max(lo).min(hi)).collect();
    Tensor::from_vec(v, x.dims(), x.device())
}

/// ONNX `Reshape`'s target: `0` copies the input's dimension (unless
/// `allowzero`), `-1` is inferred.
fn reshape_dims(input: &[usize], spec: &[i64], allowzero: bool) -> candle_core::Result<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut dims = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            0 if !allowzero => match input.get(i) {
                Some(&v) => dims.push(v),
                None => {
                    candle_core::bail!("Reshape: 0 at {i} but the input has rank {}", input.len())
                }
            },
            d if d >= 0 => dims.push(d as usize),
            _ => candle_core::bail!("Reshape: invalid target {spec:?}"),
        }
    }
    if let Some(i) = infer {
        let known: usize = dims.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            candle_core::bail!("Reshape: cannot infer -1 in {spec:?} from {input:?}")
        }
        dims[i] = total / known;
    }
    if dims.iter().product::<usize>() != total {
        candle_core::bail!("Reshape: {input:?} has {total} values, target {spec:?} does not")
    }
    Ok(dims)
}

/// One axis of ONNX `Slice`, with its clamping rules and any step.
fn slice_axis(
    x: &Tensor,
    a: usize,
    start: i64,
    end: i64,
    step: i64,
) -> candle_core::Result<Tensor> {
    if step == 0 {
        candle_core::bail!("Slice step 0")
    }
    let n = x.dims()[a] as i64;
    let norm = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
    let (s, e) = (norm(start), norm(end));
    let (s, e) = if step > 0 {
        (s.clamp(0, n), e.clamp(0, n))
    } else {
        (s.clamp(0, n - 1), e.clamp(-1, n - 1))
    };
    if step == 1 {
        return x.narrow(a, s as usize, (e - s).max(0) as usize);
    }
    let mut idx = Vec::new();
    let mut i = s;
    while (step > 0 && i < e) || (step < 0 && i > e) {
        idx.push(i);
        i += step;
    }
    let len = idx.len();
    x.index_select(&Tensor::from_vec(idx, len, x.device())?, a)
}

/// Pads (or, for negative amounts, crops) one axis.
fn pad_axis(
    x: &Tensor,
    a: usize,
    before: i64,
    after: i64,
    mode: &PadMode,
    value: f32,
) -> candle_core::Result<Tensor> {
    let mut x = x.clone();
    // Negative pads crop.
    if before < 0 || after < 0 {
        let n = x.dims()[a] as i64;
        let s = (-before).max(0);
        let len = (n - s - (-after).max(0)).max(0);
        x = x.narrow(a, s as usize, len as usize)?;
    }
    let (b, e) = (before.max(0) as usize, after.max(0) as usize);
    if b == 0 && e == 0 {
        return Ok(x);
    }
    let n = x.dims()[a];
    match mode {
        PadMode::Constant if value == 0.0 => x.pad_with_zeros(a, b, e),
        PadMode::Constant => {
            let piece = |len: usize| -> candle_core::Result<Tensor> {
                let mut dims = x.dims().to_vec();
                dims[a] = len;
                Tensor::full(value, dims, x.device())?.to_dtype(x.dtype())
            };
            Tensor::cat(&[&piece(b)?, &x, &piece(e)?], a)
        }
        PadMode::Edge => x.pad_with_same(a, b, e),
        PadMode::Reflect => {
            if n < 2 || b >= n || e >= n {
                candle_core::bail!(
                    "reflect padding of {b}/{e} needs more than that many values (axis has {n})"
                )
            }
            let idx: Vec<i64> = (-(b as i64)..(n + e) as i64)
                .map(|i| {
                    if i < 0 {
                        -i
                    } else if i >= n as i64 {
                        2 * (n as i64 - 1) - i
                    } else {
                        i
                    }
                })
                .collect();
            let len = idx.len();
            x.index_select(&Tensor::from_vec(idx, len, x.device())?, a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], dims: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), dims, &Device::Cpu).unwrap()
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn slice_follows_onnx_clamping_and_negative_steps() {
        let x = t(&[0., 1., 2., 3., 4.], &[5]);
        let s = |start, end, step| vals(&slice_axis(&x, 0, start, end, step).unwrap());
        assert_eq!(s(1, 3, 1), vec![1., 2.]);
        assert_eq!(s(-2, i64::MAX, 1), vec![3., 4.]);
        assert_eq!(s(-1, i64::MIN, -1), vec![4., 3., 2., 1., 0.]);
        assert_eq!(s(0, 5, 2), vec![0., 2., 4.]);
        assert_eq!(s(3, 1, 1), Vec::<f32>::new());
    }

    #[test]
    fn pad_modes_match_their_definitions() {
        let x = t(&[1., 2., 3.], &[3]);
        let p = |mode, b, e, v| vals(&pad_axis(&x, 0, b, e, &mode, v).unwrap());
        assert_eq!(
            p(PadMode::Constant, 1, 2, 0.0),
            vec![0., 1., 2., 3., 0., 0.]
        );
        assert_eq!(p(PadMode::Constant, 1, 0, 9.0), vec![9., 1., 2., 3.]);
        assert_eq!(p(PadMode::Edge, 2, 1, 0.0), vec![1., 1., 1., 2., 3., 3.]);
        assert_eq!(p(PadMode::Reflect, 2, 1, 0.0), vec![3., 2., 1., 2., 3., 2.]);
        assert_eq!(p(PadMode::Constant, -1, 0, 0.0), vec![2., 3.]);
    }

    #[test]
    fn reshape_copies_zeros_and_infers_minus_one() {
        assert_eq!(
            reshape_dims(&[2, 3, 4], &[0, -1], false).unwrap(),
            vec![2, 12]
        );
        assert_eq!(
            reshape_dims(&[2, 3, 4], &[-1, 4], false).unwrap(),
            vec![6, 4]
        );
        assert!(reshape_dims(&[2, 3], &[4, -1], false).is_err());
    }

    #[test]
    fn average_pool_counts_padding_only_when_asked() {
        // 1x1x2x2 input, 3x3 window, pads 1: each output sees the 4 values.
        let x = t(&[1., 2., 3., 4.], &[1, 1, 2, 2]);
        let window = Window2d {
            kernel: Some((3, 3)),
            stride: 1,
            padding: Padding::Explicit(Pad4::new(1, 1, 1, 1)),
        };
        let run = |count_include_pad| {
            vals(
                &Op::AveragePool {
                    window,
                    ceil: false,
                    count_include_pad,
                }
                .eval(&[Some(&x)])
                .unwrap()[0],
            )
        };
        assert_eq!(run(false), vec![2.5; 4]);
        for v in run(true) {
            assert!((v - 10.0 / 9.0).abs() < 1e-6, "{v}");
        }
    }

    #[test]
    fn max_pool_ceil_mode_adds_a_last_partial_window() {
        let x = t(
            &(0..25).map(|v| v as f32).collect::<Vec<_>>(),
            &[1, 1, 5, 5],
        );
        let window = Window2d {
            kernel: Some((2, 2)),
            stride: 2,
            padding: Padding::Explicit(Pad4::default()),
        };
        let floor = Op::MaxPool {
            window,
            ceil: false,
        }
        .eval(&[Some(&x)])
        .unwrap();
        let ceil = Op::MaxPool { window, ceil: true }
            .eval(&[Some(&x)])
            .unwrap();
        assert_eq!(floor[0].dims(), &[1, 1, 2, 2]);
        assert_eq!(
            vals(&ceil[0]),
            vec![6., 8., 9., 16., 18., 19., 21., 23., 24.]
        );
    }

    #[test]
    fn integer_clip_keeps_i64_and_takes_integer_bounds() {
        let cpu = &Device::Cpu;
        let x = Tensor::new(&[-3i64, 0, 5, 1 << 40], cpu).unwrap();
        let zero = Tensor::new(0i64, cpu).unwrap();
        let y = Op::Clip {
            min: f32::NEG_INFINITY,
            max: f32::INFINITY,
        }
        .eval(&[Some(&x), Some(&zero), None])
        .unwrap();
        assert_eq!(y[0].dtype(), DType::I64);
        assert_eq!(y[0].to_vec1::<i64>().unwrap(), vec![0, 0, 5, 1 << 40]);
    }

    #[test]
    fn ceil_and_floor_round_floats_and_keep_integers() {
        let x = t(&[-1.5, 0.25, 2.0], &[3]);
        assert_eq!(
            vals(&Op::Ceil.eval(&[Some(&x)]).unwrap()[0]),
            vec![-1., 1., 2.]
        );
        assert_eq!(
            vals(&Op::Floor.eval(&[Some(&x)]).unwrap()[0]),
            vec![-2., 0., 2.]
        );
        let i = Tensor::new(&[7i64], &Device::Cpu).unwrap();
        let y = Op::Ceil.eval(&[Some(&i)]).unwrap();
        assert_eq!(y[0].to_vec1::<i64>().unwrap(), vec![7]);
    }

    #[test]
    fn gather_with_a_scalar_index_drops_the_axis() {
        let shape = Tensor::new(&[8i64, 3, 224, 224], &Device::Cpu).unwrap();
        let idx = Tensor::new(0i64, &Device::Cpu).unwrap();
        let out = Op::Gather { axis: 0 }
            .eval(&[Some(&shape), Some(&idx)])
            .unwrap();
        assert_eq!(out[0].rank(), 0);
        assert_eq!(out[0].to_scalar::<i64>().unwrap(), 8);
    }
}
