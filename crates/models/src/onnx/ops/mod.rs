//! The ONNX operators runner evaluates: one table ([`OPS`]) names each op
//! with its parse function and its layout class, and is the list error
//! messages give as supported.
//!
//! Each node is parsed once ([`Op::parse`]), so a bad attribute is an error
//! at load, before any image is read. Convolutions are not evaluated here:
//! the program lowers them onto the native layers ([`crate::layers::Conv2d`]
//! and friends), with their BatchNorm, activation, padding and residual
//! fused. Everything else (shape arithmetic, elementwise ops, pools, the
//! classifier) runs through [`Op::eval`], which also serves constant folding
//! at load.
//!
//! Adding an op: a variant of [`Op`], a row of [`OPS`] with its parse
//! function (`parse.rs`), and its arm in [`Op::eval`] (`eval.rs`, with the
//! shape ops in `shape.rs` and the pools in `pool.rs`).

mod eval;
mod fast;
mod math;
mod norm;
mod parse;
mod pool;
mod repeat;
mod resize;
mod shape;

use candle_core::{DType, Tensor};

pub use math::{Compare, Unary};
pub use pool::Reduce;
pub use resize::ResizeAttrs;

use super::onnx_pb::NodeProto;
use super::proto::Attrs;
use crate::layers::Padding;

/// The opsets the ops of [`OPS`] are implemented for.
const OPSETS: &str = "opsets 7-21";

/// Why a node cannot be parsed.
#[derive(Debug)]
pub enum ParseError {
    Unsupported,
    Invalid(String),
}

impl From<String> for ParseError {
    fn from(s: String) -> Self {
        ParseError::Invalid(s)
    }
}

/// A 2-D window's geometry: kernel, one stride for both axes, padding rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window2d {
    pub kernel: Option<(usize, usize)>,
    pub stride: usize,
    pub padding: Padding,
}

#[derive(Debug, Clone)]
pub enum PadMode {
    Constant,
    Reflect,
    Edge,
}

/// `(starts, ends, axes)` of an opset < 10 `Slice`.
pub type SliceAttrs = (Vec<i64>, Vec<i64>, Option<Vec<i64>>);

#[derive(Debug, Clone)]
pub enum Op {
    Conv {
        window: Window2d,
        group: usize,
    },
    BatchNormalization {
        eps: f32,
    },
    Relu,
    LeakyRelu {
        alpha: f32,
    },
    /// Rounding, in PyTorch's TF-"same" padding arithmetic
    /// (`ceil(in / stride)`) and `math.floor` on traced sizes.
    Ceil,
    Floor,
    Sigmoid,
    Tanh,
    Log,
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    /// Bounds from attributes (opset < 11); inputs 1 and 2 override them.
    Clip {
        min: f32,
        max: f32,
    },
    Add,
    Sub,
    Mul,
    Div,
    MaxPool {
        window: Window2d,
        ceil: bool,
    },
    AveragePool {
        window: Window2d,
        ceil: bool,
        count_include_pad: bool,
    },
    GlobalAveragePool,
    /// `ReduceMean`, `ReduceSum`, `ReduceMax`, `ReduceMin`: `axes` from the
    /// attribute (before opset 13, 18 for ReduceMean / Max / Min) or input 1.
    Reduce {
        kind: Reduce,
        axes: Option<Vec<i64>>,
        keepdims: bool,
        noop_with_empty_axes: bool,
    },
    Unary(Unary),
    Pow,
    Compare(Compare),
    Where,
    /// `Min` (`max == false`) or `Max` of any number of inputs.
    MinMax {
        max: bool,
    },
    /// Opset 20's fused GELU; `tanh`: its tanh approximation.
    Gelu {
        tanh: bool,
    },
    LayerNormalization {
        axis: i64,
        eps: f32,
    },
    /// Not an ONNX op: LayerNorm over the channels of an NCHW tensor, what
    /// `Transpose(0,2,3,1) -> LayerNormalization -> Transpose(0,3,1,2)`
    /// computes (ConvNeXt's LayerNorm2d), without moving the tensor twice.
    ChannelLayerNorm {
        eps: f32,
    },
    Expand,
    Tile,
    /// `sizes` from the attribute (opset < 13) or input 1; `outputs`: how
    /// many parts the node names.
    Split {
        axis: i64,
        sizes: Option<Vec<i64>>,
        outputs: usize,
    },
    Range,
    Resize(ResizeAttrs),
    /// `pads` and `value` from attributes (opset < 11); inputs override them.
    Pad {
        mode: PadMode,
        pads: Option<Vec<i64>>,
        value: f32,
    },
    Concat {
        axis: i64,
    },
    Reshape {
        allowzero: bool,
    },
    Flatten {
        axis: i64,
    },
    Transpose {
        perm: Option<Vec<i64>>,
    },
    Squeeze {
        axes: Option<Vec<i64>>,
    },
    Unsqueeze {
        axes: Option<Vec<i64>>,
    },
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    /// `alpha * (A @ B) (+ bias) (then GELU)`, `B` given transposed with
    /// `trans_b`: ONNX's MatMul has none of these; the pattern pass folds
    /// the scalar Muls, the Transpose of `B`, a bias Add (third input) and a
    /// GELU around a product into it.
    MatMul {
        gelu: bool,
        trans_b: bool,
        alpha: f32,
    },
    /// `legacy`: opset < 13, softmax over the input flattened to 2-D at `axis`.
    Softmax {
        axis: i64,
        legacy: bool,
    },
    Shape {
        start: i64,
        end: Option<i64>,
    },
    Gather {
        axis: i64,
    },
    /// Bounds from attributes (opset < 10); later opsets take inputs.
    Slice {
        attrs: Option<SliceAttrs>,
    },
    /// `boolean`: to BOOL, i.e. `x != 0` (booleans are i64 0 / 1 here).
    Cast {
        to: DType,
        boolean: bool,
    },
    Constant(Tensor),
    ConstantOfShape {
        value: Tensor,
    },
    Identity,
}

/// How an op's output axes relate to its inputs' (what
/// [`super::traced_axes`] follows to find H and W of a feature map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Defined on NCHW: the output is NCHW whatever order the input is in
    /// (Conv, the pools, BatchNormalization).
    Nchw,
    /// Permutes its input's axes by `perm` (Transpose).
    Permute,
    /// Keeps the axis order its inputs share (elementwise ops, Pad, Concat).
    Keep,
    /// The output's axis order is not traced: shape arithmetic, reductions,
    /// reshapes, the classifier, and Ceil / Floor, which exporters use on
    /// sizes only.
    Opaque,
}

/// Parses a node's attributes at an opset into its [`Op`].
pub type ParseFn = fn(&Attrs, i64) -> Result<Op, ParseError>;

/// One supported ONNX op.
pub struct OpDef {
    /// The `op_type` of the default (`ai.onnx`) domain.
    pub name: &'static str,
    pub layout: Layout,
    pub parse: ParseFn,
}

const fn row(name: &'static str, layout: Layout, parse: ParseFn) -> OpDef {
    OpDef {
        name,
        layout,
        parse,
    }
}

/// Every op runner's ONNX executor runs, sorted by name.
#[rustfmt::skip]
pub const OPS: &[OpDef] = {
    use parse as p;
    use Layout::{Keep, Nchw, Opaque, Permute};
    &[
        row("Abs",                Keep,    |_, _| Ok(Op::Unary(Unary::Abs))),
        row("Add",                Keep,    |_, _| Ok(Op::Add)),
        row("AveragePool",        Nchw,    p::average_pool),
        row("BatchNormalization", Nchw,    p::batch_normalization),
        row("Cast",               Keep,    p::cast),
        row("Ceil",               Opaque,  |_, _| Ok(Op::Ceil)),
        row("Clip",               Keep,    p::clip),
        row("Concat",             Keep,    |a, _| Ok(Op::Concat { axis: a.int("axis", 0) })),
        row("Constant",           Opaque,  |a, _| Ok(Op::Constant(a.constant_value()?))),
        row("ConstantOfShape",    Opaque,  p::constant_of_shape),
        row("Conv",               Nchw,    p::conv),
        row("Div",                Keep,    |_, _| Ok(Op::Div)),
        row("Dropout",            Keep,    p::dropout),
        row("Equal",              Opaque,  |_, _| Ok(Op::Compare(Compare::Equal))),
        row("Erf",                Keep,    |_, _| Ok(Op::Unary(Unary::Erf))),
        row("Exp",                Keep,    |_, _| Ok(Op::Unary(Unary::Exp))),
        row("Expand",             Opaque,  |_, _| Ok(Op::Expand)),
        row("Flatten",            Opaque,  |a, _| Ok(Op::Flatten { axis: a.int("axis", 1) })),
        row("Floor",              Opaque,  |_, _| Ok(Op::Floor)),
        row("Gather",             Opaque,  |a, _| Ok(Op::Gather { axis: a.int("axis", 0) })),
        row("Gelu",               Keep,    p::gelu),
        row("Gemm",               Opaque,  p::gemm),
        row("GlobalAveragePool",  Nchw,    |_, _| Ok(Op::GlobalAveragePool)),
        row("Greater",            Opaque,  |_, _| Ok(Op::Compare(Compare::Greater))),
        row("GreaterOrEqual",     Opaque,  |_, _| Ok(Op::Compare(Compare::GreaterOrEqual))),
        row("HardSigmoid",        Keep,    p::hard_sigmoid),
        row("HardSwish",          Keep,    |_, _| Ok(Op::HardSwish)),
        row("Identity",           Keep,    |_, _| Ok(Op::Identity)),
        row("LayerNormalization", Keep,    p::layer_normalization),
        row("LeakyRelu",          Keep,    |a, _| Ok(Op::LeakyRelu { alpha: a.float("alpha", 0.01) })),
        row("Less",               Opaque,  |_, _| Ok(Op::Compare(Compare::Less))),
        row("LessOrEqual",        Opaque,  |_, _| Ok(Op::Compare(Compare::LessOrEqual))),
        row("Log",                Keep,    |_, _| Ok(Op::Log)),
        row("MatMul",             Opaque,  |_, _| Ok(Op::MATMUL)),
        row("Max",                Keep,    |_, _| Ok(Op::MinMax { max: true })),
        row("MaxPool",            Nchw,    p::max_pool),
        row("Min",                Keep,    |_, _| Ok(Op::MinMax { max: false })),
        row("Mul",                Keep,    |_, _| Ok(Op::Mul)),
        row("Neg",                Keep,    |_, _| Ok(Op::Unary(Unary::Neg))),
        row("Not",                Opaque,  |_, _| Ok(Op::Unary(Unary::Not))),
        row("Pad",                Keep,    p::pad),
        row("Pow",                Keep,    |_, _| Ok(Op::Pow)),
        row("Range",              Opaque,  |_, _| Ok(Op::Range)),
        row("Reciprocal",         Keep,    |_, _| Ok(Op::Unary(Unary::Reciprocal))),
        row("ReduceMax",          Opaque,  |a, o| p::reduce(a, o, Reduce::Max)),
        row("ReduceMean",         Opaque,  |a, o| p::reduce(a, o, Reduce::Mean)),
        row("ReduceMin",          Opaque,  |a, o| p::reduce(a, o, Reduce::Min)),
        row("ReduceSum",          Opaque,  |a, o| p::reduce(a, o, Reduce::Sum)),
        row("Relu",               Keep,    |_, _| Ok(Op::Relu)),
        row("Reshape",            Opaque,  |a, _| Ok(Op::Reshape { allowzero: a.int("allowzero", 0) != 0 })),
        row("Resize",             Keep,    p::resize),
        row("Shape",              Opaque,  p::shape),
        row("Sigmoid",            Keep,    |_, _| Ok(Op::Sigmoid)),
        row("Slice",              Opaque,  p::slice),
        row("Softmax",            Opaque,  p::softmax),
        row("Split",              Keep,    p::split),
        row("Sqrt",               Keep,    |_, _| Ok(Op::Unary(Unary::Sqrt))),
        row("Squeeze",            Opaque,  |a, _| Ok(Op::Squeeze { axes: a.ints("axes") })),
        row("Sub",                Keep,    |_, _| Ok(Op::Sub)),
        row("Tanh",               Keep,    |_, _| Ok(Op::Tanh)),
        row("Tile",               Opaque,  |_, _| Ok(Op::Tile)),
        row("Transpose",          Permute, |a, _| Ok(Op::Transpose { perm: a.ints("perm") })),
        row("Unsqueeze",          Opaque,  |a, _| Ok(Op::Unsqueeze { axes: a.ints("axes") })),
        row("Where",              Keep,    |_, _| Ok(Op::Where)),
    ]
};

impl Op {
    /// ONNX's plain MatMul.
    pub const MATMUL: Op = Op::MatMul {
        gelu: false,
        trans_b: false,
        alpha: 1.0,
    };
}

/// The row of `op_type`, if runner supports it.
pub fn find(op_type: &str) -> Option<&'static OpDef> {
    OPS.binary_search_by(|d| d.name.cmp(op_type))
        .ok()
        .map(|i| &OPS[i])
}

/// The supported ops and opsets, as error messages list them.
pub fn supported() -> String {
    let names: Vec<&str> = OPS.iter().map(|d| d.name).collect();
    format!("{} ({OPSETS})", names.join(", "))
}

impl Op {
    /// Parses `node` of the default ONNX domain at `opset`.
    pub fn parse(node: &NodeProto, opset: i64) -> Result<Op, ParseError> {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(ParseError::Unsupported);
        }
        let def = find(&node.op_type).ok_or(ParseError::Unsupported)?;
        (def.parse)(&Attrs(node), opset)
    }
}

/// Normalises a possibly negative axis.
pub fn axis(a: i64, rank: usize) -> candle_core::Result<usize> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if !(0..r.max(1)).contains(&v) {
        candle_core::bail!("axis {a} is out of range for rank {rank}")
    }
    Ok(v as usize)
}

/// [`axis`] of each of `v`.
pub fn axes(v: &[i64], rank: usize) -> candle_core::Result<Vec<usize>> {
    v.iter().map(|&a| axis(a, rank)).collect()
}

/// The values of `t`, flattened, as i64.
pub fn to_i64s(t: &Tensor) -> candle_core::Result<Vec<i64>> {
    t.flatten_all()?.to_dtype(DType::I64)?.to_vec1::<i64>()
}

/// The values of `t`, flattened, as f32.
pub fn to_f32s(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()
}

/// The one value of `t`, as f32.
fn scalar_f32(t: &Tensor) -> candle_core::Result<f32> {
    match to_f32s(t)?.as_slice() {
        [v] => Ok(*v),
        v => candle_core::bail!("expected a scalar, got {} values", v.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::testutil::node;

    /// Binary search in [`find`] needs the rows sorted, and error messages
    /// list them in this order.
    #[test]
    fn the_op_table_is_sorted_by_name_without_repeats() {
        for pair in OPS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} before {}",
                pair[0].name,
                pair[1].name
            );
        }
    }

    #[test]
    fn the_supported_list_names_every_row_then_the_opsets() {
        assert_eq!(
            supported(),
            "Abs, Add, AveragePool, BatchNormalization, Cast, Ceil, Clip, Concat, Constant, \
             ConstantOfShape, Conv, Div, Dropout, Equal, Erf, Exp, Expand, Flatten, Floor, Gather, \
             Gelu, Gemm, GlobalAveragePool, Greater, GreaterOrEqual, HardSigmoid, HardSwish, \
             Identity, LayerNormalization, LeakyRelu, Less, LessOrEqual, Log, MatMul, Max, MaxPool, \
             Min, Mul, Neg, Not, Pad, Pow, Range, Reciprocal, ReduceMax, ReduceMean, ReduceMin, \
             ReduceSum, Relu, Reshape, Resize, Shape, Sigmoid, Slice, Softmax, Split, Sqrt, \
             Squeeze, Sub, Tanh, Tile, Transpose, Unsqueeze, Where (opsets 7-21)"
        );
    }

    #[test]
    fn every_row_is_found_by_its_name_and_nothing_else_is() {
        for def in OPS {
            assert_eq!(find(def.name).map(|d| d.name), Some(def.name));
        }
        assert!(find("GridSample").is_none());
        assert!(find("relu").is_none(), "op types are case-sensitive");
    }

    #[test]
    fn an_op_of_another_domain_or_outside_the_table_is_unsupported() {
        let mut relu = node("Relu", &["x"], "y");
        assert!(matches!(Op::parse(&relu, 13), Ok(Op::Relu)));
        relu.domain = "com.microsoft".into();
        assert!(matches!(Op::parse(&relu, 13), Err(ParseError::Unsupported)));
        let grid = node("GridSample", &["x", "g"], "y");
        assert!(matches!(Op::parse(&grid, 16), Err(ParseError::Unsupported)));
    }

    #[test]
    fn a_bad_attribute_is_invalid_naming_it() {
        let mut pool = node("MaxPool", &["x"], "y");
        let Err(ParseError::Invalid(m)) = Op::parse(&pool, 13) else {
            panic!("MaxPool without kernel_shape parsed");
        };
        assert!(m.contains("kernel_shape"), "{m}");
        pool.output.push("indices".into());
        let Err(ParseError::Invalid(m)) = Op::parse(&pool, 13) else {
            panic!("MaxPool with Indices parsed");
        };
        assert!(m.contains("Indices"), "{m}");
    }

    #[test]
    fn softmax_defaults_follow_the_opset() {
        let softmax = node("Softmax", &["x"], "y");
        assert!(matches!(
            Op::parse(&softmax, 11),
            Ok(Op::Softmax {
                axis: 1,
                legacy: true
            })
        ));
        assert!(matches!(
            Op::parse(&softmax, 13),
            Ok(Op::Softmax {
                axis: -1,
                legacy: false
            })
        ));
    }
}
