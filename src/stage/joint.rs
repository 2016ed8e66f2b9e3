//! Stage joint: train the gate and every expert together with the routing curriculum
//! (`routing::joint` has the model and the loss of a batch). Writes the mixture (PEFT
//! adapters, the gate, `routing.json`), the training logs (`log_steps/`, `log_epochs/`), the
//! val routing table (`routing/`) and `summary.json`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::Stage;
use super::experts::ExpertsManifest;
use crate::artifacts::table::{Table, Value};
use crate::artifacts::{CHECKPOINT_HASH, Embeddings, Grouping, standard_metadata};
use crate::dataset::{Columns, Dataset};
use crate::eval::EvalConfig;
use crate::eval::wer::{Score, score};
use crate::mixture::transcribe::transcribe;
use crate::mixture::{MixtureConfig, Router, RouterKind};
use crate::routing::gate::Gate;
use crate::routing::joint::{JointData, JointModel, LogRow, RoutingParams, batch_loss, epoch_row};
use crate::train::{
    EncoderCache, EpochInfo, Example, Prompting, StepInfo, TrainConfig, TrainTask, examples_from_dataset, train,
};
use crate::whisper::{Checkpoint, Task};

crate::params! {
    pub struct JointParams {
        pub train: TrainConfig = TrainConfig { epochs: 9, ..TrainConfig::default() },
        pub routing: RoutingParams = RoutingParams::default(),
        /// Learning rate of the gate (and noise network); default: train.learning_rate.
        pub gate_learning_rate: Option<f64> = None,
        pub log_every_n_steps: usize = 1,
        pub eval_every_n_epochs: usize = 1,
        pub eval: EvalConfig = EvalConfig::default(),
        pub device: String = "cpu".into(),
        /// fp32, bf16 or f16: the frozen base model's weights and activations (adapters, gate and
        /// optimizer state stay fp32; f16 scales the loss). For GPUs; fp32 on CPU.
        pub precision: crate::whisper::Precision = crate::whisper::Precision::Fp32,
        /// Language of every utterance's prompt when the dataset has no language column; None:
        /// the language the embed stage detected (multilingual checkpoints).
        pub language: Option<String> = None,
        /// transcribe, or translate (into English; the dataset's text is then the translation).
        pub task: Task = Task::Transcribe,
        pub columns: Columns = Columns::default(),
        /// What routes the saved mixture at inference: `gate` (trained here) or `centroid`
        /// (the nearest cluster centre; both are saved, so evaluate can compare them).
        pub router: RouterKind = RouterKind::Gate,
        /// Keep the experts' encoder adapters as the experts stage trained them and train the
        /// gate and the decoder adapters: each (expert, utterance)'s encoder output is then
        /// computed once (no backward pass through the encoder), which makes the soft phase,
        /// where every utterance runs through every expert, several times faster.
        pub freeze_encoder_adapters: bool = false,
    }
}

/// Inputs and outputs of stage joint.
#[derive(clap::Args, Debug, Clone)]
pub struct JointPaths {
    #[command(flatten)]
    pub base: super::ModelData,
    /// Embeddings (the gate's input; their checkpoint hash is checked).
    #[arg(long)]
    pub embeddings: PathBuf,
    /// The cluster stage's output (clusters/, splits/).
    #[arg(long)]
    pub clusters: PathBuf,
    /// The experts stage's output.
    #[arg(long)]
    pub experts: PathBuf,
    /// The gate stage's output.
    #[arg(long)]
    pub gate: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
}

/// `summary.json`: what later stages read from this one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JointSummary {
    pub experts: usize,
    pub train_utterances: usize,
    pub val_utterances: usize,
    pub epochs: usize,
    pub optimizer_steps: u64,
    pub val_loss: Option<f64>,
    /// Val WER with top-1 routing after the last epoch.
    pub val_wer: Option<f64>,
    /// The experts' encoder adapters were kept frozen (the dense baseline does the same for
    /// the joint stage's share of its step budget).
    #[serde(default)]
    pub froze_encoder_adapters: bool,
}

impl JointSummary {
    pub fn read(dir: &Path) -> Result<JointSummary> {
        crate::util::read_json(&dir.join("summary.json"))
    }
}

impl fmt::Display for JointSummary {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "joint: {} experts, {} epochs, {} optimizer steps on {} utterances",
            self.experts, self.epochs, self.optimizer_steps, self.train_utterances
        )?;
        if let (Some(l), Some(w)) = (self.val_loss, self.val_wer) {
            write!(f, "; val loss {l:.4}, val WER (top-1) {:.1}%", 100.0 * w)?;
        }
        Ok(())
    }
}

pub struct Joint;

impl Stage for Joint {
    const NAME: &'static str = "joint";
    const ABOUT: &'static str = "Joint training of the gate and the experts (routing curriculum)";
    type Paths = JointPaths;
    type Params = JointParams;
    type Summary = JointSummary;

    fn run(paths: &JointPaths, p: &JointParams) -> Result<JointSummary> {
        let (ck, g) = super::checkpoint_and_grouping(&paths.base.model, &paths.clusters, &p.device, p.precision, true)?;
        let dev = ck.device.clone();
        let (emb, emb_meta) = Embeddings::read(&paths.embeddings)?;
        super::embed::check_same_checkpoint(&paths.embeddings, &emb_meta, &ck, &paths.base.model)?;
        let experts = ExpertsManifest::read(&paths.experts)?;
        let k = experts.experts;
        if k != g.experts() {
            bail!("{} holds {k} experts but the clustering has {}", paths.experts.display(), g.experts());
        }
        let model = joint_model(&ck, &experts, paths, emb.dim, p, &dev)?;
        let data = joint_data(&ck, &g, &emb, paths, p)?;
        eprintln!("joint: {k} experts, {} joint_train and {} val utterances", data.train.len(), data.val.len());

        let fingerprint = crate::util::hash_str(&format!(
            "{}|{}|{:?}|{}",
            serde_json::to_string(p)?,
            ck.hash,
            crate::util::hash_file(&paths.gate.join("gate.safetensors")).ok(),
            serde_json::to_string(&experts)?
        ));
        let ckpt = paths.out.join("checkpoint");
        let mut task = JointTask::new(&ck, &data, p);
        let trained = train(model, &mut task, &p.train.loop_config(), &ckpt, &fingerprint)?;
        let summary = write_outputs(&ck, &trained.model, &task, &experts, &emb_meta, paths, p, trained.steps)?;
        crate::routing::centroid::Centroids::fit(&emb, &g.clusters)?.save(&paths.out.join("mixture"))?;
        std::fs::remove_dir_all(&ckpt).context("removing the training checkpoint")?;
        Ok(summary)
    }
}

/// The gate and the experts' adapters, trainable together (and the learned noise network).
fn joint_model(
    ck: &Checkpoint,
    experts: &ExpertsManifest,
    paths: &JointPaths,
    dim: usize,
    p: &JointParams,
    dev: &Device,
) -> Result<JointModel> {
    let k = experts.experts;
    let mut whisper = ck.model.clone();
    crate::whisper::peft::load_experts(&mut whisper, &experts.adapter_dirs(&paths.experts), dev)?;
    let gate = Gate::load(&paths.gate, dev)?;
    if gate.config().experts != k || gate.config().input_dim != dim {
        bail!(
            "the gate in {} maps {} -> {} but the data has {dim}-dim embeddings and {k} experts",
            paths.gate.display(),
            gate.config().input_dim,
            gate.config().experts,
        );
    }
    let noise = p.routing.noise.learned.then(|| {
        // Zero weights: every input starts with the same std, softplus(0) = 0.69.
        let mut l = burn::nn::LinearConfig::new(dim, k).init(dev);
        l.weight = crate::lora::trainable("noise.weight", Tensor::zeros([dim, k], dev));
        l.bias = Some(crate::lora::trainable("noise.bias", Tensor::zeros([k], dev)));
        l
    });
    Ok(JointModel { whisper, gate, noise })
}

/// The joint_train and val utterances with their embeddings.
fn joint_data(
    ck: &Checkpoint,
    g: &Grouping,
    emb: &Embeddings,
    paths: &JointPaths,
    p: &JointParams,
) -> Result<JointData> {
    let train_ids = g.split("joint_train");
    let val_ids = g.split("val");
    if train_ids.is_empty() {
        bail!("no joint_train utterances in {}", paths.clusters.display());
    }
    let ds = Dataset::open(&paths.base.dataset, &p.columns)?;
    let wanted: HashSet<String> = train_ids.iter().chain(&val_ids).map(|(_, id)| id.to_string()).collect();
    let detected = emb.languages();
    let prompting =
        Prompting { language: p.language.as_deref(), detected: Some(&detected), task: p.task, decode_only: false };
    let by_id = examples_from_dataset(ck, &ds, &wanted, p.train.leading_space, prompting)?;
    let emb_row: HashMap<&str, usize> = emb.ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let mut examples = Vec::new();
    let mut embeddings = Vec::new();
    let mut push = |id: &str| -> Result<usize> {
        let row = *emb_row
            .get(id)
            .with_context(|| format!("utterance {id} has no embedding in {}", paths.embeddings.display()))?;
        examples.push(by_id[id].clone());
        embeddings.extend_from_slice(emb.row(row));
        Ok(examples.len() - 1)
    };
    let train: Vec<usize> = train_ids.iter().map(|(_, id)| push(id)).collect::<Result<_>>()?;
    let val: Vec<(usize, Option<usize>)> =
        val_ids.iter().map(|&(r, id)| Ok((push(id)?, Some(g.clusters.cluster[r] as usize)))).collect::<Result<_>>()?;
    Ok(JointData { examples, embeddings, dim: emb.dim, train, val })
}

/// What the joint stage's outputs are made from; kept in training checkpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JointState {
    /// Step rows (every `log_every_n_steps`) and epoch rows, in order.
    pub logs: Vec<LogRow>,
    /// Gate probabilities [val, E] at the last validation.
    pub val_probs: Vec<f32>,
}

/// Joint training as the training loop sees it.
pub struct JointTask<'a> {
    ck: &'a Checkpoint,
    data: &'a JointData,
    p: &'a JointParams,
    cache: EncoderCache,
    /// The current epoch's step rows.
    epoch_rows: Vec<LogRow>,
    pub state: JointState,
}

impl<'a> JointTask<'a> {
    pub fn new(ck: &'a Checkpoint, data: &'a JointData, p: &'a JointParams) -> JointTask<'a> {
        let cache = p.train.encoder_cache().with_frozen_encoder_adapters(p.freeze_encoder_adapters);
        JointTask { ck, data, p, cache, epoch_rows: Vec::new(), state: JointState::default() }
    }

    /// Validation: loss with the epoch's routing (no noise, no rescue) and WER with top-1
    /// routing through the router and transcriber inference uses.
    fn validate(&mut self, m: &JointModel, epoch: usize, temperature: f64) -> Result<(f64, Score, Vec<f32>)> {
        let v = m.valid();
        let (d, p) = (self.data, self.p);
        let phase = p.routing.phase(epoch);
        let idx: Vec<usize> = d.val.iter().map(|(i, _)| *i).collect();
        // Validation judges the gate being trained (a centroid router needs no training).
        let router = Router { gate: &v.gate, temperature, centroids: None };
        let mut loss = 0.0;
        let mut probs = Vec::new();
        for chunk in idx.chunks(p.eval.batch_size.max(1)) {
            let bl =
                batch_loss(self.ck, &v, &mut self.cache, d, chunk, phase, temperature, 1.0, &p.routing, false, false)?;
            loss += bl.main * chunk.len() as f64;
            probs.extend(router.route(d.emb(chunk, &self.ck.device.clone().inner()))?.probs);
        }
        let routes = crate::mixture::Routes { experts: m.experts(), probs };
        let top1: Vec<Option<usize>> = routes.top1().into_iter().map(Some).collect();
        let exs: Vec<&Example> = idx.iter().map(|&i| &d.examples[i]).collect();
        let hyps = transcribe(self.ck, &v.whisper, &exs, &top1, &p.eval, Some(&mut self.cache))?;
        let s: Score = exs.iter().zip(&hyps).map(|(x, h)| score(p.eval.normalizer, &x.text, h)).sum();
        Ok((loss / idx.len().max(1) as f64, s, routes.probs))
    }
}

impl TrainTask<JointModel> for JointTask<'_> {
    fn batches(&mut self, _epoch: usize, rng: &mut StdRng) -> Result<Vec<Vec<usize>>> {
        self.epoch_rows.clear();
        let mut order = self.data.train.clone();
        order.shuffle(rng);
        Ok(order.chunks(self.p.train.batch_size.max(1)).map(<[usize]>::to_vec).collect())
    }

    fn loss(&mut self, m: &JointModel, batch: &[usize], at: &StepInfo) -> Result<Tensor<1>> {
        let r = &self.p.routing;
        let phase = r.phase(at.epoch);
        let (temp, prog) = r.temperature_at(at.epoch, at.batch, at.batches);
        let bl =
            batch_loss(self.ck, m, &mut self.cache, self.data, batch, phase, temp, prog, r, true, self.p.train.pack)?;
        let row = LogRow {
            kind: "step".into(),
            epoch: at.epoch + 1,
            step: at.step,
            phase: phase.name().into(),
            temperature: temp,
            main_loss: bl.main,
            balance_loss: bl.balance,
            z_loss: bl.z,
            learning_rate: at.lr,
            stats: bl.stats.clone(),
            ..Default::default()
        };
        if self.p.log_every_n_steps > 0 && (at.batch + 1) % self.p.log_every_n_steps == 0 {
            self.state.logs.push(row.clone());
        }
        self.epoch_rows.push(row);
        Ok(bl.total)
    }

    fn end_epoch(&mut self, m: &JointModel, _best: Option<&mut JointModel>, info: &EpochInfo) -> Result<bool> {
        let epoch = info.epoch - 1;
        let phase = self.p.routing.phase(epoch);
        let mut summary = epoch_row(info.epoch, info.steps, phase, &self.epoch_rows);
        let last = info.epoch == self.p.train.epochs;
        let every = self.p.eval_every_n_epochs;
        if !self.data.val.is_empty() && (last || (every > 0 && info.epoch % every == 0)) {
            let (vl, vw, probs) = self.validate(m, epoch, summary.temperature)?;
            summary.val_loss = Some(vl);
            summary.val_wer = Some(vw.wer());
            self.state.val_probs = probs;
        }
        eprintln!("{}", describe_epoch(&summary));
        self.state.logs.push(summary);
        Ok(false)
    }

    fn state(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(&self.state)?)
    }

    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        self.state = serde_json::from_value(state)?;
        Ok(())
    }

    fn lr_scale(&self, path: &str) -> f64 {
        match self.p.gate_learning_rate {
            Some(g) if path.starts_with("gate.") || path.starts_with("noise.") => g / self.p.train.learning_rate,
            _ => 1.0,
        }
    }

    fn progress_label(&self, epoch: usize, epochs: usize) -> Option<String> {
        Some(format!("joint epoch {}/{epochs} ({})", epoch + 1, self.p.routing.phase(epoch).name()))
    }
}

fn describe_epoch(s: &LogRow) -> String {
    format!(
        "epoch {} [{}] T={:.3} loss {:.4} balance {:.4} entropy {:.3} load {} cv {:.3} dead {} rescued {} min usage {:.2}{}",
        s.epoch,
        s.phase,
        s.temperature,
        s.main_loss,
        s.balance_loss,
        s.stats.entropy,
        s.stats.load_topk.iter().map(|l| format!("{l:.2}")).collect::<Vec<_>>().join("/"),
        s.stats.load_cv,
        s.stats.dead_experts,
        s.stats.rescued,
        s.stats.min_usage,
        match (s.val_loss, s.val_wer) {
            (Some(l), Some(w)) => format!("; val loss {l:.4}, val WER (top-1) {:.1}%", 100.0 * w),
            _ => String::new(),
        }
    )
}

/// The mixture (adapters, gate, routing.json), the logs, the val routing table, summary.json.
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    ck: &Checkpoint,
    m: &JointModel,
    task: &JointTask,
    experts: &ExpertsManifest,
    emb_meta: &BTreeMap<String, String>,
    paths: &JointPaths,
    p: &JointParams,
    steps: u64,
) -> Result<JointSummary> {
    let k = experts.experts;
    let mix = paths.out.join("mixture");
    for e in 0..k {
        crate::whisper::peft::save_expert(
            &m.whisper,
            e,
            &experts.lora,
            &paths.base.model,
            &mix.join(format!("expert_{e}")),
        )?;
    }
    let mut gmeta = BTreeMap::new();
    gmeta.insert(CHECKPOINT_HASH.to_string(), ck.hash.clone());
    m.gate.save_with_metadata(&mix.join("gate"), &gmeta)?;
    let cfg = MixtureConfig {
        experts: k,
        adapters: (0..k).map(|e| format!("expert_{e}")).collect(),
        top_k_experts: p.routing.top_k_experts,
        temperature: p.routing.final_temperature(p.train.epochs),
        checkpoint_hash: ck.hash.clone(),
        base_model: paths.base.model.clone(),
        pooling: emb_meta.get("pooling").cloned().unwrap_or_else(|| "mean_valid".into()),
        layer: emb_meta.get("layer").and_then(|l| l.parse().ok()),
        lora: experts.lora.clone(),
        router: p.router,
        fallback_below: None,
    };
    crate::util::write_json(&mix.join("routing.json"), &cfg)?;

    let meta = standard_metadata("joint", Some(&ck.hash));
    let logs = &task.state.logs;
    let of_kind = |k: &str| logs.iter().filter(|l| l.kind == k).cloned().collect::<Vec<_>>();
    log_table(&of_kind("step"))?.write(&paths.out.join("log_steps"), &meta)?;
    let epochs = of_kind("epoch");
    log_table(&epochs)?.write(&paths.out.join("log_epochs"), &meta)?;
    let d = task.data;
    if !d.val.is_empty() {
        routing_table(d, &task.state.val_probs, k, p.routing.top_k_experts)?
            .write(&paths.out.join("routing"), &meta)?;
    }
    let last = epochs.last();
    let summary = JointSummary {
        experts: k,
        train_utterances: d.train.len(),
        val_utterances: d.val.len(),
        epochs: epochs.len(),
        optimizer_steps: steps,
        val_loss: last.and_then(|l| l.val_loss),
        val_wer: last.and_then(|l| l.val_wer),
        froze_encoder_adapters: p.freeze_encoder_adapters && m.whisper.encoder_has_adapters(),
    };
    crate::util::write_json(&paths.out.join("summary.json"), &summary)?;
    Ok(summary)
}

/// Per val utterance: gate probabilities, chosen experts, its cluster.
fn routing_table(d: &JointData, probs: &[f32], k: usize, top_k: usize) -> Result<Table> {
    let mut rt = Table::default();
    for (i, (ex, cluster)) in d.val.iter().enumerate() {
        let row = probs[i * k..(i + 1) * k].to_vec();
        let top = crate::routing::stats::top_k(&row, top_k);
        rt.push(vec![
            ("id", d.examples[*ex].id.as_str().into()),
            ("probs", row.into()),
            ("expert", top[0].into()),
            ("topk", top.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",").into()),
            ("cluster", cluster.map(|c| c as i64).into()),
        ])?;
    }
    Ok(rt)
}

pub fn log_table(rows: &[LogRow]) -> Result<Table> {
    let v = |x: &[f64]| Value::V(x.iter().map(|&f| f as f32).collect());
    let mut t = Table::default();
    for r in rows {
        t.push(vec![
            ("kind", r.kind.as_str().into()),
            ("epoch", r.epoch.into()),
            ("step", (r.step as i64).into()),
            ("phase", r.phase.as_str().into()),
            ("temperature", r.temperature.into()),
            ("main_loss", r.main_loss.into()),
            ("balance_loss", r.balance_loss.into()),
            ("z_loss", r.z_loss.into()),
            ("entropy", r.stats.entropy.into()),
            ("importance", v(&r.stats.importance)),
            ("load_top1", v(&r.stats.load_top1)),
            ("load_topk", v(&r.stats.load_topk)),
            ("load_cv", r.stats.load_cv.into()),
            ("load_gini", r.stats.load_gini.into()),
            ("selection_confidence", r.stats.selection_confidence.into()),
            ("dead_experts", r.stats.dead_experts.into()),
            ("rescued", r.stats.rescued.into()),
            ("min_usage", r.stats.min_usage.into()),
            ("learning_rate", r.learning_rate.into()),
            ("val_loss", r.val_loss.into()),
            ("val_wer", r.val_wer.into()),
        ])?;
    }
    Ok(t)
}
