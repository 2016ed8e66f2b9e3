//! Clustering quality: normalised mutual information and adjusted Rand index against a label
//! column, and the silhouette coefficient. Definitions as in scikit-learn
//! (`normalized_mutual_info_score` with the arithmetic mean, `adjusted_rand_score`,
//! `silhouette_score` with Euclidean distances).

use std::collections::HashMap;
use std::hash::Hash;

use ndarray::{ArrayView2, Axis};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

use super::kmeans::{row_norms, sq_dists};

/// Dense ids 0.. for arbitrary labels, in order of first appearance.
fn dense<T: Hash + Eq + Clone>(v: &[T]) -> (Vec<usize>, usize) {
    let mut map = HashMap::new();
    let ids = v
        .iter()
        .map(|x| {
            let next = map.len();
            *map.entry(x.clone()).or_insert(next)
        })
        .collect();
    (ids, map.len())
}

struct Contingency {
    n: f64,
    cells: HashMap<(usize, usize), f64>,
    a: Vec<f64>,
    b: Vec<f64>,
}

fn contingency<A: Hash + Eq + Clone, B: Hash + Eq + Clone>(a: &[A], b: &[B]) -> Contingency {
    assert_eq!(a.len(), b.len(), "label vectors differ in length");
    let (a, na) = dense(a);
    let (b, nb) = dense(b);
    let mut cells = HashMap::new();
    let mut ca = vec![0.0; na];
    let mut cb = vec![0.0; nb];
    for (&i, &j) in a.iter().zip(&b) {
        *cells.entry((i, j)).or_insert(0.0) += 1.0;
        ca[i] += 1.0;
        cb[j] += 1.0;
    }
    Contingency { n: a.len() as f64, cells, a: ca, b: cb }
}

fn entropy(counts: &[f64], n: f64) -> f64 {
    counts.iter().filter(|&&c| c > 0.0).map(|&c| -(c / n) * (c / n).ln()).sum()
}

/// NMI with the arithmetic mean of the two entropies. Two single-cluster labelings score 1.
pub fn nmi<A: Hash + Eq + Clone, B: Hash + Eq + Clone>(a: &[A], b: &[B]) -> f64 {
    let c = contingency(a, b);
    if c.n == 0.0 || (c.a.len() <= 1 && c.b.len() <= 1) {
        return 1.0;
    }
    let mi: f64 = c.cells.iter().map(|(&(i, j), &nij)| (nij / c.n) * ((c.n * nij) / (c.a[i] * c.b[j])).ln()).sum();
    let denom = 0.5 * (entropy(&c.a, c.n) + entropy(&c.b, c.n));
    if denom <= 0.0 { 0.0 } else { (mi / denom).clamp(0.0, 1.0) }
}

fn comb2(x: f64) -> f64 {
    x * (x - 1.0) / 2.0
}

/// Adjusted Rand index (Hubert & Arabie 1985).
pub fn ari<A: Hash + Eq + Clone, B: Hash + Eq + Clone>(a: &[A], b: &[B]) -> f64 {
    let c = contingency(a, b);
    let index: f64 = c.cells.values().map(|&v| comb2(v)).sum();
    let sa: f64 = c.a.iter().map(|&v| comb2(v)).sum();
    let sb: f64 = c.b.iter().map(|&v| comb2(v)).sum();
    let total = comb2(c.n);
    if total == 0.0 {
        return 1.0;
    }
    let expected = sa * sb / total;
    let max = 0.5 * (sa + sb);
    if max == expected {
        // Both labelings put everything in one cluster, or each row in its own.
        return 1.0;
    }
    (index - expected) / (max - expected)
}

/// Mean silhouette over a seeded sample of at most `sample_size` rows (distances within the
/// sample, as scikit-learn's `sample_size`). Rows with a negative label are ignored. None when
/// fewer than 2 or more than n-1 clusters remain. A row alone in its cluster scores 0.
pub fn silhouette(x: ArrayView2<f32>, labels: &[i32], sample_size: usize, seed: u64) -> Option<f64> {
    let valid: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] >= 0).collect();
    let rows: Vec<usize> = if valid.len() > sample_size {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut s: Vec<usize> = sample(&mut rng, valid.len(), sample_size).into_iter().map(|i| valid[i]).collect();
        s.sort_unstable();
        s
    } else {
        valid
    };
    let m = rows.len();
    let (lab, nl) = dense(&rows.iter().map(|&i| labels[i]).collect::<Vec<_>>());
    if nl < 2 || nl >= m {
        return None;
    }
    let xs = x.select(Axis(0), &rows);
    let d = sq_dists(xs.view(), &row_norms(xs.view()), xs.view()).mapv(f32::sqrt);
    let mut size = vec![0usize; nl];
    for &l in &lab {
        size[l] += 1;
    }
    let mut total = 0.0;
    for i in 0..m {
        if size[lab[i]] == 1 {
            continue;
        }
        let mut sums = vec![0f64; nl];
        for j in 0..m {
            if i != j {
                sums[lab[j]] += d[[i, j]] as f64;
            }
        }
        let a = sums[lab[i]] / (size[lab[i]] - 1) as f64;
        let b = (0..nl).filter(|&c| c != lab[i]).map(|c| sums[c] / size[c] as f64).fold(f64::INFINITY, f64::min);
        let s = if a.max(b) > 0.0 { (b - a) / a.max(b) } else { 0.0 };
        total += s;
    }
    Some(total / m as f64)
}

/// Rows with a label >= 0, their dense labels, the cluster sizes and centroids; None with
/// fewer than 2 clusters or one cluster per row.
#[allow(clippy::type_complexity)]
fn clusters_of(x: ArrayView2<f32>, labels: &[i32]) -> Option<(Vec<usize>, Vec<usize>, Vec<usize>, Vec<Vec<f64>>)> {
    let rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] >= 0).collect();
    let (lab, k) = dense(&rows.iter().map(|&i| labels[i]).collect::<Vec<_>>());
    if k < 2 || k >= rows.len() {
        return None;
    }
    let mut c = vec![vec![0f64; x.ncols()]; k];
    let mut size = vec![0usize; k];
    for (&r, &l) in rows.iter().zip(&lab) {
        size[l] += 1;
        for (a, &v) in c[l].iter_mut().zip(x.row(r)) {
            *a += v as f64;
        }
    }
    for (ci, &n) in c.iter_mut().zip(&size) {
        ci.iter_mut().for_each(|a| *a /= n as f64);
    }
    Some((rows, lab, size, c))
}

fn dist2(a: impl IntoIterator<Item = f64>, b: &[f64]) -> f64 {
    a.into_iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Calinski-Harabasz index (scikit-learn's `calinski_harabasz_score`): between-cluster over
/// within-cluster dispersion, times (n - k) / (k - 1). Larger is better.
pub fn calinski_harabasz(x: ArrayView2<f32>, labels: &[i32]) -> Option<f64> {
    let (rows, lab, size, c) = clusters_of(x, labels)?;
    let (n, k) = (rows.len(), c.len());
    let mut mean = vec![0f64; x.ncols()];
    for &r in &rows {
        for (a, &v) in mean.iter_mut().zip(x.row(r)) {
            *a += v as f64 / n as f64;
        }
    }
    let within: f64 = rows.iter().zip(&lab).map(|(&r, &l)| dist2(x.row(r).iter().map(|&v| v as f64), &c[l])).sum();
    let between: f64 = c.iter().zip(&size).map(|(ci, &m)| m as f64 * dist2(ci.iter().copied(), &mean)).sum();
    if within == 0.0 {
        return Some(1.0);
    }
    Some(between * (n - k) as f64 / (within * (k - 1) as f64))
}

/// Davies-Bouldin index (scikit-learn's `davies_bouldin_score`): the mean over clusters of the
/// worst (s_i + s_j) / d(c_i, c_j), s = mean distance to the centroid. Smaller is better.
pub fn davies_bouldin(x: ArrayView2<f32>, labels: &[i32]) -> Option<f64> {
    let (rows, lab, size, c) = clusters_of(x, labels)?;
    let k = c.len();
    let mut s = vec![0f64; k];
    for (&r, &l) in rows.iter().zip(&lab) {
        s[l] += dist2(x.row(r).iter().map(|&v| v as f64), &c[l]).sqrt() / size[l] as f64;
    }
    let mut total = 0.0;
    for i in 0..k {
        let worst = (0..k)
            .filter(|&j| j != i)
            .map(|j| {
                let d = dist2(c[i].iter().copied(), &c[j]).sqrt();
                if d > 0.0 { (s[i] + s[j]) / d } else { f64::INFINITY }
            })
            .fold(0.0, f64::max);
        total += worst;
    }
    Some(total / k as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }

    #[test]
    fn nmi_by_hand() {
        // a = [0,0,1,1], b = [0,0,0,1]: MI = .5 ln(4/3) + .25 ln(2/3) + .25 ln 2,
        // H(a) = ln 2, H(b) = -(.75 ln .75 + .25 ln .25).
        let mi = 0.5 * (4.0f64 / 3.0).ln() + 0.25 * (2.0f64 / 3.0).ln() + 0.25 * 2f64.ln();
        let hb = -(0.75 * 0.75f64.ln() + 0.25 * 0.25f64.ln());
        close(nmi(&[0, 0, 1, 1], &[0, 0, 0, 1]), mi / (0.5 * (2f64.ln() + hb)));
        close(nmi(&[0, 0, 1, 1], &[0, 0, 0, 1]), 0.343711);
        // Renaming labels changes nothing; identical partitions score 1; independent ones 0.
        close(nmi(&["x", "x", "y", "y"], &[5, 5, 3, 3]), 1.0);
        close(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]), 0.0);
        close(nmi(&[1, 1, 1], &[2, 2, 2]), 1.0);
    }

    #[test]
    fn ari_by_hand() {
        // scikit-learn's documented example: adjusted_rand_score([0,0,1,1], [0,0,1,2]) = 0.57.
        // sum C(nij,2) = 1, sum C(a,2) = 2, sum C(b,2) = 1, C(4,2) = 6:
        // (1 - 2/6) / (1.5 - 2/6) = 4/7.
        close(ari(&[0, 0, 1, 1], &[0, 0, 1, 2]), 4.0 / 7.0);
        // [0,0,0,1,1,1] vs [0,0,1,1,2,2]: (2 - 1.2) / (4.5 - 1.2).
        close(ari(&[0, 0, 0, 1, 1, 1], &[0, 0, 1, 1, 2, 2]), 0.8 / 3.3);
        close(ari(&[0, 0, 1, 1], &[0, 0, 0, 1]), 0.0);
        close(ari(&["a", "a", "b"], &[7, 7, 1]), 1.0);
    }

    #[test]
    fn calinski_harabasz_and_davies_bouldin_by_hand() {
        // Centroids 0.5 and 4.5, mean 2.5: W = 4 x 0.25 = 1, B = 2 x 4 + 2 x 4 = 16,
        // CH = 16 / 1 x (4 - 2) / (2 - 1) = 32. s = 0.5 each, d = 4: DB = 1 / 4.
        let x = array![[0.0f32], [1.0], [4.0], [5.0]];
        close(calinski_harabasz(x.view(), &[0, 0, 1, 1]).unwrap(), 32.0);
        close(davies_bouldin(x.view(), &[0, 0, 1, 1]).unwrap(), 0.25);
        // A noise row (-1) is left out; one cluster has no score.
        let x2 = array![[0.0f32], [1.0], [4.0], [5.0], [100.0]];
        close(calinski_harabasz(x2.view(), &[0, 0, 1, 1, -1]).unwrap(), 32.0);
        assert!(davies_bouldin(x.view(), &[0, 0, 0, 0]).is_none());
        // Three clusters in 2-D: centroids (0, 0.5), (4, 0.5), (0, 10.5), s = 0.5 each;
        // DB = mean of max((1) / d): d01 = 4, d02 = 10, d12 = sqrt(116).
        let x3 = array![[0.0f32, 0.0], [0.0, 1.0], [4.0, 0.0], [4.0, 1.0], [0.0, 10.0], [0.0, 11.0]];
        let want = (1.0 / 4.0 + 1.0 / 4.0 + 1.0 / 10.0) / 3.0;
        close(davies_bouldin(x3.view(), &[0, 0, 1, 1, 2, 2]).unwrap(), want);
    }

    #[test]
    fn silhouette_by_hand() {
        // A = {0, 1}, B = {4, 6}: s = (5-1)/5, (4-1)/4, (3.5-2)/3.5, (5.5-2)/5.5.
        let x = array![[0.0f32], [1.0], [4.0], [6.0]];
        let want = (0.8 + 0.75 + 1.5 / 3.5 + 3.5 / 5.5) / 4.0;
        close(silhouette(x.view(), &[0, 0, 1, 1], 100, 0).unwrap(), want);
        // Dropped rows (-1) are ignored; a singleton scores 0 but counts in the mean.
        let x2 = array![[0.0f32], [1.0], [4.0], [6.0], [100.0]];
        close(silhouette(x2.view(), &[0, 0, 1, 1, -1], 100, 0).unwrap(), want);
        let s = silhouette(array![[0.0f32], [1.0], [4.0]].view(), &[0, 0, 1], 100, 0).unwrap();
        close(s, ((4.0 - 1.0) / 4.0 + (3.0 - 1.0) / 3.0 + 0.0) / 3.0);
        assert!(silhouette(x.view(), &[0, 0, 0, 0], 100, 0).is_none());
        // Sampling keeps the value on well-separated data close.
        let s = silhouette(x.view(), &[0, 0, 1, 1], 3, 1).unwrap();
        assert!(s > 0.3);
    }
}
