//! The one training loop of the project. Expert pretraining, the dense baseline, joint
//! training and gate pretraining each describe their training as a [`TrainTask`] (the batches
//! of an epoch, the loss of a batch, what to do after an epoch); [`train`] owns what every run
//! needs: randomness from (seed, epoch), gradient accumulation, clipping, warmup, per-group
//! learning rates, a step budget, the stop on a non-finite loss, and checkpoints that hold
//! everything the stage's outputs are made from, so that a run killed at any point and resumed
//! ends exactly as an uninterrupted one.
//!
//! The pattern is burn's custom training loop (backward -> gradients by parameter -> optimizer
//! step), with our AdamW whose state is keyed by parameter path so that it survives a reload.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{load_trainables, save_trainables};
use super::optim::{AdamW, AdamWConfig, GradMap, LossScaler, warmup_lr};
use crate::stage::Progress;

/// The loop's settings (a stage's `train:` parameters map onto these).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    pub epochs: usize,
    pub learning_rate: f64,
    pub warmup_steps: u64,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f32,
    pub gradient_accumulation_steps: usize,
    pub optimizer: AdamWConfig,
    pub seed: u64,
    /// Checkpoint every this many epochs (and always after the last one); 0 = only at the end.
    pub save_every_n_epochs: usize,
    /// Stop after this many optimizer steps (a budget); None = all epochs.
    pub max_steps: Option<u64>,
}

/// Where the loop is, for the task's loss and logs.
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based batch within the epoch, and the epoch's number of batches.
    pub batch: usize,
    pub batches: usize,
    /// Optimizer steps taken once this batch's gradients are applied (it closes an
    /// accumulation window) or so far (it does not).
    pub step: u64,
    /// The base learning rate of this batch's optimizer step (warmup applied).
    pub lr: f64,
}

/// What the loop reports after an epoch.
#[derive(Debug, Clone, Copy)]
pub struct EpochInfo {
    /// 1-based: epochs completed.
    pub epoch: usize,
    /// Mean over the epoch's batches of the task's loss, weighted by batch size.
    pub loss: f64,
    pub steps: u64,
    pub seconds: f64,
}

/// A stage's training, as the loop sees it. `M` is the trained module (its parameters that
/// require gradients are what the optimizer updates).
pub trait TrainTask<M: Module> {
    /// The batches of epoch `epoch` (0-based), as lists of the task's own item indices. `rng`
    /// is seeded from (seed, epoch), so a resumed run draws exactly what an uninterrupted one
    /// did.
    fn batches(&mut self, epoch: usize, rng: &mut StdRng) -> Result<Vec<Vec<usize>>>;

    /// The differentiable loss of one batch; anything the task wants to log it keeps itself.
    fn loss(&mut self, model: &M, batch: &[usize], at: &StepInfo) -> Result<Tensor<1>>;

    /// After each epoch (validation, metrics, early stopping): `best` is the task's kept
    /// model when it asked for one ([`TrainTask::keeps_best`]). Return true to stop training.
    fn end_epoch(&mut self, model: &M, best: Option<&mut M>, info: &EpochInfo) -> Result<bool>;

    /// Everything the stage's outputs need from training so far (metrics rows, logs), saved
    /// with every checkpoint; [`TrainTask::restore`] takes it back on resume. Floats
    /// round-trip exactly (the checkpoint stores their bits).
    fn state(&self) -> Result<serde_json::Value>;
    fn restore(&mut self, state: serde_json::Value) -> Result<()>;

    /// Keep a second copy of the model that `end_epoch` updates (the best epoch so far).
    fn keeps_best(&self) -> bool {
        false
    }

    /// Learning-rate factor of the parameter at `path` (per-group learning rates).
    fn lr_scale(&self, _path: &str) -> f64 {
        1.0
    }

    /// The progress bar's label for an epoch; None for no bar (fast loops).
    fn progress_label(&self, epoch: usize, epochs: usize) -> Option<String> {
        Some(format!("epoch {}/{epochs}", epoch + 1))
    }
}

/// The result of [`train`].
pub struct Trained<M> {
    /// The model after the last epoch run.
    pub model: M,
    /// The task's kept model, when it keeps one.
    pub best: Option<M>,
    /// Optimizer steps taken in all.
    pub steps: u64,
    /// Epochs run (fewer than configured after an early stop).
    pub epochs: usize,
    pub stopped_early: bool,
}

/// What a checkpoint directory's `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResumeState {
    /// Epochs completed.
    epoch: usize,
    step: u64,
    /// Hash of everything that must match to resume (parameters, data, base model).
    fingerprint: String,
    stopped_early: bool,
    task: serde_json::Value,
}

/// A training checkpoint directory: trainable parameters, the kept best model, the optimizer
/// and [`ResumeState`]. Files are written to temporary names and renamed; `state.json` last,
/// so a checkpoint is either complete or ignored.
struct CheckpointDir(PathBuf);

impl CheckpointDir {
    fn trainables(&self) -> PathBuf {
        self.0.join("trainables.safetensors")
    }
    fn best(&self) -> PathBuf {
        self.0.join("best.safetensors")
    }
    fn optimizer(&self) -> PathBuf {
        self.0.join("optimizer.safetensors")
    }
    fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }

    fn read(&self, fingerprint: &str) -> Option<ResumeState> {
        let text = std::fs::read_to_string(self.state()).ok()?;
        serde_json::from_str::<ResumeState>(&text).ok().filter(|s| s.fingerprint == fingerprint)
    }

    fn write<M: Module>(&self, model: &M, best: Option<&M>, opt: &AdamW, state: &ResumeState) -> Result<()> {
        std::fs::create_dir_all(&self.0).with_context(|| format!("cannot create {}", self.0.display()))?;
        // A half-written checkpoint must not look complete: the old state goes first.
        let _ = std::fs::remove_file(self.state());
        save_trainables(model, &self.trainables())?;
        if let Some(b) = best {
            save_trainables(b, &self.best())?;
        }
        opt.save(&self.optimizer())?;
        crate::util::write_json(&self.state(), state)
    }
}

/// A kill test's hook: with this variable set, a training stage dies (SIGABRT, as a `kill`)
/// right after writing its last checkpoint, before it writes any output; the next run must
/// resume from there to what an uninterrupted run writes (tests/resume.rs).
pub const ABORT_AFTER_LAST_CHECKPOINT: &str = "WHISPER_MOE_ABORT_AFTER_LAST_CHECKPOINT";

/// Train `model` on `task`. A checkpoint in `ckpt` with the same `fingerprint` is resumed
/// (a finished one returns at once); checkpoints go there every `save_every_n_epochs` epochs
/// and after the last one.
pub fn train<M, T>(model: M, task: &mut T, cfg: &LoopConfig, ckpt: &Path, fingerprint: &str) -> Result<Trained<M>>
where
    M: Module + Clone,
    T: TrainTask<M>,
{
    let dir = CheckpointDir(ckpt.to_path_buf());
    let device = first_device(&model);
    let mut model = model;
    let mut best = task.keeps_best().then(|| model.clone());
    let f16 = computes_in_f16(&model);
    let mut opt = AdamW::new(cfg.optimizer.clone());
    opt.loss_scale = f16.then(LossScaler::default);
    if let Some(s) = &opt.loss_scale {
        eprintln!("the base model computes in f16: dynamic loss scaling from {}", s.scale);
    }
    let mut start = 0;
    let mut stopped_early = false;
    if let Some(s) = dir.read(fingerprint) {
        model = load_trainables(model, &dir.trainables())?;
        if let Some(b) = best.take() {
            best = Some(load_trainables(b, &dir.best())?);
        }
        opt = AdamW::load(&dir.optimizer(), &device.clone().inner())?;
        // Scaling follows the model as it is now (a checkpoint may come from another precision).
        opt.loss_scale = if f16 { opt.loss_scale.or(Some(LossScaler::default())) } else { None };
        task.restore(exact_floats::decode(s.task))
            .with_context(|| format!("restoring the training state in {}", dir.0.display()))?;
        start = s.epoch;
        stopped_early = s.stopped_early;
        eprintln!("resuming from the checkpoint after epoch {start} ({})", dir.0.display());
    }
    let mut epochs = start;
    while epochs < cfg.epochs && !stopped_early && !budget_spent(cfg, &opt) {
        let epoch = epochs;
        let t0 = std::time::Instant::now();
        // Everything random in an epoch derives from (seed, epoch).
        device.seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let mut rng = StdRng::seed_from_u64(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        let batches = task.batches(epoch, &mut rng)?;
        let loss = run_epoch(&mut model, task, cfg, &mut opt, epoch, &batches, &dir)?;
        epochs += 1;
        let info = EpochInfo { epoch: epochs, loss, steps: opt.step, seconds: t0.elapsed().as_secs_f64() };
        stopped_early = task.end_epoch(&model, best.as_mut(), &info)? && epochs < cfg.epochs;
        let last = epochs == cfg.epochs || stopped_early || budget_spent(cfg, &opt);
        if last || (cfg.save_every_n_epochs > 0 && epochs % cfg.save_every_n_epochs == 0) {
            let state = ResumeState {
                epoch: epochs,
                step: opt.step,
                fingerprint: fingerprint.to_string(),
                stopped_early,
                task: exact_floats::encode(task.state()?),
            };
            dir.write(&model, best.as_ref(), &opt, &state)?;
            if last && std::env::var_os(ABORT_AFTER_LAST_CHECKPOINT).is_some() {
                eprintln!(
                    "{ABORT_AFTER_LAST_CHECKPOINT} is set: aborting after the last checkpoint in {}",
                    dir.0.display()
                );
                std::process::abort();
            }
        }
    }
    Ok(Trained { model, best, steps: opt.step, epochs, stopped_early })
}

fn budget_spent(cfg: &LoopConfig, opt: &AdamW) -> bool {
    cfg.max_steps.is_some_and(|m| opt.step >= m)
}

/// One epoch's batches: forward, backward, accumulate, step. Returns the mean loss.
fn run_epoch<M: Module + Clone, T: TrainTask<M>>(
    model: &mut M,
    task: &mut T,
    cfg: &LoopConfig,
    opt: &mut AdamW,
    epoch: usize,
    batches: &[Vec<usize>],
    dir: &CheckpointDir,
) -> Result<f64> {
    let accumulate = cfg.gradient_accumulation_steps.max(1);
    let items: usize = batches.iter().map(Vec::len).sum();
    let mut progress = task.progress_label(epoch, cfg.epochs).map(|l| Progress::new(&l, items));
    let (mut sum, mut n) = (0.0f64, 0usize);
    let mut acc = GradMap::default();
    let mut micro = 0;
    for (b, batch) in batches.iter().enumerate() {
        if budget_spent(cfg, opt) {
            break;
        }
        // An accumulation window closes after `accumulate` batches or at the epoch's end.
        let closes = micro + 1 == accumulate || b + 1 == batches.len();
        let lr = warmup_lr(cfg.learning_rate, cfg.warmup_steps, opt.step);
        let at = StepInfo { epoch, batch: b, batches: batches.len(), step: opt.step + closes as u64, lr };
        let loss = task.loss(model, batch, &at)?;
        let value: f32 = loss.clone().into_scalar();
        if !value.is_finite() {
            bail!(
                "non-finite loss ({value}) at epoch {} batch {} (optimizer step {}); the last good checkpoint is kept in {}",
                epoch + 1,
                b + 1,
                opt.step,
                dir.0.display()
            );
        }
        sum += value as f64 * batch.len() as f64;
        n += batch.len();
        let scale = opt.loss_scale.map_or(1.0, |s| s.scale);
        let loss = if scale == 1.0 { loss } else { loss * scale };
        acc.accumulate(GradMap::of(&*model, &loss.backward()));
        micro += 1;
        if closes {
            acc.scale(1.0 / (micro as f32 * scale));
            let norm = acc.clip(cfg.max_grad_norm);
            let take = opt.loss_scale.as_mut().is_none_or(|s| s.update(norm.is_finite()));
            if take {
                let lr_of = |path: &str| lr * task.lr_scale(path);
                *model = opt.step_with(model.clone(), &acc, &lr_of);
            } else {
                eprintln!(
                    "f16: the gradients overflowed at loss scale {scale}; step skipped, scale now {}",
                    opt.loss_scale.map_or(1.0, |s| s.scale)
                );
            }
            acc = GradMap::default();
            micro = 0;
        }
        if let Some(p) = progress.as_mut() {
            p.inc(batch.len());
        }
    }
    if let Some(p) = progress {
        p.finish();
    }
    Ok(sum / n.max(1) as f64)
}

/// Does the module hold f16 tensors (a base model in f16, whose training scales the loss)?
fn computes_in_f16<M: Module>(model: &M) -> bool {
    struct AnyF16(bool);
    impl burn::module::ModuleVisitor for AnyF16 {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            self.0 |= p.val().dtype() == burn::tensor::DType::F16;
        }
    }
    let mut v = AnyF16(false);
    model.visit(&mut v);
    v.0
}

/// The device of a module's first floating-point parameter.
fn first_device<M: Module>(model: &M) -> Device {
    struct First(Option<Device>);
    impl burn::module::ModuleVisitor for First {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            if self.0.is_none() {
                self.0 = Some(p.val().device());
            }
        }
    }
    let mut f = First(None);
    model.visit(&mut f);
    f.0.unwrap_or_else(Device::flex)
}

/// JSON numbers parsed back by serde_json may differ from what was written in the last bit;
/// a resumed run must write exactly the numbers of an uninterrupted one, so the task state's
/// floats are stored as their bit patterns (`{"f64": "<hex>"}`).
mod exact_floats {
    use serde_json::{Map, Value};

    pub fn encode(v: Value) -> Value {
        match v {
            Value::Number(n) if n.is_f64() => {
                let bits = n.as_f64().unwrap_or_default().to_bits();
                Value::Object(Map::from_iter([("f64".to_string(), Value::String(format!("{bits:016x}")))]))
            }
            Value::Array(a) => Value::Array(a.into_iter().map(encode).collect()),
            Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, encode(v))).collect()),
            other => other,
        }
    }

    pub fn decode(v: Value) -> Value {
        match v {
            Value::Object(o) if o.len() == 1 && o.get("f64").is_some_and(Value::is_string) => {
                let hex = o["f64"].as_str().unwrap_or_default();
                match u64::from_str_radix(hex, 16) {
                    Ok(bits) => serde_json::Number::from_f64(f64::from_bits(bits)).map_or(Value::Null, Value::Number),
                    Err(_) => Value::Object(o),
                }
            }
            Value::Array(a) => Value::Array(a.into_iter().map(decode).collect()),
            Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, decode(v))).collect()),
            other => other,
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn floats_survive_exactly() {
            let xs = [0.1f64, 1.0 / 3.0, 2.0f64.sqrt() * 1e-300, -7.000000000000001, 123456.78901234567];
            let v = serde_json::json!({"a": xs, "n": 3, "s": "x", "o": {"t": 0.30000000000000004}});
            let text = serde_json::to_string(&super::encode(v.clone())).unwrap();
            let back = super::decode(serde_json::from_str(&text).unwrap());
            let got: Vec<f64> = back["a"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            assert_eq!(back["n"], 3);
            assert_eq!(back["o"]["t"].as_f64().unwrap().to_bits(), 0.30000000000000004f64.to_bits());
        }
    }
}
