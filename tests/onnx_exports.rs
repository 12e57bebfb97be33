//! Real exports of common CNNs through runner's ONNX executor.
//!
//! `tests/data/onnx/` holds small random-weight models exported by Keras 3 +
//! tf2onnx (NHWC inputs) and PyTorch's `torch.onnx.export` (NCHW), written by
//! `tools/fixtures/export_onnx_fixtures.py`, each beside `NAME.expected.safetensors`
//! (`input` in the graph's layout, onnxruntime's `output`, metadata
//! `output_name` and `layout`). Every `.onnx` there must reproduce
//! onnxruntime to `1e-4 * max|reference|`: a new fixture is tested by being
//! committed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use runner_models::onnx::onnx_pb as onnx;
use runner_models::onnx::{read_model, InputLayout, OnnxBackbone, OnnxOptions, Program, TokenPool};
use runner_models::Backbone;

const REL_TOL: f32 = 1e-4;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx")
}

/// One exported model and its reference run.
struct Fixture {
    name: String,
    onnx: PathBuf,
    input: Tensor,
    output: Tensor,
    output_name: String,
    layout: InputLayout,
    /// How a token output is pooled (metadata `pool`, absent otherwise).
    pool: Option<TokenPool>,
}

impl Fixture {
    fn load(onnx: PathBuf) -> Fixture {
        let name = onnx
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("file name")
            .to_string();
        let expected = onnx.with_file_name(format!("{name}.expected.safetensors"));
        let bytes = std::fs::read(&expected)
            .unwrap_or_else(|e| panic!("{name}: cannot read {}: {e}", expected.display()));
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", expected.display()));
        let meta: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
        let field = |k: &str| {
            meta.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{}: metadata lacks `{k}`", expected.display()))
        };
        let layout = match field("layout").as_str() {
            "nchw" => InputLayout::Nchw,
            "nhwc" => InputLayout::Nhwc,
            other => panic!("{}: layout {other:?}", expected.display()),
        };
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", expected.display()));
        let mut take = |k: &str| {
            tensors
                .remove(k)
                .unwrap_or_else(|| panic!("{}: no tensor `{k}`", expected.display()))
        };
        Fixture {
            input: take("input"),
            output: take("output"),
            output_name: field("output_name"),
            pool: meta.get("pool").map(|p| {
                serde_json::from_value(serde_json::Value::String(p.clone()))
                    .unwrap_or_else(|e| panic!("{}: pool {p:?}: {e}", expected.display()))
            }),
            layout,
            name,
            onnx,
        }
    }

    /// The fixture lowered to its reference output.
    fn program(&self) -> Result<Program, String> {
        let model = read_model(&self.onnx).map_err(|e| e.to_string())?;
        Program::lower(
            &model,
            Some(&self.output_name),
            &self.onnx.display().to_string(),
        )
        .map_err(|e| e.to_string())
    }

    /// Images `idx` of the stored input, as a new batch.
    fn images(&self, idx: &[u32]) -> Tensor {
        let i = Tensor::new(idx, &Device::Cpu).expect("index");
        self.input.index_select(&i, 0).expect("select images")
    }

    /// The reference output as `arch = "onnx"` pools it: a feature map's
    /// mean over H, W (these exports are NCHW inside), a token sequence
    /// by the fixture's pool with one prefix token.
    fn features(&self) -> Tensor {
        let y = &self.output;
        let pooled = match (y.rank(), self.pool) {
            (2, _) => Ok(y.clone()),
            (4, _) => y.mean((2, 3)),
            (3, Some(pool)) => {
                let t = y.dim(1).expect("tokens");
                let cls = y.narrow(1, 0, 1).and_then(|c| c.squeeze(1));
                let mean = y.narrow(1, 1, t - 1).and_then(|p| p.mean(1));
                match pool {
                    TokenPool::Cls => cls,
                    TokenPool::Mean => mean,
                    TokenPool::ClsMean => Tensor::cat(&[cls.unwrap(), mean.unwrap()], 1),
                }
            }
            (r, pool) => panic!("{}: a rank-{r} output with pool {pool:?}", self.name),
        };
        pooled.expect("pool the reference output")
    }

    fn options(&self) -> OnnxOptions {
        OnnxOptions {
            pool: self.pool,
            ..Default::default()
        }
    }

    fn expected(&self, idx: &[u32]) -> Tensor {
        let i = Tensor::new(idx, &Device::Cpu).expect("index");
        self.output.index_select(&i, 0).expect("select outputs")
    }
}

/// Every fixture in `tests/data/onnx`, sorted; an empty directory fails (a
/// lost fixture set must not pass as "nothing to compare").
fn fixtures() -> Vec<Fixture> {
    let dir = data_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "no .onnx fixtures in {}: run tools/fixtures/export_onnx_fixtures.py",
        dir.display()
    );
    paths.into_iter().map(Fixture::load).collect()
}

fn fixture(name: &str) -> Fixture {
    Fixture::load(data_dir().join(format!("{name}.onnx")))
}

/// `max|ours - want| / max|want|`, or why it cannot be computed.
fn rel_err(ours: &Tensor, want: &Tensor) -> Result<f32, String> {
    if ours.dims() != want.dims() {
        return Err(format!(
            "shape {:?}, onnxruntime's {:?}",
            ours.dims(),
            want.dims()
        ));
    }
    let max_abs = |t: &Tensor| -> candle_core::Result<f32> {
        t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()
    };
    let diff = (ours - want).map_err(|e| e.to_string())?;
    let e =
        max_abs(&diff).map_err(|e| e.to_string())? / max_abs(want).map_err(|e| e.to_string())?;
    if e.is_nan() {
        return Err("NaN in the output".into());
    }
    Ok(e)
}

/// Runs every check, prints each result, then fails listing all failures
/// (one broken model does not hide the state of the others).
fn check_all(label: &str, check: impl Fn(&Fixture) -> Result<f32, String>) {
    let mut failures = Vec::new();
    for fx in fixtures() {
        match check(&fx) {
            Ok(e) if e <= REL_TOL => println!("{label} {}: max rel err {e:.2e}", fx.name),
            Ok(e) => failures.push(format!("{}: max rel err {e:.2e} > {REL_TOL:.0e}", fx.name)),
            Err(m) => failures.push(format!("{}: {m}", fx.name)),
        }
    }
    assert!(failures.is_empty(), "{label}:\n{}", failures.join("\n"));
}

#[test]
fn every_export_matches_onnxruntime() {
    check_all("raw output", |fx| {
        let program = fx.program()?;
        println!(
            "{}: {} steps, {} of them native convolutions",
            fx.name,
            program.len(),
            program.native_convolutions()
        );
        let y = program.run(fx.input.clone()).map_err(|e| e.to_string())?;
        rel_err(&y, &fx.output)
    });
}

/// One loaded program serves any batch size: the exports declare a
/// symbolic batch axis, and nothing may be specialised to the first batch.
#[test]
fn every_export_runs_batch_one_and_three_through_one_program() {
    check_all("dynamic batch", |fx| {
        let program = fx.program()?;
        let mut worst: f32 = 0.0;
        for idx in [&[1u32][..], &[0, 1, 0]] {
            let y = program.run(fx.images(idx)).map_err(|e| e.to_string())?;
            worst = worst.max(
                rel_err(&y, &fx.expected(idx)).map_err(|m| format!("batch {}: {m}", idx.len()))?,
            );
        }
        Ok(worst)
    });
}

/// Through `OnnxBackbone`, as `arch = "onnx"` runs them: the layout is read
/// from the graph, images arrive NCHW and are transposed for NHWC graphs.
#[test]
fn exports_run_as_backbones_in_both_layouts() {
    let all = fixtures();
    for layout in [InputLayout::Nchw, InputLayout::Nhwc] {
        assert!(
            all.iter().any(|fx| fx.layout == layout),
            "no {layout:?} fixture"
        );
    }
    check_all("backbone", |fx| {
        let x = match fx.layout {
            InputLayout::Nchw => fx.input.clone(),
            InputLayout::Nhwc => fx
                .input
                .permute((0, 3, 1, 2))
                .and_then(|t| t.contiguous())
                .map_err(|e| e.to_string())?,
        };
        let size = x.dim(2).map_err(|e| e.to_string())?;
        let net = OnnxBackbone::load(&fx.onnx, &fx.options(), size).map_err(|e| e.to_string())?;
        let f = net.forward_features(&x).map_err(|e| e.to_string())?;
        let want = fx.features();
        if Some(net.num_features()) != want.dims().get(1).copied() {
            return Err(format!(
                "num_features {}, pooled output {:?}",
                net.num_features(),
                want.dims()
            ));
        }
        rel_err(&f, &want)
    });
}

/// A value of `dims` f32 elements, for a hand-built graph.
fn value(name: &str, dims: &[i64]) -> onnx::ValueInfoProto {
    use onnx::tensor_shape_proto::{dimension::Value, Dimension};
    onnx::ValueInfoProto {
        name: name.into(),
        r#type: Some(onnx::TypeProto {
            value: Some(onnx::type_proto::Value::TensorType(
                onnx::type_proto::Tensor {
                    elem_type: onnx::tensor_proto::DataType::Float as i32,
                    shape: Some(onnx::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(Value::DimValue(d)),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `x -> Relu -> GridSample(x, grid)`: an op runner does not implement, in a
/// model at opset 16.
fn model_with_unsupported_op() -> onnx::ModelProto {
    let node = |op: &str, name: &str, inputs: &[&str], output: &str| onnx::NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    };
    let grid = onnx::TensorProto {
        name: "grid".into(),
        dims: vec![1, 8, 8, 2],
        data_type: onnx::tensor_proto::DataType::Float as i32,
        float_data: vec![0.0; 128],
        ..Default::default()
    };
    onnx::ModelProto {
        ir_version: 8,
        opset_import: vec![onnx::OperatorSetIdProto {
            domain: String::new(),
            version: 16,
        }],
        graph: Some(onnx::GraphProto {
            name: "tiny".into(),
            node: vec![
                node("Relu", "act", &["x"], "a"),
                node("GridSample", "warp", &["a", "grid"], "y"),
            ],
            initializer: vec![grid],
            input: vec![value("x", &[1, 3, 8, 8])],
            output: vec![value("y", &[1, 3, 8, 8])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Lowering, which runs before any image is read, names the op, the node and
/// the opset, and says what is supported.
#[test]
fn an_unsupported_op_is_an_error_naming_op_node_and_opset() {
    let model = model_with_unsupported_op();
    let e = match Program::lower(&model, None, "tiny.onnx") {
        Ok(_) => panic!("GridSample lowered"),
        Err(e) => e.to_string(),
    };
    for want in [
        "tiny.onnx",
        "`warp`",
        "`GridSample`",
        "opset 16",
        "supported: ",
    ] {
        assert!(e.contains(want), "{want:?} missing from: {e}");
    }
}

/// `output` may name any value; a 4-D one is pooled over its own H, W.
/// Inside a tf2onnx graph values are NCHW (the exporter transposes right
/// after the NHWC input), so the input's layout does not say where H, W
/// are: the Relu before Keras's GlobalAveragePooling2D, pooled, must give
/// the graph's own output.
#[test]
fn a_feature_map_inside_an_nhwc_graph_is_pooled_over_its_own_height_and_width() {
    let fx = fixture("keras_inception_v3");
    let model = read_model(&fx.onnx).expect("read");
    let graph = model.graph.as_ref().expect("graph");
    let gap = graph
        .node
        .iter()
        .find(|n| n.op_type == "GlobalAveragePool")
        .expect("a GlobalAveragePool node");
    let opts = OnnxOptions {
        output: Some(gap.input[0].clone()),
        input_layout: None,
        ..Default::default()
    };
    let size = fx.input.dim(1).expect("height");
    let net = OnnxBackbone::load(&fx.onnx, &opts, size).expect("load");
    let x = fx
        .input
        .permute((0, 3, 1, 2))
        .and_then(|t| t.contiguous())
        .expect("to nchw");
    let f = net.forward_features(&x).expect("forward_features");
    let e = rel_err(&f, &fx.output).unwrap_or_else(|m| panic!("{m}"));
    assert!(e <= REL_TOL, "relative error {e:.2e} > {REL_TOL:.0e}");
}

/// `runner export` copies an `arch = "onnx"` backbone's graph into its
/// own: fed the NCHW image, the copy pools to the features `OnnxBackbone`
/// computes, for graphs of both layouts; a graph below opset 13 is refused
/// naming its opset.
#[test]
fn every_export_copied_into_a_graph_gives_the_backbones_features() {
    use runner_models::onnx::build::GraphBuilder;
    check_all("copied", |fx| {
        let x = match fx.layout {
            InputLayout::Nchw => fx.input.clone(),
            InputLayout::Nhwc => fx
                .input
                .permute((0, 3, 1, 2))
                .and_then(|t| t.contiguous())
                .map_err(|e| e.to_string())?,
        };
        let size = x.dim(2).map_err(|e| e.to_string())?;
        let spec = runner_models::BackboneSpec {
            arch: runner_models::Arch::from_name("onnx").expect("registered"),
            weights: fx.onnx.clone(),
            input_size: size,
            preprocess: runner_models::Preprocess::Imagenet,
            resize: Default::default(),
            output: Some(fx.output_name.clone()),
            input_layout: None,
            pool: fx.pool,
            prefix_tokens: fx.pool.map(|_| 1),
            crop_pct: None,
        };
        let net =
            OnnxBackbone::load(&fx.onnx, &spec.onnx_options(), size).map_err(|e| e.to_string())?;
        let want = net.forward_features(&x).map_err(|e| e.to_string())?;
        let mut g = GraphBuilder::new("copy");
        g.input(
            "image",
            &[None, Some(3), Some(size as i64), Some(size as i64)],
        );
        let emit = spec.arch.entry().to_onnx.expect("onnx has a writer");
        let features = match emit(&spec, &mut g, "image") {
            Ok(f) => f,
            // Older graphs are refused, by name.
            Err(e) if runner_models::onnx::program_opset(&read_model(&fx.onnx).unwrap()) < 13 => {
                let e = e.to_string();
                return if e.contains("opset") && e.contains("--from features") {
                    println!("{}: refused as expected: {e}", fx.name);
                    Ok(0.0)
                } else {
                    Err(e)
                };
            }
            Err(e) => return Err(e.to_string()),
        };
        g.node_into("Identity", &[&features], vec![], "features");
        g.output("features", &[None, None]);
        let model = g.finish("test", Vec::new());
        let program = Program::lower(&model, None, "copy").map_err(|e| e.to_string())?;
        let got = program.run(x).map_err(|e| e.to_string())?;
        rel_err(&got, &want)
    });
}
