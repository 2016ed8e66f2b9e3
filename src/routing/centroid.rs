//! Nearest-centroid routing: an utterance goes to the expert whose cluster centre is nearest
//! to its embedding, in the z-scored space the clustering used. It needs no training, so it
//! is the reference a gate must beat on speech the gate never saw: evaluate's oracle for
//! held-out data, and a router of its own (`joint.router: centroid`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::artifacts::{Clusters, Embeddings};

/// Cluster centres of z-scored embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Centroids {
    pub dim: usize,
    pub experts: usize,
    /// Per-dimension mean and 1/std of the clustered embeddings.
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
    /// [experts, dim] row-major, in the z-scored space.
    pub centres: Vec<f32>,
}

const FILE: &str = "centroids.json";

impl Centroids {
    /// Centres of the clusters' members (noise rows left out).
    pub fn fit(emb: &Embeddings, clusters: &Clusters) -> Result<Centroids> {
        let (d, k) = (emb.dim, clusters.k);
        let row_of: HashMap<&str, usize> = emb.ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        let members: Vec<(usize, usize)> = clusters
            .ids
            .iter()
            .zip(&clusters.cluster)
            .filter(|(_, c)| **c >= 0)
            .map(|(id, &c)| {
                Ok((
                    *row_of.get(id.as_str()).with_context(|| format!("clustered `{id}` has no embedding"))?,
                    c as usize,
                ))
            })
            .collect::<Result<_>>()?;
        if members.is_empty() {
            bail!("no clustered utterance to place centroids");
        }
        let n = members.len() as f64;
        let mut sum = vec![0f64; d];
        let mut sq = vec![0f64; d];
        for &(r, _) in &members {
            for (j, &v) in emb.row(r).iter().enumerate() {
                sum[j] += v as f64;
                sq[j] += (v as f64).powi(2);
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let inv_std: Vec<f32> = sq
            .iter()
            .zip(&sum)
            .map(|(q, s)| {
                let var = (q / n - (s / n).powi(2)).max(0.0);
                if var > 1e-24 { (1.0 / var.sqrt()) as f32 } else { 1.0 }
            })
            .collect();
        let mut centres = vec![0f64; k * d];
        let mut counts = vec![0usize; k];
        for &(r, c) in &members {
            counts[c] += 1;
            for (j, &v) in emb.row(r).iter().enumerate() {
                centres[c * d + j] += ((v - mean[j]) * inv_std[j]) as f64;
            }
        }
        let centres = centres.iter().enumerate().map(|(i, s)| (s / counts[i / d].max(1) as f64) as f32).collect();
        Ok(Centroids { dim: d, experts: k, mean, inv_std, centres })
    }

    /// Squared distances [rows, experts] of raw embeddings [rows, dim] to the centres.
    pub fn distances(&self, emb: &[f32]) -> Vec<f32> {
        let d = self.dim;
        emb.chunks(d)
            .flat_map(|row| {
                let z: Vec<f32> = row.iter().enumerate().map(|(j, v)| (v - self.mean[j]) * self.inv_std[j]).collect();
                (0..self.experts).map(move |e| {
                    self.centres[e * d..(e + 1) * d].iter().zip(&z).map(|(c, x)| (c - x).powi(2)).sum::<f32>()
                })
            })
            .collect()
    }

    /// Each row's nearest expert.
    pub fn nearest(&self, emb: &[f32]) -> Vec<usize> {
        self.distances(emb)
            .chunks(self.experts)
            .map(|r| r.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map(|(e, _)| e).unwrap_or(0))
            .collect()
    }

    /// Memberships softmax(-d^2 / (T * dim)) [rows, experts]: the nearest centre most likely.
    pub fn probs(&self, emb: &[f32], temperature: f64) -> Vec<f32> {
        let scale = (temperature * self.dim as f64).max(1e-12);
        self.distances(emb)
            .chunks(self.experts)
            .flat_map(|r| {
                let m = r.iter().copied().fold(f32::INFINITY, f32::min) as f64;
                let w: Vec<f64> = r.iter().map(|&x| (-(x as f64 - m) / scale).exp()).collect();
                let s: f64 = w.iter().sum();
                w.into_iter().map(move |x| (x / s) as f32)
            })
            .collect()
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        crate::util::write_json(&dir.join(FILE), self)
    }

    pub fn load(dir: &Path) -> Result<Centroids> {
        crate::util::read_json(&dir.join(FILE))
    }

    /// How often two routings agree: the share of rows with the same expert.
    pub fn agreement(a: &[usize], b: &[usize]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
    }
}

/// Confusion of two routings: counts[a][b].
pub fn confusion(a: &[usize], b: &[usize], experts: usize) -> BTreeMap<(usize, usize), usize> {
    let mut m = BTreeMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *m.entry((x.min(experts), y.min(experts))).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centres_by_hand_and_nearest() {
        // Two clusters in 2 dims; dimension 1 has 100x the scale of dimension 0.
        let emb = Embeddings {
            ids: (0..4).map(|i| format!("u{i}")).collect(),
            audio_paths: vec![String::new(); 4],
            durations: vec![1.0; 4],
            transcriptions: vec![String::new(); 4],
            extra: vec![],
            numbers: Vec::new(),
            dim: 2,
            values: vec![0.0, 0.0, 0.0, 100.0, 2.0, 0.0, 2.0, 100.0],
        };
        let cl = Clusters {
            ids: emb.ids.clone(),
            cluster: vec![0, 0, 1, 1],
            k: 2,
            probs: vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0],
            is_noise: vec![false; 4],
        };
        let c = Centroids::fit(&emb, &cl).unwrap();
        // Mean (1, 50), std (1, 50): z of the four rows are (-1,-1) (-1,1) (1,-1) (1,1).
        assert_eq!(c.mean, vec![1.0, 50.0]);
        assert_eq!(c.centres, vec![-1.0, 0.0, 1.0, 0.0]);
        // Raw distance would send (1.5, 0) to... both equally far in dim 1; z-scoring decides by dim 0.
        assert_eq!(c.nearest(&[0.4, 90.0, 1.6, 5.0]), vec![0, 1]);
        let p = c.probs(&[0.4, 90.0], 1.0);
        assert!(p[0] > p[1] && (p[0] + p[1] - 1.0).abs() < 1e-6);
        let dir = std::env::temp_dir().join(format!("wm-centroids-{}", std::process::id()));
        c.save(&dir).unwrap();
        assert_eq!(Centroids::load(&dir).unwrap(), c);
    }
}
