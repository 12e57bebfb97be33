//! Ops that move, select or pad values without arithmetic: reshapes,
//! transposes, slices, gathers, padding, concatenation and the shape
//! arithmetic around them.

use candle_core::{Device, Result, Tensor};

use super::eval::Inputs;
use super::{axes, axis, scalar_f32, to_i64s, PadMode, SliceAttrs};

pub fn reshape(ins: &Inputs, allowzero: bool) -> Result<Tensor> {
    let x = ins.x()?;
    let spec = to_i64s(ins.get(1)?)?;
    x.reshape(reshape_dims(x.dims(), &spec, allowzero)?)
}

/// `(outer, inner)` split at `axis`.
pub fn flatten(ins: &Inputs, a: i64) -> Result<Tensor> {
    let x = ins.x()?;
    let r = x.rank();
    let a = if a < 0 { a + r as i64 } else { a };
    if !(0..=r as i64).contains(&a) {
        candle_core::bail!("Flatten axis {a} for rank {r}")
    }
    let outer: usize = x.dims()[..a as usize].iter().product();
    x.reshape((outer, x.elem_count() / outer.max(1)))
}

/// Without `perm`, reverses the axes.
pub fn transpose(ins: &Inputs, perm: &Option<Vec<i64>>) -> Result<Tensor> {
    let x = ins.x()?;
    let perm = match perm {
        Some(p) => axes(p, x.rank())?,
        None => (0..x.rank()).rev().collect(),
    };
    if super::fast::on_cpu_f32(x) {
        return super::fast::transpose(x, &perm);
    }
    x.permute(perm)?.contiguous()
}

/// `axes` from the attribute (opset < 13) or input 1 (which wins); without
/// either, every size-1 axis.
pub fn squeeze(ins: &Inputs, axes_attr: &Option<Vec<i64>>) -> Result<Tensor> {
    let x = ins.x()?;
    let wanted = match (ins.opt(1), axes_attr) {
        (Some(t), _) => Some(to_i64s(t)?),
        (None, a) => a.clone(),
    };
    let dims: Vec<usize> = match wanted {
        Some(a) => {
            let a = axes(&a, x.rank())?;
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
    x.reshape(dims)
}

/// `axes` (of the output) from the attribute (opset < 13) or input 1.
pub fn unsqueeze(ins: &Inputs, axes_attr: &Option<Vec<i64>>) -> Result<Tensor> {
    let x = ins.x()?;
    let wanted = match (ins.opt(1), axes_attr) {
        (Some(t), _) => to_i64s(t)?,
        (None, Some(a)) => a.clone(),
        (None, None) => candle_core::bail!("Unsqueeze without axes"),
    };
    let mut inserted = axes(&wanted, x.rank() + wanted.len())?;
    inserted.sort_unstable();
    let mut dims = x.dims().to_vec();
    for a in inserted {
        dims.insert(a, 1);
    }
    x.reshape(dims)
}

/// The present inputs joined along `axis`.
pub fn concat(ins: &Inputs, a: i64) -> Result<Tensor> {
    let ts = ins.present();
    let Some(first) = ts.first() else {
        candle_core::bail!("Concat of no inputs")
    };
    let a = axis(a, first.rank())?;
    Tensor::cat(&ts, a)
}

/// The input's dimensions `start..end` as an i64 vector, on the CPU.
pub fn shape(ins: &Inputs, start: i64, end: Option<i64>) -> Result<Tensor> {
    let dims = ins.x()?.dims();
    let r = dims.len() as i64;
    let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (clampi(start), clampi(end.unwrap_or(r)));
    let v: Vec<i64> = dims[s..e.max(s)].iter().map(|&d| d as i64).collect();
    Tensor::new(v.as_slice(), &Device::Cpu)
}

/// Input 0 indexed along `axis` by input 1 (negative indices count from the
/// end); the index's shape replaces the axis.
pub fn gather(ins: &Inputs, a: i64) -> Result<Tensor> {
    let (data, idx) = (ins.get(0)?, ins.get(1)?);
    let a = axis(a, data.rank())?;
    let n = data.dims()[a] as i64;
    let flat: Vec<i64> = to_i64s(idx)?
        .iter()
        .map(|&i| if i < 0 { i + n } else { i })
        .collect();
    if let Some(bad) = flat.iter().find(|&&i| i < 0 || i >= n) {
        candle_core::bail!("Gather index {bad} out of range for a dimension of {n}")
    }
    let picked = data.index_select(&Tensor::from_vec(flat, idx.elem_count(), data.device())?, a)?;
    let mut dims = data.dims()[..a].to_vec();
    dims.extend_from_slice(idx.dims());
    dims.extend_from_slice(&data.dims()[a + 1..]);
    picked.reshape(dims)
}

/// Bounds from `attrs` (opset < 10) or inputs 1-4.
pub fn slice(ins: &Inputs, attrs: &Option<SliceAttrs>) -> Result<Tensor> {
    let x = ins.x()?;
    let (starts, ends, axes, steps) = match attrs {
        Some((s, e, a)) => (s.clone(), e.clone(), a.clone(), None),
        None => (
            to_i64s(ins.get(1)?)?,
            to_i64s(ins.get(2)?)?,
            ins.opt(3).map(to_i64s).transpose()?,
            ins.opt(4).map(to_i64s).transpose()?,
        ),
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        candle_core::bail!("Slice: starts, ends, axes and steps differ in length")
    }
    let mut y = x.clone();
    for i in 0..starts.len() {
        let a = axis(axes[i], x.rank())?;
        y = slice_axis(&y, a, starts[i], ends[i], steps[i])?;
    }
    Ok(y)
}

/// `pads` and `value` from the attributes (opset < 11) or inputs 1 and 2
/// (which win); input 3 restricts the padded axes.
pub fn pad(
    ins: &Inputs,
    mode: &PadMode,
    pads_attr: &Option<Vec<i64>>,
    value: f32,
) -> Result<Tensor> {
    let x = ins.x()?;
    let pads = match (ins.opt(1), pads_attr) {
        (Some(t), _) => to_i64s(t)?,
        (None, Some(p)) => p.clone(),
        (None, None) => candle_core::bail!("Pad without pads"),
    };
    let value = match ins.opt(2) {
        Some(t) => scalar_f32(t)?,
        None => value,
    };
    let padded = match ins.opt(3) {
        Some(t) => axes(&to_i64s(t)?, x.rank())?,
        None => (0..x.rank()).collect(),
    };
    if pads.len() != 2 * padded.len() {
        candle_core::bail!("Pad: {} pads for {} axes", pads.len(), padded.len())
    }
    let mut y = x.clone();
    for (i, &a) in padded.iter().enumerate() {
        y = pad_axis(&y, a, pads[i], pads[i + padded.len()], mode, value)?;
    }
    Ok(y)
}

/// The most elements a `ConstantOfShape` may make. CNN exports use it for
/// shape-sized helpers (pads, masks), never near this; a larger request is
/// a damaged or hostile graph asking for memory it does not need.
pub const MAX_CONSTANT_ELEMENTS: usize = 1 << 24;

/// The most values an op that takes its output shape from the graph
/// (Expand, Tile, Resize) may make: 4 GiB of f32, far above any image
/// model's activations; more is a damaged or hostile graph.
pub const MAX_OUTPUT_ELEMENTS: usize = 1 << 30;

/// Refuses an output shape of more than [`MAX_OUTPUT_ELEMENTS`] values
/// (or one whose count overflows) before it is allocated.
pub fn check_output(op: &str, dims: &[usize]) -> Result<()> {
    match crate::onnx::proto::element_count(dims) {
        Some(n) if n <= MAX_OUTPUT_ELEMENTS => Ok(()),
        _ => candle_core::bail!(
            "{op}: output shape {dims:?} asks for more than {MAX_OUTPUT_ELEMENTS} values"
        ),
    }
}

/// A tensor of the shape in input 0, filled with the one value of `value`.
pub fn constant_of_shape(ins: &Inputs, value: &Tensor) -> Result<Tensor> {
    let dims: Vec<usize> = to_i64s(ins.x()?)?
        .iter()
        .map(|&d| d.max(0) as usize)
        .collect();
    match crate::onnx::proto::element_count(&dims) {
        Some(n) if n <= MAX_CONSTANT_ELEMENTS => {}
        _ => candle_core::bail!(
            "ConstantOfShape: shape {dims:?} asks for more than {MAX_CONSTANT_ELEMENTS} elements"
        ),
    }
    let v = value.flatten_all()?;
    v.reshape(())?.broadcast_as(dims)?.contiguous()
}

/// ONNX `Reshape`'s target: `0` copies the input's dimension (unless
/// `allowzero`), `-1` is inferred.
fn reshape_dims(input: &[usize], spec: &[i64], allowzero: bool) -> Result<Vec<usize>> {
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
    // Checked: the target comes from the graph; a product that overflows
    // cannot equal the input's element count.
    let count = |dims: &[usize]| crate::onnx::proto::element_count(dims);
    if let Some(i) = infer {
        match count(&dims) {
            Some(known) if known != 0 && total.is_multiple_of(known) => dims[i] = total / known,
            _ => candle_core::bail!("Reshape: cannot infer -1 in {spec:?} from {input:?}"),
        }
    }
    if count(&dims) != Some(total) {
        candle_core::bail!("Reshape: {input:?} has {total} values, target {spec:?} does not")
    }
    Ok(dims)
}

/// One axis of ONNX `Slice`, with its clamping rules and any step.
fn slice_axis(x: &Tensor, a: usize, start: i64, end: i64, step: i64) -> Result<Tensor> {
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
) -> Result<Tensor> {
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
            let piece = |len: usize| -> Result<Tensor> {
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
    use crate::onnx::testutil::{tensor, values};

    #[test]
    fn slice_follows_onnx_clamping_and_negative_steps() {
        let x = tensor(&[0., 1., 2., 3., 4.], &[5]);
        let s = |start, end, step| values(&slice_axis(&x, 0, start, end, step).unwrap());
        assert_eq!(s(1, 3, 1), vec![1., 2.]);
        assert_eq!(s(-2, i64::MAX, 1), vec![3., 4.]);
        assert_eq!(s(-1, i64::MIN, -1), vec![4., 3., 2., 1., 0.]);
        assert_eq!(s(0, 5, 2), vec![0., 2., 4.]);
        assert_eq!(s(3, 1, 1), Vec::<f32>::new());
    }

    #[test]
    fn pad_modes_match_their_definitions() {
        let x = tensor(&[1., 2., 3.], &[3]);
        let p = |mode, b, e, v| values(&pad_axis(&x, 0, b, e, &mode, v).unwrap());
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
    fn a_reshape_target_whose_product_overflows_is_an_error() {
        let huge = 1i64 << 40;
        assert!(reshape_dims(&[2, 3], &[huge, huge], false).is_err());
        assert!(reshape_dims(&[2, 3], &[huge, huge, -1], false).is_err());
    }

    #[test]
    fn a_constant_of_shape_beyond_the_limit_is_refused_before_allocating() {
        let value = tensor(&[0.0], &[1]);
        for shape in [[1i64 << 20, 1 << 20], [1 << 40, 1 << 40]] {
            let shape = Tensor::new(&shape, &Device::Cpu).unwrap();
            let e = super::super::Op::ConstantOfShape {
                value: value.clone(),
            }
            .eval(&[Some(&shape)])
            .expect_err("a huge constant was made");
            assert!(e.to_string().contains("ConstantOfShape"), "{e}");
        }
    }

    #[test]
    fn gather_with_a_scalar_index_drops_the_axis() {
        let shape = Tensor::new(&[8i64, 3, 224, 224], &Device::Cpu).unwrap();
        let idx = Tensor::new(0i64, &Device::Cpu).unwrap();
        let out = super::super::Op::Gather { axis: 0 }
            .eval(&[Some(&shape), Some(&idx)])
            .unwrap();
        assert_eq!(out[0].rank(), 0);
        assert_eq!(out[0].to_scalar::<i64>().unwrap(), 8);
    }

    #[test]
    fn unsqueeze_inserts_axes_of_the_output_rank_in_order() {
        let x = tensor(&[1., 2., 3.], &[3]);
        let y = super::super::Op::Unsqueeze {
            axes: Some(vec![-1, 0]),
        }
        .eval(&[Some(&x)])
        .unwrap();
        assert_eq!(y[0].dims(), &[1, 3, 1]);
    }
}
