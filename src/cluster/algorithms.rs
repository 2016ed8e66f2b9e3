//! The clustering algorithms on scaled features, each returning a hard assignment (None =
//! noise), the number of clusters it found and, for k-means and the Gaussian mixture, soft
//! memberships.
//!
//! Soft memberships:
//! - k-means: p_k(x) = softmax_k(-||x - c_k||^2 / (T * s2)), with T = `kmeans_temperature` and
//!   s2 the mean squared distance of the rows to their own centroid (the inertia per row). The
//!   scale makes T independent of the dimension and the units: at T = 1 a point one "typical
//!   within-cluster spread" farther from c_j than from c_k has p_j / p_k = 1/e.
//! - Gaussian mixture: the EM posteriors, recomputed with a stable log-sum-exp.
//!
//! Full-covariance GMMs in 384 dimensions are fragile: linfa's EM sums exp(log-densities)
//! without subtracting the maximum, so 384-dimensional densities (log p of several hundred
//! below zero) underflow, and with tens of points per cluster the covariances are
//! rank-deficient. Measured on 4 z-scored blobs of 50 points in 384 dims: reg_covariance 1e-6
//! and 1e-3 fail ("cluster has no more point"), 1e-1 works. Hence the stage projects onto 32
//! principal components before a GMM unless told otherwise (`pca_dims`).
//! - DBSCAN / HDBSCAN: the `hdbscan` crate gives labels only, and linfa's DBSCAN too, so the
//!   memberships are derived in [`crate::cluster::noise`] the same way as for k-means, from
//!   the centroids of the found clusters (`density_temperature`).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use linfa::DatasetBase;
use linfa::prelude::*;
use linfa_clustering::{Dbscan, GaussianMixtureModel, KMeans};
use linfa_linalg::cholesky::Cholesky;
use linfa_nn::CommonNearestNeighbour;
use linfa_nn::distance::L2Dist;
use ndarray::{Array2, ArrayView2, Axis};
use rand_xoshiro::Xoshiro256Plus;
use rand_xoshiro::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use super::kmeans::{self, KMeansConfig, row_norms, sq_dists};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    Kmeans,
    Gmm,
    Dbscan,
    Hdbscan,
}

impl Algorithm {
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::Kmeans => "kmeans",
            Algorithm::Gmm => "gmm",
            Algorithm::Dbscan => "dbscan",
            Algorithm::Hdbscan => "hdbscan",
        }
    }
    /// Whether the algorithm can leave points unassigned.
    pub fn has_noise(&self) -> bool {
        matches!(self, Algorithm::Dbscan | Algorithm::Hdbscan)
    }
}

/// Which k-means implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KMeansImpl {
    /// Ours ([`crate::cluster::kmeans`]): GEMM distances, scikit-learn's algorithm.
    #[default]
    Lloyd,
    /// linfa-clustering's KMeans (k-means++ seeding, m_k-means updates, absolute tolerance on
    /// the centroid shift).
    Linfa,
}

/// What an algorithm found.
#[derive(Debug, Clone)]
pub struct Raw {
    /// Cluster per row in 0..n_clusters, None for noise.
    pub labels: Vec<Option<usize>>,
    pub n_clusters: usize,
    /// Soft memberships [rows, n_clusters] from the model itself (k-means, GMM).
    pub probs: Option<Array2<f32>>,
    /// Numbers for the summary (inertia, log-likelihood, explained variance, iterations).
    pub info: BTreeMap<String, f64>,
}

/// Row-wise softmax of -d2 / scale, computed stably.
pub fn softmax_neg(d2: &Array2<f32>, scale: f64) -> Array2<f32> {
    let scale = if scale.is_finite() && scale > 0.0 { scale } else { 1.0 };
    let mut p = Array2::<f32>::zeros(d2.dim());
    for (row, mut out) in d2.axis_iter(Axis(0)).zip(p.axis_iter_mut(Axis(0))) {
        let min = row.iter().copied().fold(f32::INFINITY, f32::min) as f64;
        let e: Vec<f64> = row.iter().map(|&v| (-(v as f64 - min) / scale).exp()).collect();
        let z: f64 = e.iter().sum();
        for (o, v) in out.iter_mut().zip(e) {
            *o = (v / z) as f32;
        }
    }
    p
}

pub fn run_kmeans(x: ArrayView2<f32>, cfg: &KMeansConfig, imp: KMeansImpl, temperature: f64) -> Result<Raw> {
    if cfg.k == 0 || cfg.k > x.nrows() {
        bail!("k = {} must be in 1..={} (the number of rows)", cfg.k, x.nrows());
    }
    let (centroids, iterations) = match imp {
        KMeansImpl::Lloyd => {
            let f = kmeans::fit(x, cfg);
            (f.centroids, Some((f.iterations, f.total_iterations)))
        }
        KMeansImpl::Linfa => {
            if cfg.tolerance <= 0.0 {
                bail!("linfa's k-means needs tolerance > 0");
            }
            let ds = DatasetBase::from(x.to_owned());
            let model = KMeans::params_with_rng(cfg.k, Xoshiro256Plus::seed_from_u64(cfg.seed))
                .n_runs(cfg.n_runs.max(1))
                .max_n_iterations(cfg.max_iter.max(1) as u64)
                .tolerance(cfg.tolerance as f32)
                .fit(&ds)
                .context("linfa k-means")?;
            (model.centroids().clone(), None)
        }
    };
    let d2 = sq_dists(x, &row_norms(x), centroids.view());
    let labels: Vec<Option<usize>> = d2
        .axis_iter(Axis(0))
        .map(|r| Some(r.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j).unwrap_or(0)))
        .collect();
    let inertia = d2.axis_iter(Axis(0)).map(|r| r.iter().copied().fold(f32::INFINITY, f32::min) as f64).sum::<f64>()
        / x.nrows() as f64;
    let mut info = BTreeMap::from([("inertia".to_string(), inertia)]);
    if let Some((best, total)) = iterations {
        info.insert("iterations".into(), best as f64);
        info.insert("total_iterations".into(), total as f64);
    }
    Ok(Raw { labels, n_clusters: cfg.k, probs: Some(softmax_neg(&d2, temperature * inertia)), info })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GmmParams {
    /// Added to the covariance diagonals (features are z-scored by default, so this is relative
    /// to unit variance).
    pub reg_covariance: f64,
    /// EM stops when the mean log-likelihood changes by less than this.
    pub tolerance: f64,
}

impl Default for GmmParams {
    fn default() -> Self {
        GmmParams { reg_covariance: 1e-3, tolerance: 1e-3 }
    }
}

/// Stable per-row log of weight_k * N(x | mean_k, P_k^-1), [rows, k].
fn gmm_log_joint(x: &Array2<f64>, model: &GaussianMixtureModel<f64>) -> Result<Array2<f64>> {
    let (n, d) = x.dim();
    let k = model.weights().len();
    let mut out = Array2::<f64>::zeros((n, k));
    let ln2pi = (2.0 * std::f64::consts::PI).ln();
    for j in 0..k {
        let prec = model.precisions().index_axis(Axis(0), j).to_owned();
        let chol = prec.cholesky().with_context(|| format!("GMM component {j}: precision is not positive definite"))?;
        let logdet: f64 = 2.0 * chol.diag().iter().map(|v| v.ln()).sum::<f64>();
        let diff = x - &model.means().row(j);
        let m = diff.dot(&prec);
        let maha = (&m * &diff).sum_axis(Axis(1));
        let lw = model.weights()[j].ln();
        for i in 0..n {
            out[[i, j]] = lw - 0.5 * (d as f64 * ln2pi + maha[i]) + 0.5 * logdet;
        }
    }
    Ok(out)
}

pub fn run_gmm(x: ArrayView2<f32>, k: usize, seed: u64, n_runs: usize, max_iter: usize, p: &GmmParams) -> Result<Raw> {
    if k == 0 || k > x.nrows() {
        bail!("k = {k} must be in 1..={} (the number of rows)", x.nrows());
    }
    let mut info = BTreeMap::new();
    let data: Array2<f64> = x.mapv(|v| v as f64);
    let ds = DatasetBase::from(data.clone());
    let mut best: Option<(f64, Array2<f64>)> = None;
    let mut errors = Vec::new();
    // linfa's own n_runs continues EM from the previous run's state instead of re-seeding, so
    // restarts are done here, each from a k-means seeding with its own seed.
    for run in 0..n_runs.max(1) {
        let fitted =
            GaussianMixtureModel::params_with_rng(k, Xoshiro256Plus::seed_from_u64(seed.wrapping_add(run as u64)))
                .n_runs(1)
                .max_n_iterations(max_iter.max(1) as u64)
                .tolerance(p.tolerance)
                .reg_covariance(p.reg_covariance)
                .fit(&ds);
        let model = match fitted {
            Ok(m) => m,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let lj = gmm_log_joint(&data, &model)?;
        let mut post = Array2::<f64>::zeros(lj.dim());
        let mut ll = 0.0;
        for (row, mut out) in lj.axis_iter(Axis(0)).zip(post.axis_iter_mut(Axis(0))) {
            let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = row.iter().map(|v| (v - m).exp()).sum();
            ll += m + z.ln();
            for (o, v) in out.iter_mut().zip(row) {
                *o = (v - m).exp() / z;
            }
        }
        let ll = ll / data.nrows() as f64;
        if !ll.is_finite() || post.iter().any(|v| !v.is_finite()) {
            errors.push(format!("run {run}: non-finite log-likelihood"));
            continue;
        }
        if best.as_ref().is_none_or(|(b, _)| ll > *b) {
            best = Some((ll, post));
        }
    }
    let Some((ll, post)) = best else {
        bail!(
            "the Gaussian mixture failed in every run ({}); in many dimensions it is numerically fragile: try pca_dims (e.g. 16-32), a larger gmm.reg_covariance, a larger max_iter, or fewer clusters",
            errors.join("; ")
        );
    };
    info.insert("mean_log_likelihood".into(), ll);
    let labels = post
        .axis_iter(Axis(0))
        .map(|r| Some(r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j).unwrap_or(0)))
        .collect();
    Ok(Raw { labels, n_clusters: k, probs: Some(post.mapv(|v| v as f32)), info })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbscanParams {
    /// Neighbourhood radius in the scaled feature space. Required: there is no scale-free
    /// default (with z-scored 384-dim features, typical distances are around 20-30); the error
    /// for a missing value prints the quantiles of the distances to the min_points-th neighbour.
    pub eps: Option<f64>,
    /// Points within eps (the point itself included) that make a core point.
    pub min_points: usize,
}

impl Default for DbscanParams {
    fn default() -> Self {
        DbscanParams { eps: None, min_points: 5 }
    }
}

/// Quantiles (50, 75, 90, 95 %) of the distance of each row to its m-th nearest other row,
/// over at most 2,000 evenly spaced rows (distances to all rows, computed in blocks).
pub fn knn_distance_quantiles(x: ArrayView2<f32>, m: usize) -> Vec<(f64, f64)> {
    let n = x.nrows();
    let step = n.div_ceil(2000).max(1);
    let queries: Vec<usize> = (0..n).step_by(step).collect();
    let mut kd: Vec<f64> = Vec::with_capacity(queries.len());
    for block in queries.chunks(256) {
        let q = x.select(Axis(0), block);
        let d2 = sq_dists(q.view(), &row_norms(q.view()), x);
        for r in d2.axis_iter(Axis(0)) {
            let mut v: Vec<f32> = r.to_vec();
            v.sort_by(f32::total_cmp);
            // v[0] is the row itself (distance 0).
            kd.push((v[m.min(v.len() - 1)] as f64).sqrt());
        }
    }
    kd.sort_by(f64::total_cmp);
    [0.5, 0.75, 0.9, 0.95].iter().map(|&q| (q, kd[((kd.len() - 1) as f64 * q) as usize])).collect()
}

pub fn run_dbscan(x: ArrayView2<f32>, p: &DbscanParams) -> Result<Raw> {
    if p.min_points < 2 {
        bail!("dbscan.min_points must be at least 2, got {}", p.min_points);
    }
    let Some(eps) = p.eps else {
        let q = knn_distance_quantiles(x, p.min_points - 1);
        let q: Vec<String> = q.iter().map(|(q, v)| format!("{:.0}%: {v:.3}", q * 100.0)).collect();
        bail!(
            "algorithm dbscan needs dbscan.eps (a radius in the scaled feature space). Distances to the {}-th nearest neighbour in this data: {}; a value near the upper quantiles marks the sparsest points as noise",
            p.min_points - 1,
            q.join(", ")
        );
    };
    if eps <= 0.0 {
        bail!("dbscan.eps must be > 0, got {eps}");
    }
    // Linear search: trees do not prune in hundreds of dimensions.
    let labels = Dbscan::params_with(p.min_points, L2Dist, CommonNearestNeighbour::LinearSearch)
        .tolerance(eps as f32)
        .transform(&x.to_owned())
        .context("dbscan")?;
    let n_clusters = labels.iter().flatten().map(|&c| c + 1).max().unwrap_or(0);
    Ok(Raw { labels: labels.to_vec(), n_clusters, probs: None, info: BTreeMap::new() })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HdbscanParams {
    pub min_cluster_size: usize,
    /// Neighbours for the core distance; None = min_cluster_size (the crate's default).
    pub min_samples: Option<usize>,
}

impl Default for HdbscanParams {
    fn default() -> Self {
        HdbscanParams { min_cluster_size: 10, min_samples: None }
    }
}

pub fn run_hdbscan(x: ArrayView2<f32>, p: &HdbscanParams) -> Result<Raw> {
    if p.min_cluster_size < 2 {
        bail!("hdbscan.min_cluster_size must be at least 2, got {}", p.min_cluster_size);
    }
    if p.min_samples == Some(0) {
        bail!("hdbscan.min_samples must be at least 1");
    }
    let data: Vec<Vec<f32>> = x.axis_iter(Axis(0)).map(|r| r.to_vec()).collect();
    let mut hp = hdbscan::HdbscanHyperParams::builder().min_cluster_size(p.min_cluster_size);
    if let Some(m) = p.min_samples {
        hp = hp.min_samples(m);
    }
    let labels = hdbscan::Hdbscan::new(&data, hp.build()).cluster_par().map_err(|e| anyhow::anyhow!("hdbscan: {e}"))?;
    // The crate numbers clusters 0.. and marks noise -1.
    let labels: Vec<Option<usize>> = labels.iter().map(|&l| (l >= 0).then_some(l as usize)).collect();
    let n_clusters = labels.iter().flatten().map(|&c| c + 1).max().unwrap_or(0);
    Ok(Raw { labels, n_clusters, probs: None, info: BTreeMap::new() })
}
