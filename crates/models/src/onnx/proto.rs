//! ONNX protobuf messages ([`super::onnx_pb`]) -> candle tensors and typed
//! attribute lookups.
//!
//! The executor keeps exactly two element types: every floating-point tensor
//! becomes f32 and every integer or boolean tensor i64, which is all a CNN's
//! weights and its shape arithmetic need.

use super::onnx_pb as onnx;
use candle_core::{DType, Device, Tensor};

/// The tensor stored in a `TensorProto` (initializer, `Constant` value).
pub fn tensor(t: &onnx::TensorProto) -> Result<Tensor, String> {
    use onnx::tensor_proto::DataType as D;
    if t.data_location == onnx::tensor_proto::DataLocation::External as i32 {
        return Err(format!(
            "tensor `{}` keeps its data in an external file, which runner does not read; \
             re-export with the weights inside the .onnx file",
            t.name
        ));
    }
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    // Checked: the dims come from the file, and their product is compared
    // with the values actually stored before anything is allocated for it.
    let len = element_count(&dims).ok_or_else(|| {
        format!(
            "tensor `{}` has shape {dims:?}, more elements than can be addressed",
            t.name
        )
    })?;
    let raw = &t.raw_data;
    let data_type = D::try_from(t.data_type).unwrap_or(D::Undefined);
    let floats: Option<Vec<f32>> = match data_type {
        D::Float if raw.is_empty() => Some(t.float_data.clone()),
        D::Float => Some(le::<4>(raw).map(f32::from_le_bytes).collect()),
        D::Double if raw.is_empty() => Some(t.double_data.iter().map(|&v| v as f32).collect()),
        D::Double => Some(le::<8>(raw).map(|b| f64::from_le_bytes(b) as f32).collect()),
        D::Float16 => Some(halves(t, |b| half::f16::from_bits(b).to_f32())),
        D::Bfloat16 => Some(halves(t, |b| half::bf16::from_bits(b).to_f32())),
        _ => None,
    };
    let data = match floats {
        Some(v) => Data::F32(v),
        None => Data::I64(match data_type {
            D::Int64 if raw.is_empty() => t.int64_data.clone(),
            D::Int64 => le::<8>(raw).map(i64::from_le_bytes).collect(),
            D::Int32 | D::Int16 | D::Int8 | D::Uint16 | D::Uint8 | D::Bool if raw.is_empty() => {
                t.int32_data.iter().map(|&v| v as i64).collect()
            }
            D::Int32 => le::<4>(raw).map(|b| i32::from_le_bytes(b) as i64).collect(),
            D::Int16 => le::<2>(raw).map(|b| i16::from_le_bytes(b) as i64).collect(),
            D::Uint16 => le::<2>(raw).map(|b| u16::from_le_bytes(b) as i64).collect(),
            D::Int8 => raw.iter().map(|&b| b as i8 as i64).collect(),
            D::Uint8 | D::Bool => raw.iter().map(|&b| b as i64).collect(),
            D::Uint32 | D::Uint64 if raw.is_empty() => {
                t.uint64_data.iter().map(|&v| v as i64).collect()
            }
            D::Uint32 => le::<4>(raw).map(|b| u32::from_le_bytes(b) as i64).collect(),
            D::Uint64 => le::<8>(raw).map(|b| u64::from_le_bytes(b) as i64).collect(),
            other => {
                return Err(format!(
                    "tensor `{}` has element type {other:?}, which runner does not support",
                    t.name
                ))
            }
        }),
    };
    let n = match &data {
        Data::F32(v) => v.len(),
        Data::I64(v) => v.len(),
    };
    if n != len {
        return Err(format!(
            "tensor `{}` has {n} values for shape {dims:?}",
            t.name
        ));
    }
    let made = match data {
        Data::F32(v) => Tensor::from_vec(v, dims, &Device::Cpu),
        Data::I64(v) => Tensor::from_vec(v, dims, &Device::Cpu),
    };
    made.map_err(|e| format!("tensor `{}`: {e}", t.name))
}

/// The number of elements of `dims`, `None` when it overflows.
pub fn element_count(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// The little-endian elements of width `W` of a raw buffer.
fn le<const W: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; W]> + '_ {
    raw.chunks_exact(W)
        .map(|c| c.try_into().expect("chunks_exact"))
}

/// A 16-bit float tensor widened by `widen` from its bit patterns: the raw
/// buffer's little-endian pairs, else one per `int32_data` entry (low bits).
fn halves(t: &onnx::TensorProto, widen: impl Fn(u16) -> f32) -> Vec<f32> {
    if t.raw_data.is_empty() {
        t.int32_data.iter().map(|&b| widen(b as u16)).collect()
    } else {
        le::<2>(&t.raw_data)
            .map(|b| widen(u16::from_le_bytes(b)))
            .collect()
    }
}

/// The element type an ONNX `Cast` / `ConstantOfShape` target maps to.
pub fn dtype_of(data_type: i64) -> Result<DType, String> {
    use onnx::tensor_proto::DataType as D;
    match D::try_from(data_type as i32) {
        Ok(D::Float | D::Double | D::Float16 | D::Bfloat16) => Ok(DType::F32),
        Ok(
            D::Int64
            | D::Int32
            | D::Int16
            | D::Int8
            | D::Uint8
            | D::Uint16
            | D::Uint32
            | D::Uint64
            | D::Bool,
        ) => Ok(DType::I64),
        Ok(other) => Err(format!("element type {other:?} is not supported")),
        Err(_) => Err(format!("unknown element type {data_type}")),
    }
}

/// Typed access to a node's attributes.
pub struct Attrs<'a>(pub &'a onnx::NodeProto);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&onnx::AttributeProto> {
        self.0.attribute.iter().find(|a| a.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }

    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// A tensor-valued attribute (`Constant.value`, `ConstantOfShape.value`).
    pub fn tensor(&self, name: &str) -> Option<Result<Tensor, String>> {
        self.get(name).and_then(|a| a.t.as_ref()).map(tensor)
    }

    /// The value of a `Constant` node, whichever attribute form it uses.
    pub fn constant_value(&self) -> Result<Tensor, String> {
        let cpu = &Device::Cpu;
        let wrap = |r: candle_core::Result<Tensor>| r.map_err(|e| e.to_string());
        if let Some(t) = self.tensor("value") {
            return t;
        }
        if let Some(a) = self.get("value_float") {
            return wrap(Tensor::new(a.f, cpu));
        }
        if let Some(a) = self.get("value_floats") {
            return wrap(Tensor::new(a.floats.as_slice(), cpu));
        }
        if let Some(a) = self.get("value_int") {
            return wrap(Tensor::new(a.i, cpu));
        }
        if let Some(a) = self.get("value_ints") {
            return wrap(Tensor::new(a.ints.as_slice(), cpu));
        }
        Err(
            "Constant without a supported value attribute (value, value_float(s), value_int(s))"
                .into(),
        )
    }
}

/// Dimensions of a graph input or output as declared: `Some(n)` for a fixed
/// size, `None` for a symbolic or missing one. `None` overall when the value
/// has no tensor type.
pub fn declared_dims(v: &onnx::ValueInfoProto) -> Option<Vec<Option<usize>>> {
    use onnx::tensor_shape_proto::dimension::Value;
    use onnx::type_proto::Value as T;
    let T::TensorType(t) = v.r#type.as_ref()?.value.as_ref()? else {
        return None;
    };
    Some(
        t.shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match d.value {
                Some(Value::DimValue(n)) if n > 0 => Some(n as usize),
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_typed_fields_decode_to_the_same_tensor() {
        let typed = onnx::TensorProto {
            dims: vec![2, 2],
            data_type: onnx::tensor_proto::DataType::Float as i32,
            float_data: vec![1.0, -2.0, 3.5, 0.25],
            ..Default::default()
        };
        let raw = onnx::TensorProto {
            dims: vec![2, 2],
            data_type: onnx::tensor_proto::DataType::Float as i32,
            raw_data: [1.0f32, -2.0, 3.5, 0.25]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            ..Default::default()
        };
        let a = tensor(&typed).unwrap();
        let b = tensor(&raw).unwrap();
        assert_eq!(a.dims(), &[2, 2]);
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let ints = onnx::TensorProto {
            dims: vec![3],
            data_type: onnx::tensor_proto::DataType::Int32 as i32,
            raw_data: [7i32, -1, 0].iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        };
        let t = tensor(&ints).unwrap();
        assert_eq!(t.dtype(), DType::I64);
        assert_eq!(t.to_vec1::<i64>().unwrap(), vec![7, -1, 0]);
    }

    #[test]
    fn a_shape_whose_element_count_overflows_is_an_error_naming_the_tensor() {
        let t = onnx::TensorProto {
            name: "w".into(),
            dims: vec![2, 1 << 62],
            data_type: onnx::tensor_proto::DataType::Float as i32,
            float_data: vec![1.0],
            ..Default::default()
        };
        let e = tensor(&t).unwrap_err();
        assert!(e.contains("`w`") && e.contains("shape"), "{e}");
    }

    #[test]
    fn a_short_buffer_is_an_error_naming_the_tensor() {
        let t = onnx::TensorProto {
            name: "w".into(),
            dims: vec![3],
            data_type: onnx::tensor_proto::DataType::Float as i32,
            float_data: vec![1.0],
            ..Default::default()
        };
        let e = tensor(&t).unwrap_err();
        assert!(e.contains("`w`") && e.contains("1 values"), "{e}");
    }

    #[test]
    fn half_floats_decode_alike_from_raw_bytes_and_int32_data() {
        let values = [1.5f32, -0.25, 65504.0];
        for (data_type, bits) in [
            (
                onnx::tensor_proto::DataType::Float16,
                values.map(|v| half::f16::from_f32(v).to_bits()),
            ),
            (
                onnx::tensor_proto::DataType::Bfloat16,
                values.map(|v| half::bf16::from_f32(v).to_bits()),
            ),
        ] {
            let typed = onnx::TensorProto {
                dims: vec![3],
                data_type: data_type as i32,
                int32_data: bits.iter().map(|&b| b as i32).collect(),
                ..Default::default()
            };
            let raw = onnx::TensorProto {
                raw_data: bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
                int32_data: Vec::new(),
                ..typed.clone()
            };
            let a = tensor(&typed).unwrap().to_vec1::<f32>().unwrap();
            let b = tensor(&raw).unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b, "{data_type:?}");
            assert_eq!(a[0..2], [1.5, -0.25], "{data_type:?}");
        }
    }
}
