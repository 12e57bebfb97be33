//! Device kernels of the project's own, as candle custom ops: depthwise
//! convolution ([`Depthwise`]) and a convolution's epilogue, bias +
//! activation (+ residual) in one pass ([`bias_act`]).
//!
//! Each op has two implementations that compute the same thing index for
//! index: a CUDA kernel (`ops.cu`, compiled to PTX by `build.rs` when the
//! `cuda` feature is on) and a plain CPU loop (`DeviceOp::cpu`). The CPU
//! loop is the reference the tests check against the fixtures (the portable
//! path, [`crate::portable`], forced onto the CPU); the GPU check
//! (`tools/gpu/gpu-check.sh`) checks the kernels on a GPU.
//!
//! Both take NCHW inputs (made contiguous by the callers) in f32, f16 or
//! bf16 and compute in f32.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::layers::Act;

/// The activation's code in `ops.cu` (`ACT_*`).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn act_code(act: Act) -> i32 {
    match act {
        Act::None => 0,
        Act::Relu => 1,
        Act::Relu6 => 2,
    }
}

fn activate(v: f32, act: Act) -> f32 {
    match act {
        Act::None => v,
        Act::Relu => v.max(0.0),
        Act::Relu6 => v.clamp(0.0, 6.0),
    }
}

/// An op written once for both backends, over a slice of its inputs: `cpu`
/// is the reference loop, `cuda` the kernel launch. `custom_op!` makes it
/// a candle custom op.
trait DeviceOp {
    fn cpu(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)>;

    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        inputs: &[(&candle_core::CudaStorage, &Layout)],
    ) -> Result<(candle_core::CudaStorage, Shape)>;
}

/// `impl $op for $ty` (`CustomOp2` / `CustomOp3`, one `(storage, layout)`
/// pair per input) over the type's [`DeviceOp`].
macro_rules! custom_op {
    ($op:ident for $ty:ty, $name:literal, $(($s:ident, $l:ident)),+) => {
        impl $op for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(&self, $($s: &CpuStorage, $l: &Layout),+) -> Result<(CpuStorage, Shape)> {
                self.cpu(&[$(($s, $l)),+])
            }

            #[cfg(feature = "cuda")]
            fn cuda_fwd(
                &self,
                $($s: &candle_core::CudaStorage, $l: &Layout),+
            ) -> Result<(candle_core::CudaStorage, Shape)> {
                self.cuda(&[$(($s, $l)),+])
            }
        }
    };
}

/// `act(conv_out + bias[c]) (+ residual)` over an NCHW tensor: the bias is
/// `(C,)`, the residual (if any) has `x`'s shape.
pub fn bias_act(x: &Tensor, bias: &Tensor, act: Act, residual: Option<&Tensor>) -> Result<Tensor> {
    let (_, c, h, w) = x.dims4()?;
    if bias.dims() != [c] {
        candle_core::bail!("bias_act: bias {:?} for {c} channels", bias.dims())
    }
    let op = BiasAct { act, plane: h * w };
    let x = x.contiguous()?;
    match residual {
        None => x.apply_op2_no_bwd(bias, &op),
        Some(r) => {
            if r.dims() != x.dims() {
                candle_core::bail!("bias_act: residual {:?} for {:?}", r.dims(), x.dims())
            }
            x.apply_op3_no_bwd(bias, &r.contiguous()?, &op)
        }
    }
}

/// The geometry of a depthwise convolution: kernel, stride, padding before
/// the first row / column (the output size says how much after).
#[derive(Debug, Clone, Copy)]
pub struct Depthwise {
    pub kernel: (usize, usize),
    pub stride: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out: (usize, usize),
    pub in_act: Act,
    pub out_act: Act,
}

impl Depthwise {
    /// `out_act(bias + depthwise(in_act(x)))` with weights `(C, kh, kw)` and
    /// bias `(C,)`.
    pub fn forward(&self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        let (kh, kw) = self.kernel;
        if weight.dims() != [c, kh, kw] || bias.dims() != [c] {
            candle_core::bail!(
                "depthwise: weights {:?} / bias {:?} for {c} channels of {kh}x{kw}",
                weight.dims(),
                bias.dims()
            )
        }
        x.contiguous()?
            .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, self)
    }

    fn out_shape(&self, x: &Layout) -> Result<Shape> {
        let (n, c, _, _) = x.shape().dims4()?;
        Ok(Shape::from((n, c, self.out.0, self.out.1)))
    }

    /// The CPU reference: the kernel's loop body for every output element
    /// (planes in parallel; within a plane, element `i` is `(oy, ox)` as in
    /// the kernel's decomposition of its flat index).
    fn reference(
        &self,
        x: &[f32],
        dims: (usize, usize, usize, usize),
        w: &[f32],
        b: &[f32],
    ) -> Vec<f32> {
        use rayon::prelude::*;
        let (n, c, h, wd) = dims;
        let (oh, ow) = self.out;
        let (kh, kw) = self.kernel;
        let mut y = vec![0f32; n * c * oh * ow];
        y.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(plane, out)| {
                let ch = plane % c;
                let src = &x[plane * h * wd..(plane + 1) * h * wd];
                let taps = &w[ch * kh * kw..(ch + 1) * kh * kw];
                for (i, out) in out.iter_mut().enumerate() {
                    let (oy, ox) = (i / ow, i % ow);
                    let iy0 = (oy * self.stride) as isize - self.pad_top as isize;
                    let ix0 = (ox * self.stride) as isize - self.pad_left as isize;
                    let mut acc = 0f32;
                    for ky in 0..kh {
                        let iy = iy0 + ky as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = ix0 + kx as isize;
                            if ix < 0 || ix >= wd as isize {
                                continue;
                            }
                            acc += activate(src[iy as usize * wd + ix as usize], self.in_act)
                                * taps[ky * kw + kx];
                        }
                    }
                    *out = activate(acc + b[ch], self.out_act);
                }
            });
        y
    }
}

impl DeviceOp for Depthwise {
    fn cpu(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let [(x, l1), (w, l2), (b, l3)] = inputs else {
            candle_core::bail!("depthwise: takes (x, weight, bias)")
        };
        let y = self.reference(
            &cpu::to_f32(x, l1)?,
            l1.shape().dims4()?,
            &cpu::to_f32(w, l2)?,
            &cpu::to_f32(b, l3)?,
        );
        Ok((cpu::from_f32(x, y)?, self.out_shape(l1)?))
    }

    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        inputs: &[(&candle_core::CudaStorage, &Layout)],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let l1 = inputs[0].1;
        let shape = self.out_shape(l1)?;
        let (_, c, h, w) = l1.shape().dims4()?;
        let (oh, ow) = self.out;
        let (kh, kw) = self.kernel;
        let ints = [
            c,
            h,
            w,
            oh,
            ow,
            kh,
            kw,
            self.stride,
            self.pad_top,
            self.pad_left,
        ];
        let ints: Vec<i32> = ints
            .iter()
            .map(|&v| launch::int(v))
            .chain([Ok(act_code(self.in_act)), Ok(act_code(self.out_act))])
            .collect::<Result<_>>()?;
        let y = launch::launch("depthwise", inputs, shape.elem_count(), &ints, &[])?;
        Ok((y, shape))
    }
}

custom_op!(CustomOp3 for Depthwise, "runner-depthwise", (s1, l1), (s2, l2), (s3, l3));

/// A convolution's epilogue: see [`bias_act`].
#[derive(Debug, Clone, Copy)]
struct BiasAct {
    act: Act,
    /// H * W: consecutive elements that share a channel.
    plane: usize,
}

impl DeviceOp for BiasAct {
    /// `(x, bias[, residual])`: the kernel's loop.
    fn cpu(&self, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let (x, l1) = inputs[0];
        let c = inputs[1].1.shape().elem_count();
        let b = cpu::to_f32(inputs[1].0, inputs[1].1)?;
        let r = inputs.get(2).map(|(s, l)| cpu::to_f32(s, l)).transpose()?;
        let y: Vec<f32> = cpu::to_f32(x, l1)?
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let v = activate(v + b[(i / self.plane) % c], self.act);
                r.as_ref().map_or(v, |r| v + r[i])
            })
            .collect();
        Ok((cpu::from_f32(x, y)?, l1.shape().clone()))
    }

    /// `bias_act` or, with a residual, `bias_act_residual`.
    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        inputs: &[(&candle_core::CudaStorage, &Layout)],
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let shape = inputs[0].1.shape().clone();
        let kernel = if inputs.len() == 3 {
            "bias_act_residual"
        } else {
            "bias_act"
        };
        let c = launch::int(inputs[1].1.shape().elem_count())?;
        let wide = [(self.plane as i64, act_code(self.act))];
        let y = launch::launch(kernel, inputs, shape.elem_count(), &[c], &wide)?;
        Ok((y, shape))
    }
}

custom_op!(CustomOp2 for BiasAct, "runner-bias-act", (s1, l1), (s2, l2));
custom_op!(
    CustomOp3 for BiasAct,
    "runner-bias-act-residual",
    (s1, l1),
    (s2, l2),
    (s3, l3)
);

/// CPU storage to and from f32 (the reference loops compute in f32, as the
/// kernels do).
mod cpu {
    use candle_core::backend::BackendStorage;
    use candle_core::{CpuStorage, Layout, Result};
    use half::{bf16, f16};

    fn contiguous<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
        match l.contiguous_offsets() {
            Some((start, end)) => Ok(&v[start..end]),
            None => candle_core::bail!("runner device op: input not contiguous"),
        }
    }

    pub fn to_f32(s: &CpuStorage, l: &Layout) -> Result<Vec<f32>> {
        Ok(match s {
            CpuStorage::F32(v) => contiguous(v, l)?.to_vec(),
            CpuStorage::F16(v) => contiguous(v, l)?.iter().map(|x| x.to_f32()).collect(),
            CpuStorage::BF16(v) => contiguous(v, l)?.iter().map(|x| x.to_f32()).collect(),
            other => candle_core::bail!("runner device op: {:?} input", other.dtype()),
        })
    }

    /// `y` in the dtype of `like`.
    pub fn from_f32(like: &CpuStorage, y: Vec<f32>) -> Result<CpuStorage> {
        Ok(match like {
            CpuStorage::F32(_) => CpuStorage::F32(y),
            CpuStorage::F16(_) => CpuStorage::F16(y.into_iter().map(f16::from_f32).collect()),
            CpuStorage::BF16(_) => CpuStorage::BF16(y.into_iter().map(bf16::from_f32).collect()),
            other => candle_core::bail!("runner device op: {:?} input", other.dtype()),
        })
    }
}

/// Launching the kernels of `ops.cu`.
#[cfg(feature = "cuda")]
mod launch {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{CudaStorage, Layout, Result};

    /// The PTX that build.rs compiled from `ops.cu`.
    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/ops.ptx"));
    const MODULE: &str = "runner_device_kernels";

    pub fn int(v: usize) -> Result<i32> {
        i32::try_from(v)
            .map_err(|_| candle_core::Error::Msg(format!("{v} too large for a kernel argument")))
    }

    /// Runs `{kernel}_{dtype}(inputs..., out, total, ints..., (i64, i32) pairs...)`
    /// with one thread per output element (grid-stride: the grid is capped)
    /// and returns the new output buffer of `total` elements.
    pub fn launch(
        kernel: &str,
        inputs: &[(&CudaStorage, &Layout)],
        total: usize,
        ints: &[i32],
        wide: &[(i64, i32)],
    ) -> Result<CudaStorage> {
        let dev = inputs[0].0.device().clone();
        let blocks = total.div_ceil(256).clamp(1, 1 << 20) as u32;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        macro_rules! run {
            ($variant:ident, $t:ty, $suffix:literal) => {{
                let mut views = Vec::with_capacity(inputs.len());
                for (s, l) in inputs {
                    let CudaStorageSlice::$variant(slice) = &s.slice else {
                        candle_core::bail!("{kernel}: inputs of mixed dtypes")
                    };
                    let Some((start, end)) = l.contiguous_offsets() else {
                        candle_core::bail!("{kernel}: input not contiguous")
                    };
                    views.push(slice.slice(start..end));
                }
                let func =
                    dev.get_or_load_custom_func(&format!("{kernel}_{}", $suffix), MODULE, PTX)?;
                // SAFETY: the kernel writes every one of the `total` elements.
                let mut out = unsafe { dev.alloc::<$t>(total)? };
                let total = total as i64;
                let mut b = func.builder();
                for v in &views {
                    b.arg(v);
                }
                // `&mut`: cudarc records the kernel's write (event tracking).
                b.arg(&mut out);
                b.arg(&total);
                for v in ints {
                    b.arg(v);
                }
                for (w, i) in wide {
                    b.arg(w);
                    b.arg(i);
                }
                // SAFETY: argument order and types match ops.cu's signatures.
                unsafe { b.launch(cfg) }.w()?;
                CudaStorageSlice::$variant(out)
            }};
        }
        let slice = match &inputs[0].0.slice {
            CudaStorageSlice::F32(_) => run!(F32, f32, "f32"),
            CudaStorageSlice::F16(_) => run!(F16, half::f16, "f16"),
            CudaStorageSlice::BF16(_) => run!(BF16, half::bf16, "bf16"),
            _ => candle_core::bail!("{kernel}: {:?} input", inputs[0].0.dtype()),
        };
        Ok(CudaStorage { slice, device: dev })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.to_vec1())
            .expect("f32 values")
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let (a, b) = (values(a), values(b));
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "element {i}: {x} vs {y}"
            );
        }
    }

    /// The same depthwise convolution with candle's grouped convolution
    /// (slow, one convolution per channel, but an independent reference).
    fn grouped_reference(x: &Tensor, w: &Tensor, b: &Tensor, op: &Depthwise) -> Tensor {
        let (c, kh, kw) = w.dims3().unwrap();
        let x = match op.in_act {
            Act::None => x.clone(),
            Act::Relu => x.relu().unwrap(),
            Act::Relu6 => x.clamp(0f32, 6f32).unwrap(),
        };
        let (_, _, h, wd) = x.dims4().unwrap();
        let (oh, ow) = op.out;
        let bottom = ((oh - 1) * op.stride + kh).saturating_sub(h + op.pad_top);
        let right = ((ow - 1) * op.stride + kw).saturating_sub(wd + op.pad_left);
        let x = x
            .pad_with_zeros(2, op.pad_top, bottom)
            .unwrap()
            .pad_with_zeros(3, op.pad_left, right)
            .unwrap();
        let y = x
            .conv2d(&w.reshape((c, 1, kh, kw)).unwrap(), 0, op.stride, 1, c)
            .unwrap()
            .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
            .unwrap();
        match op.out_act {
            Act::None => y,
            Act::Relu => y.relu().unwrap(),
            Act::Relu6 => y.clamp(0f32, 6f32).unwrap(),
        }
    }

    #[test]
    fn depthwise_matches_grouped_convolution_with_padding_stride_and_activations() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (2, 3, 9, 8), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 3, 3), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 3, &dev).unwrap();
        for (stride, pad, out, acts) in [
            (1, (1, 1), (9, 8), (Act::None, Act::None)),
            (2, (0, 0), (4, 3), (Act::Relu, Act::Relu6)),
            (2, (1, 0), (5, 3), (Act::None, Act::Relu)),
        ] {
            let op = Depthwise {
                kernel: (3, 3),
                stride,
                pad_top: pad.0,
                pad_left: pad.1,
                out,
                in_act: acts.0,
                out_act: acts.1,
            };
            let y = op.forward(&x, &w, &b).unwrap();
            assert_eq!(y.dims(), [2, 3, out.0, out.1]);
            close(&y, &grouped_reference(&x, &w, &b, &op), 1e-5);
        }
    }

    #[test]
    fn bias_act_adds_per_channel_bias_then_activates_then_adds_residual() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 3.0, (2, 4, 3, 5), &dev).unwrap();
        let b = Tensor::new(&[1f32, -1.0, 0.5, 7.0], &dev).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 4, 3, 5), &dev).unwrap();
        let expected = x
            .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
            .unwrap()
            .clamp(0f32, 6f32)
            .unwrap();
        close(
            &bias_act(&x, &b, Act::Relu6, None).unwrap(),
            &expected,
            1e-6,
        );
        close(
            &bias_act(&x, &b, Act::Relu6, Some(&r)).unwrap(),
            &(expected + &r).unwrap(),
            1e-6,
        );
        // In f16 the result comes back in f16.
        let y = bias_act(
            &x.to_dtype(DType::F16).unwrap(),
            &b.to_dtype(DType::F16).unwrap(),
            Act::Relu,
            None,
        )
        .unwrap();
        assert_eq!(y.dtype(), DType::F16);
    }
}
