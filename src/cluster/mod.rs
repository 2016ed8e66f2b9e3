//! Stage cluster: group the utterances by their embedding, turn the groups into experts (noise
//! policy, small-cluster merging), split each group into test / val / expert_pretrain /
//! joint_train, and report how good the grouping is.

pub mod algorithms;
pub mod choose_k;
pub mod kmeans;
pub mod metrics;
pub mod noise;
pub mod scale;
pub mod splits;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

pub use algorithms::{Algorithm, DbscanParams, GmmParams, HdbscanParams, KMeansImpl, Raw};
pub use choose_k::{K, KSelection};
pub use noise::{Groups, Merge, NoisePolicy};
pub use scale::Scaling;
pub use splits::SplitFractions;

use crate::artifacts::{CHECKPOINT_HASH, Clusters, Embeddings, SPLITS, Splits, standard_metadata, write_dataset};

/// Embeddings metadata that every downstream artifact carries, so that the gate, joint
/// training and inference can check they use the same embedding ("one Whisper source").
pub const CARRIED_METADATA: [&str; 4] = [CHECKPOINT_HASH, "pooling", "layer", "model"];

/// Metadata key holding the number of experts.
pub const EXPERTS: &str = "experts";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterParams {
    pub algorithm: Algorithm,
    /// Clusters for kmeans and gmm: a number, or `auto` to choose it over `k_range` by the
    /// silhouette (kmeans) or the BIC (gmm), see [`choose_k`]. DBSCAN/HDBSCAN find their own.
    pub k: K,
    /// The k that `k: auto` tries, inclusive.
    pub k_range: [usize; 2],
    /// How `k: auto` compares them: silhouette, calinski_harabasz, davies_bouldin (k-means),
    /// bic (GMM). Unset: the silhouette for k-means, the BIC for the GMM.
    pub k_criterion: Option<choose_k::Criterion>,
    /// With the silhouette: the largest k within this fraction of the best score wins.
    pub silhouette_tolerance: f64,
    pub seed: u64,
    pub scaling: Scaling,
    /// Project the scaled features onto this many leading principal components before
    /// clustering (0 = no projection). Unset: 32 for gmm (full covariances in hundreds of
    /// dimensions are numerically fragile, see `algorithms`), none for the others. Density
    /// algorithms (DBSCAN/HDBSCAN) usually also need it on Whisper embeddings.
    pub pca_dims: Option<usize>,
    /// k-means implementation: `lloyd` (ours, GEMM-based) or `linfa`.
    pub kmeans_impl: KMeansImpl,
    /// Temperature T of the k-means memberships softmax(-d^2 / (T * mean within-cluster d^2)).
    pub kmeans_temperature: f64,
    /// The same for the centroid memberships derived for DBSCAN/HDBSCAN.
    pub density_temperature: f64,
    /// Restarts of k-means (best inertia) and of the GMM (best likelihood).
    pub n_runs: usize,
    pub max_iter: usize,
    /// k-means convergence: squared centroid shift relative to the mean feature variance
    /// (`lloyd`, as scikit-learn), or the absolute centroid shift (`linfa`).
    pub tolerance: f64,
    pub gmm: GmmParams,
    pub dbscan: DbscanParams,
    pub hdbscan: HdbscanParams,
    /// What happens to DBSCAN/HDBSCAN noise points.
    pub noise: NoisePolicy,
    /// Clusters with fewer rows are merged into the nearest one (0 or 1 = never).
    pub min_cluster_size: usize,
    /// A column of the embeddings (e.g. `domain`) to score the clusters against (NMI, ARI);
    /// skipped with a warning when the embeddings lack it.
    pub label_column: Option<String>,
    pub test_fraction: f64,
    pub val_fraction: f64,
    pub expert_pretrain_fraction: f64,
    /// Rows sampled for the silhouette (it is quadratic in the rows).
    pub silhouette_sample: usize,
}

impl Default for ClusterParams {
    fn default() -> Self {
        ClusterParams {
            algorithm: Algorithm::Kmeans,
            k: K::Auto,
            k_range: [2, 12],
            k_criterion: None,
            silhouette_tolerance: 0.05,
            seed: 42,
            scaling: Scaling::Standardize,
            pca_dims: None,
            kmeans_impl: KMeansImpl::Lloyd,
            kmeans_temperature: 1.0,
            density_temperature: 1.0,
            n_runs: 10,
            max_iter: 300,
            tolerance: 1e-4,
            gmm: GmmParams::default(),
            dbscan: DbscanParams::default(),
            hdbscan: HdbscanParams::default(),
            noise: NoisePolicy::Drop,
            min_cluster_size: 10,
            label_column: None,
            test_fraction: 0.1,
            val_fraction: 0.1,
            expert_pretrain_fraction: 0.3,
            silhouette_sample: 4000,
        }
    }
}

impl ClusterParams {
    pub fn fractions(&self) -> SplitFractions {
        SplitFractions {
            test: self.test_fraction,
            val: self.val_fraction,
            expert_pretrain: self.expert_pretrain_fraction,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterSummary {
    pub algorithm: String,
    pub scaling: String,
    pub rows: usize,
    /// K: the number of experts, after noise handling and merging.
    pub experts: usize,
    /// Rows per expert (noise rows assigned by `nearest` / `own_expert` included).
    pub sizes: Vec<usize>,
    pub noise_rows: usize,
    pub noise_policy: String,
    /// Rows in no cluster and no split (noise with `drop`).
    pub dropped_rows: usize,
    pub noise_expert: bool,
    pub merged: Vec<Merge>,
    pub dropped_empty: Vec<usize>,
    /// For each expert, the algorithm's cluster ids it is made of.
    pub members: Vec<Vec<usize>>,
    pub silhouette: Option<f64>,
    pub silhouette_rows: usize,
    /// With `k: auto`: the criterion over the range of k, and the k chosen.
    pub k_selection: Option<KSelection>,
    pub label_column: Option<String>,
    pub nmi: Option<f64>,
    pub ari: Option<f64>,
    /// expert -> label -> rows
    pub labels_by_expert: BTreeMap<String, BTreeMap<String, usize>>,
    pub splits: BTreeMap<String, usize>,
    /// Algorithm numbers: inertia, iterations, mean_log_likelihood, pca_explained_variance.
    pub info: BTreeMap<String, f64>,
    pub warnings: Vec<String>,
    pub seconds: f64,
}

/// Everything the stage writes.
pub struct ClusterOutcome {
    pub clusters: Clusters,
    pub splits: Splits,
    pub summary: ClusterSummary,
}

/// Cluster the embeddings and split them.
pub fn cluster_embeddings(emb: &Embeddings, p: &ClusterParams) -> Result<ClusterOutcome> {
    let start = Instant::now();
    let n = emb.len();
    if n < 2 {
        bail!("clustering needs at least 2 embeddings, got {n}");
    }
    p.fractions().check()?;
    if !(p.kmeans_temperature > 0.0 && p.density_temperature > 0.0) {
        bail!("kmeans_temperature and density_temperature must be > 0");
    }
    let (x, pca_info) = features(emb, p)?;
    let (mut raw, k_selection) = find_clusters(x.view(), p)?;
    raw.info.extend(pca_info);
    let groups = noise::finalize(x.view(), &raw, p.noise, p.min_cluster_size, p.density_temperature)?;
    let splits = splits::make_splits(&emb.ids, &groups.cluster, groups.k, &p.fractions(), p.seed)?;
    let mut summary = summarize(emb, p, x.view(), &raw, &groups, &splits);
    summary.k_selection = k_selection;
    summary.seconds = start.elapsed().as_secs_f64();
    let clusters = Clusters {
        ids: emb.ids.clone(),
        cluster: groups.cluster.clone(),
        k: groups.k,
        probs: groups.probs.iter().copied().collect(),
        is_noise: groups.is_noise.clone(),
    };
    Ok(ClusterOutcome { clusters, splits, summary })
}

/// The matrix the algorithms see: scaled, then projected onto leading principal components
/// when asked (always for a GMM unless `pca_dims: 0`); with the projection's numbers.
fn features(emb: &Embeddings, p: &ClusterParams) -> Result<(Array2<f32>, BTreeMap<String, f64>)> {
    let x = Array2::from_shape_vec((emb.len(), emb.dim), emb.values.clone()).context("embedding matrix")?;
    if x.iter().any(|v| !v.is_finite()) {
        bail!("the embeddings contain NaN or infinite values");
    }
    let x = scale::scale(&x, p.scaling);
    let dims = p.pca_dims.unwrap_or(if p.algorithm == Algorithm::Gmm { 32 } else { 0 });
    let mut info = BTreeMap::new();
    if dims > 0 && dims < x.ncols() {
        let (proj, kept) = scale::pca(&x, dims)?;
        info.insert("pca_dims".to_string(), dims as f64);
        info.insert("pca_explained_variance".to_string(), kept);
        return Ok((proj.mapv(|v| v as f32), info));
    }
    Ok((x, info))
}

/// Run the configured algorithm (choosing k first with `k: auto`).
fn find_clusters(x: ArrayView2<f32>, p: &ClusterParams) -> Result<(Raw, Option<KSelection>)> {
    Ok(match (p.algorithm, p.k) {
        (Algorithm::Dbscan, _) => (algorithms::run_dbscan(x, &p.dbscan)?, None),
        (Algorithm::Hdbscan, _) => (algorithms::run_hdbscan(x, &p.hdbscan)?, None),
        (_, K::Fixed(k)) => (choose_k::fit(x, p, k)?, None),
        (_, K::Auto) => {
            let (raw, sel) = choose_k::choose(x, p, p.k_range)?;
            (raw, Some(sel))
        }
    })
}

/// Sizes, agreement with the label column, silhouette and split counts.
fn summarize(
    emb: &Embeddings,
    p: &ClusterParams,
    x: ArrayView2<f32>,
    raw: &Raw,
    groups: &Groups,
    splits: &Splits,
) -> ClusterSummary {
    let n = emb.len();
    let mut sizes = vec![0usize; groups.k];
    for &c in groups.cluster.iter().filter(|&&c| c >= 0) {
        sizes[c as usize] += 1;
    }
    let mut warnings = groups.warnings.clone();
    let (mut nmi, mut ari) = (None, None);
    let mut labels_by_expert = BTreeMap::new();
    if let Some(col) = &p.label_column {
        match emb.column(col) {
            Some(values) => {
                let rows: Vec<usize> = (0..n).filter(|&i| groups.cluster[i] >= 0 && values[i].is_some()).collect();
                let pred: Vec<i32> = rows.iter().map(|&i| groups.cluster[i]).collect();
                let truth: Vec<&str> = rows.iter().map(|&i| values[i].as_deref().unwrap_or("")).collect();
                if !rows.is_empty() {
                    nmi = Some(metrics::nmi(&truth, &pred));
                    ari = Some(metrics::ari(&truth, &pred));
                }
                for (&c, &l) in pred.iter().zip(&truth) {
                    let e: &mut BTreeMap<String, usize> = labels_by_expert.entry(format!("{c}")).or_default();
                    *e.entry(l.to_string()).or_default() += 1;
                }
            }
            None => {
                let have: Vec<&str> = emb.extra.iter().map(|(n, _)| n.as_str()).collect();
                let w = format!(
                    "label_column `{col}` is not a column of the embeddings (extra columns: {}): no NMI/ARI",
                    if have.is_empty() { "none".to_string() } else { have.join(", ") }
                );
                eprintln!("warning: {w}");
                warnings.push(w);
            }
        }
    }
    let silhouette_rows = p.silhouette_sample.min(groups.cluster.iter().filter(|&&c| c >= 0).count());
    let silhouette = metrics::silhouette(x, &groups.cluster, p.silhouette_sample, p.seed);
    let mut split_counts: BTreeMap<String, usize> = SPLITS.iter().map(|s| (s.to_string(), 0)).collect();
    for s in &splits.split {
        *split_counts.get_mut(s).expect("known split") += 1;
    }
    ClusterSummary {
        algorithm: p.algorithm.name().into(),
        scaling: p.scaling.name().into(),
        rows: n,
        experts: groups.k,
        sizes,
        noise_rows: groups.is_noise.iter().filter(|&&b| b).count(),
        noise_policy: p.noise.name().into(),
        dropped_rows: groups.cluster.iter().filter(|&&c| c < 0).count(),
        noise_expert: groups.noise_expert,
        merged: groups.merges.clone(),
        dropped_empty: groups.dropped_empty.clone(),
        members: groups.members.clone(),
        silhouette,
        silhouette_rows,
        k_selection: None,
        label_column: p.label_column.clone(),
        nmi,
        ari,
        labels_by_expert,
        splits: split_counts,
        info: raw.info.clone(),
        warnings,
        seconds: 0.0,
    }
}

/// A human-readable report of the summary (printed to stderr by the stage).
pub fn report(s: &ClusterSummary) -> String {
    let f = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "n/a".into());
    let mut out = format!(
        "cluster: {} on {} rows ({} scaling): {} experts, sizes {:?}\n",
        s.algorithm, s.rows, s.scaling, s.experts, s.sizes
    );
    if s.noise_rows > 0 {
        out += &format!("  noise: {} rows, policy {} ({} dropped)\n", s.noise_rows, s.noise_policy, s.dropped_rows);
    }
    for m in &s.merged {
        out += &format!("  merged cluster {} ({} rows) into cluster {}\n", m.cluster, m.size, m.into);
    }
    if let Some(sel) = &s.k_selection {
        let curve: Vec<String> = sel.scores().iter().map(|(k, v)| format!("{k}:{v:.4}")).collect();
        out += &format!("  k: auto chose {} by {} ({})\n", sel.chosen, sel.criterion, curve.join(" "));
    }
    out += &format!("  silhouette: {} (on {} rows)\n", f(s.silhouette), s.silhouette_rows);
    if let Some(col) = &s.label_column {
        out += &format!("  NMI vs {col}: {}   ARI vs {col}: {}\n", f(s.nmi), f(s.ari));
    }
    out += &format!("  splits: {}\n", s.splits.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
    out
}

/// Metadata for the stage's tables: standard keys, the embeddings' identity, K.
pub fn output_metadata(emb_meta: &BTreeMap<String, String>, p: &ClusterParams, k: usize) -> BTreeMap<String, String> {
    let mut m = standard_metadata("cluster", emb_meta.get(CHECKPOINT_HASH).map(String::as_str));
    for key in CARRIED_METADATA {
        if let Some(v) = emb_meta.get(key) {
            m.insert(key.to_string(), v.clone());
        }
    }
    m.insert(EXPERTS.into(), k.to_string());
    m.insert("algorithm".into(), p.algorithm.name().into());
    m.insert("seed".into(), p.seed.to_string());
    m
}

/// The whole stage: read the embeddings, cluster, write `out/clusters`, `out/splits` and
/// `out/summary.json`.
pub fn run(embeddings: &Path, out: &Path, p: &ClusterParams) -> Result<ClusterSummary> {
    let (emb, meta) = Embeddings::read(embeddings)?;
    let o = cluster_embeddings(&emb, p)?;
    let m = output_metadata(&meta, p, o.clusters.k);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    write_dataset(&out.join("clusters"), &[o.clusters.to_batch()?], &m)?;
    write_dataset(&out.join("splits"), &[o.splits.to_batch()?], &m)?;
    crate::util::write_json(&out.join("summary.json"), &o.summary)?;
    Ok(o.summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// A standard normal draw (Box-Muller).
    pub(crate) fn normal(rng: &mut ChaCha8Rng) -> f32 {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// `per` rows around each of `k` centres drawn N(0, spread^2) in `dim` dimensions, unit
    /// noise; labels = blob index.
    pub(crate) fn blobs(k: usize, per: usize, dim: usize, spread: f32, seed: u64) -> (Array2<f32>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let centres: Vec<Vec<f32>> = (0..k).map(|_| (0..dim).map(|_| normal(&mut rng) * spread).collect()).collect();
        let mut v = Vec::new();
        let mut labels = Vec::new();
        for i in 0..k * per {
            let c = i % k;
            labels.push(c);
            v.extend(centres[c].iter().map(|m| m + normal(&mut rng)));
        }
        (Array2::from_shape_vec((k * per, dim), v).unwrap(), labels)
    }

    fn hard(raw: &algorithms::Raw) -> Vec<i64> {
        raw.labels.iter().map(|l| l.map(|v| v as i64).unwrap_or(-1)).collect()
    }

    #[test]
    fn kmeans_recovers_blobs_both_implementations() {
        let (x, truth) = blobs(5, 60, 32, 3.0, 1);
        for imp in [KMeansImpl::Lloyd, KMeansImpl::Linfa] {
            let cfg = kmeans::KMeansConfig { k: 5, n_runs: 5, max_iter: 100, tolerance: 1e-4, seed: 3 };
            let raw = algorithms::run_kmeans(x.view(), &cfg, imp, 1.0).unwrap();
            let a = metrics::ari(&truth, &hard(&raw));
            assert!(a >= 0.99, "{imp:?}: ARI {a}");
            // Memberships: rows sum to 1 and peak at the hard label.
            let p = raw.probs.as_ref().unwrap();
            for (i, l) in raw.labels.iter().enumerate() {
                let row = p.row(i);
                assert!((row.sum() - 1.0).abs() < 1e-5);
                let arg = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
                assert_eq!(Some(arg), *l);
            }
        }
    }

    #[test]
    fn kmeans_temperature_softens_memberships() {
        let (x, _) = blobs(3, 30, 8, 1.0, 2);
        let cfg = kmeans::KMeansConfig { k: 3, n_runs: 2, max_iter: 100, tolerance: 1e-4, seed: 3 };
        let max_mean = |t: f64| {
            let r = algorithms::run_kmeans(x.view(), &cfg, KMeansImpl::Lloyd, t).unwrap();
            let p = r.probs.unwrap();
            p.rows().into_iter().map(|r| r.iter().copied().fold(0.0f32, f32::max)).sum::<f32>() / p.nrows() as f32
        };
        let (cold, warm) = (max_mean(0.1), max_mean(10.0));
        assert!(cold > warm && warm > 1.0 / 3.0, "{cold} {warm}");
    }

    #[test]
    fn gmm_recovers_blobs_in_384_dims_through_pca() {
        let (x, truth) = blobs(4, 50, 384, 1.0, 4);
        let x = scale::scale(&x, Scaling::Standardize);
        let (x, _) = scale::pca(&x, 32).unwrap();
        let x = x.mapv(|v| v as f32);
        let raw = algorithms::run_gmm(x.view(), 4, 42, 2, 200, &GmmParams::default()).unwrap();
        let a = metrics::ari(&truth, &hard(&raw));
        assert!(a >= 0.99, "ARI {a}");
        let p = raw.probs.unwrap();
        assert!(p.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-4));
    }

    #[test]
    fn gmm_recovers_blobs_on_full_low_dims() {
        let (x, truth) = blobs(3, 60, 4, 4.0, 5);
        let raw = algorithms::run_gmm(x.view(), 3, 42, 1, 200, &GmmParams::default()).unwrap();
        assert!(metrics::ari(&truth, &hard(&raw)) >= 0.99);
    }

    /// Blobs plus far-away isolated points (rows 0..n_out of the result).
    fn with_outliers(dim: usize) -> (Array2<f32>, Vec<usize>, usize) {
        let (x, truth) = blobs(3, 40, dim, 4.0, 6);
        let n_out = 4;
        let mut rows = Vec::new();
        for o in 0..n_out {
            let mut r = vec![0f32; dim];
            r[o % dim] = 60.0 * if o % 2 == 0 { 1.0 } else { -1.0 };
            r[(o + 1) % dim] = 40.0;
            rows.push(r);
        }
        let mut all = Array2::zeros((n_out + x.nrows(), dim));
        for (i, r) in rows.iter().enumerate() {
            all.row_mut(i).assign(&ndarray::ArrayView1::from(r));
        }
        all.slice_mut(ndarray::s![n_out.., ..]).assign(&x);
        (all, truth, n_out)
    }

    #[test]
    fn dbscan_and_hdbscan_mark_planted_outliers_as_noise() {
        let (x, truth, n_out) = with_outliers(8);
        let raw = algorithms::run_dbscan(x.view(), &DbscanParams { eps: Some(5.0), min_points: 4 }).unwrap();
        assert!(raw.labels[..n_out].iter().all(|l| l.is_none()), "{:?}", &raw.labels[..n_out]);
        let inl: Vec<i64> = hard(&raw)[n_out..].to_vec();
        assert!(metrics::ari(&truth, &inl) >= 0.95, "{}", metrics::ari(&truth, &inl));
        let raw =
            algorithms::run_hdbscan(x.view(), &HdbscanParams { min_cluster_size: 10, min_samples: Some(4) }).unwrap();
        assert!(raw.labels[..n_out].iter().all(|l| l.is_none()), "{:?}", &raw.labels[..n_out]);
        assert_eq!(raw.n_clusters, 3);
        // Without eps, DBSCAN refuses with the neighbour-distance quantiles to pick from.
        let err = algorithms::run_dbscan(x.view(), &DbscanParams { eps: None, min_points: 4 }).unwrap_err();
        assert!(err.to_string().contains("dbscan.eps") && err.to_string().contains("90%"), "{err}");
    }

    fn embeddings(x: &Array2<f32>, truth: &[usize]) -> Embeddings {
        let n = x.nrows();
        Embeddings {
            ids: (0..n).map(|i| format!("u{i:05}")).collect(),
            audio_paths: (0..n).map(|i| format!("a/{i}.flac")).collect(),
            durations: vec![1.0; n],
            transcriptions: vec!["x".into(); n],
            extra: vec![("domain".into(), truth.iter().map(|t| Some(format!("d{t}"))).collect())],
            numbers: Vec::new(),
            dim: x.ncols(),
            values: x.iter().copied().collect(),
        }
    }

    #[test]
    fn whole_stage_with_hdbscan_noise_policies() {
        let (x, truth, n_out) = with_outliers(8);
        let mut t = vec![99; n_out];
        t.extend(&truth);
        let emb = embeddings(&x, &t);
        let mut p = ClusterParams {
            algorithm: Algorithm::Hdbscan,
            scaling: Scaling::None,
            hdbscan: HdbscanParams { min_cluster_size: 10, min_samples: Some(4) },
            label_column: Some("domain".into()),
            min_cluster_size: 3,
            ..ClusterParams::default()
        };
        for (policy, experts, dropped) in
            [(NoisePolicy::Drop, 3, n_out), (NoisePolicy::OwnExpert, 4, 0), (NoisePolicy::Nearest, 3, 0)]
        {
            p.noise = policy;
            let o = cluster_embeddings(&emb, &p).unwrap();
            assert_eq!(o.summary.experts, experts, "{policy:?}");
            assert_eq!(o.clusters.k, experts);
            assert_eq!(o.summary.dropped_rows, dropped);
            assert_eq!(o.splits.ids.len(), emb.len() - dropped);
            assert_eq!(o.summary.noise_rows, n_out);
        }
    }

    #[test]
    fn the_stage_projects_before_a_gmm_by_default() {
        let (x, truth) = blobs(4, 40, 384, 1.0, 9);
        let emb = embeddings(&x, &truth);
        let p = ClusterParams {
            algorithm: Algorithm::Gmm,
            k: K::Fixed(4),
            n_runs: 2,
            label_column: Some("domain".into()),
            ..Default::default()
        };
        let o = cluster_embeddings(&emb, &p).unwrap();
        assert_eq!(o.summary.info.get("pca_dims"), Some(&32.0));
        assert!(o.summary.ari.unwrap() >= 0.99, "{:?}", o.summary.ari);
        let p = ClusterParams { algorithm: Algorithm::Kmeans, pca_dims: Some(8), ..p };
        let o = cluster_embeddings(&emb, &p).unwrap();
        assert_eq!(o.summary.info.get("pca_dims"), Some(&8.0));
        assert!(o.summary.ari.unwrap() >= 0.99);
    }

    #[test]
    fn label_column_scores_and_missing_column_warns() {
        let (x, truth) = blobs(4, 30, 16, 3.0, 8);
        let emb = embeddings(&x, &truth);
        let p = ClusterParams { k: K::Fixed(4), label_column: Some("domain".into()), ..ClusterParams::default() };
        let o = cluster_embeddings(&emb, &p).unwrap();
        assert!(o.summary.nmi.unwrap() > 0.99 && o.summary.ari.unwrap() > 0.99);
        assert!(o.summary.silhouette.unwrap() > 0.3);
        assert!(report(&o.summary).contains("NMI vs domain"));
        let p = ClusterParams { label_column: Some("accent".into()), ..p };
        let o = cluster_embeddings(&emb, &p).unwrap();
        assert!(o.summary.nmi.is_none());
        assert!(o.summary.warnings.iter().any(|w| w.contains("accent")));
    }
}
