//! Optimisers with Keras-2 semantics, as the 2017 recipe ran them.
//!
//! Adagrad: `a += g^2; p -= lr * g / (sqrt(a) + 1e-7)`, accumulators from 0.
//! Adam: bias correction folded into the step size,
//! `lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t); p -= lr_t * m / (sqrt(v) + 1e-7)`.

use candle_core::{backprop::GradStore, Result, Tensor, Var};

use crate::spec::Optimizer as Kind;

const EPSILON: f64 = 1e-7;
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;

pub struct Optimizer {
    kind: Kind,
    lr: f64,
    vars: Vec<Var>,
    /// Adagrad: squared-gradient sums. Adam: first moments.
    first: Vec<Tensor>,
    /// Adam: second moments.
    second: Vec<Tensor>,
    step: i32,
}

impl Optimizer {
    pub fn new(kind: Kind, lr: f64, vars: Vec<Var>) -> Result<Optimizer> {
        let zeros = |vars: &[Var]| {
            vars.iter()
                .map(|v| v.zeros_like())
                .collect::<Result<Vec<_>>>()
        };
        Ok(Optimizer {
            kind,
            lr,
            first: zeros(&vars)?,
            second: zeros(&vars)?,
            vars,
            step: 0,
        })
    }

    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        for (i, var) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var) else { continue };
            match self.kind {
                Kind::Adagrad => {
                    self.first[i] = (&self.first[i] + g.sqr()?)?;
                    let denom = (self.first[i].sqrt()? + EPSILON)?;
                    var.set(&(var.as_tensor() - ((g / denom)? * self.lr)?)?)?;
                }
                Kind::Adam => {
                    let t = self.step;
                    let lr_t = self.lr * (1.0 - BETA2.powi(t)).sqrt() / (1.0 - BETA1.powi(t));
                    self.first[i] = ((&self.first[i] * BETA1)? + (g * (1.0 - BETA1))?)?;
                    self.second[i] = ((&self.second[i] * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                    let denom = (self.second[i].sqrt()? + EPSILON)?;
                    var.set(&(var.as_tensor() - ((&self.first[i] / denom)? * lr_t)?)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// One Keras-2 Adagrad step from zero accumulators moves each parameter
    /// by `lr * g / (|g| + eps)`, i.e. almost exactly `lr * sign(g)`.
    #[test]
    fn adagrad_first_step_matches_keras() {
        let dev = Device::Cpu;
        let w = Var::new(&[1.0f32, -2.0], &dev).unwrap();
        let loss = (w.as_tensor() * Tensor::new(&[3.0f32, -0.5], &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let mut opt = Optimizer::new(Kind::Adagrad, 0.01, vec![w.clone()]).unwrap();
        opt.step(&grads).unwrap();
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        let want = [
            1.0 - 0.01 * 3.0 / (3.0 + 1e-7),
            -2.0 + 0.01 * 0.5 / (0.5 + 1e-7),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn adam_first_step_is_lr_times_sign() {
        let dev = Device::Cpu;
        let w = Var::new(&[0.5f32], &dev).unwrap();
        let loss = (w.as_tensor() * 4.0).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let mut opt = Optimizer::new(Kind::Adam, 0.001, vec![w.clone()]).unwrap();
        opt.step(&grads).unwrap();
        let got = w.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((got - (0.5 - 0.001)).abs() < 1e-6, "{got}");
    }
}
