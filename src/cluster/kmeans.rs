//! Lloyd's k-means with the distance step as a matrix product, the way scikit-learn computes it:
//! ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, one GEMM per block of rows, blocks in parallel,
//! and the centroid sums accumulated in the same pass while the block is in cache.
//!
//! linfa-clustering's KMeans computes every distance with a scalar loop and runs the
//! "m_k-means" update (the old centroid counts as one more point); on 100,000 x 384 it was
//! several times slower than scikit-learn (see benches/kmeans.rs). This one follows
//! scikit-learn's `lloyd` algorithm: greedy k-means++ seeding with 2 + ln(k) local trials,
//! convergence when the labels stop changing or the squared centroid shift falls below
//! `tolerance` times the mean per-dimension variance, and empty clusters re-seeded with the
//! points farthest from their centroids.
//!
//! Results do not depend on the number of threads: blocks have a fixed size and their partial
//! sums are added in block order.

use ndarray::{Array2, ArrayView2, Axis, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

const BLOCK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KMeansConfig {
    pub k: usize,
    pub n_runs: usize,
    pub max_iter: usize,
    /// Relative to the mean per-dimension variance of the data (scikit-learn's `tol`).
    pub tolerance: f64,
    pub seed: u64,
}

#[derive(Debug, Clone)]
pub struct KMeansFit {
    /// [k, dim]
    pub centroids: Array2<f32>,
    pub labels: Vec<usize>,
    /// Mean squared distance of the rows to their centroid (linfa's convention; scikit-learn's
    /// `inertia_` is this times the number of rows).
    pub inertia: f64,
    /// Iterations of the best run.
    pub iterations: usize,
    /// Iterations of all runs.
    pub total_iterations: usize,
}

/// x_block [m, d] . c^T -> [m, k]. The `gemm` crate (burn's CPU matmul, with its runtime
/// AVX2/AVX-512 dispatch) was about 1.5x faster than ndarray's matrixmultiply on these skinny
/// products; views that are not row-major contiguous fall back to ndarray.
fn dots(xb: ArrayView2<f32>, c: ArrayView2<f32>) -> Array2<f32> {
    let (m, d) = xb.dim();
    let k = c.nrows();
    let (Some(xs), Some(cs)) = (xb.as_slice(), c.as_slice()) else {
        return xb.dot(&c.t());
    };
    let mut out = Array2::<f32>::zeros((m, k));
    if m == 0 || k == 0 || d == 0 {
        return out;
    }
    let dst = out.as_slice_mut().expect("fresh array is contiguous");
    // SAFETY: all three buffers are contiguous row-major with the dimensions and strides
    // given (dst [m, k], lhs [m, d], rhs = c^T [d, k] read through c [k, d]), and dst does
    // not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            k,
            d,
            dst.as_mut_ptr(),
            1,
            k as isize,
            false,
            xs.as_ptr(),
            1,
            d as isize,
            cs.as_ptr(),
            d as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    out
}

/// Squared row norms.
pub fn row_norms(x: ArrayView2<f32>) -> Vec<f32> {
    x.axis_iter(Axis(0)).into_par_iter().map(|r| r.dot(&r)).collect()
}

/// Squared Euclidean distances [rows, centres] (clamped at 0 against rounding).
pub fn sq_dists(x: ArrayView2<f32>, x_norms: &[f32], c: ArrayView2<f32>) -> Array2<f32> {
    let c_norms = row_norms(c);
    let c = c.as_standard_layout();
    let n = x.nrows();
    let blocks: Vec<Array2<f32>> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let r = b * BLOCK..((b + 1) * BLOCK).min(n);
            let mut d = dots(x.slice(s![r.clone(), ..]), c.view());
            for (i, mut row) in d.axis_iter_mut(Axis(0)).enumerate() {
                let xn = x_norms[r.start + i];
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (xn - 2.0 * *v + c_norms[j]).max(0.0);
                }
            }
            d
        })
        .collect();
    let views: Vec<_> = blocks.iter().map(|b| b.view()).collect();
    if views.is_empty() {
        return Array2::zeros((0, c.nrows()));
    }
    ndarray::concatenate(Axis(0), &views).expect("blocks share their width")
}

/// One pass: assign every row to its nearest centroid and accumulate the new sums.
struct Pass {
    labels: Vec<usize>,
    min_d: Vec<f32>,
    sums: Array2<f64>,
    counts: Vec<usize>,
}

fn assign(x: ArrayView2<f32>, x_norms: &[f32], centroids: ArrayView2<f32>) -> Pass {
    let (n, d) = x.dim();
    let k = centroids.nrows();
    let c_norms = row_norms(centroids);
    let centroids = centroids.as_standard_layout();
    let parts: Vec<(Vec<usize>, Vec<f32>, Array2<f64>, Vec<usize>)> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let r = b * BLOCK..((b + 1) * BLOCK).min(n);
            let xb = x.slice(s![r.clone(), ..]);
            let dots = dots(xb, centroids.view());
            let mut labels = Vec::with_capacity(r.len());
            let mut min_d = Vec::with_capacity(r.len());
            let mut sums = Array2::<f64>::zeros((k, d));
            let mut counts = vec![0usize; k];
            for (i, row) in dots.axis_iter(Axis(0)).enumerate() {
                let xn = x_norms[r.start + i];
                let (mut best, mut best_d) = (0, f32::INFINITY);
                for (j, &dot) in row.iter().enumerate() {
                    let dist = xn - 2.0 * dot + c_norms[j];
                    if dist < best_d {
                        best = j;
                        best_d = dist;
                    }
                }
                labels.push(best);
                min_d.push(best_d.max(0.0));
                counts[best] += 1;
                // Slices, not ndarray iterators, so that the loop vectorises.
                let acc = &mut sums.as_slice_mut().expect("fresh array is contiguous")[best * d..(best + 1) * d];
                match xb.row(i).as_slice() {
                    Some(row) => acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64),
                    None => acc.iter_mut().zip(xb.row(i)).for_each(|(a, &v)| *a += v as f64),
                }
            }
            (labels, min_d, sums, counts)
        })
        .collect();
    let mut pass = Pass {
        labels: Vec::with_capacity(n),
        min_d: Vec::with_capacity(n),
        sums: Array2::zeros((k, d)),
        counts: vec![0; k],
    };
    for (l, m, s, c) in parts {
        pass.labels.extend(l);
        pass.min_d.extend(m);
        pass.sums += &s;
        for (a, b) in pass.counts.iter_mut().zip(c) {
            *a += b;
        }
    }
    pass
}

/// Greedy k-means++ (Arthur & Vassilvitskii 2007; scikit-learn's `_kmeans_plusplus`): each new
/// centre is the best of 2 + ln(k) candidates drawn with probability proportional to the
/// squared distance to the nearest chosen centre.
pub fn kmeans_plusplus(x: ArrayView2<f32>, x_norms: &[f32], k: usize, rng: &mut impl Rng) -> Array2<f32> {
    let (n, d) = x.dim();
    let trials = 2 + (k as f64).ln() as usize;
    let mut centres = Array2::<f32>::zeros((k, d));
    let first = rng.random_range(0..n);
    centres.row_mut(0).assign(&x.row(first));
    let mut closest: Vec<f32> = sq_dists(x, x_norms, centres.slice(s![0..1, ..])).column(0).to_vec();
    for c in 1..k {
        let total: f64 = closest.iter().map(|&v| v as f64).sum();
        let candidates: Vec<usize> = (0..trials)
            .map(|_| {
                if total <= 0.0 {
                    return rng.random_range(0..n);
                }
                let target = rng.random::<f64>() * total;
                let mut acc = 0.0;
                for (i, &v) in closest.iter().enumerate() {
                    acc += v as f64;
                    if acc > target {
                        return i;
                    }
                }
                n - 1
            })
            .collect();
        let cand = x.select(Axis(0), &candidates);
        let dist = sq_dists(x, x_norms, cand.view());
        // The candidate that most reduces the potential (sum of closest squared distances).
        let (best, best_closest) = (0..candidates.len())
            .map(|t| {
                let new: Vec<f32> = closest.iter().zip(dist.column(t)).map(|(&a, &b)| a.min(b)).collect();
                let pot: f64 = new.iter().map(|&v| v as f64).sum();
                (t, new, pot)
            })
            .min_by(|a, b| a.2.total_cmp(&b.2))
            .map(|(t, new, _)| (t, new))
            .expect("at least one trial");
        centres.row_mut(c).assign(&x.row(candidates[best]));
        closest = best_closest;
    }
    centres
}

fn mean_variance(x: ArrayView2<f32>) -> f64 {
    let n = x.nrows().max(1) as f64;
    let d = x.ncols().max(1) as f64;
    let mut total = 0.0;
    for col in x.axis_iter(Axis(1)) {
        let m = col.iter().map(|&v| v as f64).sum::<f64>() / n;
        total += col.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n;
    }
    total / d
}

fn one_run(x: ArrayView2<f32>, x_norms: &[f32], cfg: &KMeansConfig, tol: f64, rng: &mut ChaCha8Rng) -> KMeansFit {
    let mut centroids = kmeans_plusplus(x, x_norms, cfg.k, rng);
    let mut labels: Vec<usize> = Vec::new();
    let mut iterations = 0;
    for it in 0..cfg.max_iter.max(1) {
        iterations = it + 1;
        let pass = assign(x, x_norms, centroids.view());
        let mut new = Array2::<f32>::zeros(centroids.dim());
        for j in 0..cfg.k {
            if pass.counts[j] > 0 {
                let c = pass.counts[j] as f64;
                new.row_mut(j).assign(&pass.sums.row(j).mapv(|v| (v / c) as f32));
            }
        }
        // Empty clusters take the points farthest from their centroids (as scikit-learn does).
        let empty: Vec<usize> = (0..cfg.k).filter(|&j| pass.counts[j] == 0).collect();
        if !empty.is_empty() {
            let mut order: Vec<usize> = (0..x.nrows()).collect();
            order.sort_by(|&a, &b| pass.min_d[b].total_cmp(&pass.min_d[a]).then(a.cmp(&b)));
            for (j, &i) in empty.iter().zip(&order) {
                new.row_mut(*j).assign(&x.row(i));
            }
        }
        let shift: f64 = (&new - &centroids).iter().map(|&v| (v as f64).powi(2)).sum();
        centroids = new;
        let strict = pass.labels == labels;
        labels = pass.labels;
        if strict || shift <= tol {
            break;
        }
    }
    // Final assignment so that the labels belong to the returned centroids.
    let pass = assign(x, x_norms, centroids.view());
    let inertia = pass.min_d.iter().map(|&v| v as f64).sum::<f64>() / x.nrows().max(1) as f64;
    KMeansFit { centroids, labels: pass.labels, inertia, iterations, total_iterations: iterations }
}

/// Best of `n_runs` seeded runs (lowest inertia).
pub fn fit(x: ArrayView2<f32>, cfg: &KMeansConfig) -> KMeansFit {
    assert!(cfg.k >= 1 && cfg.k <= x.nrows(), "k = {} for {} rows", cfg.k, x.nrows());
    let x_norms = row_norms(x);
    let tol = cfg.tolerance * mean_variance(x);
    let mut best: Option<KMeansFit> = None;
    let mut total = 0;
    for run in 0..cfg.n_runs.max(1) {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(run as u64);
        let f = one_run(x, &x_norms, cfg, tol, &mut rng);
        total += f.iterations;
        if best.as_ref().is_none_or(|b| f.inertia < b.inertia) {
            best = Some(f);
        }
    }
    let mut best = best.expect("at least one run");
    best.total_iterations = total;
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn distances_by_hand() {
        let x = array![[0.0f32, 0.0], [3.0, 4.0]];
        let c = array![[0.0f32, 0.0], [1.0, 1.0]];
        let d = sq_dists(x.view(), &row_norms(x.view()), c.view());
        assert_eq!(d, array![[0.0f32, 2.0], [25.0, 13.0]]);
    }

    #[test]
    fn converges_to_the_two_means_and_is_deterministic() {
        // Two groups on a line; the optimum puts the centroids at their means.
        let x = array![[0.0f32], [1.0], [2.0], [10.0], [11.0], [12.0]];
        let cfg = KMeansConfig { k: 2, n_runs: 3, max_iter: 100, tolerance: 1e-4, seed: 7 };
        let f = fit(x.view(), &cfg);
        let mut c: Vec<f32> = f.centroids.column(0).to_vec();
        c.sort_by(f32::total_cmp);
        assert_eq!(c, vec![1.0, 11.0]);
        assert!((f.inertia - 4.0 / 6.0).abs() < 1e-9, "{}", f.inertia);
        assert_eq!(f.labels[0], f.labels[2]);
        assert_ne!(f.labels[0], f.labels[3]);
        let g = fit(x.view(), &cfg);
        assert_eq!(f.labels, g.labels);
        assert_eq!(f.centroids, g.centroids);
    }
}
