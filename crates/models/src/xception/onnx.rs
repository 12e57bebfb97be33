//! Xception as ONNX nodes, for `runner export --from image`.

use super::{convention, pool_padding, probes, Layer, SepWeights, ARCH};
use crate::config::BackboneSpec;
use crate::flavour::Convention;
use crate::layers::{Padding, Weights};
use crate::onnx::build::{layer_pads, ConvAttrs, GraphBuilder};
use crate::registry;
use crate::ModelError;

/// The network as ONNX nodes, from the same checkpoint tensors, names,
/// folding and padding as [`super::Xception::from_weights`]: `Conv`
/// (BatchNorm folded; a separable convolution as a depthwise `Conv` with
/// `group = C` and a pointwise one), explicit `Relu` where the native layers
/// fuse theirs, `MaxPool` padded as the checkpoint's framework pads, `Add`
/// for the shortcuts, `GlobalAveragePool`.
pub(super) fn to_onnx(
    spec: &BackboneSpec,
    g: &mut GraphBuilder,
    input: &str,
) -> Result<String, ModelError> {
    let w = Weights::read(ARCH, &spec.weights)?;
    let flavour = registry::detect_flavour(&w, &probes())?;
    let mut e = Emitter {
        w: &w,
        conv: convention(flavour),
        g,
    };
    let (mut x, mut hw) = (input.to_string(), (spec.input_size, spec.input_size));
    // The unpadded stem convolutions + BN + ReLU.
    for (i, stride) in [(1, 2), (2, 1)] {
        let (y, out) = e.dense(Layer::Stem(i), &x, hw, stride)?;
        (x, hw) = (e.g.relu(&y), out);
    }
    for (block, pre_relu) in [(2, false), (3, true), (4, true)] {
        (x, hw) = e.down_block(block, &x, hw, pre_relu)?;
    }
    for block in 5..=12 {
        let y = e.sep(block, 1, &x, hw, true, true)?;
        let y = e.sep(block, 2, &y, hw, false, true)?;
        let y = e.sep(block, 3, &y, hw, false, false)?;
        x = e.g.node("Add", &[&y, &x], vec![]);
    }
    let (x, hw) = e.down_block(13, &x, hw, true)?;
    let x = e.sep(14, 1, &x, hw, false, true)?;
    let x = e.sep(14, 2, &x, hw, false, true)?;
    Ok(e.g.global_avg_pool(&x))
}

/// Writes Xception's layers into a graph; each takes its input's name and
/// spatial size.
struct Emitter<'a> {
    w: &'a Weights,
    conv: Convention,
    g: &'a mut GraphBuilder,
}

impl Emitter<'_> {
    /// A dense convolution + BN, no activation: the stem's unpadded, the
    /// shortcuts' "same" (which for their 1x1 kernels pads nothing).
    fn dense(
        &mut self,
        layer: Layer,
        x: &str,
        hw: (usize, usize),
        stride: usize,
    ) -> Result<(String, (usize, usize)), ModelError> {
        let padding = match layer {
            Layer::Stem(_) => Padding::Valid,
            _ => Padding::Same,
        };
        let (kernel, bn) = layer.dense_tensors(self.conv.flavour);
        let f = self.conv.folded_conv(self.w, &kernel, &bn)?;
        let (pads, out) = layer_pads(self.w, padding, hw, (f.dims[2], f.dims[3]), stride)?;
        let attrs = ConvAttrs {
            stride,
            pads,
            ..ConvAttrs::default()
        };
        Ok((self.g.conv(x, f.kernel, f.dims, f.bias, attrs), out))
    }

    /// Separable convolution `i` of `block` + BN: `[relu] -> depthwise ->
    /// pointwise -> [relu]`, stride 1, "same".
    fn sep(
        &mut self,
        block: usize,
        i: usize,
        x: &str,
        hw: (usize, usize),
        in_relu: bool,
        out_relu: bool,
    ) -> Result<String, ModelError> {
        let s = SepWeights::read(self.w, self.conv, block, i)?;
        let x = if in_relu {
            self.g.relu(x)
        } else {
            x.to_string()
        };
        let [c, kh, kw] = s.dw_dims;
        let (pads, _) = layer_pads(self.w, Padding::Same, hw, (kh, kw), 1)?;
        let depthwise = ConvAttrs {
            pads,
            groups: c,
            ..ConvAttrs::default()
        };
        let y = self
            .g
            .conv(&x, s.dw, [c, 1, kh, kw], vec![0.0; c], depthwise);
        let y = self
            .g
            .conv(&y, s.pw, s.pw_dims, s.bias, ConvAttrs::default());
        Ok(if out_relu { self.g.relu(&y) } else { y })
    }

    /// [`super::DownBlock`]: two separable convolutions and a 3x3/2 max
    /// pool, plus the strided 1x1 shortcut on the block input (before its
    /// ReLU).
    fn down_block(
        &mut self,
        block: usize,
        x: &str,
        hw: (usize, usize),
        pre_relu: bool,
    ) -> Result<(String, (usize, usize)), ModelError> {
        let (residual, residual_hw) = self.dense(Layer::Shortcut { block }, x, hw, 2)?;
        let y = self.sep(block, 1, x, hw, pre_relu, true)?;
        let y = self.sep(block, 2, &y, hw, false, false)?;
        let (pads, out) = layer_pads(self.w, pool_padding(self.conv.flavour), hw, (3, 3), 2)?;
        if out != residual_hw {
            return Err(self.w.candle_err(candle_core::Error::Msg(format!(
                "block{block}: pooled {out:?} but shortcut {residual_hw:?} at input {hw:?}"
            ))));
        }
        let y = self.g.max_pool(&y, (3, 3), 2, pads);
        Ok((self.g.node("Add", &[&y, &residual], vec![]), out))
    }
}
