//! Shared building blocks of the native backbones: a checkpoint reader that
//! names missing tensors, BatchNorm folding, TF/Keras "same" padding, and
//! inference-only CPU kernels where candle is slow or lacks the operation.
//!
//! Every layer is inference-only and keeps its weights in f32. BatchNorm is
//! folded into the preceding convolution at load time, so a convolution here is
//! always `act(conv(x, w) + b)`; the bias and activation (and a residual) run
//! in the GEMM's epilogue while each output block is still in cache, instead
//! of candle's two broadcast passes.
//!
//! Kernels of our own (contiguous f32 NCHW):
//! - [`Conv2d`]: every dense convolution is one GEMM per image with
//!   [`runner_kernels`] (AVX-512 / AVX2 micro-kernels), `W (O, C*kh*kw) @
//!   im2col(x)`, or `W @ x` for 1x1 stride-1 kernels; 1.3-3x candle 0.11's
//!   matmul on most of our shapes, on par at 7x7-10x10 outputs
//!   (`benches/backbones.rs`).
//! - [`DepthwiseConv2d`] (rayon over the `N * C` planes): candle's grouped convolution splits the input into
//!   one convolution per channel and is 7-10x slower than a direct kernel
//!   (see `DESIGN.md`); ours takes any asymmetric padding, fuses an optional
//!   ReLU on its input (Xception's `relu -> SeparableConv2D`), the folded bias
//!   and an output activation.
//! - [`max_pool2d`]: padded positions never win (`-inf` semantics, as Keras'
//!   `MaxPooling2D(padding="same")`).
//! - [`avg_pool2d_same_exclude_pad`]: Keras `AveragePooling2D(padding="same")`,
//!   which divides by the number of in-bounds taps.
//!
//! These kernels run on the CPU only for now; on another device they return an
//! error naming the operation.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Device, Layout, Shape, Tensor};

use super::portable;
use super::profile;
use super::ModelError;
use runner_kernels::nchwc;
pub use runner_kernels::Act;
use runner_kernels::window::{Clamp, Window, WindowKind};
use runner_kernels::{self as kernels, ConvGeometry, Im2Col, MatRef, Output, PackedA};

/// Keras `BatchNormalization` default epsilon (also EfficientNet-Lite's
/// `batch_norm_epsilon`).
pub const BN_EPS: f32 = 1e-3;

// ---------------------------------------------------------------------------
// Checkpoint access
// ---------------------------------------------------------------------------

/// All tensors of one safetensors checkpoint, read onto the CPU, with lookups
/// that report the missing or misshapen tensor by name.
pub struct Weights {
    arch: &'static str,
    path: String,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Reads every tensor of `path` (any float dtype; converted to f32 on use):
    /// a Keras-2 `.h5` / `.hdf5` weights file ([`super::h5`]), a PyTorch
    /// `.pth` / `.pt` / `.bin` checkpoint ([`super::pth`]), else safetensors.
    pub fn read(arch: &'static str, path: &Path) -> Result<Self, ModelError> {
        let is_h5 = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("h5") || e.eq_ignore_ascii_case("hdf5"));
        let tensors = if is_h5 {
            super::h5::read_keras_weights(path).map_err(|e| ModelError::Load {
                arch,
                path: path.display().to_string(),
                // Not `Error::wrap`: its backtrace would be printed as part of
                // the message.
                source: candle_core::Error::Wrapped(Box::new(e.detail)),
            })?
        } else if super::pth::is_pytorch_checkpoint(path) {
            // `.pth` / `.pt` / `.bin`: a `torch.save` zip (state dict).
            super::pth::read(path).map_err(|source| ModelError::Load {
                arch,
                path: path.display().to_string(),
                source,
            })?
        } else {
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|source| {
                ModelError::Load {
                    arch,
                    path: path.display().to_string(),
                    source,
                }
            })?
        };
        Ok(Self {
            arch,
            path: path.display().to_string(),
            tensors,
        })
    }

    /// `(name, dims, dtype)` of every tensor (`runner inspect`).
    pub fn summary(&self) -> Vec<(String, Vec<usize>, String)> {
        self.tensors
            .iter()
            .map(|(n, t)| {
                let dtype = format!("{:?}", t.dtype()).to_lowercase();
                (n.clone(), t.dims().to_vec(), dtype)
            })
            .collect()
    }

    /// BLAKE3 of the checkpoint's contents, independent of its container:
    /// names in sorted order, each with its dims and its values as f32
    /// (exact for f16 / bf16 sources). The same weights as safetensors or
    /// Keras `.h5` give the same fingerprint and so share cached features.
    pub fn fingerprint(&self) -> Result<String, ModelError> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let mut hasher = blake3::Hasher::new();
        for name in names {
            let t = &self.tensors[name];
            hasher.update(name.as_bytes());
            hasher.update(format!("{:?}", t.dims()).as_bytes());
            let values = t
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| self.candle_err(e))?;
            for chunk in values.chunks(1 << 16) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
                hasher.update(&bytes);
            }
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// Wraps an already-loaded map (tests, other containers).
    pub fn from_tensors(arch: &'static str, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            arch,
            path: "<memory>".to_string(),
            tensors,
        }
    }

    pub fn arch(&self) -> &'static str {
        self.arch
    }

    /// A candle error while building a layer from this checkpoint.
    pub fn candle_err(&self, source: candle_core::Error) -> ModelError {
        ModelError::Load {
            arch: self.arch,
            path: self.path.clone(),
            source,
        }
    }

    /// Tensor `name` of this checkpoint has dims `found` where the
    /// architecture needs `expected`.
    pub fn shape_err(&self, name: &str, expected: Vec<usize>, found: Vec<usize>) -> ModelError {
        ModelError::ShapeMismatch {
            arch: self.arch,
            path: self.path.clone(),
            name: name.to_string(),
            expected,
            found,
        }
    }

    /// The tensor `name` as f32 with exactly the dims `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                arch: self.arch,
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        if t.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                arch: self.arch,
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        t.to_dtype(DType::F32).map_err(|e| self.candle_err(e))
    }

    /// The dims of tensor `name` (to infer channel counts from the checkpoint).
    pub fn dims(&self, name: &str) -> Result<Vec<usize>, ModelError> {
        self.tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| ModelError::MissingTensor {
                arch: self.arch,
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// Whether the checkpoint holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// `name` with dims `shape`, permuted by `perm`, flattened row-major.
    pub fn get_vec(
        &self,
        name: &str,
        shape: &[usize],
        perm: Option<&[usize]>,
    ) -> Result<Vec<f32>, ModelError> {
        let t = self.get(name, shape)?;
        let t = match perm {
            Some(p) => t.permute(p.to_vec()).map_err(|e| self.candle_err(e))?,
            None => t,
        };
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.candle_err(e))
    }

    /// A 1-D vector of length `n`.
    pub fn vec1(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        self.get_vec(name, &[n], None)
    }

    /// Keras conv kernel `(kh, kw, I, O)` (HWIO) -> OIHW, flattened.
    pub fn keras_conv_kernel(&self, name: &str) -> Result<(Vec<f32>, [usize; 4]), ModelError> {
        let d = self.dims(name)?;
        let [kh, kw, ci, co] = dims4_of(self, name, &d)?;
        let v = self.get_vec(name, &d, Some(&[3, 2, 0, 1]))?;
        Ok((v, [co, ci, kh, kw]))
    }

    /// Keras depthwise kernel `(kh, kw, C, 1)` -> `(C, kh, kw)`, flattened.
    pub fn keras_depthwise_kernel(&self, name: &str) -> Result<(Vec<f32>, [usize; 3]), ModelError> {
        let d = self.dims(name)?;
        let [kh, kw, c, m] = dims4_of(self, name, &d)?;
        if m != 1 {
            return Err(ModelError::ShapeMismatch {
                arch: self.arch,
                path: self.path.clone(),
                name: name.to_string(),
                expected: vec![kh, kw, c, 1],
                found: d,
            });
        }
        let v = self.get_vec(name, &d, Some(&[2, 3, 0, 1]))?;
        Ok((v, [c, kh, kw]))
    }

    /// A BatchNorm's parameters, as `(gamma, beta, mean, var)`; `gamma` is
    /// `None` when the layer has none (Keras `scale=False`), `beta` likewise
    /// (`center=False`).
    pub fn bn(&self, names: BnNames, c: usize) -> Result<BatchNorm, ModelError> {
        let gamma = if self.contains(&names.gamma) || names.gamma_required {
            Some(self.vec1(&names.gamma, c)?)
        } else {
            None
        };
        let beta = if self.contains(&names.beta) {
            Some(self.vec1(&names.beta, c)?)
        } else {
            None
        };
        Ok(BatchNorm {
            gamma,
            beta,
            mean: self.vec1(&names.mean, c)?,
            var: self.vec1(&names.var, c)?,
            eps: names.eps,
        })
    }

    /// Keras-2 BatchNormalization `LAYER/{gamma,beta,moving_mean,moving_variance}`.
    pub fn keras_bn(&self, layer: &str, c: usize, scale: bool) -> Result<BatchNorm, ModelError> {
        self.bn(
            BnNames {
                gamma: format!("{layer}/gamma"),
                gamma_required: scale,
                beta: format!("{layer}/beta"),
                mean: format!("{layer}/moving_mean"),
                var: format!("{layer}/moving_variance"),
                eps: BN_EPS,
            },
            c,
        )
    }

    /// PyTorch BatchNorm2d `PREFIX.{weight,bias,running_mean,running_var}`.
    pub fn torch_bn(&self, prefix: &str, c: usize, eps: f32) -> Result<BatchNorm, ModelError> {
        self.bn(
            BnNames {
                gamma: format!("{prefix}.weight"),
                gamma_required: true,
                beta: format!("{prefix}.bias"),
                mean: format!("{prefix}.running_mean"),
                var: format!("{prefix}.running_var"),
                eps,
            },
            c,
        )
    }

    /// Builds a tensor on `device` from folded parameters.
    pub fn tensor(
        &self,
        data: Vec<f32>,
        shape: &[usize],
        device: &Device,
    ) -> Result<Tensor, ModelError> {
        Tensor::from_vec(data, shape, device).map_err(|e| self.candle_err(e))
    }
}

fn dims4_of(w: &Weights, name: &str, d: &[usize]) -> Result<[usize; 4], ModelError> {
    match d {
        [a, b, c, e] => Ok([*a, *b, *c, *e]),
        _ => Err(ModelError::ShapeMismatch {
            arch: w.arch,
            path: w.path.clone(),
            name: name.to_string(),
            expected: vec![0, 0, 0, 0],
            found: d.to_vec(),
        }),
    }
}

/// Checkpoint names of one BatchNorm layer.
pub struct BnNames {
    pub gamma: String,
    pub gamma_required: bool,
    pub beta: String,
    pub mean: String,
    pub var: String,
    pub eps: f32,
}

/// Inference BatchNorm: `y = (x - mean) / sqrt(var + eps) * gamma + beta`.
pub struct BatchNorm {
    pub gamma: Option<Vec<f32>>,
    pub beta: Option<Vec<f32>>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: f32,
}

impl BatchNorm {
    /// Per-channel `(scale, shift)` with `bn(x) = x * scale + shift`, computed
    /// in f64 so that folding adds no rounding of its own.
    pub fn scale_shift(&self) -> (Vec<f32>, Vec<f32>) {
        let c = self.mean.len();
        let mut scale = Vec::with_capacity(c);
        let mut shift = Vec::with_capacity(c);
        for i in 0..c {
            let g = self.gamma.as_ref().map_or(1.0, |g| g[i] as f64);
            let b = self.beta.as_ref().map_or(0.0, |b| b[i] as f64);
            let s = g / (self.var[i] as f64 + self.eps as f64).sqrt();
            scale.push(s as f32);
            shift.push((b - self.mean[i] as f64 * s) as f32);
        }
        (scale, shift)
    }

    /// Folds this BatchNorm into a convolution whose output channel `o` owns
    /// `w[o * per_out .. (o + 1) * per_out]` and whose bias is `bias` (or 0).
    /// Returns the new bias.
    pub fn fold_into(&self, w: &mut [f32], bias: Option<&[f32]>) -> Vec<f32> {
        let (scale, shift) = self.scale_shift();
        let c = scale.len();
        let per_out = w.len() / c;
        for (o, chunk) in w.chunks_mut(per_out).enumerate() {
            let s = scale[o];
            chunk.iter_mut().for_each(|v| *v *= s);
        }
        (0..c)
            .map(|o| bias.map_or(0.0, |b| b[o]) * scale[o] + shift[o])
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Padding
// ---------------------------------------------------------------------------

/// Spatial padding rule of a convolution or pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// No padding (Keras `"valid"`).
    Valid,
    /// TF / Keras `"same"`: output `ceil(in / stride)`, total padding
    /// `max((out - 1) * stride + k - in, 0)`, the odd extra row / column at
    /// the bottom / right. Computed from the actual input size.
    Same,
    /// ONNX `auto_pad = "SAME_LOWER"`: as [`Padding::Same`] with the odd
    /// extra row / column at the top / left.
    SameLower,
    /// Fixed padding (ONNX `pads`, PyTorch `padding=`).
    Explicit(Pad4),
}

/// Padding of one forward call: `(top, bottom, left, right)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pad4 {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Pad4 {
    pub fn new(top: usize, bottom: usize, left: usize, right: usize) -> Self {
        Self {
            top,
            bottom,
            left,
            right,
        }
    }

    pub fn is_zero(self) -> bool {
        self == Pad4::default()
    }

    fn tblr(self) -> (usize, usize, usize, usize) {
        (self.top, self.bottom, self.left, self.right)
    }
}

/// The output size of a window op, or an error naming the shapes.
fn window_out(op: &Window<'_>, (h, w): (usize, usize)) -> candle_core::Result<(usize, usize)> {
    match op.out_size((h, w)) {
        Some(hw) => Ok(hw),
        None => candle_core::bail!(
            "window {:?} with padding {:?} does not fit a {h}x{w} input",
            op.kernel,
            op.pad
        ),
    }
}

/// TF "same" total padding split `(before, after)` for one axis.
pub fn same_pad_1d(input: usize, k: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out.saturating_sub(1)) * stride + k).saturating_sub(input);
    (total / 2, total - total / 2)
}

impl Padding {
    pub fn resolve(self, (h, w): (usize, usize), (kh, kw): (usize, usize), stride: usize) -> Pad4 {
        match self {
            Padding::Valid => Pad4::default(),
            Padding::Same => {
                let (top, bottom) = same_pad_1d(h, kh, stride);
                let (left, right) = same_pad_1d(w, kw, stride);
                Pad4 {
                    top,
                    bottom,
                    left,
                    right,
                }
            }
            Padding::SameLower => {
                let (bottom, top) = same_pad_1d(h, kh, stride);
                let (right, left) = same_pad_1d(w, kw, stride);
                Pad4 {
                    top,
                    bottom,
                    left,
                    right,
                }
            }
            Padding::Explicit(p) => p,
        }
    }
}

/// Output length of a window of size `k` over `input + pad` positions.
fn out_len(input: usize, pad: usize, k: usize, stride: usize) -> candle_core::Result<usize> {
    let span = input + pad;
    if span < k {
        candle_core::bail!("window {k} larger than padded input {span}")
    }
    Ok((span - k) / stride + 1)
}

// ---------------------------------------------------------------------------
// Activations, bias
// ---------------------------------------------------------------------------

/// An output buffer that the op overwrites completely before anything reads
/// it. Zeroing it first (`vec![0.0; len]`) costs a single-threaded pass over
/// up to 40 MB per op, as long as some of the ops themselves; this is the
/// same pattern as candle's own CPU kernels.
#[allow(clippy::uninit_vec)]
fn output_buffer(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: f32 has no invalid bit patterns and every caller writes all
    // `len` elements (the GEMM stores every tile of C, the window kernels
    // every output plane) before the tensor is handed out.
    unsafe { v.set_len(len) };
    v
}

fn cpu_f32<'a>(
    op: &'static str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(d) => d,
        _ => candle_core::bail!("{op}: expected an f32 input"),
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

fn dims4(op: &'static str, layout: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    match layout.dims() {
        [n, c, h, w] => Ok((*n, *c, *h, *w)),
        d => candle_core::bail!("{op}: expected an (N, C, H, W) input, got {d:?}"),
    }
}

// ---------------------------------------------------------------------------
// Dense convolution (our GEMM) with folded bias and fused activation
// ---------------------------------------------------------------------------

/// `act(conv2d(x, w) + b)`, with BatchNorm already folded into `w` and `b`.
pub struct Conv2d {
    /// OIHW, flattened (row `o` of the GEMM's `A (O x C*kh*kw)`), packed
    /// once for the micro-kernel.
    weight: PackedA,
    in_channels: usize,
    bias: Vec<f32>,
    k: (usize, usize),
    stride: usize,
    padding: Padding,
    act: Act,
    /// Copies for the portable path ([`portable`]), made on first use.
    device_weights: OnceLock<portable::DeviceWeights>,
}

impl Conv2d {
    /// From an OIHW kernel and a bias (BatchNorm already folded in).
    pub fn new(
        weight: Tensor,
        bias: Vec<f32>,
        stride: usize,
        padding: Padding,
        act: Act,
    ) -> candle_core::Result<Self> {
        let (o, c, kh, kw) = weight.dims4()?;
        if bias.len() != o {
            candle_core::bail!("conv2d: {o} output channels but {} biases", bias.len())
        }
        if stride == 0 {
            candle_core::bail!("conv2d: stride 0")
        }
        let weight = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let k = c * kh * kw;
        let weight = PackedA::best(
            MatRef {
                data: &weight,
                ld: k,
            },
            o,
            k,
        )
        .map_err(candle_core::Error::wrap)?;
        Ok(Self {
            weight,
            in_channels: c,
            bias,
            k: (kh, kw),
            stride,
            padding,
            act,
            device_weights: OnceLock::new(),
        })
    }

    /// The weights on `device` for the portable path.
    fn portable_weights(
        &self,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<portable::DeviceWeights> {
        let dims = [self.out_channels(), self.in_channels, self.k.0, self.k.1];
        let oihw = || self.weight.to_row_major();
        portable::DeviceWeights::cached(
            &self.device_weights,
            oihw,
            &dims,
            &self.bias,
            device,
            dtype,
        )
    }

    /// `forward` / `forward_add` with candle's ops, on `x`'s device.
    fn forward_portable(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let pad = self.padding.resolve((h, w), self.k, self.stride);
        let weights = self.portable_weights(x.device(), x.dtype())?;
        portable::conv2d(x, &weights, self.stride, pad, self.act, residual)
    }

    /// Keras `Conv2D(use_bias=False)` named `conv` followed by the
    /// BatchNormalization named `bn`, folded.
    #[allow(clippy::too_many_arguments)]
    pub fn keras_conv_bn(
        w: &Weights,
        conv: &str,
        bn: &str,
        bn_scale: bool,
        stride: usize,
        padding: Padding,
        act: Act,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let (mut k, shape) = w.keras_conv_kernel(&format!("{conv}/kernel"))?;
        let bias = w.keras_bn(bn, shape[0], bn_scale)?.fold_into(&mut k, None);
        let weight = w.tensor(k, &shape, device)?;
        Self::new(weight, bias, stride, padding, act).map_err(|e| w.candle_err(e))
    }

    pub fn out_channels(&self) -> usize {
        self.bias.len()
    }

    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// The output shape for an input of shape `dims`, if it fits.
    pub fn out_dims(&self, dims: &[usize]) -> Option<[usize; 4]> {
        let &[n, c, h, w] = dims else { return None };
        if c != self.in_channels {
            return None;
        }
        let p = self.padding.resolve((h, w), self.k, self.stride);
        let oh = out_len(h, p.top + p.bottom, self.k.0, self.stride).ok()?;
        let ow = out_len(w, p.left + p.right, self.k.1, self.stride).ok()?;
        Some([n, self.out_channels(), oh, ow])
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if portable::wanted(x) {
            return self.forward_portable(x, None);
        }
        let (_, _, h, w) = x.dims4()?;
        let pad = self.padding.resolve((h, w), self.k, self.stride);
        let x = x.contiguous()?;
        profile::time(
            || (self.label(), self.flops(x.dims(), pad)),
            || x.apply_op1_no_bwd(&ConvOp { conv: self, pad }),
        )
    }

    fn label(&self) -> String {
        format!("conv {}x{}/{}", self.k.0, self.k.1, self.stride)
    }

    /// Multiply-adds x 2 of one call on an input of shape `dims`.
    fn flops(&self, dims: &[usize], p: Pad4) -> f64 {
        let (kh, kw) = self.k;
        match dims {
            &[n, c, h, w] => {
                let oh = out_len(h, p.top + p.bottom, kh, self.stride).unwrap_or(0);
                let ow = out_len(w, p.left + p.right, kw, self.stride).unwrap_or(0);
                2.0 * (n * self.out_channels() * oh * ow * c * kh * kw) as f64
            }
            _ => 0.0,
        }
    }

    /// `act(conv(x) + b) + residual`.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        if portable::wanted(x) {
            return self.forward_portable(x, Some(residual));
        }
        let (_, _, h, w) = x.dims4()?;
        let pad = self.padding.resolve((h, w), self.k, self.stride);
        let x = x.contiguous()?;
        let residual = residual.contiguous()?;
        profile::time(
            || (self.label() + " +res", self.flops(x.dims(), pad)),
            || x.apply_op2_no_bwd(&residual, &ConvOp { conv: self, pad }),
        )
    }
}

/// One batched GEMM, `W (O, C*kh*kw) @ cols_t (C*kh*kw, OH*OW)` per image
/// `t`, whose result is already NCHW ([`kernels::gemm_packed`]): the weights
/// were packed at load, and each task packs its block of `cols_t` straight
/// from the image ([`Im2Col`], any stride and asymmetric padding), so no
/// column matrix is ever built. The folded bias, activation and residual run
/// in the GEMM's epilogue, on each block of the output while it is still in
/// cache.
struct ConvOp<'a> {
    conv: &'a Conv2d,
    pad: Pad4,
}

impl ConvOp<'_> {
    fn run(
        &self,
        x: &[f32],
        layout: &Layout,
        residual: Option<&[f32]>,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = dims4("conv2d", layout)?;
        let cv = self.conv;
        if c != cv.in_channels {
            candle_core::bail!("conv2d: input has {c} channels, kernel {}", cv.in_channels)
        }
        let (kh, kw) = cv.k;
        let (s, p) = (cv.stride, self.pad);
        let oh = out_len(h, p.top + p.bottom, kh, s)?;
        let ow = out_len(w, p.left + p.right, kw, s)?;
        let o = cv.out_channels();
        let plane = oh * ow;
        let mut out = output_buffer(n * o * plane);
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from((n, o, oh, ow))));
        }
        let geometry = ConvGeometry {
            chw: (c, h, w),
            kernel: (kh, kw),
            stride: s,
            top_left: (p.top, p.left),
            out: (oh, ow),
        };
        let images = x
            .chunks_exact(c * h * w)
            .map(|xi| Im2Col::new(xi, geometry))
            .collect::<Result<Vec<_>, _>>()
            .map_err(candle_core::Error::wrap)?;
        // One branch-free loop per row (the activation as a clamp), which
        // LLVM vectorises.
        let act = cv.act.clamp();
        let epilogue = |img: usize, row: usize, j0: usize, v: &mut [f32]| {
            let bias = cv.bias[row];
            match residual {
                Some(r) => {
                    let r = &r[(img * o + row) * plane + j0..][..v.len()];
                    for (v, &r) in v.iter_mut().zip(r) {
                        *v = act.apply(*v + bias) + r;
                    }
                }
                None => v.iter_mut().for_each(|v| *v = act.apply(*v + bias)),
            }
        };
        kernels::gemm_packed(
            &cv.weight,
            &images,
            Output {
                data: &mut out,
                ld: plane,
                image_stride: o * plane,
                accumulate: false,
            },
            Some(&epilogue),
        )
        .map_err(candle_core::Error::wrap)?;
        Ok((CpuStorage::F32(out), Shape::from((n, o, oh, ow))))
    }
}

impl candle_core::CustomOp1 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.run(cpu_f32("conv2d", s, l)?, l, None)
    }
}

impl candle_core::CustomOp2 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "conv2d_add"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, _, h, w) = dims4("conv2d_add", l1)?;
        let cv = self.conv;
        let (p, s) = (self.pad, cv.stride);
        let want = [
            n,
            cv.out_channels(),
            out_len(h, p.top + p.bottom, cv.k.0, s)?,
            out_len(w, p.left + p.right, cv.k.1, s)?,
        ];
        if l2.dims() != want {
            candle_core::bail!("conv2d_add: output {want:?} but residual {:?}", l2.dims())
        }
        let r = cpu_f32("conv2d_add", s2, l2)?;
        self.run(cpu_f32("conv2d_add", s1, l1)?, l1, Some(r))
    }
}

// ---------------------------------------------------------------------------
// Depthwise convolution (own kernel)
// ---------------------------------------------------------------------------

/// Depthwise convolution (one `kh x kw` filter per channel, multiplier 1):
/// `out_act(dw(in_act(x)) + b)`.
pub struct DepthwiseConv2d {
    /// `(C, kh, kw)`, row-major.
    weight: Vec<f32>,
    /// Folded bias (zeros when the layer had none).
    bias: Vec<f32>,
    channels: usize,
    k: (usize, usize),
    stride: usize,
    padding: Padding,
    /// Applied to the input before the convolution: ReLU commutes with zero
    /// padding, so `dw(relu(x)) == dw_in_relu(x)`.
    in_act: Act,
    out_act: Act,
    /// Copies for the portable path ([`portable`]), made on first use.
    device_weights: OnceLock<portable::DeviceWeights>,
}

impl DepthwiseConv2d {
    /// `weight` is `(C, kh, kw)` flattened; `bias` defaults to zeros.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        weight: Vec<f32>,
        (channels, kh, kw): (usize, usize, usize),
        bias: Option<Vec<f32>>,
        stride: usize,
        padding: Padding,
        in_act: Act,
        out_act: Act,
    ) -> candle_core::Result<Self> {
        if weight.len() != channels * kh * kw {
            candle_core::bail!(
                "depthwise_conv2d: {} weights for ({channels}, {kh}, {kw})",
                weight.len()
            )
        }
        let bias = bias.unwrap_or_else(|| vec![0.0; channels]);
        if bias.len() != channels {
            candle_core::bail!(
                "depthwise_conv2d: {channels} channels but {} biases",
                bias.len()
            )
        }
        if stride == 0 {
            candle_core::bail!("depthwise_conv2d: stride 0")
        }
        Ok(Self {
            weight,
            bias,
            channels,
            k: (kh, kw),
            stride,
            padding,
            in_act,
            out_act,
            device_weights: OnceLock::new(),
        })
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The weights on `device` for the portable path.
    fn portable_weights(
        &self,
        device: &Device,
        dtype: DType,
    ) -> candle_core::Result<portable::DeviceWeights> {
        let dims = [self.channels, self.k.0, self.k.1];
        let w = || self.weight.clone();
        portable::DeviceWeights::cached(&self.device_weights, w, &dims, &self.bias, device, dtype)
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let pad = self.padding.resolve((h, w), self.k, self.stride);
        if portable::wanted(x) {
            let weights = self.portable_weights(x.device(), x.dtype())?;
            let s = self.stride;
            return portable::depthwise(x, &weights, s, pad, self.in_act, self.out_act);
        }
        profile::time(
            || {
                let (s, (kh, kw)) = (self.stride, self.k);
                let flops = 2.0 * (x.elem_count() / s / s * kh * kw) as f64;
                (format!("depthwise {kh}x{kw}/{s}"), flops)
            },
            || depthwise_conv2d(x, self, pad),
        )
    }
}

/// Runs `dw` with explicit padding `pad` (CPU, f32).
pub fn depthwise_conv2d(
    x: &Tensor,
    dw: &DepthwiseConv2d,
    pad: Pad4,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&DepthwiseOp { dw, pad })
}

struct DepthwiseOp<'a> {
    dw: &'a DepthwiseConv2d,
    pad: Pad4,
}

impl candle_core::CustomOp1 for DepthwiseOp<'_> {
    fn name(&self) -> &'static str {
        "depthwise_conv2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32("depthwise_conv2d", s, l)?;
        let (n, c, h, w) = dims4("depthwise_conv2d", l)?;
        let dw = self.dw;
        if c != dw.channels {
            candle_core::bail!(
                "depthwise_conv2d: input has {c} channels, kernel {}",
                dw.channels
            )
        }
        let op = Window {
            kind: WindowKind::Depthwise {
                weights: &dw.weight,
                bias: &dw.bias,
            },
            kernel: dw.k,
            stride: dw.stride,
            pad: self.pad.tblr(),
            in_act: dw.in_act.clamp(),
            out_act: dw.out_act.clamp(),
        };
        let (oh, ow) = window_out(&op, (h, w))?;
        let mut out = output_buffer(n * c * oh * ow);
        op.run(x, (n, c, h, w), &mut out);
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

// ---------------------------------------------------------------------------
// Pooling (own kernels)
// ---------------------------------------------------------------------------

struct MaxPoolOp {
    k: (usize, usize),
    stride: usize,
    pad: Pad4,
}

impl candle_core::CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32("max_pool2d", s, l)?;
        let (n, c, h, w) = dims4("max_pool2d", l)?;
        let op = Window {
            kind: WindowKind::Max,
            kernel: self.k,
            stride: self.stride,
            pad: self.pad.tblr(),
            in_act: Clamp::NONE,
            out_act: Clamp::NONE,
        };
        let (oh, ow) = window_out(&op, (h, w))?;
        let mut out = output_buffer(n * c * oh * ow);
        op.run(x, (n, c, h, w), &mut out);
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// Max pooling `k x k`, stride `stride`; padded positions never win.
pub fn max_pool2d(
    x: &Tensor,
    k: usize,
    stride: usize,
    padding: Padding,
) -> candle_core::Result<Tensor> {
    max_pool2d_rect(x, (k, k), stride, padding)
}

/// Max pooling with a `kh x kw` window (ONNX `MaxPool`).
pub fn max_pool2d_rect(
    x: &Tensor,
    k: (usize, usize),
    stride: usize,
    padding: Padding,
) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let pad = padding.resolve((h, w), k, stride);
    if portable::wanted(x) {
        return portable::max_pool(x, k, stride, pad);
    }
    profile::time(
        || (format!("max pool {}x{}/{stride}", k.0, k.1), 0.0),
        || {
            x.contiguous()?
                .apply_op1_no_bwd(&MaxPoolOp { k, stride, pad })
        },
    )
}

struct AvgPoolOp {
    k: (usize, usize),
    stride: usize,
    pad: Pad4,
}

impl candle_core::CustomOp1 for AvgPoolOp {
    fn name(&self) -> &'static str {
        "avg_pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32("avg_pool2d", s, l)?;
        let (n, c, h, w) = dims4("avg_pool2d", l)?;
        let op = Window {
            kind: WindowKind::AvgExcludePad,
            kernel: self.k,
            stride: self.stride,
            pad: self.pad.tblr(),
            in_act: Clamp::NONE,
            out_act: Clamp::NONE,
        };
        let (oh, ow) = window_out(&op, (h, w))?;
        let mut out = output_buffer(n * c * oh * ow);
        op.run(x, (n, c, h, w), &mut out);
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// Keras `AveragePooling2D((k, k), strides=1, padding="same")`: the mean over
/// the in-bounds taps only (padding is not counted).
pub fn avg_pool2d_same_exclude_pad(x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    avg_pool2d_exclude_pad(x, (k, k), 1, Padding::Same)
}

/// Average pooling that divides by the number of in-bounds taps (ONNX
/// `AveragePool` with `count_include_pad = 0`; the ONNX op rescales this
/// for `count_include_pad = 1`, PyTorch InceptionV3 runs a depthwise
/// convolution with weights `1 / (kh * kw)`).
pub fn avg_pool2d_exclude_pad(
    x: &Tensor,
    k: (usize, usize),
    stride: usize,
    padding: Padding,
) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let pad = padding.resolve((h, w), k, stride);
    if portable::wanted(x) {
        return portable::avg_pool_exclude_pad(x, k, stride, pad);
    }
    profile::time(
        || (format!("avg pool {}x{}/{stride}", k.0, k.1), 0.0),
        || {
            x.contiguous()?
                .apply_op1_no_bwd(&AvgPoolOp { k, stride, pad })
        },
    )
}

/// Global average pooling `(N, C, H, W) -> (N, C)`, summed in f32 whatever
/// the input's precision (features are stored as f32; a bf16 sum of 64+
/// values would lose what the network computed).
pub fn global_avg_pool(x: &Tensor) -> candle_core::Result<Tensor> {
    profile::time(
        || ("global avg pool".into(), 0.0),
        || x.to_dtype(DType::F32)?.mean((2, 3)),
    )
}

/// Concatenation along channels (InceptionV3's branches).
pub fn concat_channels(xs: &[Tensor]) -> candle_core::Result<Tensor> {
    profile::time(|| ("concat".into(), 0.0), || Tensor::cat(xs, 1))
}

// ---------------------------------------------------------------------------
// The same layers in NCHW16c (kernels::nchwc), built from the NCHW ones
// ---------------------------------------------------------------------------

/// A 1x1 convolution (any stride, no padding) for [`nchwc::Blocked`] maps.
pub struct BlockedConv1x1 {
    packed: nchwc::Packed1x1,
    stride: usize,
    act: Clamp,
}

impl BlockedConv1x1 {
    /// `act(conv(x) + b) (+ residual)`.
    pub fn forward(&self, x: &nchwc::Blocked, residual: Option<&nchwc::Blocked>) -> nchwc::Blocked {
        let flops = || {
            let (h, w) = (x.h.div_ceil(self.stride), x.w.div_ceil(self.stride));
            2.0 * (x.n * h * w * self.packed.c * self.packed.o) as f64
        };
        let label = if residual.is_some() {
            "nchwc conv 1x1 +res"
        } else {
            "nchwc conv 1x1"
        };
        profile::time(
            || (format!("{label}/{}", self.stride), flops()),
            || match self.stride {
                1 => nchwc::conv1x1(x, &self.packed, self.act, residual),
                _ => nchwc::conv1x1(&x.subsample2(), &self.packed, self.act, residual),
            },
        )
    }
}

impl Conv2d {
    /// This convolution for NCHW16c maps, when it is 1x1 without padding
    /// (stride 1 or 2).
    pub fn blocked_1x1(&self) -> Option<BlockedConv1x1> {
        // "same" never pads a 1x1 window, whatever the stride.
        let unpadded = match self.padding {
            Padding::Explicit(p) => p.is_zero(),
            Padding::Valid | Padding::Same | Padding::SameLower => true,
        };
        if self.k != (1, 1) || !unpadded || self.stride > 2 {
            return None;
        }
        let w = self.weight.to_row_major();
        Some(BlockedConv1x1 {
            packed: nchwc::Packed1x1::new(&w, &self.bias, self.out_channels(), self.in_channels),
            stride: self.stride,
            act: self.act.clamp(),
        })
    }
}

/// A depthwise convolution for [`nchwc::Blocked`] maps.
pub struct BlockedDepthwise {
    packed: nchwc::PackedDepthwise,
    stride: usize,
    padding: Padding,
    in_act: Clamp,
    out_act: Clamp,
}

impl BlockedDepthwise {
    pub fn forward(&self, x: &nchwc::Blocked) -> nchwc::Blocked {
        let (kh, kw) = self.packed.k;
        let pad = self
            .padding
            .resolve((x.h, x.w), (kh, kw), self.stride)
            .tblr();
        profile::time(
            || {
                let s = self.stride;
                let flops = 2.0 * (x.n * x.c * x.h * x.w / s / s * kh * kw) as f64;
                (format!("nchwc depthwise {kh}x{kw}/{s}"), flops)
            },
            || nchwc::depthwise(x, &self.packed, self.stride, pad, self.in_act, self.out_act),
        )
    }
}

impl DepthwiseConv2d {
    pub fn blocked(&self) -> BlockedDepthwise {
        BlockedDepthwise {
            packed: nchwc::PackedDepthwise::new(&self.weight, &self.bias, self.channels, self.k),
            stride: self.stride,
            padding: self.padding,
            in_act: self.in_act.clamp(),
            out_act: self.out_act.clamp(),
        }
    }
}

/// Max pooling `k x k` of an NCHW16c map; padded positions never win.
pub fn blocked_max_pool(
    x: &nchwc::Blocked,
    k: usize,
    stride: usize,
    padding: Padding,
) -> nchwc::Blocked {
    let pad = padding.resolve((x.h, x.w), (k, k), stride).tblr();
    profile::time(
        || (format!("nchwc max pool {k}x{k}/{stride}"), 0.0),
        || nchwc::max_pool(x, (k, k), stride, pad),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use runner_kernels::rng::uniform_vec as rand_vec;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("diff")
    }

    /// Reference: explicit zero padding, then candle's grouped conv2d.
    fn reference(
        x: &Tensor,
        w: &[f32],
        (c, kh, kw): (usize, usize, usize),
        bias: &[f32],
        stride: usize,
        p: Pad4,
        in_relu: bool,
    ) -> Tensor {
        let x = if in_relu {
            x.relu().expect("relu")
        } else {
            x.clone()
        };
        let x = x
            .pad_with_zeros(2, p.top, p.bottom)
            .and_then(|x| x.pad_with_zeros(3, p.left, p.right))
            .expect("pad");
        let wt = Tensor::from_vec(w.to_vec(), (c, 1, kh, kw), &Device::Cpu).expect("w");
        let b = Tensor::from_vec(bias.to_vec(), (1, c, 1, 1), &Device::Cpu).expect("b");
        x.conv2d(&wt, 0, stride, 1, c)
            .and_then(|y| y.broadcast_add(&b))
            .expect("conv")
    }

    #[test]
    fn depthwise_kernel_matches_candle_grouped_conv() {
        let cases = [
            // (n, c, h, w, k, stride, pad)
            (
                2,
                3,
                7,
                9,
                3,
                1,
                Pad4 {
                    top: 1,
                    bottom: 1,
                    left: 1,
                    right: 1,
                },
            ),
            (
                1,
                4,
                8,
                8,
                3,
                2,
                Pad4 {
                    top: 0,
                    bottom: 1,
                    left: 0,
                    right: 1,
                },
            ),
            (
                2,
                5,
                11,
                10,
                5,
                1,
                Pad4 {
                    top: 2,
                    bottom: 2,
                    left: 2,
                    right: 2,
                },
            ),
            (
                1,
                3,
                12,
                12,
                5,
                2,
                Pad4 {
                    top: 1,
                    bottom: 2,
                    left: 1,
                    right: 2,
                },
            ),
            (
                1,
                2,
                9,
                7,
                5,
                2,
                Pad4 {
                    top: 2,
                    bottom: 2,
                    left: 2,
                    right: 2,
                },
            ),
            (
                2,
                3,
                6,
                5,
                3,
                1,
                Pad4 {
                    top: 0,
                    bottom: 2,
                    left: 2,
                    right: 0,
                },
            ),
            (1, 2, 5, 6, 3, 2, Pad4::default()),
            (
                1,
                2,
                4,
                4,
                5,
                1,
                Pad4 {
                    top: 3,
                    bottom: 0,
                    left: 0,
                    right: 3,
                },
            ),
        ];
        for (i, &(n, c, h, w, k, s, p)) in cases.iter().enumerate() {
            for in_relu in [false, true] {
                let x = Tensor::from_vec(
                    rand_vec(n * c * h * w, i as u64 + 1),
                    (n, c, h, w),
                    &Device::Cpu,
                )
                .expect("x");
                let wv = rand_vec(c * k * k, 100 + i as u64);
                let bv = rand_vec(c, 200 + i as u64);
                let in_act = if in_relu { Act::Relu } else { Act::None };
                let dw = DepthwiseConv2d::new(
                    wv.clone(),
                    (c, k, k),
                    Some(bv.clone()),
                    s,
                    Padding::Valid,
                    in_act,
                    Act::None,
                )
                .expect("dw");
                let ours = depthwise_conv2d(&x, &dw, p).expect("ours");
                let want = reference(&x, &wv, (c, k, k), &bv, s, p, in_relu);
                assert_eq!(ours.dims(), want.dims(), "case {i}");
                let d = max_abs_diff(&ours, &want);
                assert!(d < 1e-5, "case {i} (in_relu {in_relu}): max diff {d}");
            }
        }
    }

    #[test]
    fn depthwise_same_padding_and_relu6_output() {
        // 8x8, stride 2, k 3: TF "same" pads (0, 1); ReLU6 clamps the output.
        let (n, c, h, w) = (1, 3, 8, 8);
        let x =
            Tensor::from_vec(rand_vec(n * c * h * w, 7), (n, c, h, w), &Device::Cpu).expect("x");
        let wv: Vec<f32> = rand_vec(c * 9, 8).iter().map(|v| v * 8.0).collect();
        let dw = DepthwiseConv2d::new(
            wv.clone(),
            (c, 3, 3),
            None,
            2,
            Padding::Same,
            Act::None,
            Act::Relu6,
        )
        .expect("dw");
        let ours = dw.forward(&x).expect("ours");
        let p = Pad4 {
            top: 0,
            bottom: 1,
            left: 0,
            right: 1,
        };
        let want = reference(&x, &wv, (c, 3, 3), &[0.0; 3], 2, p, false)
            .clamp(0f32, 6f32)
            .expect("clamp");
        assert_eq!(ours.dims(), &[1, 3, 4, 4]);
        assert!(max_abs_diff(&ours, &want) < 1e-5);
    }

    /// Our GEMM convolution against candle's conv2d (explicit zero padding,
    /// bias, activation, residual), on stride 1 and 2, 1x1 and kxk kernels.
    #[test]
    fn conv2d_matches_candle_conv2d() {
        // (n, c, o, h, w, kh, kw, stride, padding, act, residual)
        let cases = [
            (2, 5, 7, 9, 8, 3, 3, 2, Padding::Same, Act::Relu, false),
            (2, 6, 9, 7, 7, 1, 1, 1, Padding::Same, Act::None, true),
            (1, 4, 33, 11, 10, 1, 1, 2, Padding::Valid, Act::None, false),
            (2, 3, 20, 17, 17, 1, 7, 1, Padding::Same, Act::Relu6, true),
            (1, 3, 16, 12, 13, 7, 1, 1, Padding::Same, Act::Relu, false),
            (2, 8, 15, 10, 9, 3, 3, 1, Padding::Valid, Act::Relu, false),
        ];
        for (i, &(n, c, o, h, w, kh, kw, s, padding, act, res)) in cases.iter().enumerate() {
            let seed = 10 * i as u64;
            let x = Tensor::from_vec(
                rand_vec(n * c * h * w, seed + 1),
                (n, c, h, w),
                &Device::Cpu,
            )
            .expect("x");
            let wt = Tensor::from_vec(
                rand_vec(o * c * kh * kw, seed + 2),
                (o, c, kh, kw),
                &Device::Cpu,
            )
            .expect("w");
            let bias = rand_vec(o, seed + 3);
            let conv = Conv2d::new(wt.clone(), bias.clone(), s, padding, act).expect("conv");
            let p = padding.resolve((h, w), (kh, kw), s);
            let want = x
                .pad_with_zeros(2, p.top, p.bottom)
                .and_then(|x| x.pad_with_zeros(3, p.left, p.right))
                .and_then(|x| x.conv2d(&wt, 0, s, 1, 1))
                .and_then(|y| {
                    y.broadcast_add(&Tensor::from_vec(bias.clone(), (1, o, 1, 1), &Device::Cpu)?)
                })
                .expect("reference");
            let want = match act {
                Act::None => want,
                Act::Relu => want.relu().expect("relu"),
                Act::Relu6 => want.clamp(0f32, 6f32).expect("relu6"),
            };
            let ours = if res {
                let r = Tensor::from_vec(
                    rand_vec(want.elem_count(), seed + 4),
                    want.dims(),
                    &Device::Cpu,
                )
                .expect("residual");
                let want = (&want + &r).expect("add");
                let ours = conv.forward_add(&x, &r).expect("ours");
                assert!(max_abs_diff(&ours, &want) < 1e-5, "case {i} (residual)");
                ours
            } else {
                let ours = conv.forward(&x).expect("ours");
                assert!(max_abs_diff(&ours, &want) < 1e-5, "case {i}");
                ours
            };
            assert_eq!(ours.dims(), want.dims(), "case {i}");
        }
    }

    #[test]
    fn same_padding_puts_the_extra_row_at_the_end() {
        assert_eq!(same_pad_1d(224, 3, 2), (0, 1));
        assert_eq!(same_pad_1d(56, 5, 2), (1, 2));
        assert_eq!(same_pad_1d(147, 3, 2), (1, 1));
        assert_eq!(same_pad_1d(74, 3, 2), (0, 1));
        assert_eq!(same_pad_1d(147, 1, 2), (0, 0));
        assert_eq!(same_pad_1d(17, 7, 1), (3, 3));
    }

    #[test]
    fn pools_ignore_padding() {
        let x = Tensor::from_vec(
            vec![-1f32, -2., -3., -4., -5., -6., -7., -8., -9.],
            (1, 1, 3, 3),
            &Device::Cpu,
        )
        .expect("x");
        // Max pooling of all-negative input: padding must never win.
        let m = max_pool2d(&x, 3, 2, Padding::Same).expect("max");
        assert_eq!(
            m.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v"),
            vec![-1., -2., -4., -5.]
        );
        // Average pooling divides by the in-bounds count: corner = mean of 4.
        let a = avg_pool2d_same_exclude_pad(&x, 3).expect("avg");
        let v = a.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("v");
        assert!((v[0] - (-1. - 2. - 4. - 5.) / 4.).abs() < 1e-6);
        assert!((v[4] - (-5.)).abs() < 1e-6);
    }
}
