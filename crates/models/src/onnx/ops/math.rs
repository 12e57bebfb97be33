//! Elementwise math beyond the four arithmetic ops: unary functions,
//! `Pow`, comparisons, `Where`, `Min` / `Max` and `Gelu`, all with ONNX's
//! multidirectional broadcasting.
//!
//! Booleans are i64 tensors of 0 and 1 here (as `Cast` to BOOL makes
//! them): transformers only use them on shapes (`Equal` + `Where` in
//! PyTorch's traced `reshape(-1)` arithmetic), never on images.

use candle_core::{DType, Result, Tensor};

use super::eval::Inputs;
use super::to_f32s;

/// One-input elementwise functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    Abs,
    Erf,
    Exp,
    Neg,
    Not,
    Reciprocal,
    Sqrt,
}

/// Elementwise comparisons; the result is a 0 / 1 i64 tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Equal,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

/// The shape both `a` and `b` broadcast to (numpy rules), or an error
/// naming both.
pub fn broadcast_dims(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |d: &[usize], i: usize| (i + d.len()).checked_sub(rank).map_or(1, |j| d[j]);
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => candle_core::bail!("shapes {a:?} and {b:?} do not broadcast"),
        })
        .collect()
}

pub fn unary(x: &Tensor, f: Unary) -> Result<Tensor> {
    if x.dtype() == DType::I64 {
        // Integer forms (shape arithmetic): computed exactly on i64.
        let v = x.flatten_all()?.to_vec1::<i64>()?;
        let y: Vec<i64> = match f {
            Unary::Abs => v.iter().map(|v| v.abs()).collect(),
            Unary::Neg => v.iter().map(|v| -v).collect(),
            Unary::Not => v.iter().map(|&v| i64::from(v == 0)).collect(),
            _ => {
                let y = unary(&x.to_dtype(DType::F32)?, f)?;
                return y.to_dtype(DType::I64);
            }
        };
        return Tensor::from_vec(y, x.dims(), x.device());
    }
    match f {
        Unary::Abs => x.abs(),
        Unary::Erf if super::fast::on_cpu_f32(x) => super::fast::erf(x),
        Unary::Erf => x.erf(),
        Unary::Exp => x.exp(),
        Unary::Neg => x.neg(),
        Unary::Not => x.eq(0f32)?.to_dtype(DType::I64),
        Unary::Reciprocal => x.recip(),
        Unary::Sqrt => x.sqrt(),
    }
}

/// `x ^ y`. A single exponent takes candle's kernels (squares and square
/// roots exactly, as exporters' LayerNorm and attention scale use them);
/// a tensor of exponents is computed per element.
pub fn pow(ins: &Inputs) -> Result<Tensor> {
    let (x, y) = (ins.get(0)?, ins.get(1)?);
    if y.elem_count() == 1 && y.rank() <= x.rank() {
        let e = to_f32s(y)?[0];
        let x32 = x.to_dtype(DType::F32)?;
        let r = match e {
            1.0 => x32,
            2.0 => x32.sqr()?,
            3.0 => (x32.sqr()? * &x32)?,
            0.5 => x32.sqrt()?,
            e => x32.powf(e as f64)?,
        };
        return r.to_dtype(x.dtype());
    }
    let dims = broadcast_dims(x.dims(), y.dims())?;
    let xs = to_f32s(&x.broadcast_as(dims.as_slice())?.contiguous()?)?;
    let ys = to_f32s(&y.broadcast_as(dims.as_slice())?.contiguous()?)?;
    let v: Vec<f32> = xs.iter().zip(&ys).map(|(a, b)| a.powf(*b)).collect();
    Tensor::from_vec(v, dims, x.device())?.to_dtype(x.dtype())
}

pub fn compare(ins: &Inputs, c: Compare) -> Result<Tensor> {
    let (a, b) = (ins.get(0)?, ins.get(1)?);
    // Mixed integer / float operands do not occur in valid graphs; compare
    // as f32 rather than fail on one that slipped through a Cast.
    let (a, b) = if a.dtype() == b.dtype() {
        (a.clone(), b.clone())
    } else {
        (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?)
    };
    let r = match c {
        Compare::Equal => a.broadcast_eq(&b)?,
        Compare::Greater => a.broadcast_gt(&b)?,
        Compare::GreaterOrEqual => a.broadcast_ge(&b)?,
        Compare::Less => a.broadcast_lt(&b)?,
        Compare::LessOrEqual => a.broadcast_le(&b)?,
    };
    r.to_dtype(DType::I64)
}

/// `cond ? x : y`, all three broadcast together.
pub fn where_(ins: &Inputs) -> Result<Tensor> {
    let (c, x, y) = (ins.get(0)?, ins.get(1)?, ins.get(2)?);
    let dims = broadcast_dims(&broadcast_dims(c.dims(), x.dims())?, y.dims())?;
    let c = if c.dtype() == DType::I64 {
        c.ne(0i64)?
    } else {
        c.ne(0f32)?
    };
    let y = if y.dtype() == x.dtype() {
        y.clone()
    } else {
        y.to_dtype(x.dtype())?
    };
    let at = |t: &Tensor| -> Result<Tensor> { t.broadcast_as(dims.as_slice())?.contiguous() };
    at(&c)?.where_cond(&at(x)?, &at(&y)?)
}

/// The elementwise minimum (`max == false`) or maximum of every input.
pub fn min_max(ins: &Inputs, max: bool) -> Result<Tensor> {
    let ts = ins.present();
    let Some((first, rest)) = ts.split_first() else {
        candle_core::bail!("no inputs")
    };
    let mut acc = (*first).clone();
    for t in rest {
        acc = if max {
            acc.broadcast_maximum(t)?
        } else {
            acc.broadcast_minimum(t)?
        };
    }
    Ok(acc)
}

/// `Gelu` (opset 20): exact (erf) or its tanh approximation.
pub fn gelu(x: &Tensor, tanh: bool) -> Result<Tensor> {
    if tanh {
        x.gelu()
    } else if super::fast::on_cpu_f32(x) {
        super::fast::gelu(x)
    } else {
        x.gelu_erf()
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::onnx::testutil::{tensor, values};

    fn ints(v: &[i64], dims: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), dims, &Device::Cpu).unwrap()
    }

    #[test]
    fn shapes_broadcast_from_the_right_and_mismatches_are_named() {
        assert_eq!(broadcast_dims(&[2, 1, 4], &[3, 1]).unwrap(), [2, 3, 4]);
        assert_eq!(broadcast_dims(&[], &[5]).unwrap(), [5]);
        let e = broadcast_dims(&[2, 3], &[4]).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains("[4]"), "{e}");
    }

    #[test]
    fn where_picks_per_element_with_a_broadcast_condition() {
        let c = ints(&[1, 0], &[2]);
        let x = tensor(&[1., 2., 3., 4.], &[2, 2]);
        let y = tensor(&[-1.], &[1]);
        let out = where_(&Inputs::new(&[Some(&c), Some(&x), Some(&y)])).unwrap();
        assert_eq!(values(&out), [1., -1., 3., -1.]);
        // PyTorch's shape arithmetic: Where(Equal(shape, -1), ones, shape).
        let shape = ints(&[2, -1, 7], &[3]);
        let minus1 = ints(&[-1], &[1]);
        let eq = compare(&Inputs::new(&[Some(&shape), Some(&minus1)]), Compare::Equal).unwrap();
        assert_eq!(eq.to_vec1::<i64>().unwrap(), [0, 1, 0]);
        let ones = ints(&[1, 1, 1], &[3]);
        let out = where_(&Inputs::new(&[Some(&eq), Some(&ones), Some(&shape)])).unwrap();
        assert_eq!(out.to_vec1::<i64>().unwrap(), [2, 1, 7]);
    }

    #[test]
    fn pow_squares_exactly_and_takes_per_element_exponents() {
        let x = tensor(&[-3., 0.5, 2.], &[3]);
        let two = tensor(&[2.], &[]);
        assert_eq!(
            values(&pow(&Inputs::new(&[Some(&x), Some(&two)])).unwrap()),
            [9., 0.25, 4.]
        );
        let e = tensor(&[3., 2., 0.5], &[3]);
        let got = values(&pow(&Inputs::new(&[Some(&x), Some(&e)])).unwrap());
        assert_eq!(got[..2], [-27., 0.25]);
        assert!((got[2] - 2f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn integer_unary_ops_stay_exact_and_not_inverts_booleans() {
        let x = ints(&[-5, 0, 1 << 40], &[3]);
        assert_eq!(
            unary(&x, Unary::Neg).unwrap().to_vec1::<i64>().unwrap(),
            [5, 0, -(1 << 40)]
        );
        assert_eq!(
            unary(&x, Unary::Not).unwrap().to_vec1::<i64>().unwrap(),
            [0, 1, 0]
        );
    }

    #[test]
    fn erf_and_gelu_match_their_definitions() {
        let x = tensor(&[-1.5, 0.0, 0.7], &[3]);
        let erf = values(&unary(&x, Unary::Erf).unwrap());
        // erf(0.7) = 0.6778011938...
        assert!((erf[2] - 0.677_801_2).abs() < 1e-6, "{erf:?}");
        let g = values(&gelu(&x, false).unwrap());
        for (v, x) in g.iter().zip([-1.5f32, 0.0, 0.7]) {
            let want = 0.5 * x * (1.0 + series_erf(x / 2f32.sqrt()));
            assert!((v - want).abs() < 1e-6, "{v} vs {want}");
        }
    }

    /// erf by its series, for the test only.
    fn series_erf(x: f32) -> f32 {
        let x = x as f64;
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..60 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        (sum * 2.0 / std::f64::consts::PI.sqrt()) as f32
    }
}
