//! `k: auto`: choose the number of clusters for k-means and the Gaussian mixture by a stated,
//! label-free criterion over a range of k, and keep the whole curve for the summary and the
//! report.
//!
//! - `silhouette` (k-means' default): the mean silhouette of the hard assignment
//!   (scikit-learn's `silhouette_score`, Euclidean, on the same scaled/projected features the
//!   algorithm saw). The largest k whose silhouette is within `silhouette_tolerance` (relative,
//!   default 5%) of the best wins: for a mixture, splitting one condition in two costs little
//!   (the gate learns to share), while merging two conditions costs an expert, and the
//!   silhouette favours the coarsest well-separated level. Measured on the demo corpora
//!   (`cargo bench --bench embedding_choice`): the plain maximum merges the two clean male
//!   voices (us_male, caribbean_male) and finds 5 of 6 and 7 of 8 domains; the runner-up,
//!   within 3.6-4.3% of it, is the true k on both, and the next k is 7% or more below.
//! - `calinski_harabasz`: between- over within-cluster dispersion; the largest wins.
//! - `davies_bouldin`: the mean worst cluster-pair similarity; the smallest wins.
//! - `bic` (the Gaussian mixture's default, GMM only): BIC = -2 ln L + p ln n with
//!   p = (k - 1) + k d + k d (d + 1) / 2 free parameters; the smallest wins.
//!
//! Every k's scores under every criterion that applies are kept in the curve, so a user can
//! see how the criteria agree. Ties go to the smaller k. DBSCAN and HDBSCAN find their own
//! number and ignore `k`.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};
use ndarray::ArrayView2;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::algorithms::{self, Algorithm, Raw};
use super::{ClusterParams, kmeans, metrics};

/// `k:` in the manifest: a number, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum K {
    Fixed(usize),
    Auto,
}

impl fmt::Display for K {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            K::Fixed(k) => write!(f, "{k}"),
            K::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for K {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            K::Fixed(k) => s.serialize_u64(*k as u64),
            K::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for K {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<K, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            N(u64),
            S(String),
        }
        match Repr::deserialize(d).map_err(|_| serde::de::Error::custom("k must be a positive integer or `auto`"))? {
            Repr::N(n) if n > 0 => Ok(K::Fixed(n as usize)),
            Repr::S(s) if s == "auto" => Ok(K::Auto),
            Repr::S(s) if s.parse::<usize>().is_ok_and(|n| n > 0) => Ok(K::Fixed(s.parse().unwrap())),
            Repr::N(n) => Err(serde::de::Error::custom(format!("k must be a positive integer or `auto`, got {n}"))),
            Repr::S(s) => Err(serde::de::Error::custom(format!("k must be a positive integer or `auto`, got `{s}`"))),
        }
    }
}

/// How `k: auto` compares the k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    Silhouette,
    CalinskiHarabasz,
    DaviesBouldin,
    Bic,
}

impl Criterion {
    pub fn name(&self) -> &'static str {
        match self {
            Criterion::Silhouette => "silhouette",
            Criterion::CalinskiHarabasz => "calinski_harabasz",
            Criterion::DaviesBouldin => "davies_bouldin",
            Criterion::Bic => "bic",
        }
    }
    pub fn higher_is_better(&self) -> bool {
        matches!(self, Criterion::Silhouette | Criterion::CalinskiHarabasz)
    }
    /// The algorithm's default: BIC for the GMM, the silhouette otherwise.
    pub fn default_for(a: Algorithm) -> Criterion {
        if a == Algorithm::Gmm { Criterion::Bic } else { Criterion::Silhouette }
    }
}

/// One point of the curve: k and its score under each criterion computed.
#[derive(Debug, Clone, Serialize)]
pub struct KScore {
    pub k: usize,
    pub scores: BTreeMap<String, f64>,
}

/// What `k: auto` tried and chose (written to the cluster summary).
#[derive(Debug, Clone, Serialize)]
pub struct KSelection {
    pub criterion: String,
    pub higher_is_better: bool,
    pub curve: Vec<KScore>,
    pub chosen: usize,
}

impl KSelection {
    /// The chosen criterion's score for each k.
    pub fn scores(&self) -> Vec<(usize, f64)> {
        self.curve.iter().map(|c| (c.k, c.scores.get(&self.criterion).copied().unwrap_or(f64::NAN))).collect()
    }
}

/// Run the algorithm once with `k`.
pub fn fit(x: ArrayView2<f32>, p: &ClusterParams, k: usize) -> Result<Raw> {
    match p.algorithm {
        Algorithm::Kmeans => {
            let cfg = kmeans::KMeansConfig {
                k,
                n_runs: p.n_runs,
                max_iter: p.max_iter,
                tolerance: p.tolerance,
                seed: p.seed,
            };
            algorithms::run_kmeans(x, &cfg, p.kmeans_impl, p.kmeans_temperature)
        }
        Algorithm::Gmm => algorithms::run_gmm(x, k, p.seed, p.n_runs, p.max_iter, &p.gmm),
        Algorithm::Dbscan | Algorithm::Hdbscan => bail!("{} finds its own number of clusters", p.algorithm.name()),
    }
}

/// Free parameters of a full-covariance Gaussian mixture with k components in d dimensions.
pub fn gmm_parameters(k: usize, d: usize) -> f64 {
    (k - 1) as f64 + (k * d) as f64 + (k * d * (d + 1)) as f64 / 2.0
}

/// Try every k in `range` (clipped to 2..=rows-1) and return the chosen fit and the curve.
pub fn choose(x: ArrayView2<f32>, p: &ClusterParams, range: [usize; 2]) -> Result<(Raw, KSelection)> {
    let n = x.nrows();
    let lo = range[0].max(2);
    let hi = range[1].min(n.saturating_sub(1));
    if lo > hi {
        bail!("k_range {range:?} leaves no k to try with {n} rows (k must be in 2..={})", n.saturating_sub(1));
    }
    let criterion = p.k_criterion.unwrap_or(Criterion::default_for(p.algorithm));
    let gmm = p.algorithm == Algorithm::Gmm;
    if (criterion == Criterion::Bic) != gmm {
        bail!("k_criterion `bic` goes with algorithm gmm only, and gmm with `bic` only (got {})", criterion.name());
    }
    let mut curve = Vec::new();
    let mut fits = Vec::new();
    for k in lo..=hi {
        let raw = match fit(x, p, k) {
            Ok(r) => r,
            // A GMM with more components than the data supports fails: the curve ends there.
            Err(e) if gmm && k > lo => {
                eprintln!("warning: k = {k}: {e:#}; stopping the search");
                break;
            }
            Err(e) => return Err(e),
        };
        let mut scores = BTreeMap::new();
        if gmm {
            let ll = raw.info.get("mean_log_likelihood").copied().unwrap_or(f64::NAN) * n as f64;
            scores.insert("bic".to_string(), -2.0 * ll + gmm_parameters(k, x.ncols()) * (n as f64).ln());
        } else {
            let labels: Vec<i32> = raw.labels.iter().map(|l| l.map(|v| v as i32).unwrap_or(-1)).collect();
            let nan = f64::NAN;
            scores.insert(
                "silhouette".into(),
                metrics::silhouette(x, &labels, p.silhouette_sample, p.seed).unwrap_or(nan),
            );
            scores.insert("calinski_harabasz".into(), metrics::calinski_harabasz(x, &labels).unwrap_or(nan));
            scores.insert("davies_bouldin".into(), metrics::davies_bouldin(x, &labels).unwrap_or(nan));
        }
        curve.push(KScore { k, scores });
        fits.push(raw);
    }
    let score = |i: usize| curve[i].scores[criterion.name()];
    let better = |a: f64, b: f64| if criterion.higher_is_better() { a > b } else { a < b };
    let mut best: Option<usize> = None;
    for i in 0..curve.len() {
        if score(i).is_finite() && best.is_none_or(|b| better(score(i), score(b))) {
            best = Some(i);
        }
    }
    let Some(mut best) = best else { bail!("k: auto found no k in {lo}..={hi} with a finite {}", criterion.name()) };
    if criterion == Criterion::Silhouette {
        let floor = score(best) - p.silhouette_tolerance * score(best).abs();
        best = (best..curve.len()).rev().find(|&i| score(i) >= floor).unwrap_or(best);
    }
    let raw = fits.swap_remove(best);
    let sel = KSelection {
        criterion: criterion.name().into(),
        higher_is_better: criterion.higher_is_better(),
        chosen: raw.n_clusters,
        curve,
    };
    Ok((raw, sel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::blobs;
    use crate::cluster::{Scaling, scale};

    #[test]
    fn k_parses_numbers_and_auto_only() {
        let k: K = serde_saphyr::from_str("auto").unwrap();
        assert_eq!(k, K::Auto);
        let k: K = serde_saphyr::from_str("6").unwrap();
        assert_eq!(k, K::Fixed(6));
        for bad in ["0", "many", "-2", "2.5"] {
            let e = serde_saphyr::from_str::<K>(bad).unwrap_err().to_string();
            assert!(e.contains("positive integer or `auto`"), "{bad}: {e}");
        }
        assert_eq!(serde_json::to_string(&K::Auto).unwrap(), "\"auto\"");
        assert_eq!(serde_json::to_string(&K::Fixed(3)).unwrap(), "3");
    }

    #[test]
    fn parameters_of_a_gmm_by_hand() {
        // k = 2, d = 3: 1 weight + 2 x 3 means + 2 x 6 covariance entries = 19.
        assert_eq!(gmm_parameters(2, 3), 19.0);
    }

    #[test]
    fn silhouette_and_bic_find_the_number_of_blobs() {
        for true_k in [3, 6] {
            let (x, _) = blobs(true_k, 40, 16, 4.0, 11 + true_k as u64);
            let x = scale::scale(&x, Scaling::Standardize);
            let p = ClusterParams { n_runs: 3, silhouette_tolerance: 0.0, ..ClusterParams::default() };
            let (raw, sel) = choose(x.view(), &p, [2, 10]).unwrap();
            assert_eq!(sel.chosen, true_k, "{sel:?}");
            assert_eq!(raw.n_clusters, true_k);
            assert_eq!(sel.curve.len(), 9);
            assert_eq!(sel.curve.first().unwrap().k, 2);
            // The chosen score is the curve's maximum; the other criteria agree on blobs.
            let scores = sel.scores();
            let max = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
            assert_eq!(scores.iter().find(|s| s.0 == true_k).unwrap().1, max);
            for (c, want) in [(Criterion::CalinskiHarabasz, true_k), (Criterion::DaviesBouldin, true_k)] {
                let q = ClusterParams { k_criterion: Some(c), ..p.clone() };
                assert_eq!(choose(x.view(), &q, [2, 10]).unwrap().1.chosen, want, "{c:?}");
            }
        }
        let (x, _) = blobs(4, 50, 4, 6.0, 3);
        let p = ClusterParams { algorithm: Algorithm::Gmm, n_runs: 2, ..ClusterParams::default() };
        let (_, sel) = choose(x.view(), &p, [2, 7]).unwrap();
        assert_eq!((sel.criterion.as_str(), sel.chosen), ("bic", 4), "{sel:?}");
        let scores = sel.scores();
        let min = scores.iter().map(|s| s.1).fold(f64::INFINITY, f64::min);
        assert_eq!(scores.iter().find(|s| s.0 == 4).unwrap().1, min);
        // BIC is for the GMM only.
        let q = ClusterParams { k_criterion: Some(Criterion::Bic), ..ClusterParams::default() };
        assert!(choose(x.view(), &q, [2, 7]).unwrap_err().to_string().contains("bic"));
    }

    #[test]
    fn the_tolerance_prefers_the_finer_of_two_close_levels() {
        // Two far-apart groups, each made of two nearby blobs: the silhouette peaks at k = 2;
        // the tolerance decides how far below the peak a larger k may be and still win.
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(21);
        let centres = [(0.0, 0.0), (0.0, 3.0), (40.0, 0.0), (40.0, 3.0)];
        let mut x = ndarray::Array2::<f32>::zeros((160, 2));
        for i in 0..160 {
            let (cx, cy) = centres[i % 4];
            x[[i, 0]] = cx + 0.3 * crate::cluster::tests::normal(&mut rng);
            x[[i, 1]] = cy + 0.3 * crate::cluster::tests::normal(&mut rng);
        }
        let p =
            ClusterParams { n_runs: 3, scaling: Scaling::None, silhouette_tolerance: 0.0, ..ClusterParams::default() };
        let (_, sel) = choose(x.view(), &p, [2, 4]).unwrap();
        assert_eq!(sel.chosen, 2, "{sel:?}");
        let s = sel.scores();
        let (s2, s3, s4) = (s[0].1, s[1].1, s[2].1);
        assert!(s4 < s3 && s3 < s2, "{s:?}");
        let (gap3, gap4) = ((s2 - s3) / s2, (s2 - s4) / s2);
        for (tolerance, want) in [(gap3 - 1e-3, 2), (gap3 + 1e-3, 3), (gap4 - 1e-3, 3), (gap4 + 1e-3, 4)] {
            let (raw, sel) =
                choose(x.view(), &ClusterParams { silhouette_tolerance: tolerance, ..p.clone() }, [2, 4]).unwrap();
            assert_eq!((sel.chosen, raw.n_clusters), (want, want), "{tolerance}: {sel:?}");
        }
    }

    #[test]
    fn an_impossible_range_is_an_error() {
        let (x, _) = blobs(2, 3, 4, 4.0, 1);
        let e = choose(x.view(), &ClusterParams::default(), [8, 12]).unwrap_err().to_string();
        assert!(e.contains("k_range") && e.contains("6 rows"), "{e}");
    }
}
