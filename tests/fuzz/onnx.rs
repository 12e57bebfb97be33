//! The ONNX loader as spec checking and `runner inspect` use it: decode,
//! summarize, lower (constant folding, pruning, fusion, emission). Two kinds
//! of input: the small exports under tests/data/onnx with their bytes
//! mutated (the protobuf decoder), and with their messages mutated (shapes,
//! attributes, wiring, element types: the lowering).

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;
use runner_models::onnx::onnx_pb as pb;
use runner_models::onnx::{read_model, summarize, Program};

use crate::harness::fuzz;
use crate::mutate::{extreme_i64, fixture, mutated};

/// Small exports of several producers (tf2onnx, torch, timm).
const BASES: [&str; 4] = [
    "keras_mobilenet_v2.onnx",
    "timm_xception.onnx",
    "torch_mobilenet_v3_small.onnx",
    "timm_resnet10t.onnx",
];

fn bases() -> Vec<(&'static str, &'static [u8])> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/onnx");
    BASES.iter().map(|b| (*b, fixture(&dir.join(b)))).collect()
}

/// Everything the checks before a run do with a graph file.
fn load(path: &Path) -> bool {
    let Ok(model) = read_model(path) else {
        return false;
    };
    let summary = summarize(&model, path);
    Program::lower(&model, None, "fuzz.onnx").is_ok() && summary.is_ok()
}

#[test]
fn onnx_loader_survives_mutated_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("m.onnx");
    fuzz("onnx bytes", 3000, mutated(bases()), |m| {
        std::fs::write(&path, &m.bytes).unwrap();
        load(&path)
    });
}

/// An edit of the decoded model; indices pick among what the graph has.
#[derive(Debug, Clone)]
enum Edit {
    InitializerDim(Index, Index, i64),
    InitializerDims(Index, Vec<i64>),
    InitializerType(Index, i32),
    InitializerTruncate(Index, Index),
    AttributeInt(Index, Index, i64),
    AttributeInts(Index, Index, Index, i64),
    AttributeIntsLen(Index, Index, Index),
    AttributeFloat(Index, Index, f32),
    InputDim(Index, i64),
    OpType(Index, &'static str),
    /// A node reads another node's output (cycles and forward edges).
    Rewire(Index, Index, Index),
    DropNode(Index),
    DropInitializer(Index),
    DropInput(Index, Index),
    Opset(i64),
    OutputName(Index),
}

const OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Div",
    "Flatten",
    "Gather",
    "Gemm",
    "GlobalAveragePool",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "ReduceMean",
    "Reshape",
    "Shape",
    "Slice",
    "Softmax",
    "Squeeze",
    "Transpose",
    "Unsqueeze",
    "Unknown",
];

fn edit() -> impl Strategy<Value = Edit> {
    let i = any::<Index>;
    let small = prop_oneof![Just(-1i64), Just(0), Just(1), Just(2), Just(3), Just(7)];
    let value = prop_oneof![small.clone(), extreme_i64()];
    prop_oneof![
        (i(), i(), value.clone()).prop_map(|(a, b, v)| Edit::InitializerDim(a, b, v)),
        (i(), proptest::collection::vec(value.clone(), 0..6))
            .prop_map(|(a, v)| Edit::InitializerDims(a, v)),
        (i(), -1i32..20).prop_map(|(a, t)| Edit::InitializerType(a, t)),
        (i(), i()).prop_map(|(a, b)| Edit::InitializerTruncate(a, b)),
        (i(), i(), value.clone()).prop_map(|(a, b, v)| Edit::AttributeInt(a, b, v)),
        (i(), i(), i(), value.clone()).prop_map(|(a, b, c, v)| Edit::AttributeInts(a, b, c, v)),
        (i(), i(), i()).prop_map(|(a, b, c)| Edit::AttributeIntsLen(a, b, c)),
        (
            i(),
            i(),
            prop_oneof![
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(-1.0),
                Just(0.0),
                Just(1e30)
            ]
        )
            .prop_map(|(a, b, v)| Edit::AttributeFloat(a, b, v)),
        (i(), value.clone()).prop_map(|(a, v)| Edit::InputDim(a, v)),
        (i(), proptest::sample::select(OPS)).prop_map(|(a, op)| Edit::OpType(a, op)),
        (i(), i(), i()).prop_map(|(a, b, c)| Edit::Rewire(a, b, c)),
        i().prop_map(Edit::DropNode),
        i().prop_map(Edit::DropInitializer),
        (i(), i()).prop_map(|(a, b)| Edit::DropInput(a, b)),
        prop_oneof![
            Just(-1i64),
            Just(0),
            Just(1),
            Just(7),
            Just(13),
            Just(i64::MAX)
        ]
        .prop_map(Edit::Opset),
        i().prop_map(Edit::OutputName),
    ]
}

fn pick<'a, T>(v: &'a mut [T], i: &Index) -> Option<&'a mut T> {
    if v.is_empty() {
        None
    } else {
        let n = v.len();
        v.get_mut(i.index(n))
    }
}

fn apply_edit(model: &mut pb::ModelProto, e: &Edit) {
    if let Edit::Opset(v) = e {
        model.opset_import.iter_mut().for_each(|o| o.version = *v);
        return;
    }
    let Some(g) = model.graph.as_mut() else {
        return;
    };
    let outputs: Vec<String> = g.node.iter().flat_map(|n| n.output.clone()).collect();
    match e {
        Edit::InitializerDim(a, b, v) => {
            if let Some(d) = pick(&mut g.initializer, a).and_then(|t| pick(&mut t.dims, b)) {
                *d = *v;
            }
        }
        Edit::InitializerDims(a, v) => {
            if let Some(t) = pick(&mut g.initializer, a) {
                t.dims = v.clone();
            }
        }
        Edit::InitializerType(a, ty) => {
            if let Some(t) = pick(&mut g.initializer, a) {
                t.data_type = *ty;
            }
        }
        Edit::InitializerTruncate(a, b) => {
            if let Some(t) = pick(&mut g.initializer, a) {
                let keep = b.index(t.raw_data.len() + 1);
                t.raw_data.truncate(keep);
            }
        }
        Edit::AttributeInt(a, b, v) => {
            if let Some(at) = pick(&mut g.node, a).and_then(|n| pick(&mut n.attribute, b)) {
                at.i = *v;
            }
        }
        Edit::AttributeInts(a, b, c, v) => {
            if let Some(x) = pick(&mut g.node, a)
                .and_then(|n| pick(&mut n.attribute, b))
                .and_then(|at| pick(&mut at.ints, c))
            {
                *x = *v;
            }
        }
        Edit::AttributeIntsLen(a, b, c) => {
            if let Some(at) = pick(&mut g.node, a).and_then(|n| pick(&mut n.attribute, b)) {
                let keep = c.index(at.ints.len() + 2);
                at.ints.resize(keep, 1);
            }
        }
        Edit::AttributeFloat(a, b, v) => {
            if let Some(at) = pick(&mut g.node, a).and_then(|n| pick(&mut n.attribute, b)) {
                at.f = *v;
            }
        }
        Edit::InputDim(a, v) => {
            use pb::tensor_shape_proto::dimension::Value;
            use pb::type_proto::Value as T;
            for input in &mut g.input {
                if let Some(T::TensorType(t)) = input.r#type.as_mut().and_then(|t| t.value.as_mut())
                {
                    if let Some(d) = t.shape.as_mut().and_then(|s| pick(&mut s.dim, a)) {
                        d.value = Some(Value::DimValue(*v));
                    }
                }
            }
        }
        Edit::OpType(a, op) => {
            if let Some(n) = pick(&mut g.node, a) {
                n.op_type = op.to_string();
            }
        }
        Edit::Rewire(a, b, c) => {
            if outputs.is_empty() {
                return;
            }
            let source = outputs[c.index(outputs.len())].clone();
            if let Some(x) = pick(&mut g.node, a).and_then(|n| pick(&mut n.input, b)) {
                *x = source;
            }
        }
        Edit::DropNode(a) => {
            if !g.node.is_empty() {
                let n = g.node.len();
                g.node.remove(a.index(n));
            }
        }
        Edit::DropInitializer(a) => {
            if !g.initializer.is_empty() {
                let n = g.initializer.len();
                g.initializer.remove(a.index(n));
            }
        }
        Edit::DropInput(a, b) => {
            if let Some(n) = pick(&mut g.node, a) {
                if !n.input.is_empty() {
                    let len = n.input.len();
                    n.input.remove(b.index(len));
                }
            }
        }
        Edit::OutputName(a) => {
            if outputs.is_empty() {
                return;
            }
            let name = outputs[a.index(outputs.len())].clone();
            if let Some(o) = g.output.first_mut() {
                o.name = name;
            }
        }
        Edit::Opset(_) => unreachable!("handled above"),
    }
}

#[derive(Debug, Clone)]
struct GraphCase {
    base: Index,
    edits: Vec<Edit>,
    /// Also through the file reader (re-encoded), as `runner inspect` does.
    via_file: bool,
}

#[test]
fn onnx_lowering_survives_mutated_graphs() {
    let models: Vec<(&str, pb::ModelProto)> = bases()
        .into_iter()
        .map(|(name, bytes)| (name, pb::ModelProto::decode(bytes).unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    let strategy = (
        any::<Index>(),
        proptest::collection::vec(edit(), 1..6),
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(base, edits, via_file)| GraphCase {
            base,
            edits,
            via_file,
        });
    fuzz("onnx graphs", 4000, strategy, |c| {
        let (_, base) = &models[c.base.index(models.len())];
        let mut model = base.clone();
        for e in &c.edits {
            apply_edit(&mut model, e);
        }
        if c.via_file {
            std::fs::write(&path, model.encode_to_vec()).unwrap();
            load(&path)
        } else {
            let summary = summarize(&model, Path::new("fuzz.onnx"));
            Program::lower(&model, None, "fuzz.onnx").is_ok() && summary.is_ok()
        }
    });
}
