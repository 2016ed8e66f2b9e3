//! Stage experts: one LoRA adapter per cluster, pretrained on that cluster's
//! `expert_pretrain` utterances (all experts in the same batched passes). Writes one adapter
//! directory per expert in PEFT's layout, per-expert metrics (train loss per epoch, val loss
//! and WER on the cluster's val utterances, epoch 0 = the start) and `experts.json`, the
//! typed manifest the joint and dense stages read. Experts start from zero adapters (the base
//! model) or, with `shared_epochs`, from one adapter first trained on all their utterances.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::{Sharding, Stage};
use crate::artifacts::standard_metadata;
use crate::artifacts::table::Table;
use crate::artifacts::{Grouping, Shard};
use crate::dataset::{Columns, Dataset};
use crate::eval::EvalConfig;
use crate::eval::wer::{Score, score};
use crate::lora::LoraConfig;
use crate::mixture::transcribe::transcribe;
use crate::train::{
    EncoderCache, EpochInfo, Example, Prompting, Row, StepInfo, TrainConfig, TrainTask, examples_from_dataset, train,
    weighted_loss,
};
use crate::whisper::model::Whisper;
use crate::whisper::{Checkpoint, Task};

crate::params! {
    /// Parameters of the experts stage (and of the dense baseline, which trains the same way).
    pub struct ExpertsParams {
        pub lora: LoraConfig = LoraConfig::default(),
        pub train: TrainConfig = TrainConfig::default(),
        /// With soft cluster probabilities, an utterance trains its top-k clusters' experts.
        pub assign_top_k: usize = 1,
        /// Epochs of one shared adapter on every expert's pretraining utterances before the
        /// experts train: each expert then starts from it instead of from zero. With
        /// `train.patience` the shared adapter is early-stopped on all val utterances, and an
        /// expert keeps it when its own epochs do not lower its val loss. Its steps count toward
        /// the dense baseline's budget. Each shard of a sharded run trains the same one (the
        /// same data, seed and device give the same adapter). 0: no shared start. (Experts stage
        /// only; the dense baseline ignores it.)
        pub shared_epochs: usize = 0,
        pub device: String = "cpu".into(),
        /// fp32, bf16 or f16: the frozen base model's weights and activations (adapters, gate and
        /// optimizer state stay fp32; f16 scales the loss). For GPUs; fp32 on CPU.
        pub precision: crate::whisper::Precision = crate::whisper::Precision::Fp32,
        /// Language of every utterance's prompt when the dataset has no language column; None:
        /// the language the embed stage detected (multilingual checkpoints; needs --embeddings).
        pub language: Option<String> = None,
        /// transcribe, or translate (into English; the dataset's text is then the translation).
        pub task: Task = Task::Transcribe,
        pub eval: EvalConfig = EvalConfig::default(),
        pub columns: Columns = Columns::default(),
    }
}

/// Inputs and outputs of stage experts.
#[derive(clap::Args, Debug, Clone)]
pub struct ExpertsPaths {
    #[command(flatten)]
    pub base: super::ModelData,
    /// The cluster stage's output (clusters/, splits/).
    #[arg(long)]
    pub clusters: PathBuf,
    /// The embed stage's output, for the languages it detected (multilingual checkpoints).
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// Train the experts of shard i/N only (a contiguous range of the k experts), writing
    /// their adapters, metrics part files and `experts.shard-i-of-N.json` into `--out`.
    #[arg(long)]
    pub shard: Option<Shard>,
}

/// One expert's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExpertSummary {
    pub expert: usize,
    pub train_rows: usize,
    pub val_utterances: usize,
    /// The epoch whose adapters were kept (0 = the start: the base model or the shared adapter).
    pub kept_epoch: Option<usize>,
    pub val_loss_base: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_wer_base: Option<f64>,
    pub val_wer: Option<f64>,
}

/// `experts.json`: what later stages read from this one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExpertsManifest {
    pub experts: usize,
    pub base_model: String,
    pub checkpoint_hash: String,
    pub lora: LoraConfig,
    /// Adapter directories, relative to the stage's output, expert 0 first.
    pub adapters: Vec<String>,
    /// The experts' optimizer steps (summed over shards).
    pub optimizer_steps: u64,
    pub summary: Vec<ExpertSummary>,
    /// The shared start (`shared_epochs`), expert 0 standing for it; None without one.
    #[serde(default)]
    pub shared: Option<ExpertSummary>,
    /// The shared start's optimizer steps (every shard trains the same one).
    #[serde(default)]
    pub shared_steps: u64,
}

impl ExpertsManifest {
    /// `experts.json`, or, from a sharded run, the shards' `experts.shard-i-of-N.json` put
    /// together (every shard must be there).
    pub fn read(dir: &Path) -> Result<ExpertsManifest> {
        let whole = dir.join("experts.json");
        if whole.exists() {
            return crate::util::read_json(&whole);
        }
        let mut parts: Vec<(usize, usize, PathBuf)> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let name = p.file_name()?.to_str()?.to_string();
                let (i, n) = name.strip_prefix("experts.shard-")?.strip_suffix(".json")?.split_once("-of-")?;
                Some((i.parse().ok()?, n.parse().ok()?, p))
            })
            .collect();
        parts.sort();
        let Some(&(_, n, _)) = parts.first() else {
            bail!("{} has no experts.json (and no shard's experts.shard-i-of-N.json)", dir.display());
        };
        let have: Vec<usize> = parts.iter().filter(|p| p.1 == n).map(|p| p.0).collect();
        if have != (0..n).collect::<Vec<_>>() || parts.len() != n {
            bail!("{}: the experts stage ran in {n} shards but the shard files are {have:?}", dir.display());
        }
        let mut shards: Vec<ExpertsManifest> =
            parts.iter().map(|(_, _, p)| crate::util::read_json(p)).collect::<Result<_>>()?;
        let mut all = shards.remove(0);
        for s in shards {
            if (s.experts, &s.checkpoint_hash, &s.lora, s.shared_steps)
                != (all.experts, &all.checkpoint_hash, &all.lora, all.shared_steps)
            {
                bail!("{}: the experts shards were trained with different settings", dir.display());
            }
            all.adapters.extend(s.adapters);
            all.summary.extend(s.summary);
            all.optimizer_steps += s.optimizer_steps;
        }
        if all.adapters.len() != all.experts {
            bail!("{}: the shards hold {} of {} experts", dir.display(), all.adapters.len(), all.experts);
        }
        Ok(all)
    }

    pub fn adapter_dirs(&self, dir: &Path) -> Vec<PathBuf> {
        self.adapters.iter().map(|a| dir.join(a)).collect()
    }

    /// Every optimizer step the stage took: the shared start's and the experts'.
    pub fn total_steps(&self) -> u64 {
        self.optimizer_steps + self.shared_steps
    }
}

/// What the stage prints.
pub struct ExpertsReport(pub Vec<ExpertSummary>);

impl fmt::Display for ExpertsReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let opt = |v: Option<f64>, pct: bool| match v {
            Some(x) if pct => format!("{:.1}%", 100.0 * x),
            Some(x) => format!("{x:.3}"),
            None => "-".into(),
        };
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "expert {}: {} rows; val loss {} -> {}; val WER {} -> {}",
                s.expert,
                s.train_rows,
                opt(s.val_loss_base, false),
                opt(s.val_loss, false),
                opt(s.val_wer_base, true),
                opt(s.val_wer, true)
            )?;
        }
        Ok(())
    }
}

pub struct Experts;

impl Stage for Experts {
    const NAME: &'static str = "experts";
    const ABOUT: &'static str = "Pretrain one LoRA expert per cluster";
    const SHARDING: Sharding = Sharding::Experts;
    type Paths = ExpertsPaths;
    type Params = ExpertsParams;
    type Summary = ExpertsReport;

    fn run(paths: &ExpertsPaths, p: &ExpertsParams) -> Result<ExpertsReport> {
        let (ck, g) = super::checkpoint_and_grouping(&paths.base.model, &paths.clusters, &p.device, p.precision, true)?;
        let dev = ck.device.clone();
        let k = g.experts();
        let mut data = ExpertData::gather(&ck, &g, &paths.base.dataset, paths.embeddings.as_deref(), p)?;
        let ckpt = match paths.shard {
            Some(s) => paths.out.join(format!("checkpoint-shard-{}-of-{}", s.index, s.count)),
            None => paths.out.join("checkpoint"),
        };
        let fingerprint = crate::util::hash_str(&format!(
            "{}|{}|{}|{:?}",
            serde_json::to_string(p)?,
            ck.hash,
            g.metadata.get("params_hash").cloned().unwrap_or_default(),
            data.rows
        ));
        // Every shard trains the same shared start (on every expert's rows) before its own experts.
        let shared = match p.shared_epochs {
            0 => None,
            _ => Some(train_shared(&ck, &data, p, &ckpt.join("shared"))?),
        };
        // A shard trains a contiguous range of the experts on their rows only.
        let mine = paths.shard.map_or(0..k, |s| s.range(k));
        if let Some(s) = paths.shard {
            data.rows.retain(|r| r.expert.is_some_and(|e| mine.contains(&e)));
            data.val.retain(|(_, e)| e.is_some_and(|e| mine.contains(&e)));
            eprintln!("experts shard {}/{}: experts {mine:?} of {k}", s.index, s.count);
        }
        eprintln!(
            "experts: {k} experts, {} training rows {:?}, {} val utterances",
            data.rows.len(),
            &data.train_count[mine.clone()],
            data.val.len()
        );
        if let Some(e) = mine.clone().find(|&e| data.train_count[e] == 0) {
            eprintln!("warning: expert {e} has no expert_pretrain utterance; it stays at its start");
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
        if let Some(s) = &shared {
            model.copy_adapter(&s.model, 0, 0..k);
        }
        let mut task = AdapterTask::new(&ck, &data.examples, &data.rows, k, &p.train, Some((&data.val, &p.eval)));
        task.record_base(&model)?;
        let trained = train(model, &mut task, &p.train.loop_config(), &ckpt.join("experts"), &fingerprint)?;
        let model = trained.best.unwrap_or(trained.model);
        for e in mine.clone() {
            crate::whisper::peft::save_expert(
                &model,
                e,
                &p.lora,
                &paths.base.model,
                &paths.out.join(format!("expert_{e}")),
            )?;
        }
        let mut meta = standard_metadata("experts", Some(&ck.hash));
        meta.insert("experts".into(), k.to_string());
        task.metrics_table(&data.train_count, mine.clone())?.write_shard(
            &paths.out.join("metrics"),
            &meta,
            paths.shard,
        )?;
        let mut summary = task.summary(&data.train_count, &data.val);
        summary.retain(|s| mine.contains(&s.expert));
        let manifest = ExpertsManifest {
            experts: k,
            base_model: paths.base.model.clone(),
            checkpoint_hash: ck.hash.clone(),
            lora: p.lora.clone(),
            adapters: mine.clone().map(|e| format!("expert_{e}")).collect(),
            optimizer_steps: trained.steps,
            summary: summary.clone(),
            shared_steps: shared.as_ref().map_or(0, |s| s.steps),
            shared: shared.map(|s| s.summary),
        };
        let name = match paths.shard {
            Some(s) => format!("experts.shard-{}-of-{}.json", s.index, s.count),
            None => "experts.json".into(),
        };
        crate::util::write_json(&paths.out.join(name), &manifest)?;
        if ckpt.exists() {
            std::fs::remove_dir_all(&ckpt).context("removing the training checkpoint")?;
        }
        Ok(ExpertsReport(summary))
    }
}

/// The shared start of every expert and what it cost.
struct Shared {
    model: Whisper,
    summary: ExpertSummary,
    steps: u64,
}

/// One adapter trained on every expert's pretraining utterances (each once) for
/// `shared_epochs` (early-stopped on every val utterance with `train.patience`).
fn train_shared(ck: &Checkpoint, data: &ExpertData, p: &ExpertsParams, ckpt: &Path) -> Result<Shared> {
    let mut seen = HashSet::new();
    let rows: Vec<Row> =
        data.rows.iter().filter(|r| seen.insert(r.example)).map(|r| Row { expert: Some(0), ..*r }).collect();
    let val: Vec<(usize, Option<usize>)> = data.val.iter().map(|&(i, _)| (i, Some(0))).collect();
    let cfg = TrainConfig { epochs: p.shared_epochs, ..p.train.clone() };
    // What the shared adapter depends on (not the experts' own epochs), so that a finished
    // one is resumed, not retrained, after those change.
    let fingerprint = crate::util::hash_str(&format!(
        "shared|{}|{}|{}|{}|{}|{rows:?}|{val:?}",
        p.precision.name(),
        serde_json::to_string(&p.lora)?,
        serde_json::to_string(&cfg)?,
        serde_json::to_string(&p.eval)?,
        ck.hash
    ));
    eprintln!("experts: a shared start on all {} pretraining utterances, up to {} epochs", rows.len(), cfg.epochs);
    let mut model = ck.model.clone();
    ck.device.seed(cfg.seed);
    model.attach_lora(&p.lora, 1, &ck.device)?;
    let mut task = AdapterTask::new(ck, &data.examples, &rows, 1, &cfg, Some((&val, &p.eval)));
    task.record_base(&model)?;
    let trained = train(model, &mut task, &cfg.loop_config(), ckpt, &fingerprint)?;
    let summary = task.summary(&[rows.len()], &val).remove(0);
    eprintln!("shared start: {}", ExpertsReport(vec![summary.clone()]));
    Ok(Shared { model: trained.best.unwrap_or(trained.model), summary, steps: trained.steps })
}

/// The languages the embed stage detected, by id (none without `--embeddings`).
pub fn detected_languages(embeddings: Option<&Path>) -> Result<HashMap<String, String>> {
    match embeddings {
        Some(path) => Ok(crate::artifacts::Embeddings::read(path)?.0.languages()),
        None => Ok(HashMap::new()),
    }
}

/// The utterances of expert pretraining: examples (pretrain first, then val), the training
/// rows and the val rows with the expert of their cluster.
pub struct ExpertData {
    pub examples: Vec<Example>,
    pub rows: Vec<Row>,
    pub val: Vec<(usize, Option<usize>)>,
    pub train_count: Vec<usize>,
}

impl ExpertData {
    fn gather(
        ck: &Checkpoint,
        g: &Grouping,
        dataset: &Path,
        embeddings: Option<&Path>,
        p: &ExpertsParams,
    ) -> Result<ExpertData> {
        let pretrain = g.split("expert_pretrain");
        let val = g.split("val");
        if pretrain.is_empty() {
            bail!("no expert_pretrain utterances in the clusters");
        }
        let ds = Dataset::open(dataset, &p.columns)?;
        let wanted: HashSet<String> = pretrain.iter().chain(&val).map(|(_, id)| id.to_string()).collect();
        let detected = detected_languages(embeddings)?;
        let prompting =
            Prompting { language: p.language.as_deref(), detected: Some(&detected), task: p.task, decode_only: false };
        let by_id = examples_from_dataset(ck, &ds, &wanted, p.train.leading_space, prompting)?;
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
                g.experts_of(r, p.assign_top_k).into_iter().map(move |e| Row {
                    example: ex,
                    expert: Some(e),
                    weight: 1.0,
                })
            })
            .collect();
        let val: Vec<(usize, Option<usize>)> =
            val.iter().map(|&(r, id)| (index[id], Some(g.clusters.cluster[r] as usize))).collect();
        let mut train_count = vec![0usize; g.experts()];
        for r in &rows {
            train_count[r.expert.unwrap()] += 1;
        }
        Ok(ExpertData { examples, rows, val, train_count })
    }
}

/// One epoch's figures per expert (epoch 0 = before training).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: Option<f64>,
    pub expert_loss: Vec<Option<f64>>,
    pub steps: u64,
    pub val_loss: Vec<Option<f64>>,
    pub val_wer: Vec<Option<f64>>,
}

/// Training on fixed (utterance, expert) rows: expert pretraining, and the dense baseline
/// (one expert, every training utterance). With `patience`, each expert keeps its best epoch
/// by val loss (epoch 0, the untouched base model, included) and stops training after
/// `patience` epochs without a lower one.
pub struct AdapterTask<'a> {
    ck: &'a Checkpoint,
    examples: &'a [Example],
    rows: &'a [Row],
    experts: usize,
    batch_size: usize,
    /// Pack rows into shared windows (encoder adapters): batches then hold one expert's rows.
    pack: bool,
    patience: Option<usize>,
    cache: EncoderCache,
    /// Val rows (example, expert) and how to decode them; None = no per-epoch validation.
    validation: Option<(&'a [(usize, Option<usize>)], &'a EvalConfig)>,
    /// Row-loss sums per expert in the current epoch.
    epoch_loss: Vec<(f64, usize)>,
    pub records: Vec<EpochRecord>,
    /// Per expert: (epoch, val loss) of its best epoch so far, and whether it has stopped.
    pub best: Vec<Option<(usize, f64)>>,
    pub stopped: Vec<bool>,
}

#[derive(Serialize, Deserialize)]
struct AdapterState {
    records: Vec<EpochRecord>,
    best: Vec<Option<(usize, f64)>>,
    stopped: Vec<bool>,
}

impl<'a> AdapterTask<'a> {
    pub fn new(
        ck: &'a Checkpoint,
        examples: &'a [Example],
        rows: &'a [Row],
        experts: usize,
        train: &TrainConfig,
        validation: Option<(&'a [(usize, Option<usize>)], &'a EvalConfig)>,
    ) -> AdapterTask<'a> {
        AdapterTask {
            ck,
            examples,
            rows,
            experts,
            batch_size: train.batch_size.max(1),
            pack: train.pack,
            patience: train.patience,
            cache: train.encoder_cache(),
            validation,
            epoch_loss: vec![(0.0, 0); experts],
            records: Vec::new(),
            best: vec![None; experts],
            stopped: vec![false; experts],
        }
    }

    /// From now on the encoder adapters are frozen: their outputs come from the cache (the
    /// dense baseline's second phase, as the joint stage's `freeze_encoder_adapters`).
    pub fn freeze_encoder_adapters(&mut self, train: &TrainConfig) {
        self.cache = train.encoder_cache().with_frozen_encoder_adapters(true);
    }

    /// Per-expert val loss and WER of `model` (an inference copy is made).
    pub fn validate(
        &mut self,
        model: &Whisper,
        val: &[(usize, Option<usize>)],
        eval: &EvalConfig,
    ) -> Result<(Vec<Option<f64>>, Vec<Option<Score>>)> {
        evaluate_experts(self.ck, &model.valid(), &mut self.cache, self.examples, val, self.experts, eval)
    }

    /// Epoch 0: the model before training (with fresh adapters, the base model).
    pub fn record_base(&mut self, model: &Whisper) -> Result<()> {
        let (val_loss, val_wer) = match self.validation {
            Some((val, eval)) => self.validate(model, val, eval)?,
            None => (vec![None; self.experts], vec![None; self.experts]),
        };
        self.best = val_loss.iter().map(|l| l.map(|l| (0, l))).collect();
        self.records.push(EpochRecord {
            epoch: 0,
            expert_loss: vec![None; self.experts],
            val_loss,
            val_wer: val_wer.iter().map(|s| s.map(|s| s.wer())).collect(),
            ..Default::default()
        });
        Ok(())
    }

    /// The experts stage's metrics table: one row per expert and epoch.
    pub fn metrics_table(&self, train_count: &[usize], experts: std::ops::Range<usize>) -> Result<Table> {
        let mut t = Table::default();
        for r in &self.records {
            for e in experts.clone() {
                t.push(vec![
                    ("expert", e.into()),
                    ("epoch", r.epoch.into()),
                    ("train_loss", r.expert_loss[e].into()),
                    ("val_loss", r.val_loss[e].into()),
                    ("val_wer", r.val_wer[e].into()),
                    ("train_rows", train_count[e].into()),
                ])?;
            }
        }
        Ok(t)
    }

    /// Per-expert summary: base (epoch 0) against the epoch kept (the best with `patience`,
    /// else the last).
    pub fn summary(&self, train_count: &[usize], val: &[(usize, Option<usize>)]) -> Vec<ExpertSummary> {
        let first = self.records.first();
        (0..self.experts)
            .map(|e| {
                let kept = self.kept_epoch(e);
                let kept = self.records.iter().find(|r| r.epoch == kept);
                ExpertSummary {
                    expert: e,
                    train_rows: train_count[e],
                    val_utterances: val.iter().filter(|(_, x)| *x == Some(e)).count(),
                    kept_epoch: kept.map(|r| r.epoch),
                    val_loss_base: first.and_then(|r| r.val_loss[e]),
                    val_loss: kept.and_then(|r| r.val_loss[e]),
                    val_wer_base: first.and_then(|r| r.val_wer[e]),
                    val_wer: kept.and_then(|r| r.val_wer[e]),
                }
            })
            .collect()
    }

    /// The epoch whose adapters expert `e` keeps.
    pub fn kept_epoch(&self, e: usize) -> usize {
        match (self.patience, self.best[e]) {
            (Some(_), Some((epoch, _))) => epoch,
            _ => self.records.last().map(|r| r.epoch).unwrap_or(0),
        }
    }
}

impl TrainTask<Whisper> for AdapterTask<'_> {
    fn batches(&mut self, _epoch: usize, rng: &mut StdRng) -> Result<Vec<Vec<usize>>> {
        self.epoch_loss = vec![(0.0, 0); self.experts];
        let live = |i: &usize| self.rows[*i].expert.is_none_or(|e| !self.stopped[e]);
        let mut order: Vec<usize> = (0..self.rows.len()).filter(live).collect();
        order.shuffle(rng);
        if !self.pack {
            return Ok(order.chunks(self.batch_size).map(<[usize]>::to_vec).collect());
        }
        // Batches of one expert's rows (in the shuffled order), then the batches shuffled.
        let mut by_expert: Vec<(Option<usize>, Vec<usize>)> = Vec::new();
        for i in order {
            let e = self.rows[i].expert;
            match by_expert.iter_mut().find(|(x, _)| *x == e) {
                Some((_, v)) => v.push(i),
                None => by_expert.push((e, vec![i])),
            }
        }
        let mut batches: Vec<Vec<usize>> =
            by_expert.iter().flat_map(|(_, v)| v.chunks(self.batch_size).map(<[usize]>::to_vec)).collect();
        batches.shuffle(rng);
        Ok(batches)
    }

    fn loss(&mut self, model: &Whisper, batch: &[usize], _at: &StepInfo) -> Result<Tensor<1>> {
        let rows: Vec<Row> = batch.iter().map(|&i| self.rows[i]).collect();
        let (loss, losses) =
            weighted_loss(self.ck, model, &mut self.cache, self.examples, &rows, rows.len(), true, self.pack);
        let values: Vec<f32> = losses.into_data().try_into_vec_as()?;
        for (r, l) in rows.iter().zip(values) {
            if let Some(e) = r.expert {
                self.epoch_loss[e].0 += l as f64;
                self.epoch_loss[e].1 += 1;
            }
        }
        Ok(loss)
    }

    fn end_epoch(&mut self, model: &Whisper, best: Option<&mut Whisper>, info: &EpochInfo) -> Result<bool> {
        let expert_loss: Vec<Option<f64>> =
            self.epoch_loss.iter().map(|(s, c)| (*c > 0).then(|| s / *c as f64)).collect();
        let (val_loss, val_wer) = match self.validation {
            Some((val, eval)) => self.validate(model, val, eval)?,
            None => (vec![None; self.experts], vec![None; self.experts]),
        };
        if self.validation.is_some() {
            let fmt = |v: Vec<String>| v.join(" ");
            eprintln!(
                "epoch {}: train loss {:.4}; val loss {}; val WER {}",
                info.epoch,
                info.loss,
                fmt(val_loss.iter().map(|v| v.map_or("-".into(), |x| format!("{x:.3}"))).collect()),
                fmt(val_wer.iter().map(|v| v.map_or("-".into(), |s| format!("{:.1}%", 100.0 * s.wer()))).collect()),
            );
        }
        let stop = self.keep_best(model, best, info.epoch, &val_loss);
        self.records.push(EpochRecord {
            epoch: info.epoch,
            loss: Some(info.loss),
            expert_loss,
            steps: info.steps,
            val_loss,
            val_wer: val_wer.iter().map(|s| s.map(|s| s.wer())).collect(),
        });
        Ok(stop)
    }

    fn state(&self) -> Result<serde_json::Value> {
        let s = AdapterState { records: self.records.clone(), best: self.best.clone(), stopped: self.stopped.clone() };
        Ok(serde_json::to_value(&s)?)
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        let s: AdapterState = serde_json::from_value(state)?;
        (self.records, self.best, self.stopped) = (s.records, s.best, s.stopped);
        Ok(())
    }

    fn keeps_best(&self) -> bool {
        self.patience.is_some()
    }
}

impl AdapterTask<'_> {
    /// Early stopping: an expert whose val loss improved gets its adapters copied into `best`;
    /// one that has not improved for `patience` epochs stops. True when every expert with val
    /// utterances has stopped.
    fn keep_best(&mut self, model: &Whisper, best: Option<&mut Whisper>, epoch: usize, val: &[Option<f64>]) -> bool {
        let (Some(patience), Some(best)) = (self.patience, best) else { return false };
        for e in 0..self.experts {
            let Some(loss) = val[e] else { continue };
            match self.best[e] {
                Some((_, b)) if loss >= b => {
                    let since = epoch - self.best[e].map_or(0, |x| x.0);
                    if !self.stopped[e] && since >= patience {
                        eprintln!("expert {e}: no lower val loss for {since} epochs; keeping epoch {}", epoch - since);
                        self.stopped[e] = true;
                    }
                }
                _ if !self.stopped[e] => {
                    self.best[e] = Some((epoch, loss));
                    best.copy_expert(model, e);
                }
                _ => {}
            }
        }
        (0..self.experts).all(|e| self.stopped[e] || val[e].is_none())
    }
}

/// Per-expert mean val loss and WER; `val` rows are (example, expert of its cluster).
pub fn evaluate_experts(
    ck: &Checkpoint,
    model: &Whisper,
    cache: &mut EncoderCache,
    examples: &[Example],
    val: &[(usize, Option<usize>)],
    experts: usize,
    eval: &EvalConfig,
) -> Result<(Vec<Option<f64>>, Vec<Option<Score>>)> {
    let mut loss = vec![(0.0f64, 0usize); experts];
    for chunk in val.chunks(eval.batch_size.max(1)) {
        let rows: Vec<Row> = chunk.iter().map(|&(i, e)| Row { example: i, expert: e, weight: 1.0 }).collect();
        let (_, l) = weighted_loss(ck, model, cache, examples, &rows, rows.len(), false, false);
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
    let hyps = transcribe(ck, model, &exs, &routes, eval, Some(cache))?;
    let mut wer: Vec<Option<Score>> = vec![None; experts];
    for ((e, h), (_, route)) in exs.iter().zip(&hyps).zip(val) {
        if let Some(r) = route {
            let s = score(eval.normalizer, &e.text, h);
            wer[*r] = Some(wer[*r].map_or(s, |w| w + s));
        }
    }
    Ok((loss.iter().map(|(s, n)| (*n > 0).then(|| s / *n as f64)).collect(), wer))
}
