//! Test problems for the logistic head and its objective computed another
//! way.

use super::fit_path;
use super::objective::Objective;
use crate::npy::Matrix;
use crate::train::head::Labels;
use runner_kernels::rng::Rng;

/// `n` rows of `d` features in `k` classes: class means apart by
/// `separation`, uniform noise of width 1, all features positive (as
/// post-ReLU pooled activations are).
pub(super) fn problem(
    n: usize,
    d: usize,
    k: usize,
    separation: f32,
    seed: u64,
) -> (Matrix, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
    let data = (0..n * d)
        .map(|j| {
            let (row, col) = (j / d, j % d);
            let signal = if col % k == labels[row] {
                separation
            } else {
                0.0
            };
            0.5 + signal + rng.next_f32()
        })
        .collect();
    (Matrix::new(n, d, data), labels)
}

pub(super) fn labels_of(rows: &[usize], k: usize) -> Labels<'_> {
    Labels { rows, classes: k }
}

/// The objective in plain f64 loops, independent of the GEMM path.
pub(super) fn reference_objective(
    x: &Matrix,
    y: &[usize],
    k: usize,
    l2: f64,
    params: &[f64],
) -> f64 {
    let d = x.cols;
    let mut loss = 0.0;
    for (r, &label) in y.iter().enumerate() {
        let z: Vec<f64> = (0..k)
            .map(|j| {
                params[d * k + j]
                    + (0..d)
                        .map(|a| x.row(r)[a] as f64 * params[a * k + j])
                        .sum::<f64>()
            })
            .collect();
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        loss += lse - z[label];
    }
    let w2: f64 = params[..d * k].iter().map(|w| w * w).sum();
    loss / y.len() as f64 + 0.5 * l2 * w2
}

pub(super) fn fit(x: &Matrix, y: &[usize], k: usize, l2: f64) -> (Vec<f64>, usize) {
    let rows: Vec<usize> = (0..y.len()).collect();
    let mut obj = Objective::new(x, &rows, labels_of(y, k)).unwrap();
    fit_path(&mut obj, &[l2], |_, _| Ok(())).unwrap()
}
