//! Hand-built graphs and tensors for the executor's unit tests.

use candle_core::{Device, Tensor};

use super::onnx_pb as onnx;

/// An f32 tensor on the CPU.
pub fn tensor(values: &[f32], dims: &[usize]) -> Tensor {
    Tensor::from_vec(values.to_vec(), dims, &Device::Cpu).unwrap()
}

/// The values of an f32 tensor, flattened.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// A default-domain node named after its one output.
pub fn node(op: &str, inputs: &[&str], output: &str) -> onnx::NodeProto {
    onnx::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// `node` with an integer attribute added.
pub fn with_int(mut node: onnx::NodeProto, name: &str, i: i64) -> onnx::NodeProto {
    node.attribute.push(onnx::AttributeProto {
        name: name.into(),
        i,
        ..Default::default()
    });
    node
}

/// `node` with an integer-list attribute added.
pub fn with_ints(mut node: onnx::NodeProto, name: &str, ints: &[i64]) -> onnx::NodeProto {
    node.attribute.push(onnx::AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        ..Default::default()
    });
    node
}

/// An f32 initializer.
pub fn init(name: &str, dims: &[i64], values: &[f32]) -> onnx::TensorProto {
    onnx::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: onnx::tensor_proto::DataType::Float as i32,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

/// An i64 initializer.
pub fn init_i64(name: &str, values: &[i64]) -> onnx::TensorProto {
    onnx::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: onnx::tensor_proto::DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// An opset-13 model with image input `x` and the one graph output `output`
/// (neither with a declared type).
pub fn model(
    nodes: Vec<onnx::NodeProto>,
    inits: Vec<onnx::TensorProto>,
    output: &str,
) -> onnx::ModelProto {
    let value = |name: &str| onnx::ValueInfoProto {
        name: name.into(),
        ..Default::default()
    };
    onnx::ModelProto {
        opset_import: vec![onnx::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(onnx::GraphProto {
            node: nodes,
            initializer: inits,
            input: vec![value("x")],
            output: vec![value(output)],
            ..Default::default()
        }),
        ..Default::default()
    }
}
