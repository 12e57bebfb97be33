//! Keras-2 HDF5 weight files (`model.save_weights("x.h5")`, the
//! `keras.applications` downloads such as
//! `xception_weights_tf_dim_ordering_tf_kernels_notop.h5`), read with the
//! pure-Rust [`hdf5_reader`] crate: no libhdf5, no Python.
//!
//! Layout (Keras 2's `save_weights_to_hdf5_group`, h5py defaults):
//! - root attribute `layer_names`: byte strings (fixed-length from h5py 2, as
//!   in the `keras.applications` downloads; variable-length from h5py 3), one
//!   per layer in model order (Keras splits a list longer than 64512 bytes into
//!   `layer_names0`, `layer_names1`, ...);
//! - one group per layer with attribute `weight_names` (`b"block1_conv1/kernel:0"`;
//!   an empty float64 array for a layer without weights);
//! - each weight is the dataset `/<layer>/<weight name>`; since the weight name
//!   holds a `/`, h5py nests it: `/block1_conv1/block1_conv1/kernel:0`.
//!
//! A whole model saved with `model.save("x.h5")` keeps the same layout under
//! the group `/model_weights`, which is read too.
//!
//! Tensors come back under the names of the shared safetensors, `LAYER/VAR`:
//! the layer group's name, `/`, and the weight name's last component without
//! its `:0` suffix (`block1_conv1/kernel`, `batch_normalization_1/beta`), in the
//! file's dtype (f16, f32 or f64: bit-exact, converted to f32 on use).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use hdf5_reader::group::Group;
use hdf5_reader::{Attribute, Datatype, Hdf5File};

/// A Keras `.h5` weights file could not be read: names the file, the HDF5
/// object (group, attribute or dataset) and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct H5Error {
    /// The file.
    pub path: String,
    /// The HDF5 object, what went wrong and what to do (without the path).
    pub detail: String,
}

const LAYOUT_HINT: &str = "expected a Keras-2 weights file (root attribute `layer_names`, \
     one group per layer with attribute `weight_names`), as written by \
     `model.save_weights(\"x.h5\")` or downloaded by `keras.applications`";

const DAMAGED_HINT: &str = "the file is truncated or damaged: download or save it again";

/// Reads every weight of the Keras-2 `.h5` file `path` onto the CPU, keyed
/// `LAYER/VAR` (see the module docs).
pub fn read_keras_weights(path: &Path) -> Result<HashMap<String, Tensor>, H5Error> {
    let err = |detail: String| H5Error {
        path: path.display().to_string(),
        detail,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| err(format!("cannot read the file ({e})")))?
        .len();
    let file = Hdf5File::open(path).map_err(|e| {
        err(format!(
            "not a readable HDF5 file ({e}); {LAYOUT_HINT}. A Keras 3 `.weights.h5` \
             or `.keras` file must first be re-saved with Keras 2's \
             `save_weights(\"x.h5\")`, or converted to safetensors"
        ))
    })?;
    let eof = file.superblock().eof_address;
    if eof > size {
        return Err(err(format!(
            "the HDF5 superblock says the file has {eof} bytes, it has {size}; {DAMAGED_HINT}"
        )));
    }
    let top = file
        .root_group()
        .map_err(|e| err(format!("group `/` cannot be opened ({e}); {DAMAGED_HINT}")))?;
    let attrs = |g: &Group, name: &str| {
        g.attributes().map_err(|e| {
            err(format!(
                "group `{name}`: cannot read its attributes ({e}); {DAMAGED_HINT}"
            ))
        })
    };
    // `model.save("x.h5")` (whole model): the weights are under /model_weights.
    let top_attrs = attrs(&top, "/")?;
    let (root, root_name, root_attrs) = if has_list_attr(&top_attrs, "layer_names") {
        (top, String::new(), top_attrs)
    } else if let Ok(g) = top.group("model_weights") {
        let a = attrs(&g, "/model_weights")?;
        (g, "/model_weights".to_string(), a)
    } else {
        return Err(err(format!(
            "group `/` has no attribute `layer_names` and no group `model_weights`; {LAYOUT_HINT}"
        )));
    };
    let layers = list_attr(&root_attrs, "layer_names").map_err(|e| {
        err(format!(
            "group `{root_name}/`, attribute `layer_names`: {e}; {LAYOUT_HINT}"
        ))
    })?;

    let mut tensors = HashMap::new();
    for layer in &layers {
        let layer_path = format!("{root_name}/{layer}");
        let group = root.group(layer).map_err(|e| {
            err(format!(
                "group `{layer_path}` (listed in `layer_names`) cannot be opened ({e}); \
                 {DAMAGED_HINT}"
            ))
        })?;
        let weight_names =
            list_attr(&attrs(&group, &layer_path)?, "weight_names").map_err(|e| {
                err(format!(
                    "group `{layer_path}`, attribute `weight_names`: {e}; {LAYOUT_HINT}"
                ))
            })?;
        for weight in &weight_names {
            let dataset_path = format!("{layer_path}/{weight}");
            let tensor = read_dataset(&group, weight, size)
                .map_err(|e| err(format!("dataset `{dataset_path}`: {e}")))?;
            let name = tensor_name(layer, weight);
            if tensors.insert(name.clone(), tensor).is_some() {
                return Err(err(format!(
                    "group `{layer_path}`: two weights map to `{name}`; \
                     this reader expects one `VAR:0` per variable name and layer"
                )));
            }
        }
    }
    Ok(tensors)
}

/// `LAYER/VAR`: the layer group's name and the weight name's last component
/// without its `:N` suffix (`block1_conv1/kernel:0` in `block1_conv1`, or a
/// bare `kernel:0`, -> `block1_conv1/kernel`).
fn tensor_name(layer: &str, weight: &str) -> String {
    let var = weight.rsplit('/').next().unwrap_or(weight);
    let var = match var.rsplit_once(':') {
        Some((v, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => v,
        _ => var,
    };
    format!("{layer}/{var}")
}

/// Whether `attrs` holds `name` or its Keras chunks `name0`, `name1`, ...
fn has_list_attr(attrs: &[Attribute], name: &str) -> bool {
    let chunk0 = format!("{name}0");
    attrs.iter().any(|a| a.name == name || a.name == chunk0)
}

/// A Keras list-of-strings attribute (`layer_names`, `weight_names`), joined
/// across Keras' chunks `name0`, `name1`, ... when the list was too long for
/// one attribute. An empty numeric array (what Keras writes for a layer
/// without weights) is an empty list.
fn list_attr(attrs: &[Attribute], name: &str) -> Result<Vec<String>, String> {
    let find = |n: &str| attrs.iter().find(|a| a.name == n);
    let strings = |a: &Attribute| -> Result<Vec<String>, String> {
        let empty = a.shape.contains(&0);
        match &a.datatype {
            Datatype::String { .. } | Datatype::VarLen { .. } => a
                .read_strings()
                .map_err(|e| format!("cannot read its strings ({e}); {DAMAGED_HINT}")),
            _ if empty => Ok(Vec::new()),
            other => Err(format!("expected a list of strings, found {other:?}")),
        }
    };
    if let Some(a) = find(name) {
        return strings(a);
    }
    let mut all = Vec::new();
    let mut chunk = 0;
    while let Some(a) = find(&format!("{name}{chunk}")) {
        all.extend(strings(a)?);
        chunk += 1;
    }
    if chunk == 0 {
        return Err("missing".into());
    }
    Ok(all)
}

/// The dataset at `weight` (a path relative to the layer group: h5py made
/// `block1_conv1/kernel:0` a nested group and a dataset) as a CPU tensor in
/// its own float dtype. `file_size` bounds what its shape may ask for.
fn read_dataset(layer: &Group, weight: &str, file_size: u64) -> Result<Tensor, String> {
    let parts: Vec<&str> = weight.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, groups)) = parts.split_last() else {
        return Err("empty weight name".into());
    };
    let mut group = layer.clone();
    for part in groups {
        group = group
            .group(part)
            .map_err(|e| format!("no group `{part}` on its path ({e}); {DAMAGED_HINT}"))?;
    }
    let dataset = group
        .dataset(last)
        .map_err(|e| format!("cannot be opened ({e}); {DAMAGED_HINT}"))?;
    let dtype = match dataset.dtype() {
        Datatype::FloatingPoint { size: 2, .. } => DType::F16,
        Datatype::FloatingPoint { size: 4, .. } => DType::F32,
        Datatype::FloatingPoint { size: 8, .. } => DType::F64,
        other => {
            return Err(format!(
                "has datatype {other:?}, expected a float16, float32 or float64 weight"
            ))
        }
    };
    let shape = dataset
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} too large")))
        .collect::<Result<Vec<_>, _>>()?;
    // The reader allocates what the shape says before reading; Keras writes
    // weights uncompressed, so a shape needing more bytes than the whole
    // file is damage, not data.
    let needed = shape
        .iter()
        .try_fold(dtype.size_in_bytes(), |n, &d| n.checked_mul(d))
        .map_or(u64::MAX, |n| n as u64);
    if needed > file_size {
        return Err(format!(
            "its shape {shape:?} needs {} bytes, more than the whole file ({file_size}); \
             {DAMAGED_HINT} (compressed datasets are not read)",
            if needed == u64::MAX {
                "more".to_string()
            } else {
                needed.to_string()
            },
        ));
    }
    // Native byte order (a big-endian file is swapped here).
    let bytes = dataset
        .read_native_bytes()
        .map_err(|e| format!("cannot read its data ({e}); {DAMAGED_HINT}"))?;
    Tensor::from_raw_buffer(&bytes, dtype, &shape, &Device::Cpu)
        .map_err(|e| format!("its data does not fill its shape {shape:?} ({e}); {DAMAGED_HINT}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h5_tensor_names_follow_the_safetensors() {
        assert_eq!(
            tensor_name("block1_conv1", "block1_conv1/kernel:0"),
            "block1_conv1/kernel"
        );
        assert_eq!(tensor_name("conv2d_1", "kernel:0"), "conv2d_1/kernel");
        // A weight created under another scope still belongs to its layer.
        assert_eq!(
            tensor_name(
                "batch_normalization_1",
                "model/batch_normalization_1_1/beta:0"
            ),
            "batch_normalization_1/beta"
        );
        assert_eq!(tensor_name("a", "b/c:x"), "a/c:x");
    }

    /// A dataspace dimension of the small Keras fixture set to 2^31 - 1
    /// (byte 8279: a dimension of a dataset's dataspace message): the shape
    /// asks for gigabytes from a 15 kB file.
    #[test]
    fn a_dataset_shape_larger_than_the_file_is_refused_before_reading() {
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/xception_small_f16.h5");
        let mut bytes = std::fs::read(fixture).unwrap();
        bytes[8279..8283].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        let dir = tempfile_dir();
        let path = dir.join("damaged.h5");
        std::fs::write(&path, &bytes).unwrap();
        let e = read_keras_weights(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.contains("damaged.h5") && e.contains("more than the whole file"),
            "{e}"
        );
    }

    /// A fresh folder under the system temporary directory (this crate has
    /// no tempfile dependency).
    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "runner-models-h5-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn attr(name: &str, datatype: Datatype, shape: Vec<u64>, raw: &[u8]) -> Attribute {
        Attribute {
            name: name.into(),
            datatype,
            shape,
            raw_data: raw.to_vec(),
            decoded_strings: None,
        }
    }

    #[test]
    fn h5_list_attributes_join_keras_chunks() {
        use hdf5_reader::{StringEncoding, StringPadding, StringSize};
        let fixed = |len| Datatype::String {
            size: StringSize::Fixed(len),
            encoding: StringEncoding::Ascii,
            padding: StringPadding::NullPad,
        };
        let float = Datatype::FloatingPoint {
            size: 8,
            byte_order: hdf5_reader::ByteOrder::LittleEndian,
        };
        let attrs = [
            attr("layer_names0", fixed(2), vec![2], b"a\0bb"),
            attr("layer_names1", fixed(3), vec![1], b"ccc"),
            // Keras' empty `weight_names`: `np.asarray([])`, float64, shape (0,).
            attr("weight_names", float.clone(), vec![0], b""),
            attr("bad", float, vec![1], &1f64.to_le_bytes()),
        ];
        assert!(has_list_attr(&attrs, "layer_names"));
        assert!(!has_list_attr(&attrs, "other"));
        assert_eq!(
            list_attr(&attrs, "layer_names").unwrap(),
            ["a", "bb", "ccc"]
        );
        assert!(list_attr(&attrs, "weight_names").unwrap().is_empty());
        assert_eq!(list_attr(&attrs, "other").unwrap_err(), "missing");
        assert!(list_attr(&attrs, "bad").is_err());
    }
}
