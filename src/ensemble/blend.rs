//! Blending class probabilities of several models, and temperature
//! scaling; every parameter is fitted to minimise log loss on labelled
//! rows. All problems here are convex in their parameters, solved by
//! deterministic first-order methods.

use crate::npy::Matrix;

/// Probabilities are clipped here before logs are taken (Kaggle's rule).
const EPS: f64 = 1e-15;

/// How members' probabilities combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The plain mean: nothing fitted.
    Mean,
    /// A weighted mean, weights non-negative and summing to 1, fitted on
    /// the out-of-fold rows.
    Weights,
    /// Log-linear pooling: `p ∝ Π p_m^w_m`, `w_m >= 0` (their sum also
    /// sharpens or softens, as a temperature would), fitted likewise.
    Stack,
}

/// A fitted blend.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Blend {
    pub method: Method,
    pub weights: Vec<f64>,
    /// `1 / T` of temperature scaling after blending (1: none).
    pub inverse_temperature: f64,
}

fn clipped_ln(p: f32) -> f64 {
    (p as f64).clamp(EPS, 1.0 - EPS).ln()
}

impl Blend {
    /// Blended probabilities of `members` (equally shaped), each row
    /// summing to 1.
    pub fn apply(&self, members: &[&Matrix]) -> Matrix {
        let (n, k) = (members[0].rows, members[0].cols);
        let mut out = vec![0f32; n * k];
        let mut row = vec![0f64; k];
        for i in 0..n {
            match self.method {
                Method::Mean | Method::Weights => {
                    row.iter_mut().for_each(|v| *v = 0.0);
                    for (m, w) in members.iter().zip(&self.weights) {
                        for (v, &p) in row.iter_mut().zip(m.row(i)) {
                            *v += w * p as f64;
                        }
                    }
                    if self.inverse_temperature != 1.0 {
                        for v in row.iter_mut() {
                            *v = v.max(EPS).ln() * self.inverse_temperature;
                        }
                        softmax(&mut row);
                    }
                }
                Method::Stack => {
                    row.iter_mut().for_each(|v| *v = 0.0);
                    for (m, w) in members.iter().zip(&self.weights) {
                        for (v, &p) in row.iter_mut().zip(m.row(i)) {
                            *v += w * clipped_ln(p);
                        }
                    }
                    for v in row.iter_mut() {
                        *v *= self.inverse_temperature;
                    }
                    softmax(&mut row);
                }
            }
            let sum: f64 = row.iter().sum();
            for (o, v) in out[i * k..(i + 1) * k].iter_mut().zip(&row) {
                *o = (v / sum) as f32;
            }
        }
        Matrix::new(n, k, out)
    }

    /// Fits a blend of `members` on rows `rows` (labels `labels[r]` for
    /// each row index `r` in `rows`); `temperature` adds temperature
    /// scaling fitted after the blend.
    pub fn fit(
        method: Method,
        members: &[&Matrix],
        labels: &[usize],
        rows: &[usize],
        temperature: bool,
    ) -> Blend {
        let m = members.len();
        let weights = match method {
            Method::Mean => vec![1.0 / m as f64; m],
            Method::Weights => fit_simplex(members, labels, rows),
            Method::Stack => fit_log_linear(members, labels, rows),
        };
        let mut blend = Blend {
            method,
            weights,
            inverse_temperature: 1.0,
        };
        if temperature {
            let blended = blend.apply(members);
            blend.inverse_temperature = fit_inverse_temperature(&blended, labels, rows);
        }
        blend
    }
}

fn softmax(row: &mut [f64]) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for v in row.iter_mut() {
        *v = (*v - max).exp();
    }
    let sum: f64 = row.iter().sum();
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Mean log loss of `p` on `rows`.
pub fn log_loss_on(p: &Matrix, labels: &[usize], rows: &[usize]) -> f64 {
    let total: f64 = rows.iter().map(|&i| -clipped_ln(p.row(i)[labels[i]])).sum();
    total / rows.len().max(1) as f64
}

/// Weights on the simplex minimising `-mean log(Σ w_m p_m[i, y_i])`:
/// exponentiated gradient (mirror descent on the simplex), which keeps
/// the weights positive and summing to 1 at every step.
fn fit_simplex(members: &[&Matrix], labels: &[usize], rows: &[usize]) -> Vec<f64> {
    let m = members.len();
    // Only each row's true-class probabilities matter.
    let a: Vec<Vec<f64>> = rows
        .iter()
        .map(|&i| {
            members
                .iter()
                .map(|p| (p.row(i)[labels[i]] as f64).max(EPS))
                .collect()
        })
        .collect();
    let mut w = vec![1.0 / m as f64; m];
    let mut grad = vec![0f64; m];
    for _ in 0..3000 {
        grad.iter_mut().for_each(|g| *g = 0.0);
        for ai in &a {
            let mix: f64 = ai.iter().zip(&w).map(|(x, y)| x * y).sum();
            for (g, x) in grad.iter_mut().zip(ai) {
                *g -= x / mix;
            }
        }
        let n = a.len().max(1) as f64;
        // The gradient of the mean is at most ~1/min(mix) in size; a
        // step of 0.5 is stable for probabilities.
        for (wi, g) in w.iter_mut().zip(&grad) {
            *wi *= (-0.5 * g / n).exp();
        }
        let sum: f64 = w.iter().sum();
        w.iter_mut().for_each(|wi| *wi /= sum);
    }
    w
}

/// Non-negative weights of log-linear pooling minimising log loss:
/// projected gradient descent with a backtracking step.
fn fit_log_linear(members: &[&Matrix], labels: &[usize], rows: &[usize]) -> Vec<f64> {
    let m = members.len();
    let k = members[0].cols;
    let logs: Vec<Vec<Vec<f64>>> = rows
        .iter()
        .map(|&i| {
            members
                .iter()
                .map(|p| p.row(i).iter().map(|&v| clipped_ln(v)).collect())
                .collect()
        })
        .collect();
    let ys: Vec<usize> = rows.iter().map(|&i| labels[i]).collect();
    let loss_grad = |w: &[f64]| -> (f64, Vec<f64>) {
        let mut loss = 0.0;
        let mut grad = vec![0f64; m];
        let mut z = vec![0f64; k];
        for (lm, &y) in logs.iter().zip(&ys) {
            z.iter_mut().for_each(|v| *v = 0.0);
            for (l, wm) in lm.iter().zip(w) {
                for (zc, lc) in z.iter_mut().zip(l) {
                    *zc += wm * lc;
                }
            }
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            loss += lse - z[y];
            for (g, l) in grad.iter_mut().zip(lm) {
                let expected: f64 = l.iter().zip(&z).map(|(lc, zc)| lc * (zc - lse).exp()).sum();
                *g += expected - l[y];
            }
        }
        let n = ys.len().max(1) as f64;
        (loss / n, grad.iter().map(|g| g / n).collect())
    };
    let mut w = vec![1.0 / m as f64; m];
    let (mut loss, mut grad) = loss_grad(&w);
    let mut step = 1.0;
    for _ in 0..500 {
        let mut improved = false;
        while step > 1e-10 {
            let next: Vec<f64> = w
                .iter()
                .zip(&grad)
                .map(|(wi, g)| (wi - step * g).max(0.0))
                .collect();
            let (l, g) = loss_grad(&next);
            if l < loss - 1e-12 {
                (w, loss, grad) = (next, l, g);
                step *= 2.0;
                improved = true;
                break;
            }
            step /= 2.0;
        }
        if !improved {
            break;
        }
    }
    w
}

/// `1 / T` minimising the log loss of `p^(1/T)` renormalised, by golden
/// section search over `ln(1/T)` in [-3, 3] (the loss is convex in 1/T).
fn fit_inverse_temperature(p: &Matrix, labels: &[usize], rows: &[usize]) -> f64 {
    let loss = |s: f64| -> f64 {
        let mut total = 0.0;
        for &i in rows {
            let z: Vec<f64> = p.row(i).iter().map(|&v| clipped_ln(v) * s).collect();
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
            total += lse - z[labels[i]];
        }
        total / rows.len().max(1) as f64
    };
    let (mut lo, mut hi) = (-3f64, 3f64);
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..80 {
        let (a, b) = (hi - phi * (hi - lo), lo + phi * (hi - lo));
        if loss(a.exp()) < loss(b.exp()) {
            hi = b;
        } else {
            lo = a;
        }
    }
    ((lo + hi) / 2.0).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model that is right with probability `hit` on 3 classes.
    fn model(labels: &[usize], hit: f32) -> Matrix {
        let k = 3;
        let mut data = Vec::new();
        for &y in labels {
            for c in 0..k {
                data.push(if c == y { hit } else { (1.0 - hit) / 2.0 });
            }
        }
        Matrix::new(labels.len(), k, data)
    }

    #[test]
    fn the_weights_favour_the_better_model_and_sum_to_one() {
        let labels: Vec<usize> = (0..60).map(|i| i % 3).collect();
        let good = model(&labels, 0.9);
        let mut bad = model(&labels, 0.2);
        // The bad model is confidently wrong on every row.
        for (i, &y) in labels.iter().enumerate() {
            bad.data[i * 3 + y] = 0.05;
            bad.data[i * 3 + (y + 1) % 3] = 0.9;
            bad.data[i * 3 + (y + 2) % 3] = 0.05;
        }
        let rows: Vec<usize> = (0..60).collect();
        for method in [Method::Weights, Method::Stack] {
            let blend = Blend::fit(method, &[&good, &bad], &labels, &rows, false);
            assert!(
                blend.weights[0] > 0.95 && blend.weights[1] < 0.05,
                "{blend:?}"
            );
            if method == Method::Weights {
                assert!((blend.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
            let blended = blend.apply(&[&good, &bad]);
            assert!(
                log_loss_on(&blended, &labels, &rows) <= log_loss_on(&good, &labels, &rows) + 1e-6
            );
        }
    }

    #[test]
    fn temperature_scaling_undoes_overconfidence() {
        // Right 70% of the time but claiming 0.98: too sharp.
        let labels: Vec<usize> = (0..100).map(|i| i % 2).collect();
        let mut data = Vec::new();
        for (i, &y) in labels.iter().enumerate() {
            let predicted = if i % 10 < 7 { y } else { 1 - y };
            for c in 0..2 {
                data.push(if c == predicted { 0.98 } else { 0.02 });
            }
        }
        let p = Matrix::new(100, 2, data);
        let rows: Vec<usize> = (0..100).collect();
        let blend = Blend::fit(Method::Mean, &[&p], &labels, &rows, true);
        assert!(blend.inverse_temperature < 0.5, "{blend:?}");
        let calibrated = blend.apply(&[&p]);
        // The optimum calibrates the confidence to the hit rate.
        let top = calibrated.data.iter().copied().fold(0f32, f32::max);
        assert!((top - 0.7).abs() < 0.01, "{top}");
        assert!(log_loss_on(&calibrated, &labels, &rows) < log_loss_on(&p, &labels, &rows));
    }

    #[test]
    fn the_mean_blend_is_the_plain_mean() {
        let labels = vec![0, 1];
        let a = Matrix::new(2, 2, vec![0.8, 0.2, 0.4, 0.6]);
        let b = Matrix::new(2, 2, vec![0.6, 0.4, 0.2, 0.8]);
        let blend = Blend::fit(Method::Mean, &[&a, &b], &labels, &[0, 1], false);
        let p = blend.apply(&[&a, &b]);
        for (x, y) in p.data.iter().zip([0.7f32, 0.3, 0.3, 0.7]) {
            assert!((x - y).abs() < 1e-6);
        }
    }
}
