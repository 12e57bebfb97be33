//! ResNet as ONNX nodes, for `runner export`: the [`Layout`] the native
//! backbone loads, written as `Conv` (BatchNorm folded as the native layers
//! fold it), `Relu` where the native convolutions fuse theirs, the stem's
//! `MaxPool`, `Add` then `Relu` at the end of every block, and
//! `GlobalAveragePool`. Every pad is PyTorch's explicit symmetric padding,
//! so the graph holds no "same" rule to resolve.

use super::{
    pad, BlockLayout, Config, ConvBn, Layout, CONFIGS, POOL_PAD, POOL_STRIDE, POOL_WINDOW,
};
use crate::config::BackboneSpec;
use crate::layers::{Act, Weights};
use crate::onnx::build::{layer_pads, ConvAttrs, GraphBuilder};
use crate::ModelError;

/// The registry's [`crate::registry::OnnxEmitter`] of `CONFIGS[I]`.
pub(super) fn to_onnx<const I: usize>(
    spec: &BackboneSpec,
    g: &mut GraphBuilder,
    input: &str,
) -> Result<String, ModelError> {
    let cfg = &CONFIGS[I];
    let w = Weights::read(cfg.name, &spec.weights)?;
    emit(cfg, &w, spec.input_size, g, input)
}

/// Writes `cfg` over the checkpoint `w` into `g`, from the value `input`
/// (`(N, 3, input_size, input_size)`) to the pooled features it returns.
fn emit(
    cfg: &Config,
    w: &Weights,
    input_size: usize,
    g: &mut GraphBuilder,
    input: &str,
) -> Result<String, ModelError> {
    let layout = Layout::read(cfg, w)?;
    let mut e = Emitter { w, g };
    let (x, hw) = e.conv_bn(&layout.stem, input, (input_size, input_size))?;
    let window = (POOL_WINDOW, POOL_WINDOW);
    let (pads, mut hw) = layer_pads(e.w, pad(POOL_PAD), hw, window, POOL_STRIDE)?;
    let mut x = e.g.max_pool(&x, window, POOL_STRIDE, pads);
    for block in &layout.blocks {
        (x, hw) = e.block(block, &x, hw)?;
    }
    Ok(e.g.global_avg_pool(&x))
}

/// Writes ResNet's layers into a graph; each takes its input's name and
/// spatial size and returns its output's.
struct Emitter<'a> {
    w: &'a Weights,
    g: &'a mut GraphBuilder,
}

impl Emitter<'_> {
    /// `act(conv(x))` with the BatchNorm folded in, as [`ConvBn::load`]
    /// builds it.
    fn conv_bn(
        &mut self,
        c: &ConvBn,
        x: &str,
        hw: (usize, usize),
    ) -> Result<(String, (usize, usize)), ModelError> {
        let f = c.folded(self.w)?;
        let stride = c.cfg.stride;
        let (pads, out) = layer_pads(self.w, c.cfg.padding, hw, (f.dims[2], f.dims[3]), stride)?;
        let y = self.g.conv(
            x,
            f.kernel,
            f.dims,
            f.bias,
            ConvAttrs {
                stride,
                pads,
                ..ConvAttrs::default()
            },
        );
        let y = match c.cfg.act {
            Act::None => y,
            Act::Relu => self.g.relu(&y),
            Act::Relu6 => self.g.clip(&y, 0.0, 6.0),
        };
        Ok((y, out))
    }

    /// `relu(last(...(conv1(x))) + shortcut(x))`: the shortcut is `x` itself
    /// or its strided 1x1 `downsample`.
    fn block(
        &mut self,
        b: &BlockLayout,
        x: &str,
        hw: (usize, usize),
    ) -> Result<(String, (usize, usize)), ModelError> {
        let (mut y, mut out) = (x.to_string(), hw);
        for c in &b.convs {
            (y, out) = self.conv_bn(c, &y, out)?;
        }
        let (shortcut, shortcut_hw) = match &b.downsample {
            Some(d) => self.conv_bn(d, x, hw)?,
            None => (x.to_string(), hw),
        };
        if shortcut_hw != out {
            let conv = b.convs.last().map_or("", |c| c.conv.as_str());
            return Err(self.w.candle_err(candle_core::Error::Msg(format!(
                "`{conv}` gives {out:?} but its shortcut {shortcut_hw:?} at input {hw:?}"
            ))));
        }
        let sum = self.g.node("Add", &[&y, &shortcut], vec![]);
        Ok((self.g.relu(&sum), out))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::super::tests::{narrow, state_dict};
    use super::*;
    use crate::onnx::Program;
    use crate::{Backbone, ResNet};

    /// `cfg` over `w` as a graph, lowered by runner's evaluator.
    fn emitted(cfg: &Config, w: &Weights, size: usize) -> Result<Program, ModelError> {
        let mut g = GraphBuilder::new(cfg.name);
        let s = size as i64;
        g.input("image", &[None, Some(3), Some(s), Some(s)]);
        let features = emit(cfg, w, size, &mut g, "image")?;
        g.output(&features, &[None, None]);
        Ok(Program::lower(
            &g.finish("test", Vec::new()),
            None,
            cfg.name,
        )?)
    }

    /// A deterministic `(n, 3, size, size)` input in [-1, 1].
    fn input(n: usize, size: usize) -> Tensor {
        let len = n * 3 * size * size;
        let v = (0..len)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        Tensor::from_vec(v, (n, 3, size, size), &Device::Cpu).expect("input")
    }

    /// Every registered depth, block for block at reduced width, on an odd
    /// input size (every padded window and stride has a remainder): the
    /// emitted graph computes the native features.
    #[test]
    fn the_emitted_graph_of_every_depth_computes_the_native_features() {
        let size = 45;
        let x = input(2, size);
        for cfg in &CONFIGS {
            let w = Weights::from_tensors(cfg.name, state_dict(cfg, narrow));
            let native = ResNet::from_weights(cfg, &w, &Device::Cpu).expect("load");
            let want = native.forward_features(&x).expect("native forward");
            let program = emitted(cfg, &w, size).expect("emit");
            let got = program.run(x.clone()).expect("run the emitted graph");
            assert_eq!(got.dims(), want.dims(), "{}", cfg.name);
            let max_abs = |t: &Tensor| {
                t.abs()
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.max(0))
                    .and_then(|t| t.to_scalar::<f32>())
                    .expect("max")
            };
            let err = max_abs(&(&got - &want).expect("diff")) / max_abs(&want);
            assert!(err <= 1e-5, "{}: relative error {err:.3e}", cfg.name);
        }
    }

    /// The writer reads the checkpoint as the loader does: one of another
    /// depth is refused, naming the block.
    #[test]
    fn a_checkpoint_of_another_depth_is_refused_by_the_writer_too() {
        let [r18, r34, ..] = &CONFIGS;
        let w = Weights::from_tensors(r18.name, state_dict(r34, narrow));
        let mut g = GraphBuilder::new(r18.name);
        let err = match emit(r18, &w, 64, &mut g, "image") {
            Ok(_) => panic!("resnet18 wrote resnet34's checkpoint"),
            Err(e) => format!(
                "{e}: {}",
                std::error::Error::source(&e).map_or(String::new(), |c| c.to_string())
            ),
        };
        assert!(err.contains("extra block `layer1.2`"), "{err}");
    }
}
