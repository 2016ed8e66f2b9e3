//! Stage experts: one LoRA adapter per cluster, pretrained on that cluster's expert_pretrain
//! utterances, all experts in the same batched passes; per-expert metrics (loss per epoch, val
//! loss and WER on the cluster's val utterances); adapters in PEFT layout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::artifacts::table::{Table, Value};
use crate::artifacts::{CHECKPOINT_HASH, Clusters, Splits, standard_metadata};
use crate::dataset::{Columns, Dataset};
use crate::eval::normalize::Normalizer;
use crate::eval::wer::{Score, score};
use crate::lora::LoraConfig;
use crate::lora::peft::save_expert;
use crate::train::data::{examples_from_dataset, transcribe_rows};
use crate::train::{EncoderCache, Example, Row, TrainConfig, rows_loss, train_rows};
use crate::whisper::model::Whisper;
use crate::whisper::{Checkpoint, device};

/// How a stage evaluates transcripts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    pub batch_size: usize,
    pub max_new_tokens: usize,
    pub normalizer: Normalizer,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig { batch_size: 8, max_new_tokens: 96, normalizer: Normalizer::Basic }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ExpertsParams {
    pub lora: LoraConfig,
    pub train: TrainConfig,
    /// With soft cluster probabilities, an utterance trains its top-k clusters' experts.
    pub assign_top_k: usize,
    pub device: String,
    pub language: Option<String>,
    pub eval: EvalConfig,
    pub columns: Columns,
}

impl Default for ExpertsParams {
    fn default() -> Self {
        ExpertsParams {
            lora: LoraConfig::default(),
            train: TrainConfig::default(),
            assign_top_k: 1,
            device: "cpu".into(),
            language: None,
            eval: EvalConfig::default(),
            columns: Columns::default(),
        }
    }
}

/// What a cluster stage produced, joined by utterance id.
pub struct Grouping {
    pub clusters: Clusters,
    pub splits: HashMap<String, String>,
    pub metadata: BTreeMap<String, String>,
}

impl Grouping {
    pub fn read(dir: &Path) -> Result<Grouping> {
        let (clusters, metadata) = Clusters::read(&dir.join("clusters"))?;
        let (splits, _) = Splits::read(&dir.join("splits"))?;
        Ok(Grouping { clusters, splits: splits.ids.into_iter().zip(splits.split).collect(), metadata })
    }

    pub fn experts(&self) -> usize {
        self.clusters.k
    }

    /// Ids of one split, in the clusters table's order, with their row in it.
    pub fn split(&self, name: &str) -> Vec<(usize, &str)> {
        self.clusters
            .ids
            .iter()
            .enumerate()
            .filter(|(_, id)| self.splits.get(*id).is_some_and(|s| s == name))
            .map(|(i, id)| (i, id.as_str()))
            .collect()
    }

    /// The experts an utterance trains: its cluster, or its top-k clusters by probability.
    pub fn experts_of(&self, row: usize, top_k: usize) -> Vec<usize> {
        if top_k <= 1 {
            return vec![self.clusters.cluster[row] as usize];
        }
        let p = self.clusters.prob_row(row);
        let mut idx: Vec<usize> = (0..p.len()).collect();
        idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        idx.truncate(top_k);
        idx
    }

    /// The model that will be trained must be the one the embeddings came from.
    pub fn check_checkpoint(&self, ck: &Checkpoint) -> Result<()> {
        match self.metadata.get(CHECKPOINT_HASH) {
            Some(h) if h != &ck.hash => bail!(
                "the clusters were made from embeddings of another checkpoint (hash {h}) than {} (hash {}); rerun embed with this model",
                ck.dir.display(),
                ck.hash
            ),
            _ => Ok(()),
        }
    }
}

/// Per-expert val loss and WER; rows = val utterances routed to their cluster's expert.
pub fn evaluate_experts(
    ck: &Checkpoint,
    model: &Whisper,
    cache: &mut EncoderCache,
    examples: &[Example],
    val: &[(usize, Option<usize>)],
    experts: usize,
    eval: &EvalConfig,
) -> Result<(Vec<Option<f64>>, Vec<Option<Score>>)> {
    let valid = model.valid();
    let mut loss = vec![(0.0f64, 0usize); experts];
    for chunk in val.chunks(eval.batch_size.max(1)) {
        let rows: Vec<Row> = chunk.iter().map(|&(i, e)| Row { example: i, expert: e, weight: 1.0 }).collect();
        let (_, l) = rows_loss(ck, &valid, cache, examples, &rows, rows.len(), false);
        let l: Vec<f32> = l.into_data().try_into_vec_as()?;
        for ((_, e), v) in chunk.iter().zip(l) {
            if let Some(e) = e {
                loss[*e].0 += v as f64;
                loss[*e].1 += 1;
            }
        }
    }
    let exs: Vec<&Example> = val.iter().map(|(i, _)| &examples[*i]).collect();
    let routes: Vec<Option<usize>> = val.iter().map(|(_, e)| *e).collect();
    let hyps = transcribe_rows(ck, &valid, cache, &exs, &routes, eval.batch_size, eval.max_new_tokens)?;
    let mut wer: Vec<Option<Score>> = vec![None; experts];
    for ((e, h), (_, route)) in exs.iter().zip(&hyps).zip(val) {
        if let Some(r) = route {
            let s = score(eval.normalizer, &e.text, h);
            wer[*r] = Some(wer[*r].map_or(s, |w| w + s));
        }
    }
    Ok((loss.iter().map(|(s, n)| (*n > 0).then(|| s / *n as f64)).collect(), wer))
}

#[derive(Debug, Serialize)]
pub struct ExpertSummary {
    pub expert: usize,
    pub train_rows: usize,
    pub val_utterances: usize,
    pub val_loss_base: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_wer_base: Option<f64>,
    pub val_wer: Option<f64>,
}

/// Train one adapter per cluster and write them (PEFT layout), their metrics and a summary.
pub fn run(
    model_dir: &str,
    dataset: &Path,
    clusters_dir: &Path,
    out: &Path,
    p: &ExpertsParams,
) -> Result<Vec<ExpertSummary>> {
    let dev = device(&p.device)?.autodiff();
    let ck = Checkpoint::load(model_dir, &dev)?;
    let g = Grouping::read(clusters_dir)?;
    g.check_checkpoint(&ck)?;
    let k = g.experts();
    let pretrain = g.split("expert_pretrain");
    let val = g.split("val");
    if pretrain.is_empty() {
        bail!("no expert_pretrain utterances in {}", clusters_dir.display());
    }
    let ds = Dataset::open(dataset, &p.columns)?;
    let wanted: HashSet<String> = pretrain.iter().chain(&val).map(|(_, id)| id.to_string()).collect();
    let by_id = examples_from_dataset(&ck, &ds, &wanted, p.train.leading_space, p.language.as_deref())?;
    let mut examples = Vec::new();
    let mut index = HashMap::new();
    for (_, id) in pretrain.iter().chain(&val) {
        index.entry(id.to_string()).or_insert_with(|| {
            examples.push(by_id[*id].clone());
            examples.len() - 1
        });
    }
    let rows: Vec<Row> = pretrain
        .iter()
        .flat_map(|&(r, id)| {
            let ex = index[id];
            g.experts_of(r, p.assign_top_k).into_iter().map(move |e| Row { example: ex, expert: Some(e), weight: 1.0 })
        })
        .collect();
    let val_rows: Vec<(usize, Option<usize>)> =
        val.iter().map(|&(r, id)| (index[id], Some(g.clusters.cluster[r] as usize))).collect();
    let mut train_count = vec![0usize; k];
    for r in &rows {
        train_count[r.expert.unwrap()] += 1;
    }
    eprintln!(
        "experts: {k} experts, {} training rows {:?}, {} val utterances",
        rows.len(),
        train_count,
        val_rows.len()
    );
    if let Some(e) = train_count.iter().position(|&c| c == 0) {
        eprintln!("warning: expert {e} has no expert_pretrain utterance; it stays the base model");
    }

    let mut model = ck.model.clone();
    dev.seed(p.train.seed);
    let targeted = model.attach_lora(&p.lora, k, &dev)?;
    eprintln!(
        "LoRA r={} alpha={} on {} modules (encoder shared: {})",
        p.lora.r,
        p.lora.alpha,
        targeted.len(),
        !model.encoder_has_adapters()
    );

    let mut cache = EncoderCache::new(p.train.encoder_cache).with_cross_kv(p.train.cross_kv_cache_mb);
    let mut metrics = Table::default();
    let (base_loss, base_wer) = evaluate_experts(&ck, &model, &mut cache, &examples, &val_rows, k, &p.eval)?;
    for e in 0..k {
        metrics.push(vec![
            ("expert", e.into()),
            ("epoch", 0usize.into()),
            ("train_loss", Value::Null),
            ("val_loss", base_loss[e].into()),
            ("val_wer", base_wer[e].map(|s| s.wer()).into()),
            ("train_rows", train_count[e].into()),
        ])?;
    }
    let fingerprint = crate::pipeline::hash::hash_str(&format!(
        "{}|{}|{}|{:?}",
        serde_json::to_string(p)?,
        ck.hash,
        g.metadata.get("params_hash").cloned().unwrap_or_default(),
        rows
    ));
    let ckpt_dir = out.join("checkpoint");
    let mut last = (base_loss.clone(), base_wer.clone());
    let mut steps = 0u64;
    let model = train_rows(&ck, model, &examples, &rows, k, &p.train, &ckpt_dir, &fingerprint, |m, stats| {
        let (vl, vw) = evaluate_experts(&ck, m, &mut cache, &examples, &val_rows, k, &p.eval)?;
        for e in 0..k {
            metrics.push(vec![
                ("expert", e.into()),
                ("epoch", stats.epoch.into()),
                ("train_loss", stats.expert_loss[e].into()),
                ("val_loss", vl[e].into()),
                ("val_wer", vw[e].map(|s| s.wer()).into()),
                ("train_rows", train_count[e].into()),
            ])?;
        }
        eprintln!(
            "epoch {}: train loss {:.4}; val loss {}; val WER {}",
            stats.epoch,
            stats.loss,
            fmt_list(&vl.iter().map(|v| v.map(|x| format!("{x:.3}"))).collect::<Vec<_>>()),
            fmt_list(&vw.iter().map(|v| v.map(|s| format!("{:.1}%", 100.0 * s.wer()))).collect::<Vec<_>>()),
        );
        last = (vl, vw);
        steps = stats.steps;
        Ok(())
    })?;

    for e in 0..k {
        save_expert(&model, e, &p.lora, model_dir, &out.join(format!("expert_{e}")))?;
    }
    let mut meta = standard_metadata("experts", Some(&ck.hash));
    meta.insert("experts".into(), k.to_string());
    metrics.write(&out.join("metrics"), &meta)?;
    let summary: Vec<ExpertSummary> = (0..k)
        .map(|e| ExpertSummary {
            expert: e,
            train_rows: train_count[e],
            val_utterances: val_rows.iter().filter(|(_, x)| *x == Some(e)).count(),
            val_loss_base: base_loss[e],
            val_loss: last.0[e],
            val_wer_base: base_wer[e].map(|s| s.wer()),
            val_wer: last.1[e].map(|s| s.wer()),
        })
        .collect();
    crate::stage::write_json(
        &out.join("experts.json"),
        &serde_json::json!({
            "experts": k,
            "base_model": model_dir,
            "checkpoint_hash": ck.hash,
            "lora": p.lora,
            "adapters": (0..k).map(|e| format!("expert_{e}")).collect::<Vec<_>>(),
            "optimizer_steps": steps,
            "summary": summary,
        }),
    )?;
    std::fs::remove_dir_all(&ckpt_dir).context("removing the training checkpoint")?;
    Ok(summary)
}

fn fmt_list(v: &[Option<String>]) -> String {
    v.iter().map(|x| x.clone().unwrap_or_else(|| "-".into())).collect::<Vec<_>>().join(" ")
}

/// The dense baseline: one adapter trained on all expert_pretrain and joint_train utterances
/// with the mixture's budget of optimizer steps (expert pretraining + joint training).
pub fn run_dense(
    model_dir: &str,
    dataset: &Path,
    clusters_dir: &Path,
    experts_dir: &Path,
    joint_dir: &Path,
    out: &Path,
    p: &ExpertsParams,
) -> Result<serde_json::Value> {
    let dev = device(&p.device)?.autodiff();
    let ck = Checkpoint::load(model_dir, &dev)?;
    let g = Grouping::read(clusters_dir)?;
    g.check_checkpoint(&ck)?;
    let experts: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(experts_dir.join("experts.json"))?)?;
    let expert_steps = experts["optimizer_steps"].as_u64().context("experts.json: no optimizer_steps")?;
    let log = crate::artifacts::read_dataset(&joint_dir.join("log_epochs"))?.concat()?;
    let joint_steps = crate::artifacts::columns::i64s(&log, "step")?.into_iter().max().unwrap_or(0) as u64;
    let budget = expert_steps + joint_steps;

    let train_ids: Vec<(usize, &str)> = g.split("expert_pretrain").into_iter().chain(g.split("joint_train")).collect();
    let val = g.split("val");
    let ds = Dataset::open(dataset, &p.columns)?;
    let wanted: HashSet<String> = train_ids.iter().chain(&val).map(|(_, id)| id.to_string()).collect();
    let by_id = examples_from_dataset(&ck, &ds, &wanted, p.train.leading_space, p.language.as_deref())?;
    let examples: Vec<Example> = train_ids.iter().chain(&val).map(|(_, id)| by_id[*id].clone()).collect();
    let rows: Vec<Row> = (0..train_ids.len()).map(|i| Row { example: i, expert: Some(0), weight: 1.0 }).collect();
    let val_rows: Vec<(usize, Option<usize>)> = (0..val.len()).map(|i| (train_ids.len() + i, Some(0))).collect();

    let steps_per_epoch =
        rows.len().div_ceil(p.train.batch_size.max(1)).div_ceil(p.train.gradient_accumulation_steps.max(1));
    let mut cfg = p.train.clone();
    cfg.epochs = (budget as usize).div_ceil(steps_per_epoch.max(1)).max(1);
    cfg.max_steps = Some(budget);
    eprintln!(
        "dense: {} utterances, budget {budget} optimizer steps ({expert_steps} expert pretraining + {joint_steps} joint) = {} epochs",
        rows.len(),
        cfg.epochs
    );
    let mut model = ck.model.clone();
    dev.seed(cfg.seed);
    model.attach_lora(&p.lora, 1, &dev)?;
    let mut cache = EncoderCache::new(cfg.encoder_cache).with_cross_kv(cfg.cross_kv_cache_mb);
    let (l0, w0) = evaluate_experts(&ck, &model, &mut cache, &examples, &val_rows, 1, &p.eval)?;
    let mut metrics = Table::default();
    let mut steps = 0;
    let fingerprint = crate::pipeline::hash::hash_str(&format!(
        "dense|{}|{}|{budget}|{:?}",
        serde_json::to_string(p)?,
        ck.hash,
        rows
    ));
    let ckpt = out.join("checkpoint");
    let model = train_rows(&ck, model, &examples, &rows, 1, &cfg, &ckpt, &fingerprint, |_, s| {
        metrics.push(vec![
            ("epoch", s.epoch.into()),
            ("train_loss", s.loss.into()),
            ("steps", (s.steps as i64).into()),
        ])?;
        steps = s.steps;
        Ok(())
    })?;
    let (l1, w1) = evaluate_experts(&ck, &model, &mut cache, &examples, &val_rows, 1, &p.eval)?;
    save_expert(&model, 0, &p.lora, model_dir, &out.join("adapter"))?;
    metrics.write(&out.join("metrics"), &standard_metadata("dense", Some(&ck.hash)))?;
    let summary = serde_json::json!({
        "optimizer_steps": steps,
        "budget": budget,
        "utterances": rows.len(),
        "val_loss_base": l0[0], "val_loss": l1[0],
        "val_wer_base": w0[0].map(|s| s.wer()), "val_wer": w1[0].map(|s| s.wer()),
        "checkpoint_hash": ck.hash,
    });
    crate::stage::write_json(&out.join("dense.json"), &summary)?;
    std::fs::remove_dir_all(&ckpt)?;
    Ok(summary)
}
