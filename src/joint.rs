//! Stage joint: train the gate and all experts together with the routing curriculum
//! (soft -> top-k soft -> top-k hard, annealed temperature, exploration noise, balance loss,
//! the min-usage rescue), logging routing diagnostics; checkpoints and exact resume.
//! The math is in ../shared/docs/spec.md, "Joint training", and in `crate::routing`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::nn::Linear;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::artifacts::table::{Table, Value};
use crate::artifacts::{CHECKPOINT_HASH, Embeddings, standard_metadata};
use crate::dataset::{Columns, Dataset};
use crate::eval::wer::{Score, score};
use crate::experts::{EvalConfig, Grouping};
use crate::lora::LoraConfig;
use crate::lora::peft::{load_experts, save_expert};
use crate::routing::balance::{Balance, balance_loss, z_loss};
use crate::routing::curriculum::{NoiseConfig, gate_probs, noise, route, row_weights};
use crate::routing::gate::Gate;
use crate::routing::schedule::{Phase, Schedule, ScheduleUnit, progress, temperature};
use crate::routing::stats::{RoutingStats, routing_stats, top_k};
use crate::train::data::{examples_from_dataset, transcribe_rows};
use crate::train::{
    AdamW, CheckpointState, EncoderCache, Example, GradMap, TrainConfig, load_trainables, losses_of_rows, read_state,
    save_trainables, warmup_lr, write_state,
};
use crate::whisper::model::Whisper;
use crate::whisper::{Checkpoint, device};

/// The routing curriculum's parameters (names and defaults of the source guide).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingParams {
    pub soft_routing_epochs: usize,
    pub topk_routing_epochs: usize,
    pub top_k_experts: usize,
    pub routing_temperature_start: f64,
    pub routing_temperature_end: f64,
    pub temperature_schedule: Schedule,
    pub temperature_unit: ScheduleUnit,
    pub noise: NoiseConfig,
    pub balance: Balance,
    pub load_balance_coef: f64,
    pub z_loss_coef: f64,
    pub min_expert_usage_fraction: f64,
    /// Soft phase: experts whose batch-mean weight is below this are skipped.
    pub soft_skip_below: f32,
}

impl Default for RoutingParams {
    fn default() -> Self {
        RoutingParams {
            soft_routing_epochs: 3,
            topk_routing_epochs: 6,
            top_k_experts: 2,
            routing_temperature_start: 2.0,
            routing_temperature_end: 0.5,
            temperature_schedule: Schedule::Linear,
            temperature_unit: ScheduleUnit::Epoch,
            noise: NoiseConfig::default(),
            balance: Balance::KlUniform,
            load_balance_coef: 0.1,
            z_loss_coef: 0.0,
            min_expert_usage_fraction: 0.05,
            soft_skip_below: 1e-4,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JointParams {
    pub train: TrainConfig,
    pub routing: RoutingParams,
    /// Learning rate of the gate (and noise network); default: train.learning_rate.
    pub gate_learning_rate: Option<f64>,
    pub log_every_n_steps: usize,
    pub eval_every_n_epochs: usize,
    pub eval: EvalConfig,
    pub device: String,
    pub language: Option<String>,
    pub columns: Columns,
}

impl Default for JointParams {
    fn default() -> Self {
        JointParams {
            train: TrainConfig { epochs: 9, ..TrainConfig::default() },
            routing: RoutingParams::default(),
            gate_learning_rate: None,
            log_every_n_steps: 1,
            eval_every_n_epochs: 1,
            eval: EvalConfig::default(),
            device: "cpu".into(),
            language: None,
            columns: Columns::default(),
        }
    }
}

/// Everything joint training optimises.
#[derive(Module, Debug)]
pub struct Mixture {
    pub whisper: Whisper,
    pub gate: Gate,
    /// The learned noise std network (noisy top-k gating), when configured.
    pub noise: Option<Linear>,
}

impl Mixture {
    pub fn experts(&self) -> usize {
        self.gate.config().experts
    }

    /// Gate logits [b, E] of raw embeddings (and the noise network's output, if any).
    fn logits(&self, emb: Tensor<2>, train: bool) -> (Tensor<2>, Option<Tensor<2>>) {
        let z = self.gate.forward(emb.clone(), train);
        (z, self.noise.as_ref().map(|n| n.forward(emb)))
    }
}

/// One logged row (a step, or an epoch summary).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LogRow {
    pub kind: String,
    pub epoch: usize,
    pub step: u64,
    pub phase: String,
    pub temperature: f64,
    pub main_loss: f64,
    pub balance_loss: f64,
    pub z_loss: f64,
    #[serde(flatten)]
    pub stats: RoutingStats,
    pub learning_rate: f64,
    pub val_loss: Option<f64>,
    pub val_wer: Option<f64>,
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

/// The data of a joint run: examples, their embeddings, which train and validate.
pub struct JointData {
    pub examples: Vec<Example>,
    /// Row-major [examples, dim] embeddings (the gate's input).
    pub embeddings: Vec<f32>,
    pub dim: usize,
    pub train: Vec<usize>,
    /// (example, cluster) of validation utterances.
    pub val: Vec<(usize, Option<usize>)>,
}

impl JointData {
    fn emb(&self, idx: &[usize], device: &Device) -> Tensor<2> {
        let v: Vec<f32> =
            idx.iter().flat_map(|&i| self.embeddings[i * self.dim..(i + 1) * self.dim].iter().copied()).collect();
        Tensor::from_data(TensorData::new(v, [idx.len(), self.dim]), device)
    }
}

/// What a step or an epoch reports to the caller (progress, tests that stop a run).
pub enum Event<'a> {
    Step { epoch: usize, step_in_epoch: usize, log: &'a LogRow },
    Epoch { log: &'a LogRow },
}

/// Loss of one batch: the total (differentiable), its parts and the routing statistics.
pub struct BatchLoss {
    pub total: Tensor<1>,
    pub main: f64,
    pub balance: f64,
    pub z: f64,
    pub stats: RoutingStats,
}

/// The curriculum's loss on utterances `batch` (indices into `d`) in `phase` at temperature
/// `temp`: mean over utterances of sum over routed experts of w_e L_e, plus the balance and
/// z-losses. `train` adds exploration noise, the rescue and dropout.
#[allow(clippy::too_many_arguments)]
pub fn batch_loss(
    ck: &Checkpoint,
    m: &Mixture,
    cache: &mut EncoderCache,
    d: &JointData,
    batch: &[usize],
    phase: Phase,
    temp: f64,
    prog: f64,
    p: &RoutingParams,
    train: bool,
) -> Result<BatchLoss> {
    let device = m.whisper.decoder.embed_tokens.val().device();
    let e = m.experts();
    let b = batch.len();
    let (z, learned) = m.logits(d.emb(batch, &device), train);
    let n = if train { noise(&p.noise, [b, e], prog, learned, &device) } else { None };
    let probs = gate_probs(z.clone(), n, temp); // [b, E]
    let pv: Vec<f32> = probs.clone().into_data().try_into_vec_as()?;
    let rescue = if train { p.min_expert_usage_fraction } else { 0.0 };
    let routing = route(&pv, e, phase, p.top_k_experts, rescue, p.soft_skip_below);
    let weights = row_weights(probs.clone(), &routing, phase, p.top_k_experts); // [R]
    let rows: Vec<(usize, Option<usize>)> = routing.rows.iter().map(|&(i, x)| (batch[i], Some(x))).collect();
    let losses = losses_of_rows(ck, &m.whisper, cache, &d.examples, &rows, train); // [R]
    let main = (weights * losses).sum() / b as f32;
    let bal = balance_loss(p.balance, probs);
    let zl = z_loss(z);
    let total = main.clone() + bal.clone() * p.load_balance_coef + zl.clone() * p.z_loss_coef;
    // Diagnostics count an assignment only when its weight matters (>= 1e-3): a collapsed
    // top-2 gate still names a second expert with weight ~1e-20 (see routing::lab).
    let live: Vec<Vec<usize>> = routing
        .assigned
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let row = &pv[i * e..(i + 1) * e];
            let denom: f32 = routing.topk[i].iter().map(|&x| row[x]).sum();
            a.iter().copied().filter(|&x| row[x] / denom.max(1e-12) >= 1e-3).collect()
        })
        .collect();
    let mut stats = routing_stats(&pv, e, &live, p.top_k_experts, routing.rescued);
    // Usage floor actually given (rescues included): the least-used expert's share of the batch.
    stats.min_usage = (0..e)
        .map(|x| routing.assigned.iter().filter(|a| a.contains(&x)).count() as f64 / b as f64)
        .fold(1.0, f64::min);
    Ok(BatchLoss {
        total,
        main: main.into_scalar::<f32>() as f64,
        balance: bal.into_scalar::<f32>() as f64,
        z: zl.into_scalar::<f32>() as f64,
        stats,
    })
}

/// Validation: loss with the training routing of the epoch (no noise, no rescue), and WER
/// with top-1 routing. Also returns the gate probabilities [val, E].
fn validate(
    ck: &Checkpoint,
    m: &Mixture,
    cache: &mut EncoderCache,
    d: &JointData,
    phase: Phase,
    temp: f64,
    p: &JointParams,
) -> Result<(f64, Score, Vec<f32>)> {
    let v = m.valid();
    let idx: Vec<usize> = d.val.iter().map(|(i, _)| *i).collect();
    let mut loss = 0.0;
    let mut probs = Vec::new();
    for chunk in idx.chunks(p.eval.batch_size.max(1)) {
        let bl = batch_loss(ck, &v, cache, d, chunk, phase, temp, 1.0, &p.routing, false)?;
        loss += bl.main * chunk.len() as f64;
        let (z, _) = v.logits(d.emb(chunk, &ck.device.clone().inner()), false);
        probs.extend(gate_probs(z, None, temp).into_data().try_into_vec_as::<f32>()?);
    }
    let e = m.experts();
    let top1: Vec<Option<usize>> = (0..idx.len()).map(|i| Some(top_k(&probs[i * e..(i + 1) * e], 1)[0])).collect();
    let exs: Vec<&Example> = idx.iter().map(|&i| &d.examples[i]).collect();
    let hyps = transcribe_rows(ck, &v.whisper, cache, &exs, &top1, p.eval.batch_size, p.eval.max_new_tokens)?;
    let s: Score = exs.iter().zip(&hyps).map(|(x, h)| score(p.eval.normalizer, &x.text, h)).sum();
    Ok((loss / idx.len().max(1) as f64, s, probs))
}

fn mean_vec(rows: &[&LogRow], f: impl Fn(&LogRow) -> &Vec<f64>) -> Vec<f64> {
    let n = rows.len().max(1) as f64;
    let len = rows.first().map(|r| f(r).len()).unwrap_or(0);
    (0..len).map(|i| rows.iter().map(|r| f(r)[i]).sum::<f64>() / n).collect()
}

/// Joint training. Checkpoints go to `ckpt`; a matching one is resumed. Returns the trained
/// mixture, the log rows and the final val gate probabilities.
pub fn train_joint(
    ck: &Checkpoint,
    mut m: Mixture,
    d: &JointData,
    p: &JointParams,
    ckpt: &Path,
    fingerprint: &str,
    mut hook: impl FnMut(Event) -> Result<()>,
) -> Result<(Mixture, Vec<LogRow>, Vec<f32>)> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let device = m.whisper.decoder.embed_tokens.val().device();
    let t = &p.train;
    let r = &p.routing;
    std::fs::create_dir_all(ckpt)?;
    let mut opt = AdamW::new(t.adamw());
    let mut logs: Vec<LogRow> = Vec::new();
    let mut start = 0;
    if let Some(s) = read_state(ckpt).filter(|s| s.fingerprint == fingerprint) {
        m = load_trainables(m, &ckpt.join("trainables.safetensors"))?;
        opt = AdamW::load(&ckpt.join("optimizer.safetensors"), &device.clone().inner())?;
        logs = serde_json::from_str(&std::fs::read_to_string(ckpt.join("log.json"))?)?;
        start = s.epoch;
        eprintln!("resuming joint training after epoch {start} ({})", ckpt.display());
    }
    let gate_lr_scale = p.gate_learning_rate.map(|g| g / t.learning_rate).unwrap_or(1.0);
    let mut cache = EncoderCache::new(t.encoder_cache).with_cross_kv(t.cross_kv_cache_mb);
    let steps_per_epoch = d.train.len().div_ceil(t.batch_size.max(1));
    let mut last_probs = Vec::new();
    for epoch in start..t.epochs {
        let phase = Phase::of_epoch(epoch, r.soft_routing_epochs, r.topk_routing_epochs);
        device.seed(t.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let mut order = d.train.clone();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(t.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9)));
        let mut epoch_rows: Vec<LogRow> = Vec::new();
        let mut acc = GradMap::default();
        let mut micro = 0;
        let mut progress_bar = crate::stage::Progress::new(
            &format!("joint epoch {}/{} ({})", epoch + 1, t.epochs, phase.name()),
            order.len(),
        );
        for (s, batch) in order.chunks(t.batch_size.max(1)).enumerate() {
            let prog = progress(r.temperature_unit, epoch, s, steps_per_epoch, r.topk_routing_epochs);
            let temp =
                temperature(r.temperature_schedule, r.routing_temperature_start, r.routing_temperature_end, prog);
            let bl = batch_loss(ck, &m, &mut cache, d, batch, phase, temp, prog, r, true)?;
            let total: f32 = bl.total.clone().into_scalar();
            if !total.is_finite() {
                bail!(
                    "non-finite loss ({total}) at epoch {} step {}; the last good checkpoint is kept in {}",
                    epoch + 1,
                    s + 1,
                    ckpt.display()
                );
            }
            acc.accumulate(GradMap::of(&m, &bl.total.backward()));
            micro += 1;
            let lr = warmup_lr(t.learning_rate, t.warmup_steps, opt.step);
            if micro == t.gradient_accumulation_steps.max(1) || s + 1 == steps_per_epoch {
                acc.scale(1.0 / micro as f32);
                acc.clip(t.max_grad_norm);
                let lr_of =
                    |k: &str| if k.starts_with("gate.") || k.starts_with("noise.") { lr * gate_lr_scale } else { lr };
                m = opt.step_with(m, &acc, &lr_of);
                acc = GradMap::default();
                micro = 0;
            }
            let row = LogRow {
                kind: "step".into(),
                epoch: epoch + 1,
                step: opt.step,
                phase: phase.name().into(),
                temperature: temp,
                main_loss: bl.main,
                balance_loss: bl.balance,
                z_loss: bl.z,
                learning_rate: lr,
                stats: bl.stats.clone(),
                ..Default::default()
            };
            hook(Event::Step { epoch, step_in_epoch: s, log: &row })?;
            if p.log_every_n_steps > 0 && (s + 1) % p.log_every_n_steps == 0 {
                logs.push(row.clone());
            }
            epoch_rows.push(row);
            progress_bar.inc(batch.len());
        }
        progress_bar.finish();
        let refs: Vec<&LogRow> = epoch_rows.iter().collect();
        let n = refs.len().max(1) as f64;
        let epoch_load: Vec<f64> = mean_vec(&refs, |r| &r.stats.load_topk);
        let mut summary = LogRow {
            kind: "epoch".into(),
            epoch: epoch + 1,
            step: opt.step,
            phase: phase.name().into(),
            temperature: refs.last().map(|r| r.temperature).unwrap_or(0.0),
            main_loss: refs.iter().map(|r| r.main_loss).sum::<f64>() / n,
            balance_loss: refs.iter().map(|r| r.balance_loss).sum::<f64>() / n,
            z_loss: refs.iter().map(|r| r.z_loss).sum::<f64>() / n,
            stats: RoutingStats {
                entropy: refs.iter().map(|r| r.stats.entropy).sum::<f64>() / n,
                importance: mean_vec(&refs, |r| &r.stats.importance),
                load_top1: mean_vec(&refs, |r| &r.stats.load_top1),
                load_cv: crate::routing::stats::cv(&epoch_load),
                load_gini: crate::routing::stats::gini(&epoch_load),
                dead_experts: epoch_load.iter().filter(|&&l| l == 0.0).count(),
                load_topk: epoch_load,
                selection_confidence: refs.iter().map(|r| r.stats.selection_confidence).sum::<f64>() / n,
                rescued: refs.iter().map(|r| r.stats.rescued).sum(),
                min_usage: refs.iter().map(|r| r.stats.min_usage).fold(1.0, f64::min),
            },
            learning_rate: refs.last().map(|r| r.learning_rate).unwrap_or(0.0),
            ..Default::default()
        };
        let last = epoch + 1 == t.epochs;
        if !d.val.is_empty() && (last || (p.eval_every_n_epochs > 0 && (epoch + 1) % p.eval_every_n_epochs == 0)) {
            let (vl, vw, probs) = validate(ck, &m, &mut cache, d, phase, summary.temperature, p)?;
            summary.val_loss = Some(vl);
            summary.val_wer = Some(vw.wer());
            last_probs = probs;
        }
        eprintln!(
            "epoch {} [{}] T={:.3} loss {:.4} balance {:.4} entropy {:.3} load {} cv {:.3} dead {} rescued {} min usage {:.2}{}",
            epoch + 1,
            phase.name(),
            summary.temperature,
            summary.main_loss,
            summary.balance_loss,
            summary.stats.entropy,
            summary.stats.load_topk.iter().map(|l| format!("{l:.2}")).collect::<Vec<_>>().join("/"),
            summary.stats.load_cv,
            summary.stats.dead_experts,
            summary.stats.rescued,
            summary.stats.min_usage,
            match (summary.val_loss, summary.val_wer) {
                (Some(l), Some(w)) => format!("; val loss {l:.4}, val WER (top-1) {:.1}%", 100.0 * w),
                _ => String::new(),
            }
        );
        hook(Event::Epoch { log: &summary })?;
        logs.push(summary);
        if last || (t.save_every_n_epochs > 0 && (epoch + 1) % t.save_every_n_epochs == 0) {
            save_trainables(&m, &ckpt.join("trainables.safetensors"))?;
            opt.save(&ckpt.join("optimizer.safetensors"))?;
            std::fs::write(ckpt.join("log.json"), serde_json::to_string(&logs)?)?;
            write_state(
                ckpt,
                &CheckpointState { epoch: epoch + 1, step: opt.step, fingerprint: fingerprint.to_string() },
            )?;
        }
    }
    Ok((m, logs, last_probs))
}

/// The routing configuration saved with a mixture: what inference needs to route new audio
/// exactly as training did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MixtureConfig {
    pub experts: usize,
    pub adapters: Vec<String>,
    pub top_k_experts: usize,
    /// The temperature at the end of training (top-1 routing does not depend on it).
    pub temperature: f64,
    pub checkpoint_hash: String,
    pub base_model: String,
    pub pooling: String,
    pub layer: Option<i64>,
    pub lora: LoraConfig,
}

/// Inputs and output of the joint stage (also the stage binary's flags).
#[derive(clap::Args, Debug, Clone)]
pub struct JointPaths {
    /// Hub id or local checkpoint directory (the one the embeddings came from).
    #[arg(long)]
    pub model: String,
    /// The dataset manifest (audio and transcripts).
    #[arg(long)]
    pub dataset: PathBuf,
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

pub fn run(paths: &JointPaths, p: &JointParams) -> Result<()> {
    let dev = device(&p.device)?.autodiff();
    let ck = Checkpoint::load(&paths.model, &dev)?;
    let (emb, emb_meta) = Embeddings::read(&paths.embeddings)?;
    match emb_meta.get(CHECKPOINT_HASH) {
        Some(h) if h != &ck.hash => bail!(
            "{} were made by another checkpoint (hash {h}) than {} (hash {}): one Whisper source for embeddings and training",
            paths.embeddings.display(),
            paths.model,
            ck.hash
        ),
        _ => {}
    }
    let g = Grouping::read(&paths.clusters)?;
    g.check_checkpoint(&ck)?;
    let experts_cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(paths.experts.join("experts.json"))
            .with_context(|| format!("{}", paths.experts.display()))?,
    )?;
    let k = experts_cfg["experts"].as_u64().context("experts.json: no `experts`")? as usize;
    if k != g.experts() {
        bail!("{} holds {k} experts but the clustering has {}", paths.experts.display(), g.experts());
    }
    let dirs: Vec<PathBuf> = (0..k).map(|e| paths.experts.join(format!("expert_{e}"))).collect();
    let mut whisper = ck.model.clone();
    let lora = load_experts(&mut whisper, &dirs, &dev)?;
    let gate = Gate::load(&paths.gate, &dev)?;
    if gate.config().experts != k || gate.config().input_dim != emb.dim {
        bail!(
            "the gate in {} maps {} -> {} but the data has {}-dim embeddings and {k} experts",
            paths.gate.display(),
            gate.config().input_dim,
            gate.config().experts,
            emb.dim
        );
    }
    let noise_net = p.routing.noise.learned.then(|| {
        // Zero weights: every input starts with the same std, softplus(0) = 0.69.
        let mut l = burn::nn::LinearConfig::new(emb.dim, k).init(&dev);
        l.weight = crate::lora::trainable("noise.weight", Tensor::zeros([emb.dim, k], &dev));
        l.bias = Some(crate::lora::trainable("noise.bias", Tensor::zeros([k], &dev)));
        l
    });
    let mixture = Mixture { whisper, gate, noise: noise_net };

    let train_ids = g.split("joint_train");
    let val_ids = g.split("val");
    if train_ids.is_empty() {
        bail!("no joint_train utterances in {}", paths.clusters.display());
    }
    let ds = Dataset::open(&paths.dataset, &p.columns)?;
    let wanted: HashSet<String> = train_ids.iter().chain(&val_ids).map(|(_, id)| id.to_string()).collect();
    let by_id = examples_from_dataset(&ck, &ds, &wanted, p.train.leading_space, p.language.as_deref())?;
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
    let data = JointData { examples, embeddings, dim: emb.dim, train, val };
    eprintln!("joint: {k} experts, {} joint_train and {} val utterances", data.train.len(), data.val.len());

    let fingerprint = crate::pipeline::hash::hash_str(&format!(
        "{}|{}|{}|{}",
        serde_json::to_string(p)?,
        ck.hash,
        crate::pipeline::hash::hash_file(&paths.gate.join("gate.safetensors"))
            .map(|h| format!("{h:?}"))
            .unwrap_or_default(),
        experts_cfg
    ));
    let ckpt = paths.out.join("checkpoint");
    let (m, logs, probs) = train_joint(&ck, mixture, &data, p, &ckpt, &fingerprint, |_| Ok(()))?;

    // The mixture: adapters (PEFT), the gate, the routing configuration.
    let mix = paths.out.join("mixture");
    for e in 0..k {
        save_expert(&m.whisper, e, &lora, &paths.model, &mix.join(format!("expert_{e}")))?;
    }
    let mut gmeta = BTreeMap::new();
    gmeta.insert(CHECKPOINT_HASH.to_string(), ck.hash.clone());
    m.gate.save_with_metadata(&mix.join("gate"), &gmeta)?;
    let r = &p.routing;
    let final_prog = progress(r.temperature_unit, p.train.epochs, 0, 1, r.topk_routing_epochs);
    let cfg = MixtureConfig {
        experts: k,
        adapters: (0..k).map(|e| format!("expert_{e}")).collect(),
        top_k_experts: r.top_k_experts,
        temperature: temperature(
            r.temperature_schedule,
            r.routing_temperature_start,
            r.routing_temperature_end,
            final_prog,
        ),
        checkpoint_hash: ck.hash.clone(),
        base_model: paths.model.clone(),
        pooling: emb_meta.get("pooling").cloned().unwrap_or_else(|| "mean_valid".into()),
        layer: emb_meta.get("layer").and_then(|l| l.parse().ok()),
        lora,
    };
    crate::stage::write_json(&mix.join("routing.json"), &cfg)?;

    let meta = standard_metadata("joint", Some(&ck.hash));
    log_table(&logs.iter().filter(|l| l.kind == "step").cloned().collect::<Vec<_>>())?
        .write(&paths.out.join("log_steps"), &meta)?;
    log_table(&logs.iter().filter(|l| l.kind == "epoch").cloned().collect::<Vec<_>>())?
        .write(&paths.out.join("log_epochs"), &meta)?;
    if !data.val.is_empty() {
        let mut rt = Table::default();
        for (i, (ex, cluster)) in data.val.iter().enumerate() {
            let row = probs[i * k..(i + 1) * k].to_vec();
            let top = top_k(&row, r.top_k_experts);
            rt.push(vec![
                ("id", data.examples[*ex].id.as_str().into()),
                ("probs", row.into()),
                ("expert", top[0].into()),
                ("topk", top.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(",").into()),
                ("cluster", cluster.map(|c| c as i64).into()),
            ])?;
        }
        rt.write(&paths.out.join("routing"), &meta)?;
    }
    std::fs::remove_dir_all(&ckpt).context("removing the training checkpoint")?;
    Ok(())
}
