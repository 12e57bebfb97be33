//! A head's dense softmax layer: class probabilities, and one optimiser step
//! of mean cross-entropy on a batch, on one of two engines.
//!
//! The gradient is written out rather than taken by autograd: for
//! `P = softmax(X W + b)` and one-hot targets `Y` over `n` rows,
//! `G = (P - Y) / n`, `dW = Xᵀ G`, `db = Σ_rows G`. The features are frozen,
//! so the gradient for `X` (as large a product as the forward pass) is never
//! needed; autograd computed it anyway.
//!
//! - [`Engine::Host`], for the CPU: our GEMM ([`runner_kernels`]; `Xᵀ` is
//!   packed straight from `X`'s rows) and a fused optimiser pass
//!   ([`HostOptimizer`]). Results do not depend on the thread count.
//! - [`Engine::Candle`], for a GPU: the same arithmetic in candle tensor ops.
//!   It runs on the CPU too (`RUNNER_HOST_HEADS=0`, and the tests compare
//!   the two engines there).

use candle_core::{Device, Result, Tensor, D};

use super::optim::{HostOptimizer, Optimizer};
use crate::npy::Matrix;
use crate::spec::Optimizer as Kind;
use runner_kernels::{self as kernels, DenseB, GemmShape, MatMut, MatRef, Output, PackedA};

/// Rows per forward chunk when predicting (bounds the logits buffer).
const PREDICT_ROWS: usize = 1024;

/// A dense softmax layer's parameters, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseWeights {
    /// `features x classes`.
    pub weight: Matrix,
    /// `classes`.
    pub bias: Vec<f32>,
}

impl DenseWeights {
    pub fn classes(&self) -> usize {
        self.bias.len()
    }
}

/// Where a head's arithmetic runs.
#[derive(Debug, Clone)]
pub enum Engine {
    Host,
    Candle(Device),
}

impl Engine {
    /// The host engine on the CPU (unless `RUNNER_HOST_HEADS=0`, kept for
    /// A/B comparisons), candle's on any other device.
    pub fn for_device(device: &Device) -> Engine {
        let host_disabled = std::env::var("RUNNER_HOST_HEADS").is_ok_and(|v| v == "0");
        if device.is_cpu() && !host_disabled {
            Engine::Host
        } else {
            Engine::Candle(device.clone())
        }
    }

    /// Class probabilities of `w` for every row of `x`.
    pub fn probabilities(&self, w: &DenseWeights, x: &Matrix) -> Result<Matrix> {
        match self {
            Engine::Host => host_probabilities(w, x),
            Engine::Candle(device) => {
                let (weight, bias) = upload(w, device)?;
                candle_probabilities(&weight, &bias, x, device)
            }
        }
    }

    /// A trainer starting from `init`, with a fresh optimiser.
    pub fn trainer(&self, init: DenseWeights, kind: Kind, lr: f64) -> Result<Trainer> {
        Ok(match self {
            Engine::Host => Trainer::Host(HostTrainer::new(init, kind, lr)),
            Engine::Candle(device) => {
                let (weight, bias) = upload(&init, device)?;
                Trainer::Candle {
                    device: device.clone(),
                    opt: Optimizer::new(kind, lr, vec![weight, bias])?,
                }
            }
        })
    }
}

/// A dense softmax layer being trained, with its optimiser state.
pub enum Trainer {
    Host(HostTrainer),
    Candle { device: Device, opt: Optimizer },
}

impl Trainer {
    /// One optimiser step of mean cross-entropy on the rows `xs`
    /// (`labels.len() x features`, row-major) of classes `labels`.
    pub fn step(&mut self, xs: &[f32], labels: &[usize]) -> Result<()> {
        match self {
            Trainer::Host(t) => t.step(xs, labels),
            Trainer::Candle { device, opt } => {
                let (dw, db) =
                    candle_gradients(&opt.params()[0], &opt.params()[1], xs, labels, device)?;
                opt.step(&[dw, db])
            }
        }
    }

    /// The current parameters, copied to the host.
    pub fn weights(&self) -> Result<DenseWeights> {
        match self {
            Trainer::Host(t) => Ok(DenseWeights {
                weight: Matrix::new(t.d, t.k, t.weight.clone()),
                bias: t.bias.clone(),
            }),
            Trainer::Candle { opt, .. } => {
                let (weight, bias) = (&opt.params()[0], &opt.params()[1]);
                let (d, k) = weight.dims2()?;
                Ok(DenseWeights {
                    weight: Matrix::new(d, k, weight.flatten_all()?.to_vec1()?),
                    bias: bias.to_vec1()?,
                })
            }
        }
    }
}

/// `(dW, db)` of the mean cross-entropy on rows `xs` (`labels.len() x d`)
/// for the layer `weight` (`d x k`), `bias` (`k`), in candle ops.
fn candle_gradients(
    weight: &Tensor,
    bias: &Tensor,
    xs: &[f32],
    labels: &[usize],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (d, k) = weight.dims2()?;
    let rows = labels.len();
    let xs = Tensor::from_slice(xs, (rows, d), device)?;
    let logits = xs.matmul(weight)?.broadcast_add(bias)?;
    let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
    let mut one_hot = vec![0f32; rows * k];
    for (r, &y) in labels.iter().enumerate() {
        one_hot[r * k + y] = 1.0;
    }
    let y = Tensor::from_vec(one_hot, (rows, k), device)?;
    let g = ((p - y)? * (1.0 / rows as f64))?;
    Ok((xs.t()?.matmul(&g)?, g.sum(0)?))
}

/// The host engine's trainer: parameters and gradient buffers as plain
/// vectors, updated in place.
pub struct HostTrainer {
    d: usize,
    k: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
    /// `dW`, reused across steps.
    grad_weight: Vec<f32>,
    opt: HostOptimizer,
}

impl HostTrainer {
    fn new(init: DenseWeights, kind: Kind, lr: f64) -> HostTrainer {
        let (d, k) = (init.weight.rows, init.weight.cols);
        HostTrainer {
            d,
            k,
            opt: HostOptimizer::new(kind, lr, &[d * k, k]),
            weight: init.weight.data,
            bias: init.bias,
            grad_weight: vec![0f32; d * k],
        }
    }

    fn step(&mut self, xs: &[f32], labels: &[usize]) -> Result<()> {
        let grad_bias = self.gradients(xs, labels)?;
        self.opt.step(
            &mut [&mut self.weight, &mut self.bias],
            &[&self.grad_weight, &grad_bias],
        );
        Ok(())
    }

    /// Fills `grad_weight` with `dW` of the mean cross-entropy on rows `xs`
    /// of classes `labels`; returns `db`.
    fn gradients(&mut self, xs: &[f32], labels: &[usize]) -> Result<Vec<f32>> {
        let (d, k, rows) = (self.d, self.k, labels.len());
        // G = (softmax(X W + b) - Y) / rows, built in the logits buffer.
        let mut g = vec![0f32; rows * k];
        logits(xs, rows, &self.weight, d, k, &mut g)?;
        softmax_rows(&mut g, &self.bias);
        let scale = 1.0 / rows as f32;
        for (row, &y) in g.chunks_exact_mut(k).zip(labels) {
            row[y] -= 1.0;
            row.iter_mut().for_each(|v| *v *= scale);
        }
        let mut grad_bias = vec![0f32; k];
        for row in g.chunks_exact(k) {
            grad_bias.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        // dW (d x k) = Xᵀ G, with Xᵀ packed from X's rows.
        let xt = PackedA::new_transposed(kernels::best(), MatRef { data: xs, ld: d }, d, rows)
            .map_err(candle_core::Error::wrap)?;
        let g =
            DenseB::new(MatRef { data: &g, ld: k }, rows, k).map_err(candle_core::Error::wrap)?;
        let out = Output {
            data: &mut self.grad_weight,
            ld: k,
            image_stride: 0,
            accumulate: false,
        };
        kernels::gemm_packed(&xt, &[g], out, None).map_err(candle_core::Error::wrap)?;
        Ok(grad_bias)
    }
}

/// `out (rows x k) = xs (rows x d) * weight (d x k)`.
fn logits(
    xs: &[f32],
    rows: usize,
    weight: &[f32],
    d: usize,
    k: usize,
    out: &mut [f32],
) -> Result<()> {
    kernels::sgemm(
        GemmShape {
            m: rows,
            n: k,
            k: d,
        },
        MatRef { data: xs, ld: d },
        MatRef {
            data: weight,
            ld: k,
        },
        MatMut { data: out, ld: k },
        false,
    )
    .map_err(candle_core::Error::wrap)
}

/// Adds `bias` to every row of `logits` and turns the row into
/// probabilities (max-subtracted, as candle's softmax).
fn softmax_rows(logits: &mut [f32], bias: &[f32]) {
    for row in logits.chunks_exact_mut(bias.len()) {
        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

fn host_probabilities(w: &DenseWeights, x: &Matrix) -> Result<Matrix> {
    let (d, k) = (x.cols, w.classes());
    let mut probs = vec![0f32; x.rows * k];
    for (xs, out) in x
        .data
        .chunks(PREDICT_ROWS * d)
        .zip(probs.chunks_mut(PREDICT_ROWS * k))
    {
        logits(xs, xs.len() / d, &w.weight.data, d, k, out)?;
        softmax_rows(out, &w.bias);
    }
    Ok(Matrix::new(x.rows, k, probs))
}

fn upload(w: &DenseWeights, device: &Device) -> Result<(Tensor, Tensor)> {
    let (d, k) = (w.weight.rows, w.weight.cols);
    Ok((
        Tensor::from_slice(&w.weight.data, (d, k), device)?,
        Tensor::from_slice(&w.bias, k, device)?,
    ))
}

fn candle_probabilities(
    weight: &Tensor,
    bias: &Tensor,
    x: &Matrix,
    device: &Device,
) -> Result<Matrix> {
    let k = bias.dim(0)?;
    let mut data = Vec::with_capacity(x.rows * k);
    for rows in x.data.chunks(PREDICT_ROWS * x.cols) {
        let xs = Tensor::from_slice(rows, (rows.len() / x.cols, x.cols), device)?;
        let logits = xs.matmul(weight)?.broadcast_add(bias)?;
        let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
        data.extend(p.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(Matrix::new(x.rows, k, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runner_kernels::rng::uniform_vec;

    fn weights(d: usize, k: usize, seed: u64) -> DenseWeights {
        DenseWeights {
            weight: Matrix::new(d, k, uniform_vec(d * k, seed)),
            bias: uniform_vec(k, seed + 1),
        }
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * x.abs().max(1.0), "[{i}] {x} vs {y}");
        }
    }

    #[test]
    fn host_and_candle_probabilities_agree_and_sum_to_one() {
        // More rows than one predict chunk, classes not a multiple of 32.
        let (n, d, k) = (PREDICT_ROWS + 37, 70, 13);
        let x = Matrix::new(n, d, uniform_vec(n * d, 3));
        let w = weights(d, k, 4);
        let host = Engine::Host.probabilities(&w, &x).unwrap();
        let candle = Engine::Candle(Device::Cpu).probabilities(&w, &x).unwrap();
        close(&host.data, &candle.data, 1e-5);
        for r in 0..n {
            let s: f32 = host.row(r).iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "row {r} sums to {s}");
        }
    }

    /// The written-out gradient is the gradient: both engines match candle's
    /// autograd of the mean cross-entropy, for a batch of one row and one
    /// deeper than a GEMM `k` slice (600 rows > 512).
    #[test]
    fn written_out_gradients_match_autograd() {
        let (d, k) = (70, 13);
        for rows in [1, 37, 600] {
            let w = weights(d, k, 20);
            let xs = uniform_vec(rows * d, 21);
            let labels: Vec<usize> = (0..rows).map(|r| (r * 7) % k).collect();
            let dev = Device::Cpu;
            let (wv, bv) = (
                candle_core::Var::from_slice(&w.weight.data, (d, k), &dev).unwrap(),
                candle_core::Var::from_slice(&w.bias, k, &dev).unwrap(),
            );
            let x = Tensor::from_slice(&xs, (rows, d), &dev).unwrap();
            let logits = x.matmul(&wv).unwrap().broadcast_add(&bv).unwrap();
            let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
            let mut one_hot = vec![0f32; rows * k];
            labels
                .iter()
                .enumerate()
                .for_each(|(r, &y)| one_hot[r * k + y] = 1.0);
            let y = Tensor::from_vec(one_hot, (rows, k), &dev).unwrap();
            let loss = ((log_p * y).unwrap().sum_all().unwrap() * (-1.0 / rows as f64)).unwrap();
            let grads = loss.backward().unwrap();
            let want_w = grads
                .get(&wv)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let want_b = grads.get(&bv).unwrap().to_vec1::<f32>().unwrap();

            let mut host = HostTrainer::new(w.clone(), Kind::Adagrad, 0.01);
            let host_b = host.gradients(&xs, &labels).unwrap();
            let (wt, bt) = upload(&w, &dev).unwrap();
            let (cw, cb) = candle_gradients(&wt, &bt, &xs, &labels, &dev).unwrap();
            let candle_w = cw.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (got_w, got_b) in [
                (&host.grad_weight, &host_b),
                (&candle_w, &cb.to_vec1().unwrap()),
            ] {
                for (a, b) in got_w.iter().zip(&want_w).chain(got_b.iter().zip(&want_b)) {
                    assert!((a - b).abs() <= 1e-6, "{rows} rows: {a} vs {b}");
                }
            }
        }
    }

    /// Twenty steps on random batches of varying size: both engines follow
    /// the same trajectory, for both optimisers.
    #[test]
    fn host_and_candle_engines_take_the_same_steps() {
        let (d, k) = (300, 11);
        for kind in [Kind::Adagrad, Kind::Adam] {
            let init = weights(d, k, 5);
            let mut host = Engine::Host.trainer(init.clone(), kind, 0.01).unwrap();
            let mut candle = Engine::Candle(Device::Cpu)
                .trainer(init.clone(), kind, 0.01)
                .unwrap();
            for step in 0..20u64 {
                let rows = 1 + (step as usize * 7) % 40;
                let xs = uniform_vec(rows * d, 50 + step);
                let labels: Vec<usize> = (0..rows).map(|r| (r * 5 + step as usize) % k).collect();
                host.step(&xs, &labels).unwrap();
                candle.step(&xs, &labels).unwrap();
            }
            let (h, c) = (host.weights().unwrap(), candle.weights().unwrap());
            assert_ne!(h.weight, init.weight, "{kind:?}: the weights moved");
            close(&h.weight.data, &c.weight.data, 1e-4);
            close(&h.bias, &c.bias, 1e-4);
        }
    }
}
