//! Gate pretraining on the cluster labels: the expert_pretrain + joint_train rows train, the
//! val rows choose the epoch (early stopping on val loss, the best epoch kept) and report
//! accuracy against the clusters. It runs in the project's one training loop
//! ([`crate::train::trainer`]) as a [`TrainTask`].
//!
//! Loss: cross-entropy on the hard cluster labels (`target: hard`), or KL(q || softmax(z))
//! against the clusters' probabilities q (`target: soft`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::activation;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::gate::{Gate, GateConfig};
use crate::artifacts::{CHECKPOINT_HASH, Clusters, Embeddings, Splits};
use crate::train::optim::AdamWConfig;
use crate::train::trainer::{EpochInfo, LoopConfig, StepInfo, TrainTask, train};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Cross-entropy on the cluster ids.
    #[default]
    Hard,
    /// KL divergence to the clusters' membership probabilities.
    Soft,
}

crate::params! {
    pub struct GateParams {
        /// Hidden layer sizes of the MLP.
        pub hidden: Vec<usize> = vec![256],
        /// relu | gelu | tanh | silu
        pub activation: String = "gelu".into(),
        pub dropout: f64 = 0.1,
        pub target: Target = Target::Hard,
        pub lr: f64 = 1e-3,
        pub weight_decay: f64 = 0.01,
        pub batch_size: usize = 64,
        pub max_epochs: usize = 100,
        /// Stop after this many epochs without a lower val loss (0 = never stop early).
        pub patience: usize = 10,
        pub seed: u64 = 42,
        pub device: String = "cpu".into(),
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
        let mut d = GateData::empty(emb.dim, k);
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

    /// No rows yet, for `dim`-wide embeddings and `experts` experts.
    pub fn empty(dim: usize, experts: usize) -> GateData {
        GateData { dim, experts, x: vec![], label: vec![], soft: vec![], train: vec![], val: vec![] }
    }

    /// What a training checkpoint must match to be resumed: the rows and the parameters.
    pub fn fingerprint(&self, p: &GateParams) -> Result<String> {
        let mut h = blake3::Hasher::new();
        h.update(serde_json::to_string(p)?.as_bytes());
        for v in &self.x {
            h.update(&v.to_le_bytes());
        }
        h.update(format!("{:?}|{:?}|{:?}|{:?}", self.label, self.soft, self.train, self.val).as_bytes());
        Ok(h.finalize().to_hex().to_string())
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Gate pretraining as the training loop sees it.
struct GateTask<'a> {
    d: &'a GateData,
    p: &'a GateParams,
    plain: Device,
    /// sum q ln q per row: the constant part of the KL, so the reported soft loss is the KL.
    neg_entropy: Vec<f64>,
    /// The epoch's reported training loss (loss + constant), summed over rows.
    total: f64,
    state: GateState,
}

/// What the stage's outputs are made from; kept in training checkpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct GateState {
    epochs: Vec<EpochMetrics>,
    /// (epoch, score) of the best epoch so far.
    best: Option<(usize, f64)>,
}

impl TrainTask<Gate> for GateTask<'_> {
    fn batches(&mut self, _epoch: usize, rng: &mut StdRng) -> Result<Vec<Vec<usize>>> {
        self.total = 0.0;
        let mut order = self.d.train.clone();
        order.shuffle(rng);
        Ok(order.chunks(self.p.batch_size).map(<[usize]>::to_vec).collect())
    }

    fn loss(&mut self, gate: &Gate, batch: &[usize], _at: &StepInfo) -> Result<Tensor<1>> {
        let (d, b) = (self.d, batch.len());
        let dev = gate.device();
        let x = Tensor::<2>::from_data(TensorData::new(d.rows(batch), [b, d.dim]), &dev);
        let logp = activation::log_softmax(gate.forward(x, true), 1); // [b, k]
        let loss = match self.p.target {
            Target::Hard => {
                let labels: Vec<i64> = batch.iter().map(|&i| d.label[i] as i64).collect();
                let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [b, 1]), &dev);
                logp.gather(1, labels).neg().mean() // [1]
            }
            Target::Soft => {
                let q: Vec<f32> =
                    batch.iter().flat_map(|&i| d.soft[i * d.experts..(i + 1) * d.experts].iter().copied()).collect();
                let q = Tensor::<2>::from_data(TensorData::new(q, [b, d.experts]), &dev);
                (logp * q).sum_dim(1).neg().mean() // cross-entropy part of the KL, [1]
            }
        };
        let constant = match self.p.target {
            Target::Soft => batch.iter().map(|&i| self.neg_entropy[i]).sum::<f64>() / b as f64,
            Target::Hard => 0.0,
        };
        self.total += (loss.clone().into_scalar::<f32>() as f64 + constant) * b as f64;
        Ok(loss)
    }

    fn end_epoch(&mut self, gate: &Gate, best: Option<&mut Gate>, info: &EpochInfo) -> Result<bool> {
        let epoch = info.epoch - 1;
        let (val_loss, val_accuracy) = evaluate(&gate.valid(), self.d, &self.d.val, self.p.target, &self.plain)?;
        let m = EpochMetrics { epoch, train_loss: self.total / self.d.train.len() as f64, val_loss, val_accuracy };
        eprintln!(
            "gate epoch {epoch}: train loss {:.4}  val loss {:.4}  val accuracy {:.4}",
            m.train_loss, m.val_loss, m.val_accuracy
        );
        self.state.epochs.push(m);
        // Lower val loss is better; without val rows the last epoch wins.
        let score = if self.d.val.is_empty() { -(epoch as f64) } else { val_loss };
        if self.state.best.is_none_or(|(_, s)| score < s) {
            self.state.best = Some((epoch, score));
            if let Some(b) = best {
                *b = gate.clone();
            }
            return Ok(false);
        }
        let since = epoch - self.state.best.map(|b| b.0).unwrap_or(0);
        Ok(self.p.patience > 0 && since >= self.p.patience)
    }

    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(&self.state)?)
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        self.state = serde_json::from_value(state)?;
        Ok(())
    }

    fn keeps_best(&self) -> bool {
        true
    }

    fn progress_label(&self, _epoch: usize, _epochs: usize) -> Option<String> {
        None
    }
}

/// Train a gate on `d`; checkpoints go to `ckpt`. `device` is the plain device; training
/// runs on its autodiff twin.
pub fn pretrain(d: &GateData, p: &GateParams, device: &Device, ckpt: &Path) -> Result<Pretrained> {
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
    let ad = device.clone().autodiff();
    ad.seed(p.seed);
    let (mean, std) = d.train_scaler();
    let gate = Gate::new(&cfg, mean, std, &ad);
    if d.val.is_empty() {
        eprintln!("warning: no val rows: the gate trains for max_epochs {} without early stopping", p.max_epochs);
    }
    let neg_entropy = (0..d.label.len())
        .map(|i| {
            d.soft[i * d.experts..(i + 1) * d.experts]
                .iter()
                .filter(|&&q| q > 0.0)
                .map(|&q| q as f64 * (q as f64).ln())
                .sum()
        })
        .collect();
    let mut task =
        GateTask { d, p, plain: device.clone().inner(), neg_entropy, total: 0.0, state: GateState::default() };
    let loop_cfg = LoopConfig {
        epochs: p.max_epochs,
        learning_rate: p.lr,
        warmup_steps: 0,
        max_grad_norm: 0.0,
        gradient_accumulation_steps: 1,
        optimizer: AdamWConfig { weight_decay: p.weight_decay, ..AdamWConfig::default() },
        seed: p.seed,
        save_every_n_epochs: 10,
        max_steps: None,
    };
    let fingerprint = d.fingerprint(p)?;
    let t = train(gate, &mut task, &loop_cfg, ckpt, &fingerprint)?;
    let best = task.state.best.map(|b| b.0).context("gate: no epoch ran")?;
    Ok(Pretrained {
        gate: t.best.context("the kept gate")?.valid(),
        epochs: task.state.epochs,
        best,
        stopped_early: t.stopped_early,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("wm-gate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Separable synthetic embeddings: `k` centres in `dim` dims, noise std 1, shifted and
    /// scaled per dimension so that the scaler matters.
    fn data(k: usize, per: usize, dim: usize, seed: u64) -> GateData {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut normal = || {
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        };
        let centres: Vec<Vec<f32>> = (0..k).map(|_| (0..dim).map(|_| 1.5 * normal()).collect()).collect();
        let mut d = GateData::empty(dim, k);
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
            let t = pretrain(&d, &p, &Device::flex(), &tmp("learn")).unwrap();
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
        let a = pretrain(&d, &p, &Device::flex(), &tmp("repro-a")).unwrap();
        let b = pretrain(&d, &p, &Device::flex(), &tmp("repro-b")).unwrap();
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
