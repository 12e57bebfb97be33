//! Cross-validated heads: one head per fold and view, trained in parallel.
//!
//! The heads are independent (each draws from its own generator, derived
//! from the seed, the fold and the view), so they train at once on the
//! rayon pool and, on the CPU, give exactly what training them one after
//! the other gives. This matters on large sets: a head's host work per step
//! (gather, dropout mask) is single-threaded, and the 2017 recipe has 10
//! heads. On a GPU each head gets a CUDA stream and cuBLAS handle of its
//! own ([`head_device`]).

use candle_core::{Device, DeviceLocation, Result};
use rayon::prelude::*;

use super::dense::{DenseWeights, Engine};
use super::head::{train_head, HeadReport, Labels};
use super::logistic::train_logistic;
use super::FoldPlan;
use crate::npy::Matrix;
use crate::spec::{HeadKind, HeadSpec};
use runner_kernels::rng::Rng;

/// One view's features: training rows and, if there is a test set, test rows.
pub struct ViewFeatures<'a> {
    pub train: &'a Matrix,
    pub test: Option<&'a Matrix>,
}

/// What one fold x view head produced.
pub struct FoldHead {
    /// 0-based fold and view indices.
    pub fold: usize,
    pub view: usize,
    pub report: HeadReport,
    /// Probabilities for the fold's validation rows, in `fold.valid` order.
    pub valid: Matrix,
    /// Probabilities for every test row.
    pub test: Option<Matrix>,
    /// The head's dense layer (what `model/` saves).
    pub weights: DenseWeights,
}

/// The device one head trains on: the CPU as it is; on a GPU the same GPU
/// through a stream, cuBLAS handle and allocator queue of the head's own.
/// candle's default CUDA device gives each host thread its own stream but
/// shares one cuBLAS handle, which cuBLAS advises against across threads
/// (workspace shared between streams).
fn head_device(device: &Device) -> Result<Device> {
    match device.location() {
        DeviceLocation::Cuda { gpu_id } => Device::new_cuda_with_stream(gpu_id),
        _ => Ok(device.clone()),
    }
}

/// The cross-validated heads of a run: every view's features, the labels,
/// the folds, the head settings and the seed the heads' generators derive
/// from.
pub struct CrossValidation<'a> {
    pub views: &'a [ViewFeatures<'a>],
    pub labels: Labels<'a>,
    pub folds: &'a FoldPlan,
    pub head: &'a HeadSpec,
    pub seed: u64,
}

impl CrossValidation<'_> {
    /// Trains a head for every view x fold (view-major order in the result,
    /// as the run reports them). `on_epoch(fold, view, epoch,
    /// valid_log_loss)` reports progress from whichever head finished an
    /// epoch; `on_head` is called as each head finishes.
    pub fn train(
        &self,
        device: &Device,
        on_epoch: impl Fn(usize, usize, usize, f64) + Sync,
        on_head: impl Fn(&FoldHead) + Sync,
    ) -> Result<Vec<FoldHead>> {
        let tasks: Vec<(usize, usize)> = (0..self.views.len())
            .flat_map(|v| (0..self.folds.folds.len()).map(move |f| (v, f)))
            .collect();
        // In task order; on an error no further head starts and the first
        // error is returned.
        tasks
            .par_iter()
            .map(|&(v, f)| {
                let engine = &Engine::for_device(&head_device(device)?);
                let mut rng = Rng::derive(self.seed, &[f as u64, v as u64]);
                let view = &self.views[v];
                let fold = &self.folds.folds[f];
                let head = match self.head.kind {
                    HeadKind::Dense => train_head(
                        view.train,
                        self.labels,
                        fold,
                        self.head,
                        &mut rng,
                        engine,
                        |epoch, loss| on_epoch(f, v, epoch, loss),
                    )?,
                    HeadKind::Logistic => {
                        train_logistic(view.train, self.labels, fold, self.head, &mut rng)?
                    }
                };
                let out = FoldHead {
                    fold: f,
                    view: v,
                    test: view.test.map(|xt| head.predict(xt, engine)).transpose()?,
                    valid: head.valid_probs,
                    report: head.report,
                    weights: head.weights,
                };
                on_head(&out);
                Ok(out)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Optimizer;
    use crate::train::on_threads;

    #[test]
    fn heads_trained_in_parallel_equal_heads_trained_one_by_one() {
        let mut rng = Rng::new(3);
        let (n, d, k) = (120, 24, 3);
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let x = Matrix::new(
            n,
            d,
            (0..n * d)
                .map(|j| rng.next_f32() + if j % d == labels[j / d] { 1.5 } else { 0.0 })
                .collect(),
        );
        let test = Matrix::new(7, d, (0..7 * d).map(|_| rng.next_f32()).collect());
        let views = [
            ViewFeatures {
                train: &x,
                test: Some(&test),
            },
            ViewFeatures {
                train: &x,
                test: Some(&test),
            },
        ];
        let folds = FoldPlan::new(&labels, 4, true, 11);
        let cfg = HeadSpec {
            dropout: 0.5,
            epochs: 6,
            patience: 2,
            restore_best: true,
            optimizer: Optimizer::Adagrad,
            lr: 0.05,
            batch_size: 16,
            ..HeadSpec::default()
        };
        let cv = CrossValidation {
            views: &views,
            labels: Labels {
                rows: &labels,
                classes: k,
            },
            folds: &folds,
            head: &cfg,
            seed: 5,
        };
        let train = |threads: usize| {
            on_threads(threads, || cv.train(&Device::Cpu, |_, _, _, _| {}, |_| {})).unwrap()
        };
        let (one, many) = (train(1), train(4));
        assert_eq!(one.len(), 8);
        for (a, b) in one.iter().zip(&many) {
            assert_eq!((a.view, a.fold), (b.view, b.fold));
            assert_eq!(a.valid.data, b.valid.data);
            assert_eq!(a.test.as_ref().unwrap().data, b.test.as_ref().unwrap().data);
        }
        // Views share features but not generators: their heads differ.
        assert_ne!(
            one[0].test.as_ref().unwrap().data,
            one[4].test.as_ref().unwrap().data
        );
    }
}
