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
