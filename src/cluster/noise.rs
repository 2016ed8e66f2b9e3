//! From what an algorithm found to the expert groups: merge clusters smaller than
//! `min_cluster_size`, apply the noise policy, renumber, and make the probability table.
//!
//! Order of operations (documented in the stage's params):
//! 1. Empty clusters (a k-means/GMM component that won no row) are dropped; their probability
//!    column is removed and the rows renormalised.
//! 2. While some cluster has fewer than `min_cluster_size` rows and more than one cluster is
//!    left, the smallest (lowest id on ties) is merged into the cluster with the nearest
//!    centroid (squared Euclidean distance in the scaled space; centroids are member means and
//!    are updated after each merge). A warning names each merge. Soft memberships of a merged
//!    cluster are added to those of the cluster it joins.
//! 3. Noise (DBSCAN/HDBSCAN only):
//!    - `drop`: cluster -1, is_noise true, all-zero probabilities; in no split.
//!    - `own_expert`: all noise rows form one extra expert (the last id), one-hot probability
//!      on it; member rows have probability 0 for it. When there are fewer noise rows than
//!      `min_cluster_size` the noise expert would itself be merged: its rows are then
//!      assigned as with `nearest` (with a warning). No noise, no extra expert.
//!    - `nearest`: each noise row joins the cluster with the nearest centroid; is_noise stays
//!      true.
//! 4. Clusters are renumbered 0..K-1 in the order of the algorithm's ids (noise expert last).
//!
//! K (the number of experts) = the clusters left after steps 1-3.
//!
//! Probabilities for DBSCAN/HDBSCAN rows (members, and noise under `nearest`) are a softmax of
//! the negative squared distances to the final centroids, scaled by `temperature` times the
//! mean squared distance of member rows to their own centroid (as for k-means). Their argmax
//! can differ from the density label for non-convex clusters; the label is authoritative.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::algorithms::{Raw, softmax_neg};
use super::kmeans::{row_norms, sq_dists};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NoisePolicy {
    #[default]
    Drop,
    OwnExpert,
    Nearest,
}

impl NoisePolicy {
    pub fn name(&self) -> &'static str {
        match self {
            NoisePolicy::Drop => "drop",
            NoisePolicy::OwnExpert => "own_expert",
            NoisePolicy::Nearest => "nearest",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Merge {
    /// The algorithm's id of the merged cluster.
    pub cluster: usize,
    pub size: usize,
    /// The algorithm's id of the cluster it joined.
    pub into: usize,
}

/// The expert groups.
#[derive(Debug, Clone)]
pub struct Groups {
    /// 0..k per row; -1 for dropped noise.
    pub cluster: Vec<i32>,
    pub is_noise: Vec<bool>,
    pub k: usize,
    /// [rows, k]
    pub probs: Array2<f32>,
    pub merges: Vec<Merge>,
    pub dropped_empty: Vec<usize>,
    /// Whether the last expert holds the noise (own_expert).
    pub noise_expert: bool,
    /// For each final id, the algorithm ids it is made of.
    pub members: Vec<Vec<usize>>,
    pub warnings: Vec<String>,
}

fn centroid(x: ArrayView2<f32>, rows: &[usize]) -> Vec<f64> {
    let mut c = vec![0f64; x.ncols()];
    for &i in rows {
        for (a, &v) in c.iter_mut().zip(x.row(i)) {
            *a += v as f64;
        }
    }
    let n = rows.len().max(1) as f64;
    c.iter_mut().for_each(|v| *v /= n);
    c
}

fn sq(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

/// Turn an algorithm's result into expert groups (see the module docs).
pub fn finalize(
    x: ArrayView2<f32>,
    raw: &Raw,
    policy: NoisePolicy,
    min_cluster_size: usize,
    temperature: f64,
) -> Result<Groups> {
    let n = x.nrows();
    let mut warnings = Vec::new();
    let mut warn = |s: String| {
        eprintln!("warning: {s}");
        warnings.push(s);
    };
    // rows of each alive algorithm cluster; index = algorithm id
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); raw.n_clusters];
    for (i, l) in raw.labels.iter().enumerate() {
        if let Some(c) = l {
            rows[*c].push(i);
        }
    }
    let mut alive: Vec<bool> = rows.iter().map(|r| !r.is_empty()).collect();
    let dropped_empty: Vec<usize> = (0..raw.n_clusters).filter(|&c| !alive[c]).collect();
    for &c in &dropped_empty {
        warn(format!("cluster {c} is empty (no row is closest to it): dropped"));
    }
    if !alive.iter().any(|&a| a) {
        bail!(
            "the clustering found no cluster: all {n} rows are noise; loosen the algorithm's parameters (e.g. a larger dbscan.eps or a smaller hdbscan.min_cluster_size)"
        );
    }
    // Soft memberships follow merges: column of the merged cluster added to its target.
    let mut soft = raw.probs.clone();
    let mut members: Vec<Vec<usize>> = (0..raw.n_clusters).map(|c| vec![c]).collect();
    let mut cents: Vec<Vec<f64>> = rows.iter().map(|r| centroid(x, r)).collect();
    let mut merges = Vec::new();
    loop {
        let live: Vec<usize> = (0..raw.n_clusters).filter(|&c| alive[c]).collect();
        if live.len() < 2 {
            break;
        }
        let Some(&small) =
            live.iter().filter(|&&c| rows[c].len() < min_cluster_size).min_by_key(|&&c| (rows[c].len(), c))
        else {
            break;
        };
        let into = *live
            .iter()
            .filter(|&&c| c != small)
            .min_by(|&&a, &&b| sq(&cents[small], &cents[a]).total_cmp(&sq(&cents[small], &cents[b])).then(a.cmp(&b)))
            .expect("two clusters are alive");
        warn(format!(
            "cluster {small} has {} rows, fewer than min_cluster_size {min_cluster_size}: merged into cluster {into} (nearest centroid)",
            rows[small].len()
        ));
        merges.push(Merge { cluster: small, size: rows[small].len(), into });
        let moved = std::mem::take(&mut rows[small]);
        rows[into].extend(moved);
        rows[into].sort_unstable();
        cents[into] = centroid(x, &rows[into]);
        let m = std::mem::take(&mut members[small]);
        members[into].extend(m);
        alive[small] = false;
        if let Some(p) = soft.as_mut() {
            let col = p.column(small).to_owned();
            let mut target = p.column_mut(into);
            target += &col;
        }
    }
    let live: Vec<usize> = (0..raw.n_clusters).filter(|&c| alive[c]).collect();
    let index_of: BTreeMap<usize, usize> = live.iter().enumerate().map(|(new, &old)| (old, new)).collect();
    let mut cluster = vec![-1i32; n];
    for &c in &live {
        for &i in &rows[c] {
            cluster[i] = index_of[&c] as i32;
        }
    }
    let is_noise: Vec<bool> = raw.labels.iter().map(|l| l.is_none()).collect();
    let noise_rows: Vec<usize> = (0..n).filter(|&i| is_noise[i]).collect();

    // Final centroids [live, dim] for the nearest assignment and derived memberships.
    let dim = x.ncols();
    let cmat = Array2::from_shape_fn((live.len(), dim), |(j, d)| cents[live[j]][d] as f32);
    let norms = row_norms(x);
    let d2 = sq_dists(x, &norms, cmat.view());

    let mut noise_expert = false;
    let mut policy_used = policy;
    if !noise_rows.is_empty() && policy == NoisePolicy::OwnExpert && noise_rows.len() < min_cluster_size.max(1) {
        warn(format!(
            "the {} noise rows are fewer than min_cluster_size {min_cluster_size}: instead of their own expert they join the nearest cluster",
            noise_rows.len()
        ));
        policy_used = NoisePolicy::Nearest;
    }
    let nearest = |i: usize| -> usize {
        d2.row(i).iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1).then(a.0.cmp(&b.0))).map(|(j, _)| j).unwrap_or(0)
    };
    if !noise_rows.is_empty() {
        match policy_used {
            NoisePolicy::Drop => {}
            NoisePolicy::Nearest => {
                for &i in &noise_rows {
                    cluster[i] = nearest(i) as i32;
                }
            }
            NoisePolicy::OwnExpert => {
                noise_expert = true;
                for &i in &noise_rows {
                    cluster[i] = live.len() as i32;
                }
            }
        }
    }
    let k = live.len() + noise_expert as usize;

    let mut probs = Array2::<f32>::zeros((n, k));
    match soft {
        Some(p) => {
            // k-means / GMM: merged model memberships, empty columns removed, renormalised.
            for i in 0..n {
                let row: Vec<f32> = live.iter().map(|&c| p[[i, c]]).collect();
                let z: f32 = row.iter().sum();
                for (j, v) in row.into_iter().enumerate() {
                    probs[[i, j]] = if z > 0.0 { v / z } else { 0.0 };
                }
            }
        }
        None => {
            let member_d: Vec<f64> =
                (0..n).filter(|&i| !is_noise[i]).map(|i| d2[[i, cluster[i] as usize]] as f64).collect();
            let s2 = member_d.iter().sum::<f64>() / member_d.len().max(1) as f64;
            let soft = softmax_neg(&d2, temperature * s2);
            for i in 0..n {
                if is_noise[i] && policy_used != NoisePolicy::Nearest {
                    continue;
                }
                for j in 0..live.len() {
                    probs[[i, j]] = soft[[i, j]];
                }
            }
        }
    }
    if noise_expert {
        for &i in &noise_rows {
            probs.row_mut(i).fill(0.0);
            probs[[i, k - 1]] = 1.0;
        }
    }
    if policy_used == NoisePolicy::Drop {
        for &i in &noise_rows {
            probs.row_mut(i).fill(0.0);
        }
    }
    debug_assert!(probs.axis_iter(Axis(0)).all(|r| r.iter().all(|v| v.is_finite())));
    let mut member_list: Vec<Vec<usize>> = live.iter().map(|&c| members[c].clone()).collect();
    if noise_expert {
        member_list.push(Vec::new());
    }
    Ok(Groups { cluster, is_noise, k, probs, merges, dropped_empty, noise_expert, members: member_list, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// 1-D: cluster 0 around 0 (5 rows), cluster 1 around 10 (5 rows), cluster 2 = two rows
    /// at 4, noise at -20 and 30.
    fn raw() -> (Array2<f32>, Raw) {
        let v = [0.0, 0.1, -0.1, 0.2, -0.2, 10.0, 10.1, 9.9, 10.2, 9.8, 4.0, 4.1, -20.0, 30.0];
        let x = Array2::from_shape_vec((v.len(), 1), v.to_vec()).unwrap();
        let mut labels: Vec<Option<usize>> = vec![Some(0); 5];
        labels.extend([Some(1); 5]);
        labels.extend([Some(2); 2]);
        labels.extend([None, None]);
        (x, Raw { labels, n_clusters: 3, probs: None, info: BTreeMap::new() })
    }

    #[test]
    fn tiny_cluster_is_merged_into_the_nearest_and_named() {
        let (x, r) = raw();
        let g = finalize(x.view(), &r, NoisePolicy::Drop, 3, 1.0).unwrap();
        assert_eq!(g.k, 2);
        assert_eq!(g.merges, vec![Merge { cluster: 2, size: 2, into: 0 }]);
        assert!(g.warnings.iter().any(|w| w.contains("cluster 2 has 2 rows") && w.contains("into cluster 0")));
        assert_eq!(&g.cluster[10..12], &[0, 0]);
        assert_eq!(&g.cluster[12..], &[-1, -1]);
        assert_eq!(g.members, vec![vec![0, 2], vec![1]]);
        // Below the threshold nothing merges.
        let g = finalize(x.view(), &r, NoisePolicy::Drop, 2, 1.0).unwrap();
        assert_eq!(g.k, 3);
        assert!(g.merges.is_empty());
    }

    #[test]
    fn noise_policies_give_the_documented_number_of_experts() {
        let (x, r) = raw();
        // drop: K = clusters; noise rows -1, zero probabilities.
        let g = finalize(x.view(), &r, NoisePolicy::Drop, 2, 1.0).unwrap();
        assert_eq!(g.k, 3);
        assert_eq!(&g.cluster[12..], &[-1, -1]);
        assert!(g.probs.row(12).iter().all(|&v| v == 0.0));
        assert_eq!(&g.is_noise[12..], &[true, true]);
        // own_expert: K = clusters + 1, noise in the last expert with a one-hot row.
        let g = finalize(x.view(), &r, NoisePolicy::OwnExpert, 2, 1.0).unwrap();
        assert_eq!(g.k, 4);
        assert!(g.noise_expert);
        assert_eq!(&g.cluster[12..], &[3, 3]);
        assert_eq!(g.probs.row(13).to_vec(), vec![0.0, 0.0, 0.0, 1.0]);
        assert_eq!(g.probs[[0, 3]], 0.0);
        // nearest: K = clusters; -20 joins cluster 0 (centroid 0), 30 joins cluster 1 (10).
        let g = finalize(x.view(), &r, NoisePolicy::Nearest, 2, 1.0).unwrap();
        assert_eq!(g.k, 3);
        assert_eq!(&g.cluster[12..], &[0, 1]);
        assert_eq!(&g.is_noise[12..], &[true, true]);
        // own_expert with too few noise rows falls back to nearest, with a warning.
        let g = finalize(x.view(), &r, NoisePolicy::OwnExpert, 3, 1.0).unwrap();
        assert_eq!(g.k, 2);
        assert!(!g.noise_expert);
        assert!(g.warnings.iter().any(|w| w.contains("noise rows are fewer")));
        // Every assigned row's probabilities sum to 1 and peak at its cluster here.
        for i in 0..12 {
            let row = g.probs.row(i);
            assert!((row.sum() - 1.0).abs() < 1e-5);
            let arg = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            assert_eq!(arg as i32, g.cluster[i]);
        }
    }

    #[test]
    fn soft_memberships_follow_merges_and_empty_clusters_go() {
        let x = array![[0.0f32], [0.1], [5.0], [5.1], [5.2]];
        let probs = array![
            [0.7f32, 0.1, 0.2, 0.0],
            [0.6, 0.2, 0.2, 0.0],
            [0.1, 0.8, 0.1, 0.0],
            [0.1, 0.7, 0.2, 0.0],
            [0.2, 0.3, 0.5, 0.0]
        ];
        // Cluster 2 (row 4 only) is merged into 1 (centroid 5.05); cluster 3 is empty.
        let r = Raw {
            labels: vec![Some(0), Some(0), Some(1), Some(1), Some(2)],
            n_clusters: 4,
            probs: Some(probs),
            info: BTreeMap::new(),
        };
        let g = finalize(x.view(), &r, NoisePolicy::Drop, 2, 1.0).unwrap();
        assert_eq!(g.k, 2);
        assert_eq!(g.dropped_empty, vec![3]);
        assert_eq!(g.cluster, vec![0, 0, 1, 1, 1]);
        let want = [[0.7, 0.3], [0.6, 0.4], [0.1, 0.9], [0.1, 0.9], [0.2, 0.8]];
        for (i, w) in want.iter().enumerate() {
            assert!((g.probs[[i, 0]] - w[0]).abs() < 1e-6 && (g.probs[[i, 1]] - w[1]).abs() < 1e-6, "{:?}", g.probs);
        }
    }
}
