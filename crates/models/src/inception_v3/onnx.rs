//! Inception-v3 as ONNX nodes, for `runner export --from image`.

use super::{Layers, ARCH};
use crate::config::BackboneSpec;
use crate::flavour::Flavour;
use crate::layers::{Padding, Weights};
use crate::onnx::build::{layer_pads, ConvAttrs, GraphBuilder};
use crate::ModelError;

/// The network as ONNX nodes, from the same layers in the same order and
/// with the same folding as [`super::InceptionV3::from_weights`]: `Conv`
/// (BatchNorm folded) + `Relu`, `MaxPool` and `AveragePool` (padding excluded from
/// the mean for Keras checkpoints, counted for PyTorch ones), `Concat` of
/// the branches, `GlobalAveragePool`.
pub(super) fn to_onnx(
    spec: &BackboneSpec,
    g: &mut GraphBuilder,
    input: &str,
) -> Result<String, ModelError> {
    let w = Weights::read(ARCH, &spec.weights)?;
    let mut e = Emitter {
        layers: Layers::new(&w)?,
        g,
    };
    let hw = (spec.input_size, spec.input_size);
    let (x, hw) = e.valid(input, hw, 2)?; // conv2d_1
    let (x, hw) = e.valid(&x, hw, 1)?; // conv2d_2
    let x = e.same(&x, hw)?; // conv2d_3
    let (x, hw) = e.max_pool(&x, hw)?;
    let (x, hw) = e.valid(&x, hw, 1)?; // conv2d_4
    let (x, hw) = e.valid(&x, hw, 1)?; // conv2d_5
    let (mut x, hw) = e.max_pool(&x, hw)?;
    for _ in 0..3 {
        // BlockA: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1.
        let b1 = e.same(&x, hw)?;
        let b5 = e.same_chain(&x, hw, 2)?;
        let b3 = e.same_chain(&x, hw, 3)?;
        let bp = e.branch_pool(&x, hw)?;
        x = e.g.concat(&[b1, b5, b3, bp], 1);
    }
    // BlockB: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2.
    let (b3, out) = e.valid(&x, hw, 2)?;
    let bd = e.same_chain(&x, hw, 2)?;
    let (bd, _) = e.valid(&bd, hw, 2)?;
    let (bp, _) = e.max_pool(&x, hw)?;
    let (mut x, hw) = (e.g.concat(&[b3, bd, bp], 1), out);
    for _ in 0..4 {
        // BlockC: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1.
        let b1 = e.same(&x, hw)?;
        let b7 = e.same_chain(&x, hw, 3)?;
        let bd = e.same_chain(&x, hw, 5)?;
        let bp = e.branch_pool(&x, hw)?;
        x = e.g.concat(&[b1, b7, bd, bp], 1);
    }
    // BlockD: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2.
    let b3 = e.same(&x, hw)?;
    let (b3, out) = e.valid(&b3, hw, 2)?;
    let b7 = e.same_chain(&x, hw, 3)?;
    let (b7, _) = e.valid(&b7, hw, 2)?;
    let (bp, _) = e.max_pool(&x, hw)?;
    let (mut x, hw) = (e.g.concat(&[b3, b7, bp], 1), out);
    for _ in 0..2 {
        // BlockE: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | avgpool-1x1.
        let b1 = e.same(&x, hw)?;
        let b3 = e.same(&x, hw)?;
        let b3a = e.same(&b3, hw)?;
        let b3b = e.same(&b3, hw)?;
        let bd = e.same_chain(&x, hw, 2)?;
        let bda = e.same(&bd, hw)?;
        let bdb = e.same(&bd, hw)?;
        let bp = e.branch_pool(&x, hw)?;
        x = e.g.concat(&[b1, b3a, b3b, bda, bdb, bp], 1);
    }
    Ok(e.g.global_avg_pool(&x))
}

/// Writes the `conv2d_bn` layers, in Keras creation order, and the pools
/// into a graph; each takes its input's name and spatial size.
struct Emitter<'a> {
    layers: Layers<'a>,
    g: &'a mut GraphBuilder,
}

impl Emitter<'_> {
    /// The next `conv2d_bn`: convolution, folded BN, ReLU.
    fn conv(
        &mut self,
        x: &str,
        hw: (usize, usize),
        stride: usize,
        padding: Padding,
    ) -> Result<(String, (usize, usize)), ModelError> {
        let f = self.layers.take()?;
        let (pads, out) = layer_pads(self.layers.w, padding, hw, (f.dims[2], f.dims[3]), stride)?;
        let attrs = ConvAttrs {
            stride,
            pads,
            ..ConvAttrs::default()
        };
        let y = self.g.conv(x, f.kernel, f.dims, f.bias, attrs);
        Ok((self.g.relu(&y), out))
    }

    fn same(&mut self, x: &str, hw: (usize, usize)) -> Result<String, ModelError> {
        Ok(self.conv(x, hw, 1, Padding::Same)?.0)
    }

    /// `n` stride-1 "same" layers in a row.
    fn same_chain(&mut self, x: &str, hw: (usize, usize), n: usize) -> Result<String, ModelError> {
        let mut y = x.to_string();
        for _ in 0..n {
            y = self.same(&y, hw)?;
        }
        Ok(y)
    }

    fn valid(
        &mut self,
        x: &str,
        hw: (usize, usize),
        stride: usize,
    ) -> Result<(String, (usize, usize)), ModelError> {
        self.conv(x, hw, stride, Padding::Valid)
    }

    /// The unpadded 3x3/2 max pool.
    fn max_pool(
        &mut self,
        x: &str,
        hw: (usize, usize),
    ) -> Result<(String, (usize, usize)), ModelError> {
        let (pads, out) = layer_pads(self.layers.w, Padding::Valid, hw, (3, 3), 2)?;
        Ok((self.g.max_pool(x, (3, 3), 2, pads), out))
    }

    /// [`super::BranchPool`]: the 3x3 stride-1 average pool as the
    /// checkpoint's framework computes it, then the next layer.
    fn branch_pool(&mut self, x: &str, hw: (usize, usize)) -> Result<String, ModelError> {
        let pooled = match self.layers.flavour() {
            Flavour::Keras => {
                let (pads, _) = layer_pads(self.layers.w, Padding::Same, hw, (3, 3), 1)?;
                self.g.avg_pool(x, (3, 3), 1, pads, false)
            }
            Flavour::Torch => self.g.avg_pool(x, (3, 3), 1, [1; 4], true),
        };
        self.same(&pooled, hw)
    }
}
