//! Optimisers with Keras-2 semantics, as the 2017 recipe ran them.
//!
//! Adagrad: `a += g^2; p -= lr * g / (sqrt(a) + 1e-7)`, accumulators from 0.
//! Adam: bias correction folded into the step size,
//! `lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t); p -= lr_t * m / (sqrt(v) + 1e-7)`.
//!
//! Two implementations of the same arithmetic, in the same order: one over
//! candle tensors on any device ([`Optimizer`]), one over host slices in a
//! single fused pass per parameter ([`HostOptimizer`]: on the CPU the tensor
//! version makes eight passes and as many allocations per step).

use candle_core::{Result, Tensor};

use crate::spec::Optimizer as Kind;

const EPSILON: f64 = 1e-7;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;

/// Adam's bias-corrected step size at step `t` (1-based).
fn adam_step_size(lr: f64, t: i32) -> f64 {
    lr * (1.0 - BETA2.powi(t)).sqrt() / (1.0 - BETA1.powi(t))
}

/// An optimiser over candle tensors (any device); owns the parameters.
pub struct Optimizer {
    kind: Kind,
    lr: f64,
    params: Vec<Tensor>,
    /// Adagrad: squared-gradient sums. Adam: first moments.
    first: Vec<Tensor>,
    /// Adam: second moments.
    second: Vec<Tensor>,
    step: i32,
}

impl Optimizer {
    pub fn new(kind: Kind, lr: f64, params: Vec<Tensor>) -> Result<Optimizer> {
        let zeros = |ps: &[Tensor]| ps.iter().map(|p| p.zeros_like()).collect::<Result<_>>();
        Ok(Optimizer {
            kind,
            lr,
            first: zeros(&params)?,
            second: zeros(&params)?,
            params,
            step: 0,
        })
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// One step with `grads[i]` the gradient of `params()[i]`.
    pub fn step(&mut self, grads: &[Tensor]) -> Result<()> {
        self.step += 1;
        for (i, g) in grads.iter().enumerate() {
            let p = &self.params[i];
            self.params[i] = match self.kind {
                Kind::Adagrad => {
                    self.first[i] = (&self.first[i] + g.sqr()?)?;
                    let denom = (self.first[i].sqrt()? + EPSILON)?;
                    (p - ((g / denom)? * self.lr)?)?
                }
                Kind::Adam => {
                    let lr_t = adam_step_size(self.lr, self.step);
                    self.first[i] = ((&self.first[i] * BETA1)? + (g * (1.0 - BETA1))?)?;
                    self.second[i] = ((&self.second[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                    let denom = (self.second[i].sqrt()? + EPSILON)?;
                    (p - ((&self.first[i] / denom)? * lr_t)?)?
                }
            };
        }
        Ok(())
    }
}

/// The same optimiser over host slices: one pass per parameter, in place.
pub struct HostOptimizer {
    kind: Kind,
    lr: f64,
    first: Vec<Vec<f32>>,
    second: Vec<Vec<f32>>,
    step: i32,
}

impl HostOptimizer {
    /// For parameters of lengths `lens`.
    pub fn new(kind: Kind, lr: f64, lens: &[usize]) -> HostOptimizer {
        let zeros = || lens.iter().map(|&n| vec![0f32; n]).collect();
        HostOptimizer {
            kind,
            lr,
            first: zeros(),
            second: match kind {
                Kind::Adam => zeros(),
                Kind::Adagrad => Vec::new(),
            },
            step: 0,
        }
    }

    /// One step with `grads[i]` the gradient of `params[i]`.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) {
        self.step += 1;
        // f32 constants as candle's scalar ops round them.
        let eps = EPSILON as f32;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            match self.kind {
                Kind::Adagrad => {
                    let lr = self.lr as f32;
                    for ((p, &g), a) in p.iter_mut().zip(*g).zip(&mut self.first[i]) {
                        *a += g * g;
                        *p -= (g / (a.sqrt() + eps)) * lr;
                    }
                }
                Kind::Adam => {
                    let lr_t = adam_step_size(self.lr, self.step) as f32;
                    let (b1, b2) = (BETA1 as f32, BETA2 as f32);
                    let (c1, c2) = ((1.0 - BETA1) as f32, (1.0 - BETA2) as f32);
                    let moments = self.first[i].iter_mut().zip(&mut self.second[i]);
                    for ((p, &g), (m, v)) in p.iter_mut().zip(*g).zip(moments) {
                        *m = *m * b1 + g * c1;
                        *v = *v * b2 + (g * g) * c2;
                        *p -= (*m / (v.sqrt() + eps)) * lr_t;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use runner_kernels::rng::uniform_vec;

    /// One Keras-2 Adagrad step from zero accumulators moves each parameter
    /// by `lr * g / (|g| + eps)`, i.e. almost exactly `lr * sign(g)`.
    #[test]
    fn adagrad_first_step_matches_keras() {
        let mut p = [1.0f32, -2.0];
        let mut opt = HostOptimizer::new(Kind::Adagrad, 0.01, &[2]);
        opt.step(&mut [&mut p], &[&[3.0, -0.5]]);
        let want = [
            1.0 - 0.01 * 3.0 / (3.0 + 1e-7),
            -2.0 + 0.01 * 0.5 / (0.5 + 1e-7),
        ];
        for (g, w) in p.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{p:?}");
        }
    }

    #[test]
    fn adam_first_step_is_lr_times_sign() {
        let mut p = [0.5f32];
        let mut opt = HostOptimizer::new(Kind::Adam, 0.001, &[1]);
        opt.step(&mut [&mut p], &[&[4.0]]);
        assert!((p[0] - (0.5 - 0.001)).abs() < 1e-6, "{p:?}");
    }

    /// The tensor and host optimisers are the same arithmetic: ten steps of
    /// random gradients on two parameters agree to the last bit or two.
    #[test]
    fn tensor_and_host_optimizers_take_the_same_steps() {
        for kind in [Kind::Adagrad, Kind::Adam] {
            let lens = [300, 7];
            let mut host: Vec<Vec<f32>> = lens.iter().map(|&n| uniform_vec(n, 1)).collect();
            let dev = Device::Cpu;
            let tensors = host
                .iter()
                .map(|p| Tensor::from_slice(p, p.len(), &dev))
                .collect::<Result<Vec<_>>>()
                .unwrap();
            let mut on_tensors = Optimizer::new(kind, 0.01, tensors).unwrap();
            let mut on_host = HostOptimizer::new(kind, 0.01, &lens);
            for step in 0..10 {
                let grads: Vec<Vec<f32>> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| uniform_vec(n, 100 + 10 * step + i as u64))
                    .collect();
                let tensors = grads
                    .iter()
                    .map(|g| Tensor::from_slice(g, g.len(), &dev))
                    .collect::<Result<Vec<_>>>()
                    .unwrap();
                on_tensors.step(&tensors).unwrap();
                let mut params: Vec<&mut [f32]> = host.iter_mut().map(|p| &mut p[..]).collect();
                let grads: Vec<&[f32]> = grads.iter().map(|g| &g[..]).collect();
                on_host.step(&mut params, &grads);
            }
            for (t, h) in on_tensors.params().iter().zip(&host) {
                let t = t.to_vec1::<f32>().unwrap();
                for (a, b) in t.iter().zip(h) {
                    assert!(
                        (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                        "{kind:?}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
