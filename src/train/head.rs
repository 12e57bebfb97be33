//! The classification head: dropout + dense softmax, trained on frozen
//! features with early stopping on validation log loss.
//!
//! Mirrors the reference's Keras head (`Dropout(p)` -> `Dense(k,
//! softmax)`, Glorot-uniform kernel, zero bias, categorical cross-entropy,
//! shuffled mini-batches every epoch). Every random draw (initial weights,
//! shuffles, dropout masks) comes from one seeded [`Rng`], so training is
//! bit-reproducible on the CPU.

use candle_core::{Device, Result, Tensor, Var, D};

use super::optim::Optimizer;
use super::rng::Rng;
use crate::metrics;
use crate::npy::Matrix;
use crate::spec::HeadSpec;

pub struct TrainedHead {
    /// `(features, classes)` kernel and `(classes)` bias.
    pub weight: Tensor,
    pub bias: Tensor,
    pub report: HeadReport,
    /// Class probabilities of the kept weights for the validation rows, in
    /// their order (the out-of-fold predictions).
    pub valid_probs: Matrix,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct HeadReport {
    pub epochs_run: usize,
    /// 1-based epoch whose weights the head keeps.
    pub best_epoch: usize,
    pub valid_log_loss: f64,
    pub valid_accuracy: f64,
}

/// Rows `idx` of `x` as a `(len, cols)` tensor.
fn gather(x: &Matrix, idx: &[usize], device: &Device) -> Result<Tensor> {
    let mut data = Vec::with_capacity(idx.len() * x.cols);
    for &i in idx {
        data.extend_from_slice(x.row(i));
    }
    Tensor::from_vec(data, (idx.len(), x.cols), device)
}

fn one_hot(labels: &[usize], idx: &[usize], k: usize, device: &Device) -> Result<Tensor> {
    let mut data = vec![0f32; idx.len() * k];
    for (r, &i) in idx.iter().enumerate() {
        data[r * k + labels[i]] = 1.0;
    }
    Tensor::from_vec(data, (idx.len(), k), device)
}

/// Class probabilities of the head `weight`, `bias` for every row of `x`.
fn probabilities(weight: &Tensor, bias: &Tensor, x: &Matrix, device: &Device) -> Result<Matrix> {
    let k = bias.dim(0)?;
    let mut data = Vec::with_capacity(x.rows * k);
    let rows: Vec<usize> = (0..x.rows).collect();
    for chunk in rows.chunks(4096) {
        let xs = gather(x, chunk, device)?;
        let logits = xs.matmul(weight)?.broadcast_add(bias)?;
        let p = candle_nn::ops::softmax(&logits, D::Minus1)?;
        data.extend(p.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(Matrix::new(x.rows, k, data))
}

impl TrainedHead {
    /// Class probabilities for every row of `x`.
    pub fn predict(&self, x: &Matrix, device: &Device) -> Result<Matrix> {
        probabilities(&self.weight, &self.bias, x, device)
    }
}

/// Trains one head on rows `train` of `x`, early-stopping on rows `valid`.
/// `on_epoch(epoch, valid_log_loss)` reports progress.
#[allow(clippy::too_many_arguments)]
pub fn train_head(
    x: &Matrix,
    labels: &[usize],
    n_classes: usize,
    train: &[usize],
    valid: &[usize],
    cfg: &HeadSpec,
    rng: &mut Rng,
    device: &Device,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<TrainedHead> {
    let (d, k) = (x.cols, n_classes);
    let limit = (6.0 / (d + k) as f64).sqrt() as f32;
    let init: Vec<f32> = (0..d * k)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * limit)
        .collect();
    let weight = Var::from_tensor(&Tensor::from_vec(init, (d, k), device)?)?;
    let bias = Var::from_tensor(&Tensor::zeros(k, candle_core::DType::F32, device)?)?;
    let mut opt = Optimizer::new(cfg.optimizer, cfg.lr, vec![weight.clone(), bias.clone()])?;

    let valid_y: Vec<usize> = valid.iter().map(|&i| labels[i]).collect();
    let valid_x = Matrix::new(valid.len(), d, {
        let mut v = Vec::with_capacity(valid.len() * d);
        for &i in valid {
            v.extend_from_slice(x.row(i));
        }
        v
    });
    let keep = 1.0 - cfg.dropout as f32;
    let mut order = train.to_vec();
    let mut best: Option<(f64, usize, Tensor, Tensor)> = None;
    let mut since_best = 0usize;
    let mut epochs_run = 0usize;

    for epoch in 1..=cfg.epochs {
        epochs_run = epoch;
        rng.shuffle(&mut order);
        for batch in order.chunks(cfg.batch_size) {
            let xs = if cfg.dropout > 0.0 {
                // Inverted dropout, as Keras: kept units scaled by 1 / keep.
                // Drawn and applied while gathering the rows: one pass, the
                // same draws and products as a separate mask tensor.
                let mut data = Vec::with_capacity(batch.len() * d);
                for &i in batch {
                    data.extend(x.row(i).iter().map(|&v| {
                        let scale = if rng.next_f32() < keep {
                            1.0 / keep
                        } else {
                            0.0
                        };
                        v * scale
                    }));
                }
                Tensor::from_vec(data, (batch.len(), d), device)?
            } else {
                gather(x, batch, device)?
            };
            let logits = xs
                .matmul(weight.as_tensor())?
                .broadcast_add(bias.as_tensor())?;
            let log_p = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let target = one_hot(labels, batch, k, device)?;
            let loss = ((log_p * target)?.sum_all()? * (-1.0 / batch.len() as f64))?;
            opt.step(&loss.backward()?)?;
        }

        let (w_now, b_now) = (weight.as_tensor().copy()?, bias.as_tensor().copy()?);
        let val_loss =
            metrics::log_loss(&probabilities(&w_now, &b_now, &valid_x, device)?, &valid_y);
        on_epoch(epoch, val_loss);
        let improved = best.as_ref().is_none_or(|b| val_loss < b.0);
        if improved {
            best = Some((val_loss, epoch, w_now, b_now));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                break;
            }
        }
    }

    let (_, best_epoch, best_w, best_b) = best.expect("at least one epoch ran");
    let (weight, bias) = if cfg.restore_best {
        (best_w, best_b)
    } else {
        (weight.as_tensor().copy()?, bias.as_tensor().copy()?)
    };
    let valid_probs = probabilities(&weight, &bias, &valid_x, device)?;
    Ok(TrainedHead {
        report: HeadReport {
            epochs_run,
            best_epoch,
            valid_log_loss: metrics::log_loss(&valid_probs, &valid_y),
            valid_accuracy: metrics::accuracy(&valid_probs, &valid_y),
        },
        weight,
        bias,
        valid_probs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Optimizer as Kind;

    /// Two well-separated Gaussian blobs: the head must learn them, and
    /// training twice with the same seed must give identical weights.
    #[test]
    fn learns_separable_classes_reproducibly() {
        let mut rng = Rng::new(1);
        let (n, d) = (200, 16);
        let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let data: Vec<f32> = (0..n * d)
            .map(|j| {
                let class = labels[j / d] as f32;
                (rng.next_f32() - 0.5) + if j % d == 0 { 4.0 * class - 2.0 } else { 0.0 }
            })
            .collect();
        let x = Matrix::new(n, d, data);
        let cfg = HeadSpec {
            dropout: 0.5,
            epochs: 30,
            patience: 3,
            restore_best: true,
            optimizer: Kind::Adagrad,
            lr: 0.1,
            batch_size: 32,
        };
        let train: Vec<usize> = (0..150).collect();
        let valid: Vec<usize> = (150..200).collect();
        let run = || {
            train_head(
                &x,
                &labels,
                2,
                &train,
                &valid,
                &cfg,
                &mut Rng::new(9),
                &Device::Cpu,
                |_, _| {},
            )
            .unwrap()
        };
        let (a, b) = (run(), run());
        assert!(a.report.valid_accuracy > 0.95, "{:?}", a.report);
        assert_eq!(
            a.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.weight.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
