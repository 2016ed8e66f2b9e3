//! Gate pretraining on the cluster labels: the expert_pretrain + joint_train rows train, the
//! val rows choose the epoch (early stopping on val loss) and report accuracy against the
//! clusters.
//!
//! Loss: cross-entropy on the hard cluster labels (`target: hard`), or KL(q || softmax(z))
//! against the clusters' probabilities q (`target: soft`). AdamW with PyTorch's epsilon.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::activation;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::gate::{Gate, GateConfig};
use crate::artifacts::table::{Table, Value};
use crate::artifacts::{CHECKPOINT_HASH, Clusters, Embeddings, Splits, standard_metadata};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Cross-entropy on the cluster ids.
    #[default]
    Hard,
    /// KL divergence to the clusters' membership probabilities.
    Soft,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateParams {
    pub hidden: Vec<usize>,
    /// relu | gelu | tanh | silu
    pub activation: String,
    pub dropout: f64,
    pub target: Target,
    pub lr: f64,
    pub weight_decay: f64,
    pub batch_size: usize,
    pub max_epochs: usize,
    /// Stop after this many epochs without a lower val loss (0 = never stop early).
    pub patience: usize,
    pub seed: u64,
    pub device: String,
}

impl Default for GateParams {
    fn default() -> Self {
        GateParams {
            hidden: vec![256],
            activation: "gelu".into(),
            dropout: 0.1,
            target: Target::Hard,
            lr: 1e-3,
            weight_decay: 0.01,
            batch_size: 64,
            max_epochs: 100,
            patience: 10,
            seed: 42,
            device: "cpu".into(),
        }
    }
}

/// The rows the gate learns from, joined by id.
#[derive(Debug, Clone)]
pub struct GateData {
    pub dim: usize,
    pub experts: usize,
    /// [rows, dim] embeddings of the rows in `train` and `val` (indices into it).
    pub x: Vec<f32>,
    pub label: Vec<usize>,
    /// [rows, experts]
    pub soft: Vec<f32>,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
}

impl GateData {
    /// Join embeddings, clusters and splits by id. Rows without a cluster (dropped noise) or
    /// without a split are left out; test rows are not used.
    pub fn join(emb: &Embeddings, clusters: &Clusters, splits: &Splits) -> Result<GateData> {
        let row_of: HashMap<&str, usize> = emb.ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        let cl_of: HashMap<&str, usize> = clusters.ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        let k = clusters.k;
        let mut d = GateData {
            dim: emb.dim,
            experts: k,
            x: Vec::new(),
            label: Vec::new(),
            soft: Vec::new(),
            train: Vec::new(),
            val: Vec::new(),
        };
        for (id, split) in splits.ids.iter().zip(&splits.split) {
            let which = match split.as_str() {
                "expert_pretrain" | "joint_train" => &mut d.train,
                "val" => &mut d.val,
                _ => continue,
            };
            let &e = row_of.get(id.as_str()).with_context(|| format!("split row `{id}` is not in the embeddings"))?;
            let &c = cl_of.get(id.as_str()).with_context(|| format!("split row `{id}` is not in the clusters"))?;
            let label = clusters.cluster[c];
            if label < 0 {
                bail!("row `{id}` is in split {split} but has no cluster (dropped noise)");
            }
            which.push(d.label.len());
            d.label.push(label as usize);
            d.x.extend_from_slice(emb.row(e));
            d.soft.extend_from_slice(clusters.prob_row(c));
        }
        if d.train.is_empty() {
            bail!("no expert_pretrain or joint_train row to train the gate on");
        }
        Ok(d)
    }

    fn rows(&self, idx: &[usize]) -> Vec<f32> {
        idx.iter().flat_map(|&i| self.x[i * self.dim..(i + 1) * self.dim].iter().copied()).collect()
    }

    /// Per-dimension mean and population std of the training rows.
    pub fn train_scaler(&self) -> (Vec<f32>, Vec<f32>) {
        let n = self.train.len() as f64;
        let mut sum = vec![0f64; self.dim];
        let mut sq = vec![0f64; self.dim];
        for &i in &self.train {
            for (j, &v) in self.x[i * self.dim..(i + 1) * self.dim].iter().enumerate() {
                sum[j] += v as f64;
                sq[j] += (v as f64).powi(2);
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq.iter().zip(&mean).map(|(s, m)| (s / n - m * m).max(0.0).sqrt() as f32).collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_accuracy: f64,
}

pub struct Pretrained {
    /// The gate of the best epoch, for inference (no autodiff).
    pub gate: Gate,
    pub epochs: Vec<EpochMetrics>,
    /// Index into `epochs`.
    pub best: usize,
    pub stopped_early: bool,
}

/// Mean loss and accuracy of `gate` on rows `idx` (no dropout, no graph).
fn evaluate(gate: &Gate, d: &GateData, idx: &[usize], target: Target, device: &Device) -> Result<(f64, f64)> {
    if idx.is_empty() {
        return Ok((f64::NAN, f64::NAN));
    }
    let k = d.experts;
    let (mut loss, mut correct) = (0.0, 0usize);
    for chunk in idx.chunks(1024) {
        let x = Tensor::<2>::from_data(TensorData::new(d.rows(chunk), [chunk.len(), d.dim]), device);
        let z: Vec<f32> = gate.forward(x, false).into_data().try_into_vec_as::<f32>()?;
        for (r, &i) in chunk.iter().enumerate() {
            let zr = &z[r * k..(r + 1) * k];
            let m = zr.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = m + zr.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            let arg = zr.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j).unwrap_or(0);
            correct += (arg == d.label[i]) as usize;
            loss += match target {
                Target::Hard => lse - zr[d.label[i]] as f64,
                Target::Soft => d.soft[i * k..(i + 1) * k]
                    .iter()
                    .zip(zr)
                    .filter(|(q, _)| **q > 0.0)
                    .map(|(&q, &zj)| q as f64 * ((q as f64).ln() - (zj as f64 - lse)))
                    .sum(),
            };
        }
    }
    Ok((loss / idx.len() as f64, correct as f64 / idx.len() as f64))
}

/// Train a gate on `d`. `device` is the plain device; training runs on its autodiff twin.
pub fn pretrain(d: &GateData, p: &GateParams, device: &Device) -> Result<Pretrained> {
    let cfg = GateConfig {
        input_dim: d.dim,
        hidden: p.hidden.clone(),
        experts: d.experts,
        activation: p.activation.clone(),
        dropout: p.dropout,
    };
    cfg.check()?;
    if p.batch_size == 0 || p.max_epochs == 0 {
        bail!("gate: batch_size and max_epochs must be > 0");
    }
    let plain = device.clone().inner();
    let ad = device.clone().autodiff();
    ad.seed(p.seed);
    let (mean, std) = d.train_scaler();
    let mut gate = Gate::new(&cfg, mean, std, &ad);
    let mut optim = AdamWConfig::new().with_weight_decay(p.weight_decay as f32).with_epsilon(1e-8).init();
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    // Constant part of the KL: sum q ln q, so that the reported soft loss is the KL itself.
    let neg_entropy: Vec<f64> = (0..d.label.len())
        .map(|i| {
            d.soft[i * d.experts..(i + 1) * d.experts]
                .iter()
                .filter(|&&q| q > 0.0)
                .map(|&q| q as f64 * (q as f64).ln())
                .sum()
        })
        .collect();
    if d.val.is_empty() {
        eprintln!("warning: no val rows: the gate trains for max_epochs {} without early stopping", p.max_epochs);
    }
    let mut epochs = Vec::new();
    let mut best: Option<(usize, f64, Gate)> = None;
    let mut stopped_early = false;
    let mut order = d.train.clone();
    for epoch in 0..p.max_epochs {
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for batch in order.chunks(p.batch_size) {
            let b = batch.len();
            let x = Tensor::<2>::from_data(TensorData::new(d.rows(batch), [b, d.dim]), &ad);
            let logp = activation::log_softmax(gate.forward(x, true), 1); // [b, k]
            let loss = match p.target {
                Target::Hard => {
                    let labels: Vec<i64> = batch.iter().map(|&i| d.label[i] as i64).collect();
                    let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [b, 1]), &ad);
                    logp.gather(1, labels).neg().mean() // [1]
                }
                Target::Soft => {
                    let q: Vec<f32> = batch
                        .iter()
                        .flat_map(|&i| d.soft[i * d.experts..(i + 1) * d.experts].iter().copied())
                        .collect();
                    let q = Tensor::<2>::from_data(TensorData::new(q, [b, d.experts]), &ad);
                    (logp * q).sum_dim(1).neg().mean() // cross-entropy part of the KL, [1]
                }
            };
            let value = loss.clone().into_scalar::<f32>() as f64;
            if !value.is_finite() {
                bail!("gate: non-finite training loss at epoch {epoch} (try a lower lr)");
            }
            let constant = if p.target == Target::Soft {
                batch.iter().map(|&i| neg_entropy[i]).sum::<f64>() / b as f64
            } else {
                0.0
            };
            total += (value + constant) * b as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &gate);
            gate = optim.step(p.lr, gate, grads);
        }
        let eval_gate = gate.valid();
        let (val_loss, val_accuracy) = evaluate(&eval_gate, d, &d.val, p.target, &plain)?;
        let m = EpochMetrics { epoch, train_loss: total / d.train.len() as f64, val_loss, val_accuracy };
        eprintln!(
            "gate epoch {epoch}: train loss {:.4}  val loss {:.4}  val accuracy {:.4}",
            m.train_loss, m.val_loss, m.val_accuracy
        );
        epochs.push(m);
        // Lower val loss is better; without val rows the last epoch wins.
        let score = if d.val.is_empty() { -(epoch as f64) } else { val_loss };
        if best.as_ref().is_none_or(|(_, s, _)| score < *s) {
            best = Some((epoch, score, eval_gate));
        } else if p.patience > 0 && epoch - best.as_ref().map(|b| b.0).unwrap_or(0) >= p.patience {
            stopped_early = true;
            break;
        }
    }
    let (best_epoch, _, gate) = best.expect("at least one epoch");
    Ok(Pretrained { gate, epochs, best: best_epoch, stopped_early })
}

#[derive(Debug, Clone, Serialize)]
pub struct GateSummary {
    pub experts: usize,
    pub input_dim: usize,
    pub hidden: Vec<usize>,
    pub target: Target,
    pub train_rows: usize,
    pub val_rows: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    /// Accuracy against the cluster labels on val at the best epoch.
    pub val_accuracy: Option<f64>,
    pub checkpoint_hash: Option<String>,
    pub pooling: Option<String>,
    pub seconds: f64,
}

/// Refuse inputs made from different embeddings (the "one Whisper source" rule).
pub fn check_same_source(
    emb: &BTreeMap<String, String>,
    other: &BTreeMap<String, String>,
    what: &str,
    path: &Path,
) -> Result<()> {
    for key in [CHECKPOINT_HASH, "pooling"] {
        let (a, b) = (emb.get(key), other.get(key));
        if a != b {
            bail!(
                "the {what} artifact {} was made from other embeddings: its {key} is {} but the embeddings' is {}; rerun the cluster stage on these embeddings",
                path.display(),
                b.map(|v| format!("`{v}`")).unwrap_or_else(|| "missing".into()),
                a.map(|v| format!("`{v}`")).unwrap_or_else(|| "missing".into()),
            );
        }
    }
    Ok(())
}

/// The whole stage: read and check the inputs, pretrain, write `out/gate.safetensors`,
/// `out/gate_config.json`, `out/metrics/` and `out/summary.json`.
pub fn run(embeddings: &Path, clusters: &Path, splits: &Path, out: &Path, p: &GateParams) -> Result<GateSummary> {
    let start = Instant::now();
    let (emb, emeta) = Embeddings::read(embeddings)?;
    let (cl, cmeta) = Clusters::read(clusters)?;
    let (sp, smeta) = Splits::read(splits)?;
    check_same_source(&emeta, &cmeta, "clusters", clusters)?;
    check_same_source(&emeta, &smeta, "splits", splits)?;
    if let Some(k) = cmeta.get(crate::cluster::EXPERTS) {
        if k.parse::<usize>().ok() != Some(cl.k) {
            bail!("{}: metadata says {k} experts but the probabilities have {} columns", clusters.display(), cl.k);
        }
    }
    let data = GateData::join(&emb, &cl, &sp)?;
    let device = crate::whisper::device(&p.device)?;
    let t = pretrain(&data, p, &device)?;
    let mut meta = standard_metadata("gate", emeta.get(CHECKPOINT_HASH).map(String::as_str));
    for key in crate::cluster::CARRIED_METADATA {
        if let Some(v) = emeta.get(key) {
            meta.insert(key.to_string(), v.clone());
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    t.gate.save_with_metadata(out, &meta)?;
    // One row per epoch; val columns are null without val rows.
    let mut metrics = Table::default();
    let opt = |v: f64| if v.is_finite() { Value::F(v) } else { Value::Null };
    for e in &t.epochs {
        metrics.push(vec![
            ("epoch", e.epoch.into()),
            ("train_loss", e.train_loss.into()),
            ("val_loss", opt(e.val_loss)),
            ("val_accuracy", opt(e.val_accuracy)),
        ])?;
    }
    metrics.write(&out.join("metrics"), &meta)?;
    let best = &t.epochs[t.best];
    let finite = |v: f64| v.is_finite().then_some(v);
    let summary = GateSummary {
        experts: data.experts,
        input_dim: data.dim,
        hidden: p.hidden.clone(),
        target: p.target,
        train_rows: data.train.len(),
        val_rows: data.val.len(),
        epochs_run: t.epochs.len(),
        best_epoch: t.best,
        stopped_early: t.stopped_early,
        train_loss: best.train_loss,
        val_loss: finite(best.val_loss),
        val_accuracy: finite(best.val_accuracy),
        checkpoint_hash: emeta.get(CHECKPOINT_HASH).cloned(),
        pooling: emeta.get("pooling").cloned(),
        seconds: start.elapsed().as_secs_f64(),
    };
    crate::stage::write_json(&out.join("summary.json"), &summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Separable synthetic embeddings: `k` centres in `dim` dims, noise std 1, shifted and
    /// scaled per dimension so that the scaler matters.
    fn data(k: usize, per: usize, dim: usize, seed: u64) -> GateData {
        use rand::Rng;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut normal = || {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        };
        let centres: Vec<Vec<f32>> = (0..k).map(|_| (0..dim).map(|_| 1.5 * normal()).collect()).collect();
        let mut d = GateData {
            dim,
            experts: k,
            x: Vec::new(),
            label: Vec::new(),
            soft: Vec::new(),
            train: Vec::new(),
            val: Vec::new(),
        };
        for i in 0..k * per {
            let c = i % k;
            d.x.extend(centres[c].iter().enumerate().map(|(j, m)| (m + normal()) * (1.0 + j as f32) + 10.0));
            d.label.push(c);
            d.soft.extend((0..k).map(|j| if j == c { 0.9 } else { 0.1 / (k - 1) as f32 }));
            if i % 5 == 0 { d.val.push(i) } else { d.train.push(i) }
        }
        d
    }

    #[test]
    fn learns_separable_clusters_hard_and_soft() {
        let d = data(4, 60, 32, 3);
        for target in [Target::Hard, Target::Soft] {
            let p = GateParams { hidden: vec![32], max_epochs: 8, target, ..GateParams::default() };
            let t = pretrain(&d, &p, &Device::flex()).unwrap();
            let acc = t.epochs[t.best].val_accuracy;
            assert!(acc >= 0.95, "{target:?}: val accuracy {acc}");
            assert!(t.epochs.last().unwrap().train_loss < t.epochs[0].train_loss);
            // The returned gate is the best epoch's: re-evaluating it gives its numbers.
            let (loss, acc2) = evaluate(&t.gate, &d, &d.val, target, &Device::flex()).unwrap();
            assert!((loss - t.epochs[t.best].val_loss).abs() < 1e-9 && acc2 == acc);
        }
    }

    #[test]
    fn training_is_reproducible_for_a_seed() {
        let d = data(3, 30, 8, 4);
        let p = GateParams { hidden: vec![16], max_epochs: 3, ..GateParams::default() };
        let a = pretrain(&d, &p, &Device::flex()).unwrap();
        let b = pretrain(&d, &p, &Device::flex()).unwrap();
        assert_eq!(a.epochs, b.epochs);
    }

    #[test]
    fn different_embeddings_are_refused() {
        let e =
            BTreeMap::from([(CHECKPOINT_HASH.to_string(), "aaa".to_string()), ("pooling".into(), "mean_valid".into())]);
        let mut c = e.clone();
        assert!(check_same_source(&e, &c, "clusters", Path::new("c")).is_ok());
        c.insert("pooling".into(), "mean".into());
        let err = check_same_source(&e, &c, "clusters", Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("pooling is `mean`") && err.contains("`mean_valid`"), "{err}");
        c.remove(CHECKPOINT_HASH);
        let err = check_same_source(&e, &c, "clusters", Path::new("c")).unwrap_err().to_string();
        assert!(err.contains("checkpoint_hash is missing"), "{err}");
    }
}
