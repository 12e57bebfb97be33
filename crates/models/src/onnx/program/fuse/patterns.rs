//! The nodes around a convolution that can fold into it, recognised with
//! their constants.

use std::collections::HashMap;

use candle_core::Tensor;

use super::super::Node;
use crate::layers::{Act, Pad4};
use crate::onnx::ops::{self, Op};

/// The spatial padding of a constant-zero `Pad` on an NCHW tensor, when
/// that is what `node` is.
pub fn zero_spatial_pad(node: &Node, consts: &HashMap<String, Tensor>) -> Option<Pad4> {
    let Op::Pad {
        mode: ops::PadMode::Constant,
        pads,
        value,
    } = &node.op
    else {
        return None;
    };
    let ins: Vec<&str> = node.inputs().collect();
    let value = match ins.get(2).filter(|s| !s.is_empty()) {
        Some(v) => *ops::to_f32s(consts.get(*v)?).ok()?.first()?,
        None => *value,
    };
    if value != 0.0 || ins.get(3).is_some_and(|s| !s.is_empty()) {
        return None;
    }
    let pads = match ins.get(1).filter(|s| !s.is_empty()) {
        Some(p) => ops::to_i64s(consts.get(*p)?).ok()?,
        None => pads.clone()?,
    };
    // [n, c, h, w] begins then ends; only h and w may be padded.
    match pads.as_slice() {
        [0, 0, t, l, 0, 0, b, r] if [t, l, b, r].iter().all(|v| **v >= 0) => Some(Pad4::new(
            *t as usize,
            *b as usize,
            *l as usize,
            *r as usize,
        )),
        _ => None,
    }
}

/// When `node` multiplies `value` (the output of a convolution with `o`
/// channels) by, or adds to it, a constant that varies only along the
/// channel axis: the op and the constant's `o` values. A constant that
/// would broadcast along N, H or W, or raise the rank, does not qualify.
pub fn channel_affine(
    node: &Node,
    value: &str,
    o: usize,
    consts: &HashMap<String, Tensor>,
) -> Option<(Op, Vec<f32>)> {
    let op = match node.op {
        Op::Mul => Op::Mul,
        Op::Add => Op::Add,
        _ => return None,
    };
    let ins: Vec<&str> = node.inputs().collect();
    let other = match ins.as_slice() {
        [a, b] if *a == value && *b != value => *b,
        [a, b] if *b == value && *a != value => *a,
        _ => return None,
    };
    let c = consts.get(other)?;
    if c.dtype() != candle_core::DType::F32 || c.rank() > 4 {
        return None;
    }
    // Right-aligned against (N, C, H, W), as ONNX broadcasts.
    let mut dims = vec![1; 4 - c.rank()];
    dims.extend_from_slice(c.dims());
    if dims[0] != 1 || dims[2] != 1 || dims[3] != 1 || (dims[1] != 1 && dims[1] != o) {
        return None;
    }
    let v = ops::to_f32s(c).ok()?;
    Some((
        op,
        if v.len() == o {
            v
        } else {
            vec![*v.first()?; o]
        },
    ))
}

/// `Relu`, `Clip(0, 6)` or `Clip(0, +inf)` as a fused activation.
pub fn fusable_act(node: &Node, consts: &HashMap<String, Tensor>) -> Option<Act> {
    let bound = |i: usize, default: f32| -> Option<f32> {
        match node.input.get(i).filter(|s| !s.is_empty()) {
            Some(s) => ops::to_f32s(consts.get(s)?).ok()?.first().copied(),
            None => Some(default),
        }
    };
    match &node.op {
        Op::Relu => Some(Act::Relu),
        Op::Clip { min, max } => match (bound(1, *min)?, bound(2, *max)?) {
            (lo, hi) if lo == 0.0 && hi == 6.0 => Some(Act::Relu6),
            (lo, hi) if lo == 0.0 && hi == f32::INFINITY => Some(Act::Relu),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::onnx_pb::NodeProto;
    use crate::onnx::testutil::node;

    fn parsed(proto: &NodeProto) -> Node<'_> {
        Node {
            proto,
            name: proto.name.clone(),
            op: Op::parse(proto, 13).unwrap(),
            input: proto.input.clone(),
            output: proto.output.clone(),
        }
    }

    fn scalars(pairs: &[(&str, f32)]) -> HashMap<String, Tensor> {
        let cpu = &candle_core::Device::Cpu;
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Tensor::new(*v, cpu).unwrap()))
            .collect()
    }

    #[test]
    fn only_relu_and_clips_from_zero_to_six_or_infinity_are_fusable() {
        let consts = scalars(&[("zero", 0.0), ("six", 6.0), ("five", 5.0)]);
        let act = |inputs: &[&str]| fusable_act(&parsed(&node("Clip", inputs, "y")), &consts);
        assert_eq!(act(&["c", "zero", "six"]), Some(Act::Relu6));
        assert_eq!(act(&["c", "zero"]), Some(Act::Relu));
        assert_eq!(act(&["c", "zero", "five"]), None);
        assert_eq!(act(&["c", "", "six"]), None, "no lower bound");
        let relu = node("Relu", &["c"], "y");
        assert_eq!(fusable_act(&parsed(&relu), &consts), Some(Act::Relu));
        let leaky = node("LeakyRelu", &["c"], "y");
        assert_eq!(fusable_act(&parsed(&leaky), &consts), None);
    }

    #[test]
    fn a_pad_with_a_nonzero_value_or_on_n_or_c_is_not_a_zero_spatial_pad() {
        let pads = |v: &[i64]| {
            let cpu = &candle_core::Device::Cpu;
            let mut c = scalars(&[("one", 1.0), ("zero", 0.0)]);
            c.insert("pads".into(), Tensor::new(v, cpu).unwrap());
            c
        };
        let pad = node("Pad", &["x", "pads"], "p");
        let spatial = pads(&[0, 0, 1, 2, 0, 0, 3, 4]);
        assert_eq!(
            zero_spatial_pad(&parsed(&pad), &spatial),
            Some(Pad4::new(1, 3, 2, 4))
        );
        let channels = pads(&[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(zero_spatial_pad(&parsed(&pad), &channels), None);
        let ones = node("Pad", &["x", "pads", "one"], "p");
        assert_eq!(zero_spatial_pad(&parsed(&ones), &spatial), None);
        let reflect = NodeProto {
            attribute: vec![crate::onnx::onnx_pb::AttributeProto {
                name: "mode".into(),
                s: b"reflect".to_vec(),
                ..Default::default()
            }],
            ..pad.clone()
        };
        assert_eq!(zero_spatial_pad(&parsed(&reflect), &spatial), None);
    }
}
