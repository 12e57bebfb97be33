//! PyTorch checkpoints (`torch.save` zip files: `.pth`, `.pt`, `.bin`) read
//! through candle's pickle reader ([`candle_core::pickle`]).
//!
//! A checkpoint is either a bare state dict or a dict that nests it under
//! `state_dict` (timm's `train.py`, Lightning), `model` (torchvision's and
//! DeiT's reference scripts) or `state_dict_ema`; the first of these that
//! holds tensors is used. Keys saved from `DataParallel` /
//! `DistributedDataParallel` carry a `module.` prefix, which is removed.
//! Integer buffers (`num_batches_tracked`) are kept; the loaders ignore them.
//!
//! Only the zip format of PyTorch >= 1.6 is read (candle has no reader for
//! the older tar / raw-pickle format, nor for TorchScript archives).

use std::collections::HashMap;
use std::path::Path;

use candle_core::pickle::PthTensors;
use candle_core::{Device, Tensor};

/// File extensions read as PyTorch checkpoints (any other extension is read
/// as safetensors).
pub const EXTENSIONS: [&str; 3] = ["pth", "pt", "bin"];

/// Dict keys under which a training checkpoint nests its state dict, tried in
/// this order after the top level.
pub const NESTED_KEYS: [&str; 3] = ["state_dict", "model", "state_dict_ema"];

/// Whether `path` names a PyTorch checkpoint (by extension, case-insensitive).
pub fn is_pytorch_checkpoint(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Every tensor of the state dict in `path`, on the CPU, with any `module.`
/// prefix removed.
pub fn read(path: &Path) -> candle_core::Result<HashMap<String, Tensor>> {
    let pth = open(path)?;
    let mut tensors = HashMap::with_capacity(pth.tensor_infos().len());
    for name in pth.tensor_infos().keys() {
        let Some(t) = pth.get(name)? else { continue };
        let key = name.strip_prefix("module.").unwrap_or(name).to_string();
        tensors.insert(key, t.to_device(&Device::Cpu)?);
    }
    Ok(tensors)
}

/// The first of the top level and [`NESTED_KEYS`] that holds tensors.
fn open(path: &Path) -> candle_core::Result<PthTensors> {
    let top = PthTensors::new(path, None).map_err(|e| {
        candle_core::Error::Msg(format!(
            "not a PyTorch zip checkpoint (torch.save of PyTorch >= 1.6): {e}"
        ))
    })?;
    if !top.tensor_infos().is_empty() {
        return Ok(top);
    }
    for key in NESTED_KEYS {
        // A missing key is an error in candle: try the next one.
        if let Ok(nested) = PthTensors::new(path, Some(key)) {
            if !nested.tensor_infos().is_empty() {
                return Ok(nested);
            }
        }
    }
    candle_core::bail!(
        "no tensors found at the top level nor under {}",
        NESTED_KEYS.map(|k| format!("`{k}`")).join(", ")
    )
}
