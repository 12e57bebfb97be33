//! Ops that repeat, split or enumerate values: `Expand`, `Tile`, `Split`
//! and `Range` (a transformer's class token expanded over the batch, its
//! fused QKV projection split in three, positions counted).

use candle_core::{DType, Device, Result, Tensor};

use super::eval::Inputs;
use super::math::broadcast_dims;
use super::shape::{check_output, MAX_CONSTANT_ELEMENTS};
use super::{axis, to_f32s, to_i64s};

/// Input 0 broadcast with the shape in input 1 (either may be the larger).
pub fn expand(ins: &Inputs) -> Result<Tensor> {
    let x = ins.x()?;
    let shape: Vec<usize> = to_i64s(ins.get(1)?)?
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| candle_core::Error::Msg("Expand: a negative dimension".into()))?;
    let dims = broadcast_dims(x.dims(), &shape)?;
    check_output("Expand", &dims)?;
    x.broadcast_as(dims)?.contiguous()
}

/// Input 0 repeated along each axis by the counts in input 1.
pub fn tile(ins: &Inputs) -> Result<Tensor> {
    let x = ins.x()?;
    let reps = to_i64s(ins.get(1)?)?;
    if reps.len() != x.rank() || reps.iter().any(|&r| r < 0) {
        candle_core::bail!("Tile: repeats {reps:?} for a rank-{} input", x.rank())
    }
    let reps: Vec<usize> = reps.iter().map(|&r| r as usize).collect();
    let dims: Vec<usize> = x
        .dims()
        .iter()
        .zip(&reps)
        .map(|(d, r)| d.saturating_mul(*r))
        .collect();
    check_output("Tile", &dims)?;
    x.repeat(reps)
}

/// `Split` into `outputs` parts along `axis`: sizes from input 1 (from
/// opset 13 on) or the `split` attribute, else as equal as possible (opset
/// 18: the last part may be smaller).
pub fn split(ins: &Inputs, a: i64, attr: &Option<Vec<i64>>, outputs: usize) -> Result<Vec<Tensor>> {
    let x = ins.x()?;
    let a = axis(a, x.rank())?;
    let len = x.dims()[a];
    let sizes: Vec<usize> = match (ins.opt(1), attr) {
        (Some(t), _) => to_i64s(t)?.iter().map(|&s| s.max(0) as usize).collect(),
        (None, Some(s)) => s.iter().map(|&s| s.max(0) as usize).collect(),
        (None, None) => {
            if outputs == 0 {
                candle_core::bail!("Split into no outputs")
            }
            let part = len.div_ceil(outputs);
            (0..outputs)
                .map(|i| part.min(len.saturating_sub(i * part)))
                .collect()
        }
    };
    if sizes.len() != outputs || sizes.iter().sum::<usize>() != len {
        candle_core::bail!("Split: sizes {sizes:?} for {outputs} outputs of an axis of {len}")
    }
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let part = x.narrow(a, start, n)?.contiguous();
            start += n;
            part
        })
        .collect()
}

/// `start, start + delta, ...` below `limit` (above it for a negative
/// delta), in the inputs' type.
pub fn range(ins: &Inputs) -> Result<Tensor> {
    let (start, limit, delta) = (ins.get(0)?, ins.get(1)?, ins.get(2)?);
    let one = |t: &Tensor, what: &str| -> Result<f64> {
        match to_f32s(t)?.as_slice() {
            [v] => Ok(*v as f64),
            _ => candle_core::bail!("Range: {what} must be a scalar"),
        }
    };
    if start.dtype() == DType::I64 {
        let one = |t: &Tensor| -> Result<i64> {
            match to_i64s(t)?.as_slice() {
                [v] => Ok(*v),
                _ => candle_core::bail!("Range: start, limit and delta must be scalars"),
            }
        };
        let (s, l, d) = (one(start)?, one(limit)?, one(delta)?);
        if d == 0 {
            candle_core::bail!("Range: delta 0")
        }
        let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
        check(n)?;
        let v: Vec<i64> = (0..n as i64).map(|i| s + i * d).collect();
        return Tensor::new(v.as_slice(), &Device::Cpu);
    }
    let (s, l, d) = (
        one(start, "start")?,
        one(limit, "limit")?,
        one(delta, "delta")?,
    );
    if d == 0.0 {
        candle_core::bail!("Range: delta 0")
    }
    let n = ((l - s) / d).ceil().max(0.0) as usize;
    check(n)?;
    let v: Vec<f32> = (0..n).map(|i| (s + i as f64 * d) as f32).collect();
    Tensor::new(v.as_slice(), start.device())
}

fn check(n: usize) -> Result<()> {
    if n > MAX_CONSTANT_ELEMENTS {
        candle_core::bail!("Range of {n} values: more than {MAX_CONSTANT_ELEMENTS}")
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::testutil::{tensor, values};

    fn ints(v: &[i64]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn expand_broadcasts_both_ways() {
        let cls = tensor(&[1., 2.], &[1, 1, 2]);
        let y = expand(&Inputs::new(&[Some(&cls), Some(&ints(&[3, 1, 1]))])).unwrap();
        assert_eq!(y.dims(), [3, 1, 2]);
        assert_eq!(values(&y), [1., 2., 1., 2., 1., 2.]);
    }

    #[test]
    fn split_by_sizes_or_into_equal_parts_with_a_smaller_last() {
        let x = tensor(&[0., 1., 2., 3., 4.], &[1, 5]);
        let parts = split(&Inputs::new(&[Some(&x), Some(&ints(&[2, 3]))]), 1, &None, 2).unwrap();
        assert_eq!(values(&parts[1]), [2., 3., 4.]);
        let parts = split(&Inputs::new(&[Some(&x)]), -1, &None, 3).unwrap();
        let sizes: Vec<usize> = parts.iter().map(|p| p.dims()[1]).collect();
        assert_eq!(sizes, [2, 2, 1]);
        let e = split(&Inputs::new(&[Some(&x)]), 1, &Some(vec![1, 1]), 2).unwrap_err();
        assert!(e.to_string().contains("[1, 1]"), "{e}");
    }

    #[test]
    fn range_counts_in_the_inputs_type() {
        let y = range(&Inputs::new(&[
            Some(&ints(&[0])),
            Some(&ints(&[7])),
            Some(&ints(&[3])),
        ]))
        .unwrap();
        assert_eq!(y.to_vec1::<i64>().unwrap(), [0, 3, 6]);
        let f = |v: f32| tensor(&[v], &[]);
        let y = range(&Inputs::new(&[
            Some(&f(1.0)),
            Some(&f(0.0)),
            Some(&f(-0.25)),
        ]))
        .unwrap();
        assert_eq!(values(&y), [1.0, 0.75, 0.5, 0.25]);
    }

    #[test]
    fn shapes_beyond_any_image_model_are_refused_before_allocating() {
        let x = tensor(&[1.0], &[1, 1]);
        let huge = ints(&[1 << 20, 1 << 20]);
        let e = expand(&Inputs::new(&[Some(&x), Some(&huge)])).unwrap_err();
        assert!(e.to_string().contains("Expand: output shape"), "{e}");
        let e = tile(&Inputs::new(&[Some(&x), Some(&huge)])).unwrap_err();
        assert!(e.to_string().contains("Tile: output shape"), "{e}");
    }

    #[test]
    fn tile_repeats_each_axis() {
        let x = tensor(&[1., 2.], &[1, 2]);
        let y = tile(&Inputs::new(&[Some(&x), Some(&ints(&[2, 2]))])).unwrap();
        assert_eq!(y.dims(), [2, 4]);
        assert_eq!(values(&y), [1., 2., 1., 2., 1., 2., 1., 2.]);
    }
}
