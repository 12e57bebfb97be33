//! Parse functions of the [`super::OPS`] rows that check or default more
//! than one attribute: each reads a node's attributes at an opset into its
//! [`Op`], or says why the node cannot run.

use candle_core::{Device, Tensor};

use super::resize::{Coordinates, Mode, Nearest, ResizeAttrs};
use super::{Op, PadMode, ParseError, Reduce, Window2d};
use crate::layers::{Pad4, Padding};
use crate::onnx::proto::{self, Attrs};

type Parsed = Result<Op, ParseError>;

pub fn conv(a: &Attrs, _: i64) -> Parsed {
    let group = a.int("group", 1);
    if group < 1 {
        return Err(format!("group = {group}").into());
    }
    Ok(Op::Conv {
        window: window2d(a, false)?,
        group: group as usize,
    })
}

pub fn batch_normalization(a: &Attrs, _: i64) -> Parsed {
    if a.int("training_mode", 0) != 0 {
        return Err("training_mode = 1 (runner only runs inference)"
            .to_string()
            .into());
    }
    Ok(Op::BatchNormalization {
        eps: a.float("epsilon", 1e-5),
    })
}

pub fn hard_sigmoid(a: &Attrs, _: i64) -> Parsed {
    Ok(Op::HardSigmoid {
        alpha: a.float("alpha", 0.2),
        beta: a.float("beta", 0.5),
    })
}

pub fn clip(a: &Attrs, _: i64) -> Parsed {
    Ok(Op::Clip {
        min: a.float("min", f32::NEG_INFINITY),
        max: a.float("max", f32::INFINITY),
    })
}

pub fn max_pool(a: &Attrs, _: i64) -> Parsed {
    let node = a.0;
    if node.output.len() > 1 && !node.output[1].is_empty() {
        return Err("MaxPool's Indices output is not supported"
            .to_string()
            .into());
    }
    if a.int("storage_order", 0) != 0 {
        return Err("storage_order = 1 is not supported".to_string().into());
    }
    Ok(Op::MaxPool {
        window: window2d(a, true)?,
        ceil: a.int("ceil_mode", 0) != 0,
    })
}

pub fn average_pool(a: &Attrs, _: i64) -> Parsed {
    Ok(Op::AveragePool {
        window: window2d(a, true)?,
        ceil: a.int("ceil_mode", 0) != 0,
        count_include_pad: a.int("count_include_pad", 0) != 0,
    })
}

pub fn reduce(a: &Attrs, _: i64, kind: Reduce) -> Parsed {
    Ok(Op::Reduce {
        kind,
        axes: a.ints("axes"),
        keepdims: a.int("keepdims", 1) != 0,
        noop_with_empty_axes: a.int("noop_with_empty_axes", 0) != 0,
    })
}

pub fn pad(a: &Attrs, opset: i64) -> Parsed {
    Ok(Op::Pad {
        mode: match a.string("mode").as_deref().unwrap_or("constant") {
            "constant" => PadMode::Constant,
            "reflect" => PadMode::Reflect,
            "edge" => PadMode::Edge,
            other => {
                return Err(
                    format!("Pad mode {other:?} (supported: constant, reflect, edge)").into(),
                )
            }
        },
        pads: if opset < 11 { a.ints("pads") } else { None },
        value: a.float("value", 0.0),
    })
}

pub fn gemm(a: &Attrs, _: i64) -> Parsed {
    Ok(Op::Gemm {
        alpha: a.float("alpha", 1.0),
        beta: a.float("beta", 1.0),
        trans_a: a.int("transA", 0) != 0,
        trans_b: a.int("transB", 0) != 0,
    })
}

pub fn softmax(a: &Attrs, opset: i64) -> Parsed {
    Ok(Op::Softmax {
        axis: a.int("axis", if opset < 13 { 1 } else { -1 }),
        legacy: opset < 13,
    })
}

pub fn shape(a: &Attrs, _: i64) -> Parsed {
    Ok(Op::Shape {
        start: a.int("start", 0),
        end: a.has("end").then(|| a.int("end", 0)),
    })
}

pub fn slice(a: &Attrs, _: i64) -> Parsed {
    Ok(Op::Slice {
        attrs: match (a.ints("starts"), a.ints("ends")) {
            (Some(s), Some(e)) => Some((s, e, a.ints("axes"))),
            _ => None,
        },
    })
}

pub fn cast(a: &Attrs, _: i64) -> Parsed {
    let to = a.int("to", 1);
    Ok(Op::Cast {
        to: proto::dtype_of(to)?,
        boolean: to == crate::onnx::onnx_pb::tensor_proto::DataType::Bool as i64,
    })
}

pub fn constant_of_shape(a: &Attrs, _: i64) -> Parsed {
    Ok(Op::ConstantOfShape {
        value: match a.tensor("value") {
            Some(t) => t?,
            None => Tensor::new(&[0f32], &Device::Cpu).map_err(|e| e.to_string())?,
        },
    })
}

pub fn gelu(a: &Attrs, _: i64) -> Parsed {
    match a.string("approximate").as_deref().unwrap_or("none") {
        "none" => Ok(Op::Gelu { tanh: false }),
        "tanh" => Ok(Op::Gelu { tanh: true }),
        other => Err(format!("Gelu approximate = {other:?} (supported: none, tanh)").into()),
    }
}

pub fn layer_normalization(a: &Attrs, _: i64) -> Parsed {
    let node = a.0;
    if node.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err(
            "LayerNormalization's Mean and InvStdDev outputs are not supported"
                .to_string()
                .into(),
        );
    }
    Ok(Op::LayerNormalization {
        axis: a.int("axis", -1),
        eps: a.float("epsilon", 1e-5),
    })
}

pub fn split(a: &Attrs, opset: i64) -> Parsed {
    let outputs = a.0.output.len();
    if a.has("num_outputs") && a.int("num_outputs", 0) as usize != outputs {
        return Err(format!(
            "num_outputs = {} but the node has {outputs} outputs",
            a.int("num_outputs", 0)
        )
        .into());
    }
    Ok(Op::Split {
        axis: a.int("axis", 0),
        sizes: if opset < 13 { a.ints("split") } else { None },
        outputs,
    })
}

pub fn resize(a: &Attrs, opset: i64) -> Parsed {
    let text = |name: &str, default: &str| a.string(name).unwrap_or_else(|| default.into());
    let mode = match text("mode", "nearest").as_str() {
        "nearest" => Mode::Nearest(match text("nearest_mode", "round_prefer_floor").as_str() {
            "round_prefer_floor" => Nearest::RoundPreferFloor,
            "round_prefer_ceil" => Nearest::RoundPreferCeil,
            "floor" => Nearest::Floor,
            "ceil" => Nearest::Ceil,
            other => return Err(format!("nearest_mode = {other:?}").into()),
        }),
        "linear" => Mode::Linear,
        "cubic" => Mode::Cubic {
            a: a.float("cubic_coeff_a", -0.75),
            exclude_outside: a.int("exclude_outside", 0) != 0,
        },
        other => {
            return Err(format!("mode = {other:?} (supported: nearest, linear, cubic)").into())
        }
    };
    // Opset 10's Resize maps coordinates as `Upsample` did: x_out / scale.
    let default_coordinates = if opset < 11 {
        "asymmetric"
    } else {
        "half_pixel"
    };
    let coordinates = match text("coordinate_transformation_mode", default_coordinates).as_str() {
        "half_pixel" => Coordinates::HalfPixel,
        "pytorch_half_pixel" => Coordinates::PytorchHalfPixel,
        "align_corners" => Coordinates::AlignCorners,
        "asymmetric" => Coordinates::Asymmetric,
        "tf_half_pixel_for_nn" => Coordinates::TfHalfPixelForNn,
        other => {
            return Err(format!(
                "coordinate_transformation_mode = {other:?} (supported: half_pixel, \
                 pytorch_half_pixel, align_corners, asymmetric, tf_half_pixel_for_nn)"
            )
            .into())
        }
    };
    let policy = text("keep_aspect_ratio_policy", "stretch");
    if policy != "stretch" {
        return Err(format!("keep_aspect_ratio_policy = {policy:?} (supported: stretch)").into());
    }
    Ok(Op::Resize(ResizeAttrs {
        mode,
        coordinates,
        antialias: a.int("antialias", 0) != 0,
        axes: a.ints("axes"),
        scales_only: opset < 11,
    }))
}

/// Inference-time Dropout: the identity, without its mask output.
pub fn dropout(a: &Attrs, _: i64) -> Parsed {
    let node = a.0;
    if node.output.len() > 1 && !node.output[1].is_empty() {
        return Err("Dropout's mask output is not supported".to_string().into());
    }
    Ok(Op::Identity)
}

/// The kernel, stride and padding attributes of a Conv or a pool.
fn window2d(a: &Attrs, kernel_required: bool) -> Result<Window2d, String> {
    let kernel = match a.ints("kernel_shape") {
        Some(k) if k.len() == 2 && k.iter().all(|&v| v > 0) => Some((k[0] as usize, k[1] as usize)),
        Some(k) => {
            return Err(format!(
                "kernel_shape {k:?}: only 2-D windows are supported"
            ))
        }
        None if kernel_required => return Err("kernel_shape is missing".into()),
        None => None,
    };
    let strides = a.ints("strides").unwrap_or_else(|| vec![1, 1]);
    if strides.len() != 2 || strides[0] != strides[1] || strides[0] < 1 {
        return Err(format!(
            "strides {strides:?}: runner supports 2-D windows with one stride for both axes"
        ));
    }
    if let Some(d) = a.ints("dilations") {
        if d.iter().any(|&v| v != 1) {
            return Err(format!("dilations {d:?}: only dilation 1 is supported"));
        }
    }
    let auto_pad = a.string("auto_pad").unwrap_or_else(|| "NOTSET".into());
    let padding = match auto_pad.as_str() {
        "NOTSET" | "" => {
            let p = a.ints("pads").unwrap_or_else(|| vec![0; 4]);
            if p.len() != 4 || p.iter().any(|&v| v < 0) {
                return Err(format!("pads {p:?}: expected 4 non-negative values"));
            }
            // ONNX order: [top, left, bottom, right].
            Padding::Explicit(Pad4::new(
                p[0] as usize,
                p[2] as usize,
                p[1] as usize,
                p[3] as usize,
            ))
        }
        "SAME_UPPER" => Padding::Same,
        "SAME_LOWER" => Padding::SameLower,
        "VALID" => Padding::Valid,
        other => {
            return Err(format!(
                "auto_pad = {other:?} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID"
            ))
        }
    };
    Ok(Window2d {
        kernel,
        stride: strides[0] as usize,
        padding,
    })
}
