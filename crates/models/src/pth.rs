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
//!
//! candle sizes its buffers from the file's own fields (a pickle string's
//! length, a tensor's shape), so a damaged file could make it ask for
//! gigabytes: [`check_pickles`] and [`check_tensor_size`] hold those fields
//! against the bytes the archive really has before candle reads them.

use std::collections::HashMap;
use std::path::Path;

use std::io::Read;

use candle_core::pickle::{PthTensors, TensorInfo};
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
    let sizes = check_pickles(path)?;
    let pth = open(path)?;
    let mut tensors = HashMap::with_capacity(pth.tensor_infos().len());
    for (name, info) in pth.tensor_infos() {
        check_tensor_size(name, info, &sizes)?;
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

/// The most bytes a checkpoint's pickle (its structure, not its tensor
/// data) may hold; real ones are kilobytes to a few megabytes.
const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// Checks every `*.pkl` entry of the zip at `path` op by op (the opcodes
/// candle reads): each length it holds must fit in the bytes that follow.
/// Returns the uncompressed size of every entry, for [`check_tensor_size`].
fn check_pickles(path: &Path) -> candle_core::Result<HashMap<String, u64>> {
    let damaged = |what: String| {
        candle_core::Error::Msg(format!(
            "not a readable PyTorch zip checkpoint: {what}; the file is truncated or damaged"
        ))
    };
    let file = std::fs::File::open(path)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| damaged(format!("its zip directory cannot be read ({e})")))?;
    let mut sizes = HashMap::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| damaged(format!("zip entry {i} cannot be read ({e})")))?;
        let name = entry
            .name()
            .map_err(|e| damaged(format!("zip entry {i} has no readable name ({e})")))?
            .to_string();
        sizes.insert(name.clone(), entry.size());
        if !name.ends_with(".pkl") {
            continue;
        }
        let mut pickle = Vec::new();
        entry
            .by_ref()
            .take(MAX_PICKLE_BYTES + 1)
            .read_to_end(&mut pickle)
            .map_err(|e| damaged(format!("`{name}` cannot be read ({e})")))?;
        if pickle.len() as u64 > MAX_PICKLE_BYTES {
            return Err(damaged(format!(
                "`{name}` holds more than {MAX_PICKLE_BYTES} bytes of pickle"
            )));
        }
        check_pickle(&pickle).map_err(|e| damaged(format!("`{name}`: {e}")))?;
    }
    Ok(sizes)
}

/// Walks a pickle's opcodes (those candle's reader knows; it refuses any
/// other) and checks each argument lies within the pickle.
fn check_pickle(p: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    let arg = |at: usize, n: usize| -> Result<&[u8], String> {
        p.get(at..at.checked_add(n).ok_or("offset overflow")?)
            .ok_or_else(|| format!("opcode at byte {} runs past the end", at.saturating_sub(1)))
    };
    while let Some(&op) = p.get(at) {
        at += 1;
        at += match op {
            b'.' => return Ok(()),
            b')'
            | b'R'
            | b'('
            | b't'
            | b'Q'
            | b'N'
            | 0x85..=0x89
            | b's'
            | b'u'
            | b'}'
            | b'd'
            | b'b'
            | 0x81
            | b']'
            | b'a'
            | b'e' => 0,
            0x80 | b'q' | b'K' | b'h' => 1,
            b'M' => 2,
            b'r' | b'J' | b'j' => 4,
            b'G' => 8,
            b'X' => {
                let len = arg(at, 4)?;
                let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                arg(at + 4, len)?;
                4 + len
            }
            0x8a => 1 + usize::from(arg(at, 1)?[0]),
            b'c' => {
                // Two newline-terminated names.
                let mut end = at;
                for _ in 0..2 {
                    let rest = p.get(end..).unwrap_or_default();
                    let nl = rest
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or_else(|| format!("GLOBAL at byte {} has no end of line", at - 1))?;
                    end += nl + 1;
                }
                end - at
            }
            // candle refuses any other opcode, with its own message.
            _ => return Ok(()),
        };
        if at > p.len() {
            return Err(format!("the opcode before byte {at} runs past the end"));
        }
    }
    Err("no STOP opcode: the pickle is cut short".into())
}

/// A tensor's bytes, from its shape, dtype and storage offset, must lie
/// within its storage entry in the archive.
fn check_tensor_size(
    name: &str,
    info: &TensorInfo,
    sizes: &HashMap<String, u64>,
) -> candle_core::Result<()> {
    let needed = info
        .layout
        .start_offset()
        .checked_add(
            info.layout
                .dims()
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .unwrap_or(usize::MAX),
        )
        .and_then(|n| n.checked_mul(info.dtype.size_in_bytes()))
        .map_or(u64::MAX, |n| n as u64);
    let stored = sizes.get(&info.path).copied().unwrap_or(0);
    if needed > stored {
        candle_core::bail!(
            "tensor `{name}` with shape {:?} needs {} bytes of `{}`, which holds {stored}; \
             the file is truncated or damaged",
            info.layout.dims(),
            if needed == u64::MAX {
                "more".to_string()
            } else {
                needed.to_string()
            },
            info.path
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pickle_string_longer_than_the_pickle_is_refused_before_reading() {
        assert!(check_pickle(b"\x80\x02X\x03\x00\x00\x00abc.").is_ok());
        let e = check_pickle(b"\x80\x02X\xff\xff\xff\xa5abc.").unwrap_err();
        assert!(e.contains("past the end"), "{e}");
        assert!(check_pickle(b"\x80\x02\x8a\x08\x01.").is_err());
        assert!(check_pickle(b"\x80\x02ctorch\n").is_err());
        assert!(check_pickle(b"\x80\x02N").is_err(), "no STOP");
    }

    #[test]
    fn a_tensor_shape_larger_than_its_stored_data_is_an_error_naming_it() {
        let info = |dims: &[usize]| TensorInfo {
            name: "w".into(),
            dtype: candle_core::DType::F32,
            layout: candle_core::Layout::contiguous(dims),
            path: "archive/data/0".into(),
            storage_size: 0,
        };
        let sizes = HashMap::from([("archive/data/0".to_string(), 24u64)]);
        assert!(check_tensor_size("w", &info(&[2, 3]), &sizes).is_ok());
        for dims in [&[2, 4][..], &[1 << 31, 1 << 31]] {
            let e = check_tensor_size("w", &info(dims), &sizes)
                .unwrap_err()
                .to_string();
            assert!(e.contains("`w`") && e.contains("archive/data/0"), "{e}");
        }
    }
}
