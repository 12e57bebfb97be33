//! The classification head: dropout + dense softmax, trained on frozen
//! features with early stopping on validation log loss.
//!
//! Mirrors the reference's Keras head (`Dropout(p)` -> `Dense(k,
//! softmax)`, Glorot-uniform kernel, zero bias, categorical cross-entropy,
//! shuffled mini-batches every epoch). Every random draw (initial weights,
//! shuffles, dropout masks) comes from one seeded [`Rng`], so training is
//! bit-reproducible on the CPU.

use candle_core::Result;

use super::dense::{DenseWeights, Engine};
use super::Fold;
use crate::metrics;
use crate::npy::Matrix;
use crate::spec::HeadSpec;
use runner_kernels::rng::Rng;

pub struct TrainedHead {
    /// The kept weights (best epoch's, or the last with `restore_best = false`).
    pub weights: DenseWeights,
    pub report: HeadReport,
    /// Class probabilities of the kept weights for the validation rows, in
    /// their order (the out-of-fold predictions).
    pub valid_probs: Matrix,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeadReport {
    pub epochs_run: usize,
    /// 1-based epoch whose weights the head keeps.
    pub best_epoch: usize,
    pub valid_log_loss: f64,
    pub valid_accuracy: f64,
    /// The logistic head's chosen penalty (absent for the dense head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f64>,
    /// Every epoch's scores, in order (the learning curves).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<EpochScores>,
}

/// A head's scores after one epoch: on its training rows (without
/// dropout, so the two curves measure the same function) and on its
/// validation rows.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochScores {
    /// 1-based.
    pub epoch: usize,
    pub train_log_loss: f64,
    pub train_accuracy: f64,
    pub valid_log_loss: f64,
    pub valid_accuracy: f64,
}

/// Rows `idx` of `x`, row-major.
fn gather(x: &Matrix, idx: &[usize]) -> Vec<f32> {
    let mut data = Vec::with_capacity(idx.len() * x.cols);
    for &i in idx {
        data.extend_from_slice(x.row(i));
    }
    data
}

/// Inverted dropout, as Keras: each unit kept with probability `keep` and
/// scaled by `1 / keep`, drawn while a batch's rows are gathered (one pass
/// over the rows). A unit is kept when a 16-bit uniform draw is below
/// `keep * 2^16`, so one 64-bit draw decides four units: one draw per unit
/// costs a third of a head's step time at 10 classes. The rate is thereby
/// rounded to a multiple of 2^-16, and the scale follows the rounded one.
struct Dropout {
    /// `keep * 2^16`, rounded, at least 1 (a rate the spec allows, below 1,
    /// never drops everything).
    threshold: u64,
    scale: f32,
}

impl Dropout {
    fn new(rate: f64) -> Dropout {
        let threshold = ((1.0 - rate) * 65536.0).round().clamp(1.0, 65536.0) as u64;
        Dropout {
            threshold,
            scale: (65536.0 / threshold as f64) as f32,
        }
    }

    /// Appends `row` with this dropout applied to `out`.
    fn push_row(&self, row: &[f32], rng: &mut Rng, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + row.len(), 0.0);
        for (dst, src) in out[start..].chunks_mut(4).zip(row.chunks(4)) {
            let bits = rng.next_u64();
            for (j, (d, &v)) in dst.iter_mut().zip(src).enumerate() {
                // A multiply by 0 or 1, not a branch: the draws are random.
                let kept = ((bits >> (16 * j)) & 0xFFFF < self.threshold) as u32 as f32;
                *d = v * self.scale * kept;
            }
        }
    }
}

impl TrainedHead {
    /// Class probabilities for every row of `x`.
    pub fn predict(&self, x: &Matrix, engine: &Engine) -> Result<Matrix> {
        engine.probabilities(&self.weights, x)
    }
}

/// Class indices of every row and the number of classes.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    pub rows: &'a [usize],
    pub classes: usize,
}

/// Trains one head on rows `fold.train` of `x`, early-stopping on rows
/// `fold.valid`. `on_epoch(epoch, valid_log_loss)` reports progress.
pub fn train_head(
    x: &Matrix,
    labels: Labels<'_>,
    fold: &Fold,
    cfg: &HeadSpec,
    rng: &mut Rng,
    engine: &Engine,
    mut on_epoch: impl FnMut(usize, f64),
) -> Result<TrainedHead> {
    let (train, valid) = (&fold.train, &fold.valid);
    let (d, k) = (x.cols, labels.classes);
    let limit = (6.0 / (d + k) as f64).sqrt() as f32;
    let init = DenseWeights {
        weight: Matrix::new(
            d,
            k,
            (0..d * k)
                .map(|_| (rng.next_f32() * 2.0 - 1.0) * limit)
                .collect(),
        ),
        bias: vec![0.0; k],
    };
    let mut trainer = engine.trainer(init, cfg.optimizer, cfg.lr)?;

    let valid_y: Vec<usize> = valid.iter().map(|&i| labels.rows[i]).collect();
    let valid_x = Matrix::new(valid.len(), d, gather(x, valid));
    let train_y: Vec<usize> = train.iter().map(|&i| labels.rows[i]).collect();
    let train_x = Matrix::new(train.len(), d, gather(x, train));
    let mut history = Vec::with_capacity(cfg.epochs);
    let dropout = (cfg.dropout > 0.0).then(|| Dropout::new(cfg.dropout));
    let mut order = train.to_vec();
    let mut xs = Vec::with_capacity(cfg.batch_size.min(train.len()) * d);
    let mut best: Option<(f64, usize, DenseWeights)> = None;
    let mut since_best = 0usize;
    let mut epochs_run = 0usize;

    for epoch in 1..=cfg.epochs {
        epochs_run = epoch;
        rng.shuffle(&mut order);
        for batch in order.chunks(cfg.batch_size) {
            // One batch buffer for the whole run: refilled, never reallocated.
            xs.clear();
            for &i in batch {
                match &dropout {
                    Some(dropout) => dropout.push_row(x.row(i), rng, &mut xs),
                    None => xs.extend_from_slice(x.row(i)),
                }
            }
            let batch_labels: Vec<usize> = batch.iter().map(|&i| labels.rows[i]).collect();
            trainer.step(&xs, &batch_labels)?;
        }

        let now = trainer.weights()?;
        let valid_probs = engine.probabilities(&now, &valid_x)?;
        let train_probs = engine.probabilities(&now, &train_x)?;
        let val_loss = metrics::log_loss(&valid_probs, &valid_y);
        history.push(EpochScores {
            epoch,
            train_log_loss: metrics::log_loss(&train_probs, &train_y),
            train_accuracy: metrics::accuracy(&train_probs, &train_y),
            valid_log_loss: val_loss,
            valid_accuracy: metrics::accuracy(&valid_probs, &valid_y),
        });
        on_epoch(epoch, val_loss);
        let improved = best.as_ref().is_none_or(|b| val_loss < b.0);
        if improved {
            best = Some((val_loss, epoch, now));
            since_best = 0;
        } else {
            since_best += 1;
            if since_best >= cfg.patience {
                break;
            }
        }
    }

    let (_, best_epoch, best_weights) = best.expect("at least one epoch ran");
    let weights = if cfg.restore_best {
        best_weights
    } else {
        trainer.weights()?
    };
    let valid_probs = engine.probabilities(&weights, &valid_x)?;
    Ok(TrainedHead {
        report: HeadReport {
            epochs_run,
            best_epoch,
            valid_log_loss: metrics::log_loss(&valid_probs, &valid_y),
            valid_accuracy: metrics::accuracy(&valid_probs, &valid_y),
            l2: None,
            history,
        },
        weights,
        valid_probs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Optimizer as Kind;

    #[test]
    fn dropout_keeps_the_configured_fraction_scaled_up() {
        let row = vec![2.0f32; 100_003];
        for rate in [0.5, 0.2, 0.9] {
            let mut out = Vec::new();
            Dropout::new(rate).push_row(&row, &mut Rng::new(4), &mut out);
            assert_eq!(out.len(), row.len());
            let kept = out.iter().filter(|&&v| v != 0.0).count() as f64 / row.len() as f64;
            assert!(
                (kept - (1.0 - rate)).abs() < 0.01,
                "rate {rate}: kept {kept}"
            );
            let want = (2.0 / (1.0 - rate)) as f32;
            assert!(
                out.iter()
                    .all(|&v| v == 0.0 || (v - want).abs() < 1e-3 * want),
                "rate {rate}"
            );
        }
        // Rates at the ends of what a spec allows: the rounded rate's scale.
        let tiny = Dropout::new(1e-6);
        assert_eq!((tiny.threshold, tiny.scale), (65536, 1.0));
        let huge = Dropout::new(0.999_999);
        assert_eq!((huge.threshold, huge.scale), (1, 65536.0));
    }

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
            ..HeadSpec::default()
        };
        let fold = Fold {
            train: (0..150).collect(),
            valid: (150..200).collect(),
        };
        let labels = Labels {
            rows: &labels,
            classes: 2,
        };
        let run = || {
            train_head(
                &x,
                labels,
                &fold,
                &cfg,
                &mut Rng::new(9),
                &Engine::Host,
                |_, _| {},
            )
            .unwrap()
        };
        let (a, b) = (run(), run());
        assert!(a.report.valid_accuracy > 0.95, "{:?}", a.report);
        assert_eq!(a.weights, b.weights);
    }
}
