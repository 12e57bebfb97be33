//! Which rows train and which validate each head.
//!
//! `folds = k >= 2`: k-fold cross-validation, every row validated once.
//! `folds = 1`: the first fold of the 5-fold plan (an 80/20 split), so a
//! one-fold run scores exactly the "first fold alone" row of a 5-fold run
//! with the same seed, as the reference's score propagation does.
//! `stratified = false` cuts contiguous blocks in file order (the 2017
//! notebook's `KFold` without shuffling); `true` deals each class's rows,
//! shuffled by the seed, round-robin over the folds.

use runner_kernels::rng::Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    pub train: Vec<usize>,
    pub valid: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FoldPlan {
    pub folds: Vec<Fold>,
}

impl FoldPlan {
    pub fn new(labels: &[usize], folds: usize, stratified: bool, seed: u64) -> FoldPlan {
        let n = labels.len();
        let k = if folds == 1 { 5 } else { folds };
        let mut fold_of = vec![0usize; n];
        if stratified {
            let n_classes = labels.iter().max().map_or(0, |m| m + 1);
            let mut rng = Rng::derive(seed, &[0xF01D]);
            let mut next = 0usize;
            for c in 0..n_classes {
                let mut rows: Vec<usize> = (0..n).filter(|&i| labels[i] == c).collect();
                rng.shuffle(&mut rows);
                for r in rows {
                    fold_of[r] = next % k;
                    next += 1;
                }
            }
        } else {
            for (i, f) in fold_of.iter_mut().enumerate() {
                *f = i * k / n.max(1);
            }
        }
        let used = if folds == 1 { 1 } else { k };
        FoldPlan {
            folds: (0..used)
                .map(|f| Fold {
                    train: (0..n).filter(|&i| fold_of[i] != f).collect(),
                    valid: (0..n).filter(|&i| fold_of[i] == f).collect(),
                })
                .collect(),
        }
    }

    /// Rows with an out-of-fold prediction, ascending.
    pub fn validated_rows(&self) -> Vec<usize> {
        let mut rows: Vec<usize> = self
            .folds
            .iter()
            .flat_map(|f| f.valid.iter().copied())
            .collect();
        rows.sort_unstable();
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<usize> {
        (0..100).map(|i| i % 4).collect()
    }

    #[test]
    fn every_row_is_validated_exactly_once() {
        for stratified in [true, false] {
            let plan = FoldPlan::new(&labels(), 5, stratified, 7);
            assert_eq!(plan.validated_rows(), (0..100).collect::<Vec<_>>());
            for fold in &plan.folds {
                assert_eq!(fold.train.len() + fold.valid.len(), 100);
                assert!(fold.valid.iter().all(|v| !fold.train.contains(v)));
            }
        }
    }

    #[test]
    fn stratified_folds_keep_class_balance() {
        let plan = FoldPlan::new(&labels(), 5, true, 7);
        for fold in &plan.folds {
            for c in 0..4 {
                assert_eq!(fold.valid.iter().filter(|&&i| i % 4 == c).count(), 5);
            }
        }
    }

    #[test]
    fn one_fold_is_the_first_of_five() {
        for stratified in [true, false] {
            let one = FoldPlan::new(&labels(), 1, stratified, 3);
            let five = FoldPlan::new(&labels(), 5, stratified, 3);
            assert_eq!(one.folds.len(), 1);
            assert_eq!(one.folds[0], five.folds[0]);
            assert_eq!(one.folds[0].valid.len(), 20);
        }
    }

    #[test]
    fn contiguous_blocks_follow_file_order() {
        let plan = FoldPlan::new(&labels(), 5, false, 0);
        assert_eq!(plan.folds[0].valid, (0..20).collect::<Vec<_>>());
        assert_eq!(plan.folds[4].valid, (80..100).collect::<Vec<_>>());
    }
}
