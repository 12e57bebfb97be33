//! `runner inspect WEIGHTS`: what a weights file is and what runner would
//! run from it (format, architecture, tensors or graph nodes, input size,
//! feature width), before anyone writes a spec around it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use runner_models::onnx::{self, dims_text, OnnxBackbone, OnnxOptions};
use runner_models::{self as models, registry};

/// The report for `path`; `all` lists every tensor / node instead of the
/// first few; `output` is passed to the ONNX loader as the spec's key.
pub fn inspect(path: &Path, all: bool, output: Option<&str>) -> anyhow::Result<String> {
    if !path.is_file() {
        anyhow::bail!("{} does not exist or is not a file", path.display());
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "onnx" => inspect_onnx(path, all, output),
        _ => inspect_checkpoint(path, all),
    }
}

fn inspect_onnx(path: &Path, all: bool, output: Option<&str>) -> anyhow::Result<String> {
    let model = onnx::read_model(path)?;
    let s = onnx::summarize(&model, path)?;
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "file:        {}", path.display())?;
    writeln!(
        w,
        "format:      ONNX (opset {}, producer {})",
        s.opset, s.producer
    )?;
    writeln!(w, "arch:        onnx (run by runner's executor)")?;
    writeln!(
        w,
        "input:       `{}` {} {}",
        s.input_name,
        s.input_dims
            .as_deref()
            .map_or("(no declared shape)".into(), dims_text),
        match s.input_layout {
            Some(onnx::InputLayout::Nchw) => "-> input_layout = \"nchw\"",
            Some(onnx::InputLayout::Nhwc) => "-> input_layout = \"nhwc\"",
            None => "-> layout unknown: set input_layout",
        }
    )?;
    writeln!(
        w,
        "input size:  {}",
        s.input_size
            .map_or("not fixed by the graph: set input_size".into(), |v| v
                .to_string())
    )?;
    for (name, dims) in &s.outputs {
        let d = dims
            .as_deref()
            .map_or("(no declared shape)".into(), dims_text);
        writeln!(w, "output:      `{name}` {d}")?;
    }
    writeln!(w, "parameters:  {}", s.parameters)?;
    let total: usize = s.op_counts.values().sum();
    let ops: Vec<String> = s
        .op_counts
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    writeln!(w, "nodes:       {total}: {}", ops.join(", "))?;
    if all {
        if let Some(g) = model.graph.as_ref() {
            for n in &g.node {
                writeln!(
                    w,
                    "  {} {} {:?} -> {:?}",
                    n.op_type, n.name, n.input, n.output
                )?;
            }
        }
    }
    let size = s.input_size.unwrap_or(224);
    let opts = OnnxOptions {
        output: output.map(str::to_string),
        input_layout: s.input_layout,
        ..Default::default()
    };
    writeln!(
        w,
        "preprocess:  not recorded in the graph: set preprocess to what the model was trained with"
    )?;
    // A transformer's tokens need a pool: tried with the class token to
    // tell the token width.
    let (loaded, tokens) = match OnnxBackbone::load(path, &opts, size) {
        Err(onnx::OnnxError::TokensNeedPool { .. }) => {
            let cls = OnnxOptions {
                pool: Some(onnx::TokenPool::Cls),
                ..opts.clone()
            };
            (OnnxBackbone::load(path, &cls, size), true)
        }
        other => (other, false),
    };
    match loaded {
        Ok(net) => {
            use runner_models::Backbone;
            let width = net.num_features();
            writeln!(
                w,
                "runner:      `{}` -> {} features per image ({} steps after folding and fusion, {} native convolutions; trial run at {size}x{size})",
                net.program().output_name,
                if tokens { format!("tokens of {width} values: pool = \"cls\" or \"mean\" gives {width}, \"cls+mean\" {}", 2 * width) } else { width.to_string() },
                net.program().len(),
                net.program().native_convolutions()
            )?;
        }
        Err(e) => writeln!(w, "runner:      cannot run it as it is: {e}")?,
    }
    Ok(out)
}

fn inspect_checkpoint(path: &Path, all: bool) -> anyhow::Result<String> {
    let (format, mut tensors) = match safetensors_header(path) {
        Some((t, Some(missing))) => anyhow::bail!(
            "{}: a safetensors file cut short: its header lists {} tensor(s) whose data needs {missing} more bytes than the file holds; download or copy it again",
            path.display(),
            t.len()
        ),
        Some((t, None)) => ("safetensors", t),
        None => {
            // Other containers go through the loader the backbones use.
            let w = models::layers::Weights::read("the", path)
                .with_context(|| format!("{}: not a weights file runner reads", path.display()))?;
            let kind = match path.extension().and_then(|e| e.to_str()) {
                Some("h5" | "hdf5") => "Keras-2 HDF5 weights",
                _ => "PyTorch checkpoint",
            };
            (kind, w.summary())
        }
    };
    tensors.sort();
    let names: Vec<&str> = tensors.iter().map(|(n, _, _)| n.as_str()).collect();
    let params: usize = tensors
        .iter()
        .map(|(_, d, _)| d.iter().product::<usize>())
        .sum();
    let mut dtypes: Vec<&str> = tensors.iter().map(|(_, _, t)| t.as_str()).collect();
    dtypes.sort_unstable();
    dtypes.dedup();
    let mut out = String::new();
    let w = &mut out;
    writeln!(w, "file:        {}", path.display())?;
    writeln!(w, "format:      {format} ({})", dtypes.join(", "))?;
    match registry::identify(names.iter().copied()) {
        Some((entry, probe)) => {
            let name = entry.name;
            writeln!(
                w,
                "arch:        {name} ({}) -> arch = \"{name}\"",
                probe.naming
            )?;
            if let Some(cfg) = entry.pretrained_cfg {
                writeln!(w, "input size:  {}", cfg.input_size)?;
                writeln!(w, "features:    {}", cfg.num_features)?;
            }
        }
        None => {
            let known: Vec<String> = registry::all()
                .flat_map(|e| (e.probes)().into_iter().map(move |p| (e.name, p.naming)))
                .map(|(name, naming)| format!("{name} ({naming})"))
                .collect();
            writeln!(
                w,
                "arch:        not recognised; runner knows {}",
                known.join(", ")
            )?
        }
    }
    writeln!(w, "tensors:     {} ({params} parameters)", tensors.len())?;
    let shown = if all {
        tensors.len()
    } else {
        tensors.len().min(12)
    };
    for (n, d, t) in &tensors[..shown] {
        writeln!(w, "  {n} {d:?} {t}")?;
    }
    if shown < tensors.len() {
        writeln!(
            w,
            "  ... {} more (--all lists every tensor)",
            tensors.len() - shown
        )?;
    }
    Ok(out)
}

/// A safetensors header's tensors and, if the file is shorter than the
/// data the header describes, how many bytes are missing.
type SafetensorsHeader = (Vec<(String, Vec<usize>, String)>, Option<u64>);

/// `(name, dims, dtype)` from a safetensors header (8-byte length, JSON),
/// without reading the tensor data, and whether the file holds all the
/// data the header describes; `None` if `path` is not safetensors.
fn safetensors_header(path: &Path) -> Option<SafetensorsHeader> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 || len > f.metadata().ok()?.len() {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).ok()?;
    let json: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header).ok()?;
    let data_end = json
        .values()
        .filter_map(|v| v["data_offsets"].as_array()?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let file_len = f.metadata().ok()?.len();
    let missing = (8 + len + data_end)
        .checked_sub(file_len)
        .filter(|&m| m > 0);
    let tensors = json
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, v)| {
            let dims = v["shape"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_u64())
                        .map(|d| d as usize)
                        .collect()
                })
                .unwrap_or_default();
            let dtype = v["dtype"].as_str().unwrap_or("?").to_lowercase();
            (name, dims, dtype)
        })
        .collect();
    Some((tensors, missing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared_model(file: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/models")
            .join(file)
    }

    #[test]
    fn names_the_architecture_of_a_weights_file() {
        let out = inspect(
            &shared_model("efficientnet_lite0_imagenet.safetensors"),
            false,
            None,
        );
        let out = out.unwrap();
        assert!(out.contains("arch = \"efficientnet_lite0\""), "{out}");
    }

    /// The timm fixtures' tensor lists (`tests/data/timm/*.tensors.txt`).
    fn timm_names(fixture: &str) -> Vec<String> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/timm")
            .join(format!("{fixture}.tensors.txt"));
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split('\t').next().map(str::to_string))
            .collect()
    }

    #[test]
    fn recognises_every_timm_fixture_by_its_tensor_names() {
        for (fixture, arch, naming) in [
            ("legacy_xception", "xception", "timm legacy_xception names"),
            (
                "inception_v3",
                "inception_v3",
                "timm / torchvision inception_v3 names",
            ),
            ("resnet18", "resnet18", "torchvision / timm resnet names"),
            ("resnet34", "resnet34", "torchvision / timm resnet names"),
            ("resnet50", "resnet50", "torchvision / timm resnet names"),
        ] {
            let names = timm_names(fixture);
            let found = registry::identify(names.iter().map(String::as_str))
                .map(|(e, p)| (e.name, p.naming));
            assert_eq!(found, Some((arch, naming)), "{fixture}");
        }
    }

    #[test]
    fn recognises_the_shared_keras_checkpoints() {
        for (file, arch) in [
            ("xception_imagenet_notop.safetensors", "xception"),
            ("inception_v3_nsfwjs_notop.safetensors", "inception_v3"),
        ] {
            let out = inspect(&shared_model(file), false, None).unwrap();
            assert!(
                out.contains(&format!("arch = \"{arch}\"")) && out.contains("Keras-2 names"),
                "{out}"
            );
        }
    }

    #[test]
    fn a_truncated_safetensors_file_is_an_error_not_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let cut = dir.path().join("cut.safetensors");
        let bytes = std::fs::read(shared_model("efficientnet_lite0_imagenet.safetensors")).unwrap();
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = inspect(&cut, false, None).unwrap_err().to_string();
        assert!(
            err.contains("cut short") && err.contains("cut.safetensors"),
            "{err}"
        );
    }
}
