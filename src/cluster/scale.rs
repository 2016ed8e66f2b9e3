//! Feature scaling before clustering, and an optional PCA projection for the Gaussian mixture.
//!
//! Raw Whisper embeddings are dominated by a few dimensions with large variance, so the
//! default is a per-dimension z-score (`standardize`).

use anyhow::{Context, Result, bail};
use linfa_linalg::eigh::{EigSort, EighInto};
use ndarray::{Array1, Array2, Axis};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scaling {
    /// Per-dimension z-score (population standard deviation); constant dimensions are only
    /// centred.
    #[default]
    Standardize,
    /// Each row divided by its Euclidean norm (cosine geometry).
    L2,
    /// The embeddings as they are.
    None,
}

impl Scaling {
    pub fn name(&self) -> &'static str {
        match self {
            Scaling::Standardize => "standardize",
            Scaling::L2 => "l2",
            Scaling::None => "none",
        }
    }
}

/// Per-dimension mean and population standard deviation of the rows of `x`, accumulated in f64.
pub fn mean_std(x: &Array2<f32>) -> (Vec<f32>, Vec<f32>) {
    let n = x.nrows().max(1) as f64;
    let d = x.ncols();
    let mut sum = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for row in x.rows() {
        for (j, &v) in row.iter().enumerate() {
            sum[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sq.iter().zip(&mean).map(|(s, m)| (s / n - m * m).max(0.0).sqrt() as f32).collect();
    (mean.into_iter().map(|m| m as f32).collect(), std)
}

/// The scaled copy of `x` [rows, dim].
pub fn scale(x: &Array2<f32>, scaling: Scaling) -> Array2<f32> {
    match scaling {
        Scaling::None => x.clone(),
        Scaling::Standardize => {
            let (mean, std) = mean_std(x);
            let inv: Vec<f32> = std.iter().map(|&s| if s > 1e-12 { 1.0 / s } else { 1.0 }).collect();
            let mut y = x.clone();
            for mut row in y.rows_mut() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (*v - mean[j]) * inv[j];
                }
            }
            y
        }
        Scaling::L2 => {
            let mut y = x.clone();
            for mut row in y.rows_mut() {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                if norm > 0.0 {
                    row.mapv_inplace(|v| v / norm);
                }
            }
            y
        }
    }
}

/// Project the rows of `x` onto its `dims` leading principal components (centred, not
/// whitened), in f64. Returns the projection and the fraction of the variance it keeps.
pub fn pca(x: &Array2<f32>, dims: usize) -> Result<(Array2<f64>, f64)> {
    let (n, d) = x.dim();
    if dims == 0 || dims > d {
        bail!("pca_dims {dims} must be in 1..={d}");
    }
    if n < 2 {
        bail!("PCA needs at least 2 rows, got {n}");
    }
    let x = x.mapv(|v| v as f64);
    let mean: Array1<f64> = x.mean_axis(Axis(0)).context("empty input")?;
    let centred = &x - &mean;
    let cov = centred.t().dot(&centred) / (n as f64 - 1.0);
    let (vals, vecs) = cov.eigh_into().context("eigendecomposition of the covariance failed")?.sort_eig_desc();
    let total: f64 = vals.iter().map(|v| v.max(0.0)).sum();
    let kept: f64 = vals.iter().take(dims).map(|v| v.max(0.0)).sum();
    // Columns of `vecs` are the eigenvectors.
    let basis = vecs.slice(ndarray::s![.., ..dims]).to_owned();
    Ok((centred.dot(&basis), if total > 0.0 { kept / total } else { 1.0 }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn standardize_by_hand() {
        // Column 0: 1, 3 -> mean 2, std 1; column 1 constant 5 -> centred only.
        let x = array![[1.0f32, 5.0], [3.0, 5.0]];
        let y = scale(&x, Scaling::Standardize);
        assert_eq!(y, array![[-1.0f32, 0.0], [1.0, 0.0]]);
        let l2 = scale(&array![[3.0f32, 4.0], [0.0, 0.0]], Scaling::L2);
        assert_eq!(l2, array![[0.6f32, 0.8], [0.0, 0.0]]);
        assert_eq!(scale(&x, Scaling::None), x);
    }

    #[test]
    fn pca_finds_the_dominant_direction() {
        // Points on the line y = 2x (plus nothing else): one component keeps all variance.
        let x = array![[0.0f32, 0.0], [1.0, 2.0], [2.0, 4.0], [3.0, 6.0]];
        let (p, kept) = pca(&x, 1).unwrap();
        assert!((kept - 1.0).abs() < 1e-9, "{kept}");
        // Projections are the signed distances along the line from the mean (1.5, 3).
        let s5 = 5f64.sqrt();
        let want = [-1.5 * s5, -0.5 * s5, 0.5 * s5, 1.5 * s5];
        let sign = p[[3, 0]].signum();
        for (i, w) in want.iter().enumerate() {
            assert!((p[[i, 0]] * sign - w).abs() < 1e-9, "{p:?}");
        }
    }
}
