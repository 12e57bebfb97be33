//! Checkpoint access and BatchNorm folding.
//!
//! [`Weights`] reads every tensor of a checkpoint onto the CPU, whatever the
//! container (safetensors, Keras-2 `.h5`, PyTorch `.pth`), and its lookups
//! report a missing or misshapen tensor by name. [`BatchNorm`] holds one
//! inference BatchNorm and folds it into the preceding convolution, so that
//! every convolution of a backbone is `act(conv(x, w) + b)`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::ModelError;

/// Keras `BatchNormalization` default epsilon (also EfficientNet-Lite's
/// `batch_norm_epsilon`).
pub const BN_EPS: f32 = 1e-3;

/// All tensors of one checkpoint, read onto the CPU, with lookups that
/// report the missing or misshapen tensor by name.
pub struct Weights {
    arch: &'static str,
    path: String,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Reads every tensor of `path` (any float dtype; converted to f32 on use):
    /// a Keras-2 `.h5` / `.hdf5` weights file ([`crate::h5`]), a PyTorch
    /// `.pth` / `.pt` / `.bin` checkpoint ([`crate::pth`]), else safetensors.
    pub fn read(arch: &'static str, path: &Path) -> Result<Self, ModelError> {
        let is_h5 = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("h5") || e.eq_ignore_ascii_case("hdf5"));
        let load_err = |source| ModelError::Load {
            arch,
            path: path.display().to_string(),
            source,
        };
        let tensors = if is_h5 {
            // Not `Error::wrap`: its backtrace would be printed as part of
            // the message.
            crate::h5::read_keras_weights(path)
                .map_err(|e| load_err(candle_core::Error::Wrapped(Box::new(e.detail))))?
        } else if crate::pth::is_pytorch_checkpoint(path) {
            // `.pth` / `.pt` / `.bin`: a `torch.save` zip (state dict).
            crate::pth::read(path).map_err(load_err)?
        } else {
            candle_core::safetensors::load(path, &Device::Cpu).map_err(load_err)?
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
    ///
    /// A checkpoint holding a NaN or an infinity is refused here, naming
    /// the tensor: such weights give constant or NaN features, which would
    /// be cached and trained on. (This pass already reads every value.)
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
            let count = values.iter().filter(|v| !v.is_finite()).count();
            if count > 0 {
                return Err(ModelError::NonFinite {
                    arch: self.arch,
                    path: self.path.clone(),
                    name: name.clone(),
                    count,
                    total: values.len(),
                });
            }
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
        let t = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        if t.dims() != shape {
            return Err(self.shape_err(name, shape.to_vec(), t.dims().to_vec()));
        }
        t.to_dtype(DType::F32).map_err(|e| self.candle_err(e))
    }

    /// The dims of tensor `name` (to infer channel counts from the checkpoint).
    pub fn dims(&self, name: &str) -> Result<Vec<usize>, ModelError> {
        self.tensors
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| self.missing(name))
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor {
            arch: self.arch,
            path: self.path.clone(),
            name: name.to_string(),
        }
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

    /// The rank-4 tensor `name`, permuted by `perm`, flattened row-major,
    /// with its dims as stored.
    pub fn kernel4(
        &self,
        name: &str,
        perm: Option<&[usize]>,
    ) -> Result<(Vec<f32>, [usize; 4]), ModelError> {
        let d = self.dims(name)?;
        let &[a, b, c, e] = &d[..] else {
            return Err(self.shape_err(name, vec![0, 0, 0, 0], d));
        };
        Ok((self.get_vec(name, &d, perm)?, [a, b, c, e]))
    }

    /// Keras conv kernel `(kh, kw, I, O)` (HWIO) -> OIHW, flattened.
    pub fn keras_conv_kernel(&self, name: &str) -> Result<(Vec<f32>, [usize; 4]), ModelError> {
        let (v, [kh, kw, ci, co]) = self.kernel4(name, Some(&[3, 2, 0, 1]))?;
        Ok((v, [co, ci, kh, kw]))
    }

    /// Keras depthwise kernel `(kh, kw, C, 1)` -> `(C, kh, kw)`, flattened.
    pub fn keras_depthwise_kernel(&self, name: &str) -> Result<(Vec<f32>, [usize; 3]), ModelError> {
        let (v, [kh, kw, c, m]) = self.kernel4(name, Some(&[2, 3, 0, 1]))?;
        if m != 1 {
            return Err(self.shape_err(name, vec![kh, kw, c, 1], vec![kh, kw, c, m]));
        }
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
        let vars = ["gamma", "beta", "moving_mean", "moving_variance"];
        self.bn(BnNames::joined(layer, '/', vars, scale, BN_EPS), c)
    }

    /// PyTorch BatchNorm2d `PREFIX.{weight,bias,running_mean,running_var}`.
    pub fn torch_bn(&self, prefix: &str, c: usize, eps: f32) -> Result<BatchNorm, ModelError> {
        let params = ["weight", "bias", "running_mean", "running_var"];
        self.bn(BnNames::joined(prefix, '.', params, true, eps), c)
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

/// Checkpoint names of one BatchNorm layer.
pub struct BnNames {
    pub gamma: String,
    pub gamma_required: bool,
    pub beta: String,
    pub mean: String,
    pub var: String,
    pub eps: f32,
}

impl BnNames {
    /// `{prefix}{sep}{name}` for the names of gamma, beta, mean and
    /// variance, in that order.
    pub fn joined(
        prefix: &str,
        sep: char,
        [gamma, beta, mean, var]: [&str; 4],
        gamma_required: bool,
        eps: f32,
    ) -> Self {
        Self {
            gamma: format!("{prefix}{sep}{gamma}"),
            gamma_required,
            beta: format!("{prefix}{sep}{beta}"),
            mean: format!("{prefix}{sep}{mean}"),
            var: format!("{prefix}{sep}{var}"),
            eps,
        }
    }
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
