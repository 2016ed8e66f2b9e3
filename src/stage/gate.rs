//! Stage gate: pretrain the routing MLP (embedding -> expert logits) on the cluster labels.
//! Writes `gate.safetensors` + `gate_config.json`, a per-epoch `metrics/` table and
//! `summary.json`. The training itself is [`crate::routing::pretrain`].

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::Stage;
use crate::artifacts::table::{Table, Value};
use crate::artifacts::{CHECKPOINT_HASH, Clusters, Embeddings, Splits, standard_metadata};
use crate::routing::pretrain::{GateData, GateParams, Target, check_same_source, pretrain};

/// Inputs and outputs of stage gate.
#[derive(clap::Args, Debug, Clone)]
pub struct GatePaths {
    /// The embeddings dataset (stage embed).
    #[arg(long)]
    pub embeddings: PathBuf,
    /// The clusters dataset (stage cluster, <out>/clusters).
    #[arg(long)]
    pub clusters: PathBuf,
    /// The splits dataset (stage cluster, <out>/splits).
    #[arg(long)]
    pub splits: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
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

impl fmt::Display for GateSummary {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let acc = self.val_accuracy.map(|a| format!("{a:.4}")).unwrap_or_else(|| "n/a (no val rows)".into());
        write!(
            f,
            "gate: {} experts, {} train / {} val rows; best epoch {} of {}; val accuracy vs clusters {acc}",
            self.experts, self.train_rows, self.val_rows, self.best_epoch, self.epochs_run
        )
    }
}

pub struct GateStage;

impl Stage for GateStage {
    const NAME: &'static str = "gate";
    const ABOUT: &'static str = "Pretrain the gate (embedding -> expert logits) on the clusters";
    type Paths = GatePaths;
    type Params = GateParams;
    type Summary = GateSummary;

    fn run(paths: &GatePaths, p: &GateParams) -> Result<GateSummary> {
        let start = Instant::now();
        let (emb, emeta) = Embeddings::read(&paths.embeddings)?;
        let (cl, cmeta) = Clusters::read(&paths.clusters)?;
        let (sp, smeta) = Splits::read(&paths.splits)?;
        check_same_source(&emeta, &cmeta, "clusters", &paths.clusters)?;
        check_same_source(&emeta, &smeta, "splits", &paths.splits)?;
        if let Some(k) = cmeta.get(crate::cluster::EXPERTS)
            && k.parse::<usize>().ok() != Some(cl.k)
        {
            bail!(
                "{}: metadata says {k} experts but the probabilities have {} columns",
                paths.clusters.display(),
                cl.k
            );
        }
        let data = GateData::join(&emb, &cl, &sp)?;
        let device = crate::whisper::device(&p.device)?;
        let ckpt = paths.out.join("checkpoint");
        let t = pretrain(&data, p, &device, &ckpt)?;
        let mut meta = standard_metadata("gate", emeta.get(CHECKPOINT_HASH).map(String::as_str));
        for key in crate::cluster::CARRIED_METADATA {
            if let Some(v) = emeta.get(key) {
                meta.insert(key.to_string(), v.clone());
            }
        }
        std::fs::create_dir_all(&paths.out).with_context(|| format!("cannot create {}", paths.out.display()))?;
        t.gate.save_with_metadata(&paths.out, &meta)?;
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
        metrics.write(&paths.out.join("metrics"), &meta)?;
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
        crate::util::write_json(&paths.out.join("summary.json"), &summary)?;
        std::fs::remove_dir_all(&ckpt).context("removing the training checkpoint")?;
        Ok(summary)
    }
}
