//! [`Op::eval`]: one arm per op, on candle tensors. Elementwise and matrix
//! ops are evaluated here; shape ops and pools call into `shape.rs` and
//! `pool.rs`.

use candle_core::{DType, Result, Tensor, D};

use super::math::Unary;
use super::{
    axis, fast, math, norm, pool, repeat, resize, scalar_f32, shape, to_f32s, to_i64s, Op,
};
use crate::layers;

/// A node's inputs at evaluation; `None` for an omitted optional input.
pub struct Inputs<'a, 't>(&'a [Option<&'t Tensor>]);

impl<'a, 't> Inputs<'a, 't> {
    pub fn new(inputs: &'a [Option<&'t Tensor>]) -> Self {
        Inputs(inputs)
    }

    /// Input 0, which most ops require.
    pub fn x(&self) -> Result<&'t Tensor> {
        match self.0.first() {
            Some(Some(t)) => Ok(*t),
            _ => candle_core::bail!("the first input is missing"),
        }
    }

    /// Required input `i`.
    pub fn get(&self, i: usize) -> Result<&'t Tensor> {
        match self.0.get(i) {
            Some(Some(t)) => Ok(*t),
            _ => candle_core::bail!("input {i} is missing"),
        }
    }

    /// Optional input `i`.
    pub fn opt(&self, i: usize) -> Option<&'t Tensor> {
        self.0.get(i).copied().flatten()
    }

    /// The inputs given, in order, without the omitted ones.
    pub fn present(&self) -> Vec<&'t Tensor> {
        self.0.iter().flatten().copied().collect()
    }
}

impl Op {
    /// Evaluates this op. `inputs[i]` is `None` for an omitted optional input.
    pub fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let ins = &Inputs(inputs);
        let x = || ins.x();
        Ok(vec![match self {
            Op::Conv { .. } => candle_core::bail!("Conv is lowered onto the native layers"),
            Op::BatchNormalization { eps } => batch_normalization(ins, *eps)?,
            Op::Relu => x()?.relu()?,
            Op::Ceil | Op::Floor => {
                let x = x()?;
                match (self, x.dtype()) {
                    // Integers are already whole (ONNX defines both for
                    // floats only).
                    (_, DType::I64) => x.clone(),
                    (Op::Ceil, _) => x.ceil()?,
                    _ => x.floor()?,
                }
            }
            Op::LeakyRelu { alpha } => {
                let x = x()?;
                (x.relu()? - (x.neg()?.relu()? * *alpha as f64)?)?
            }
            Op::Sigmoid => candle_nn::ops::sigmoid(x()?)?,
            Op::Tanh => x()?.tanh()?,
            Op::Log => x()?.log()?,
            Op::HardSigmoid { alpha, beta } => x()?
                .affine(*alpha as f64, *beta as f64)?
                .clamp(0f32, 1f32)?,
            Op::HardSwish => {
                let x = x()?;
                (x * x.affine(1.0 / 6.0, 0.5)?.clamp(0f32, 1f32)?)?
            }
            Op::Clip { min, max } => clip(ins, *min, *max)?,
            Op::Add => ins.get(0)?.broadcast_add(ins.get(1)?)?,
            Op::Sub => ins.get(0)?.broadcast_sub(ins.get(1)?)?,
            Op::Mul => ins.get(0)?.broadcast_mul(ins.get(1)?)?,
            Op::Div => ins.get(0)?.broadcast_div(ins.get(1)?)?,
            Op::MaxPool { window, ceil } => pool::max_pool(ins, window, *ceil)?,
            Op::AveragePool {
                window,
                ceil,
                count_include_pad,
            } => pool::average_pool(ins, window, *ceil, *count_include_pad)?,
            Op::GlobalAveragePool => pool::global_average_pool(ins)?,
            Op::Reduce {
                kind,
                axes,
                keepdims,
                noop_with_empty_axes,
            } => pool::reduce(ins, *kind, axes, *keepdims, *noop_with_empty_axes)?,
            Op::Unary(f) => math::unary(x()?, *f)?,
            Op::Pow => math::pow(ins)?,
            Op::Compare(c) => math::compare(ins, *c)?,
            Op::Where => math::where_(ins)?,
            Op::MinMax { max } => math::min_max(ins, *max)?,
            Op::Gelu { tanh } => math::gelu(x()?, *tanh)?,
            Op::LayerNormalization { axis, eps } => norm::layer_normalization(ins, *axis, *eps)?,
            Op::ChannelLayerNorm { eps } => norm::channel_layer_norm(ins, *eps)?,
            Op::Expand => repeat::expand(ins)?,
            Op::Tile => repeat::tile(ins)?,
            Op::Split {
                axis,
                sizes,
                outputs,
            } => return repeat::split(ins, *axis, sizes, *outputs),
            Op::Range => repeat::range(ins)?,
            Op::Resize(attrs) => resize::resize(ins, attrs)?,
            Op::Pad { mode, pads, value } => shape::pad(ins, mode, pads, *value)?,
            Op::Concat { axis } => shape::concat(ins, *axis)?,
            Op::Reshape { allowzero } => shape::reshape(ins, *allowzero)?,
            Op::Flatten { axis } => shape::flatten(ins, *axis)?,
            Op::Transpose { perm } => shape::transpose(ins, perm)?,
            Op::Squeeze { axes } => shape::squeeze(ins, axes)?,
            Op::Unsqueeze { axes } => shape::unsqueeze(ins, axes)?,
            Op::Gemm {
                alpha,
                beta,
                trans_a,
                trans_b,
            } => gemm(ins, *alpha, *beta, *trans_a, *trans_b)?,
            Op::MatMul {
                gelu,
                trans_b,
                alpha,
            } => matmul(ins, *gelu, *trans_b, *alpha)?,
            Op::Softmax { axis, legacy } => softmax(x()?, *axis, *legacy)?,
            Op::Shape { start, end } => shape::shape(ins, *start, *end)?,
            Op::Gather { axis } => shape::gather(ins, *axis)?,
            Op::Slice { attrs } => shape::slice(ins, attrs)?,
            Op::Cast { boolean: true, .. } => {
                math::unary(&math::unary(x()?, Unary::Not)?, Unary::Not)?
            }
            Op::Cast { to, .. } => x()?.to_dtype(*to)?,
            Op::Constant(t) => t.clone(),
            Op::ConstantOfShape { value } => shape::constant_of_shape(ins, value)?,
            Op::Identity => x()?.clone(),
        }])
    }
}

/// [`Op::MatMul`]: inputs `a`, `b`, then optional bias, per-column scale,
/// and multipliers of `a` and `b` found at run time. On the CPU one fused
/// product when the multipliers are single values; otherwise (or on another
/// device) the ops one by one, as the graph had them.
fn matmul(ins: &Inputs, gelu: bool, trans_b: bool, alpha: f32) -> Result<Tensor> {
    let (a, b) = (ins.get(0)?, ins.get(1)?);
    if a.rank() < 2 || b.rank() < 2 {
        candle_core::bail!("MatMul of rank-1 operands is not supported")
    }
    let (bias, scale) = (ins.opt(2), ins.opt(3));
    let (ma, mb) = (ins.opt(4), ins.opt(5));
    let one = |t: Option<&Tensor>| -> Result<Option<f32>> {
        match t {
            None => Ok(Some(1.0)),
            Some(t) if t.elem_count() == 1 => Ok(Some(to_f32s(t)?[0])),
            Some(_) => Ok(None),
        }
    };
    if let (Some(sa), Some(sb)) = (one(ma)?, one(mb)?) {
        let product = fast::Product {
            gelu,
            trans_b,
            alpha: alpha * sa * sb,
        };
        if let Some(y) = fast::matmul(a, b, bias, scale, product)? {
            return Ok(y);
        }
    }
    let mut a = a.clone();
    if let Some(m) = ma {
        a = a.broadcast_mul(m)?;
    }
    let mut b = if trans_b {
        b.transpose(D::Minus1, D::Minus2)?
    } else {
        b.clone()
    };
    if let Some(m) = mb {
        b = b.broadcast_mul(m)?;
    }
    let mut y = a.contiguous()?.broadcast_matmul(&b.contiguous()?)?;
    if alpha != 1.0 {
        y = (y * alpha as f64)?;
    }
    if let Some(bias) = bias {
        y = y.broadcast_add(bias)?;
    }
    if gelu {
        y = math::gelu(&y, false)?;
    }
    if let Some(scale) = scale {
        y = y.broadcast_mul(scale)?;
    }
    Ok(y)
}

/// Inference BatchNorm over axis 1, statistics from inputs 1-4.
fn batch_normalization(ins: &Inputs, eps: f32) -> Result<Tensor> {
    let x = ins.x()?;
    let rank = x.rank();
    if rank < 2 {
        candle_core::bail!("BatchNormalization of a rank-{rank} input")
    }
    let c = x.dim(1)?;
    let mut shape = vec![1; rank];
    shape[1] = c;
    let v = |i| -> Result<Vec<f32>> { to_f32s(ins.get(i)?) };
    let bn = layers::BatchNorm {
        gamma: Some(v(1)?),
        beta: Some(v(2)?),
        mean: v(3)?,
        var: v(4)?,
        eps,
    };
    let (scale, shift) = bn.scale_shift();
    let scale = Tensor::from_vec(scale, shape.as_slice(), x.device())?;
    let shift = Tensor::from_vec(shift, shape.as_slice(), x.device())?;
    x.broadcast_mul(&scale)?.broadcast_add(&shift)
}

/// Bounds from the attributes (opset < 11) or inputs 1 and 2 (which win).
fn clip(ins: &Inputs, min: f32, max: f32) -> Result<Tensor> {
    let x = ins.x()?;
    if x.dtype() == DType::I64 {
        return clip_i64(x, ins.opt(1), ins.opt(2));
    }
    let lo = match ins.opt(1) {
        Some(t) => scalar_f32(t)?,
        None => min,
    };
    let hi = match ins.opt(2) {
        Some(t) => scalar_f32(t)?,
        None => max,
    };
    x.clamp(lo, hi)
}

/// Integer `Clip` (opset >= 12): shape arithmetic, e.g. PyTorch's TF-"same"
/// padding clamps its pad amounts at 0. Computed on i64 directly, since an
/// f32 round trip would round sizes above 2^24.
fn clip_i64(x: &Tensor, lo: Option<&Tensor>, hi: Option<&Tensor>) -> Result<Tensor> {
    let bound = |t: Option<&Tensor>, default: i64| -> Result<i64> {
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

/// `alpha * A' B' + beta * C`, with `'` the optional transposes.
fn gemm(ins: &Inputs, alpha: f32, beta: f32, trans_a: bool, trans_b: bool) -> Result<Tensor> {
    let mut a = ins.get(0)?.clone();
    let mut b = ins.get(1)?.clone();
    if trans_a {
        a = a.t()?;
    }
    if trans_b {
        b = b.t()?;
    }
    let mut y = a.contiguous()?.matmul(&b.contiguous()?)?;
    if alpha != 1.0 {
        y = (y * alpha as f64)?;
    }
    if let Some(c) = ins.opt(2) {
        let c = if beta != 1.0 {
            (c * beta as f64)?
        } else {
            c.clone()
        };
        y = y.broadcast_add(&c)?;
    }
    Ok(y)
}

/// `legacy` (opset < 13): over the input flattened to 2-D at `axis`.
fn softmax(x: &Tensor, a: i64, legacy: bool) -> Result<Tensor> {
    let a = axis(a, x.rank())?;
    if !legacy && a + 1 == x.rank() && fast::on_cpu_f32(x) {
        return fast::softmax_last(x);
    }
    if legacy {
        let outer: usize = x.dims()[..a].iter().product();
        let flat = x.reshape((outer, x.elem_count() / outer.max(1)))?;
        candle_nn::ops::softmax(&flat, D::Minus1)?.reshape(x.dims())
    } else {
        candle_nn::ops::softmax(x, a)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::onnx::testutil::{tensor, values};

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
        let x = tensor(&[-1.5, 0.25, 2.0], &[3]);
        assert_eq!(
            values(&Op::Ceil.eval(&[Some(&x)]).unwrap()[0]),
            vec![-1., 1., 2.]
        );
        assert_eq!(
            values(&Op::Floor.eval(&[Some(&x)]).unwrap()[0]),
            vec![-2., 0., 2.]
        );
        let i = Tensor::new(&[7i64], &Device::Cpu).unwrap();
        let y = Op::Ceil.eval(&[Some(&i)]).unwrap();
        assert_eq!(y[0].to_vec1::<i64>().unwrap(), vec![7]);
    }

    #[test]
    fn a_missing_required_input_is_an_error_naming_it() {
        let x = tensor(&[1.0], &[1]);
        let e = Op::Add.eval(&[Some(&x), None]).unwrap_err();
        assert!(e.to_string().contains("input 1 is missing"), "{e}");
        let e = Op::Relu.eval(&[]).unwrap_err();
        assert!(e.to_string().contains("the first input is missing"), "{e}");
    }
}
