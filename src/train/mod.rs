//! Heads on frozen features: fold plans, the dense softmax head (its
//! training loop in `head`, its arithmetic in `dense`), optimisers, and the
//! logistic head (`logistic`: the same layer, L2-penalised, fitted by L-BFGS).

pub mod cv;
pub mod dense;
pub mod folds;
pub mod head;
pub mod logistic;
pub mod optim;

pub use cv::{CrossValidation, FoldHead, ViewFeatures};
pub use folds::{Fold, FoldPlan};
pub use head::{train_head, EpochScores, HeadReport, Labels, TrainedHead};

/// Runs `f` on a pool of its own with `threads` threads: tests compare
/// heads trained on one thread and on several.
#[cfg(test)]
fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}
