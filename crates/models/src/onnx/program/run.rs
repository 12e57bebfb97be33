//! Running a lowered [`Program`]: constants into their slots, then each
//! step in order, dropping each value after its last reader.

use std::borrow::Cow;

use candle_core::{DType, Tensor};

use super::{Kernel, Program, Step};
use crate::onnx::ops::Op;

impl Program {
    /// Runs the program on `x` (the graph input) and returns the output.
    pub fn run(&self, x: Tensor) -> candle_core::Result<Tensor> {
        let mut slots: Vec<Option<Tensor>> = vec![None; self.slots];
        let constants = self.constants_for(&x)?;
        for (s, t) in constants.iter() {
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

    /// The constants as steps on `x` read them: float ones on `x`'s device
    /// in `x`'s precision (converted once, then cached for the next runs
    /// unless another device or precision was cached first), integer ones
    /// (shape arithmetic) on the CPU, where `Shape` puts its results.
    fn constants_for(&self, x: &Tensor) -> candle_core::Result<Cow<'_, [(usize, Tensor)]>> {
        let device = x.device();
        if device.is_cpu() && x.dtype() == DType::F32 {
            return Ok(Cow::Borrowed(&self.constants));
        }
        let cached = self.device_constants.get().filter(|c| {
            c.iter().all(|(_, t)| {
                t.dtype() == DType::I64
                    || (t.device().same_device(device) && t.dtype() == x.dtype())
            })
        });
        if let Some(c) = cached {
            return Ok(Cow::Borrowed(c));
        }
        let moved = self
            .constants
            .iter()
            .map(|(s, t)| {
                let t = match t.dtype() {
                    DType::I64 => t.clone(),
                    _ => t.to_device(device)?.to_dtype(x.dtype())?,
                };
                Ok((*s, t))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(match self.device_constants.set(moved) {
            Ok(()) => Cow::Borrowed(self.device_constants.get().expect("just set")),
            Err(moved) => Cow::Owned(moved),
        })
    }
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
            Kernel::Op(op) => {
                return crate::profile::time(
                    || {
                        let flops = match self.op_type.as_str() {
                            "MatMul" | "Gemm" => {
                                matmul_flops(ins, matches!(op, Op::MatMul { trans_b: true, .. }))
                            }
                            _ => 0.0,
                        };
                        // Products of two activations (attention) apart
                        // from products with a weight matrix.
                        let batched = matches!(ins, [_, Some(b), ..] if b.rank() > 2);
                        let kind = if self.op_type == "MatMul" && batched {
                            " (batched)"
                        } else {
                            ""
                        };
                        (format!("onnx {}{kind}", self.op_type), flops)
                    },
                    || op.eval(ins),
                );
            }
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

/// `2 M N K` times the batch of a product's inputs: the profile's GFLOP/s
/// for `MatMul` and `Gemm`.
fn matmul_flops(ins: &[Option<&Tensor>], trans_b: bool) -> f64 {
    match ins {
        [Some(a), Some(b), ..] if a.rank() >= 2 && b.rank() >= 2 => {
            let (m, k) = (a.dims()[a.rank() - 2], a.dims()[a.rank() - 1]);
            // `B` may be given transposed (`n x k`).
            let n = b.dims()[b.rank() - if trans_b { 2 } else { 1 }];
            let batch: usize = a.dims()[..a.rank() - 2].iter().product();
            2.0 * (batch * m * n * k) as f64
        }
        _ => 0.0,
    }
}
