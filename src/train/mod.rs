//! The training core shared by the experts, dense and joint stages: teacher-forced
//! cross-entropy behind the checkpoint's prompt, a shared encoder pass when no adapter touches
//! the encoder, AdamW with warmup, clipping and accumulation, checkpoints and resume.

pub mod data;
pub mod optim;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use serde::{Deserialize, Serialize};

use burn::module::{ModuleMapper, ModuleVisitor, Param};

use crate::lora::Route;
use crate::whisper::model::Whisper;
use crate::whisper::{Checkpoint, Task};
pub use optim::{AdamW, AdamWConfig, GradMap, warmup_lr};

/// One utterance ready for training: 16-kHz audio and its token sequence
/// (prompt + transcript + <|endoftext|>).
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    pub audio: Vec<f32>,
    pub tokens: Vec<u32>,
    pub text: String,
}

/// prompt + tokens of the transcript (with a leading space, as Whisper generates text, unless
/// `leading_space` is false) + <|endoftext|>.
pub fn tokens_for(ck: &Checkpoint, text: &str, leading_space: bool, language: Option<&str>) -> Result<Vec<u32>> {
    let mut t = ck.prompt(language, Task::Transcribe)?;
    let text = text.trim();
    let text = if leading_space { format!(" {text}") } else { text.to_string() };
    t.extend(ck.tokenizer.encode(&text)?);
    t.push(ck.tokenizer.eot);
    let max = ck.config.max_target_positions + 1;
    if t.len() > max {
        bail!("transcript of {} tokens is longer than the decoder's {} positions: {text:?}", t.len(), max - 1);
    }
    Ok(t)
}

/// Decoder inputs [rows, T], labels [rows, T] and the label mask [rows, T] (1 = real token),
/// padded with <|endoftext|>. Labels are the inputs shifted left by one (HF's recipe).
pub fn teacher_forcing(seqs: &[&[u32]], pad: u32, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2>) {
    let t = seqs.iter().map(|s| s.len() - 1).max().unwrap_or(1);
    let r = seqs.len();
    let (mut inp, mut lab, mut mask) =
        (Vec::with_capacity(r * t), Vec::with_capacity(r * t), Vec::with_capacity(r * t));
    for s in seqs {
        let n = s.len() - 1;
        for i in 0..t {
            inp.push(if i < n { s[i] } else { pad } as i64);
            lab.push(if i < n { s[i + 1] } else { pad } as i64);
            mask.push(if i < n { 1.0f32 } else { 0.0 });
        }
    }
    (
        Tensor::from_data(TensorData::new(inp, [r, t]), device),
        Tensor::from_data(TensorData::new(lab, [r, t]), device),
        Tensor::from_data(TensorData::new(mask, [r, t]), device),
    )
}

/// Mean token cross-entropy of each row [rows] (a sequence loss L(x) per row).
pub fn row_losses(model: &Whisper, enc: Tensor<3>, seqs: &[&[u32]], route: Option<&Route>) -> Tensor<1> {
    let mut cache = model.decoder.new_cache(enc, route);
    losses_with_cache(model, &mut cache, seqs, route)
}

/// As [`row_losses`] for rows sharing encoder states: `enc_u` [U, 1500, d], row i reads
/// utterance `row_utt[i]`.
pub fn row_losses_shared(
    model: &Whisper,
    enc_u: Tensor<3>,
    row_utt: &Tensor<1, Int>,
    seqs: &[&[u32]],
    route: Option<&Route>,
) -> Tensor<1> {
    let mut cache = model.decoder.new_cache_shared(enc_u, row_utt, route);
    losses_with_cache(model, &mut cache, seqs, route)
}

fn losses_with_cache(
    model: &Whisper,
    cache: &mut crate::whisper::model::KvCache,
    seqs: &[&[u32]],
    route: Option<&Route>,
) -> Tensor<1> {
    let device = model.decoder.embed_tokens.val().device();
    let pad = model.config.eos_token_id;
    let (inp, lab, mask) = teacher_forcing(seqs, pad, &device);
    let [r, t] = inp.dims();
    let logits = model.decoder.forward_cached(inp, cache, route); // [r, t, vocab]
    let logp = log_softmax(logits, 2);
    let nll = logp.gather(2, lab.reshape([r, t, 1])).reshape([r, t]).neg(); // [r, t]
    let counts = mask.clone().sum_dim(1).reshape([r]);
    (nll * mask).sum_dim(1).reshape([r]) / counts
}

/// Encoder states of utterances, computed once without gradients and reused across batches
/// and epochs (valid when no adapter touches the encoder).
pub struct EncoderCache {
    states: HashMap<String, Tensor<2>>,
    /// Keep at most this many utterances (each is 1500 x d_model floats).
    capacity: usize,
    /// Base (adapter-free) cross-attention keys and values per decoder layer, per utterance.
    cross: HashMap<String, Vec<(Tensor<2>, Tensor<2>)>>,
    /// Budget for `cross` in bytes (each utterance holds 2 x layers x 1500 x d_model floats).
    cross_budget: usize,
}

impl EncoderCache {
    pub fn new(capacity: usize) -> EncoderCache {
        EncoderCache { states: HashMap::new(), capacity, cross: HashMap::new(), cross_budget: 0 }
    }

    /// Also keep the decoder's base cross-attention keys/values, up to `mb` megabytes: they
    /// depend only on frozen weights and the frozen encoder, and computing them is most of a
    /// decoder pass over a short transcript.
    pub fn with_cross_kv(mut self, mb: usize) -> EncoderCache {
        self.cross_budget = mb << 20;
        self
    }

    /// Base cross-attention (keys, values) [n, 1500, d] of each decoder layer for `examples`,
    /// whose encoder states are `enc` [n, 1500, d]. `decoder` must be an inference copy.
    pub fn cross_kv(
        &mut self,
        decoder: &crate::whisper::model::Decoder,
        enc: &Tensor<3>,
        examples: &[&Example],
    ) -> Vec<(Tensor<3>, Tensor<3>)> {
        let [_, t, d] = enc.dims();
        let per_utt = 2 * decoder.layers.len() * t * d * 4;
        let missing: Vec<usize> = (0..examples.len()).filter(|&i| !self.cross.contains_key(&examples[i].id)).collect();
        let mut fresh: HashMap<usize, Vec<(Tensor<2>, Tensor<2>)>> = HashMap::new();
        if !missing.is_empty() {
            let device = enc.device();
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(missing.iter().map(|&i| i as i64).collect::<Vec<_>>(), [missing.len()]),
                &device,
            );
            let x = enc.clone().select(0, idx);
            let kv: Vec<(Tensor<3>, Tensor<3>)> = decoder
                .layers
                .iter()
                .map(|l| {
                    (l.encoder_attn.k_proj.forward(x.clone(), None), l.encoder_attn.v_proj.forward(x.clone(), None))
                })
                .collect();
            for (j, &i) in missing.iter().enumerate() {
                let one: Vec<(Tensor<2>, Tensor<2>)> = kv
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone().slice(s![j..j + 1, .., ..]).reshape([t, d]),
                            v.clone().slice(s![j..j + 1, .., ..]).reshape([t, d]),
                        )
                    })
                    .collect();
                if (self.cross.len() + 1) * per_utt <= self.cross_budget {
                    self.cross.insert(examples[i].id.clone(), one);
                } else {
                    fresh.insert(i, one);
                }
            }
        }
        (0..decoder.layers.len())
            .map(|l| {
                let get = |i: usize| -> &(Tensor<2>, Tensor<2>) {
                    &self.cross.get(&examples[i].id).unwrap_or_else(|| &fresh[&i])[l]
                };
                let ks: Vec<Tensor<2>> = (0..examples.len()).map(|i| get(i).0.clone()).collect();
                let vs: Vec<Tensor<2>> = (0..examples.len()).map(|i| get(i).1.clone()).collect();
                (Tensor::stack(ks, 0), Tensor::stack(vs, 0))
            })
            .collect()
    }

    /// States [n, 1500, d] of `examples` (plain device: constants for the autodiff graph).
    pub fn states(
        &mut self,
        ck: &Checkpoint,
        encoder: &crate::whisper::model::Encoder,
        examples: &[&Example],
    ) -> Tensor<3> {
        let missing: Vec<&Example> = {
            let mut seen = std::collections::HashSet::new();
            examples.iter().filter(|e| !self.states.contains_key(&e.id) && seen.insert(e.id.clone())).copied().collect()
        };
        let mut fresh: HashMap<String, Tensor<2>> = HashMap::new();
        if !missing.is_empty() {
            let feats: Vec<Vec<f32>> = missing.iter().map(|e| ck.features(&e.audio)).collect();
            let enc = encoder.forward(ck.mel_batch(&feats), None); // [m, 1500, d]
            let [m, t, d] = enc.dims();
            for (i, e) in missing.iter().enumerate() {
                let s = enc.clone().slice(s![i..i + 1, .., ..]).reshape([t, d]);
                if self.states.len() < self.capacity {
                    self.states.insert(e.id.clone(), s);
                } else {
                    fresh.insert(e.id.clone(), s);
                }
            }
            let _ = m;
        }
        let rows: Vec<Tensor<2>> = examples
            .iter()
            .map(|e| self.states.get(&e.id).or_else(|| fresh.get(&e.id)).expect("encoded").clone())
            .collect();
        Tensor::stack(rows, 0)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub warmup_steps: u64,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f32,
    pub gradient_accumulation_steps: usize,
    pub weight_decay: f64,
    pub seed: u64,
    pub save_every_n_epochs: usize,
    /// Tokenise transcripts with a leading space, as Whisper generates them.
    pub leading_space: bool,
    /// Utterances whose encoder states are kept in memory.
    pub encoder_cache: usize,
    /// Megabytes for the decoder's base cross-attention keys/values (per utterance: 2 x
    /// layers x 1500 x d_model floats, 18 MB for tiny); 0 = recompute every pass.
    pub cross_kv_cache_mb: usize,
    /// Stop after this many optimizer steps (a budget; None = all epochs).
    pub max_steps: Option<u64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 3,
            batch_size: 4,
            learning_rate: 1e-4,
            warmup_steps: 0,
            max_grad_norm: 1.0,
            gradient_accumulation_steps: 1,
            weight_decay: 0.0,
            seed: 42,
            save_every_n_epochs: 1,
            leading_space: true,
            encoder_cache: 20_000,
            cross_kv_cache_mb: 6144,
            max_steps: None,
        }
    }
}

impl TrainConfig {
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig { weight_decay: self.weight_decay, ..AdamWConfig::default() }
    }
}

/// One training row: an example trained through an expert (None = the base model) with a weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub example: usize,
    pub expert: Option<usize>,
    pub weight: f32,
}

/// Each row's sequence loss L [rows] for (example, expert) rows: the encoder runs once per
/// utterance without gradients (cached) unless adapters touch it.
pub fn losses_of_rows(
    ck: &Checkpoint,
    model: &Whisper,
    cache: &mut EncoderCache,
    examples: &[Example],
    rows: &[(usize, Option<usize>)],
    train: bool,
) -> Tensor<1> {
    let device = model.decoder.embed_tokens.val().device();
    let route = Route::per_row(&rows.iter().map(|r| r.1).collect::<Vec<_>>(), &device).training(train);
    let exs: Vec<&Example> = rows.iter().map(|r| &examples[r.0]).collect();
    let seqs: Vec<&[u32]> = exs.iter().map(|e| e.tokens.as_slice()).collect();
    if model.encoder_has_adapters() {
        let feats: Vec<Vec<f32>> = exs.iter().map(|e| ck.features(&e.audio)).collect();
        let mel = Tensor::from_data(ck.mel_batch(&feats).into_data(), &device);
        let enc = model.encoder.forward(mel, Some(&route));
        return row_losses(model, enc, &seqs, Some(&route));
    }
    // The encoder is shared: each utterance's states once, rows index into them.
    let mut utts: Vec<usize> = Vec::new();
    let row_utt: Vec<i64> = rows
        .iter()
        .map(|r| match utts.iter().position(|&u| u == r.0) {
            Some(i) => i as i64,
            None => {
                utts.push(r.0);
                (utts.len() - 1) as i64
            }
        })
        .collect();
    let uexs: Vec<&Example> = utts.iter().map(|&u| &examples[u]).collect();
    let enc_u = cache.states(ck, &model.encoder.valid(), &uexs);
    let base = cache.cross_kv(&model.decoder.valid(), &enc_u, &uexs);
    let row_utt = Tensor::<1, Int>::from_data(TensorData::new(row_utt, [rows.len()]), &device);
    let mut kv = model.decoder.new_cache_from_base(enc_u, base, &row_utt, Some(&route));
    losses_with_cache(model, &mut kv, &seqs, Some(&route))
}

/// Weighted loss of `rows`: sum_r w_r L_r / utterances, and each row's L_r.
pub fn rows_loss(
    ck: &Checkpoint,
    model: &Whisper,
    cache: &mut EncoderCache,
    examples: &[Example],
    rows: &[Row],
    utterances: usize,
    train: bool,
) -> (Tensor<1>, Tensor<1>) {
    let device = model.decoder.embed_tokens.val().device();
    let pairs: Vec<(usize, Option<usize>)> = rows.iter().map(|r| (r.example, r.expert)).collect();
    let losses = losses_of_rows(ck, model, cache, examples, &pairs, train);
    let w: Vec<f32> = rows.iter().map(|r| r.weight).collect();
    let w = Tensor::<1>::from_data(TensorData::new(w, [rows.len()]), &device);
    ((losses.clone() * w).sum() / utterances.max(1) as f32, losses)
}

struct Trainables {
    path: Vec<String>,
    out: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for Trainables {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
        if p.is_require_grad() {
            let t = p.val();
            let v: Vec<f32> = t.clone().into_data().try_into_vec_as().expect("f32 parameter");
            self.out.push((self.path.join("."), t.dims().to_vec(), v));
        }
    }
}

/// Save every trainable parameter of a module by path (checkpoints: adapters, gate, ...).
pub fn save_trainables<M: Module>(module: &M, path: &Path) -> Result<()> {
    let mut t = Trainables { path: Vec::new(), out: Vec::new() };
    module.visit(&mut t);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
        t.out.into_iter().map(|(k, s, v)| (k, s, v.iter().flat_map(|x| x.to_le_bytes()).collect())).collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, s, b)| Ok((k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    let tmp = path.with_extension("tmp");
    safetensors::serialize_to_file(views, None, &tmp)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

struct Restore {
    path: Vec<String>,
    values: HashMap<String, (Vec<usize>, Vec<f32>)>,
    problems: Vec<String>,
}

impl ModuleMapper for Restore {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !p.is_require_grad() {
            return p;
        }
        let key = self.path.join(".");
        let Some((shape, v)) = self.values.remove(&key) else {
            self.problems.push(format!("no saved value for {key}"));
            return p;
        };
        let t = p.val();
        if shape != t.dims().to_vec() {
            self.problems.push(format!("{key}: saved shape {shape:?}, model {:?}", t.dims()));
            return p;
        }
        let device = t.device();
        let new = Tensor::<D>::from_data(TensorData::new(v, t.shape()), &device);
        let new = if device.is_autodiff() { new.require_grad() } else { new };
        Param::initialized(p.id, new)
    }
}

/// Load what `save_trainables` wrote into a module with the same trainable parameters.
pub fn load_trainables<M: Module>(module: M, path: &Path) -> Result<M> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let values = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                (
                    v.shape().to_vec(),
                    v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
                ),
            )
        })
        .collect();
    let mut r = Restore { path: Vec::new(), values, problems: Vec::new() };
    let module = module.map(&mut r);
    if let Some(k) = r.values.keys().next() {
        r.problems.push(format!("saved {k} is not a trainable parameter of the model"));
    }
    if !r.problems.is_empty() {
        bail!("{} does not match the model: {}", path.display(), r.problems.join("; "));
    }
    Ok(module)
}

/// Where a run keeps its checkpoint, and what it resumes from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    /// Epochs completed.
    pub epoch: usize,
    pub step: u64,
    /// Hash of everything that must match to resume (config, data, base model).
    pub fingerprint: String,
}

pub fn read_state(dir: &Path) -> Option<CheckpointState> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).ok()?).ok()
}

pub fn write_state(dir: &Path, s: &CheckpointState) -> Result<()> {
    crate::stage::write_json(&dir.join("state.json"), s)
}

/// Per-epoch figures of a training run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub loss: f64,
    /// Mean row loss per expert (None for experts without rows this epoch).
    pub expert_loss: Vec<Option<f64>>,
    pub steps: u64,
    pub seconds: f64,
}

/// Train the adapters on fixed rows (expert pretraining, the dense baseline). Checkpoints go
/// to `ckpt` every `save_every_n_epochs` and at the end; a matching checkpoint there is resumed.
/// `on_epoch` sees the model after each epoch (validation, metrics).
pub fn train_rows(
    ck: &Checkpoint,
    mut model: Whisper,
    examples: &[Example],
    rows: &[Row],
    experts: usize,
    cfg: &TrainConfig,
    ckpt: &Path,
    fingerprint: &str,
    mut on_epoch: impl FnMut(&Whisper, &EpochStats) -> Result<()>,
) -> Result<Whisper> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let device = model.decoder.embed_tokens.val().device();
    std::fs::create_dir_all(ckpt)?;
    let mut opt = AdamW::new(cfg.adamw());
    let mut start = 0;
    if let Some(s) = read_state(ckpt).filter(|s| s.fingerprint == fingerprint) {
        model = load_trainables(model, &ckpt.join("trainables.safetensors"))?;
        opt = AdamW::load(&ckpt.join("optimizer.safetensors"), &device.clone().inner())?;
        start = s.epoch;
        eprintln!("resuming from the checkpoint after epoch {start} ({})", ckpt.display());
    }
    let mut cache = EncoderCache::new(cfg.encoder_cache).with_cross_kv(cfg.cross_kv_cache_mb);
    let per_step = cfg.batch_size.max(1);
    for epoch in start..cfg.epochs {
        let t0 = std::time::Instant::now();
        // Everything random in an epoch derives from (seed, epoch), so a resumed run replays
        // exactly what an uninterrupted one does.
        device.seed(cfg.seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64));
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9)));
        let (mut sum, mut n) = (0.0f64, 0usize);
        let mut per_expert = vec![(0.0f64, 0usize); experts];
        let mut acc = GradMap::default();
        let mut micro = 0;
        let mut progress = crate::stage::Progress::new(&format!("epoch {}/{}", epoch + 1, cfg.epochs), rows.len());
        for chunk in order.chunks(per_step) {
            if cfg.max_steps.is_some_and(|m| opt.step >= m) {
                break;
            }
            let batch: Vec<Row> = chunk.iter().map(|&i| rows[i]).collect();
            let (loss, losses) = rows_loss(ck, &model, &mut cache, examples, &batch, batch.len(), true);
            let value: f32 = loss.clone().into_scalar();
            if !value.is_finite() {
                bail!(
                    "non-finite loss ({value}) at epoch {} step {}; the last good checkpoint is kept in {}",
                    epoch + 1,
                    opt.step,
                    ckpt.display()
                );
            }
            let row_values: Vec<f32> = losses.clone().into_data().try_into_vec_as()?;
            for (r, l) in batch.iter().zip(&row_values) {
                if let Some(e) = r.expert {
                    per_expert[e].0 += *l as f64;
                    per_expert[e].1 += 1;
                }
            }
            sum += value as f64 * batch.len() as f64;
            n += batch.len();
            acc.accumulate(GradMap::of(&model, &loss.backward()));
            micro += 1;
            if micro == cfg.gradient_accumulation_steps.max(1) {
                acc.scale(1.0 / micro as f32);
                acc.clip(cfg.max_grad_norm);
                let lr = warmup_lr(cfg.learning_rate, cfg.warmup_steps, opt.step);
                model = opt.step(model, &acc, lr);
                acc = GradMap::default();
                micro = 0;
            }
            progress.inc(batch.len());
        }
        if micro > 0 && !cfg.max_steps.is_some_and(|m| opt.step >= m) {
            acc.scale(1.0 / micro as f32);
            acc.clip(cfg.max_grad_norm);
            let lr = warmup_lr(cfg.learning_rate, cfg.warmup_steps, opt.step);
            model = opt.step(model, &acc, lr);
        }
        progress.finish();
        let stats = EpochStats {
            epoch: epoch + 1,
            loss: sum / n.max(1) as f64,
            expert_loss: per_expert.iter().map(|(s, c)| (*c > 0).then(|| s / *c as f64)).collect(),
            steps: opt.step,
            seconds: t0.elapsed().as_secs_f64(),
        };
        on_epoch(&model, &stats)?;
        let last = epoch + 1 == cfg.epochs;
        if last || (cfg.save_every_n_epochs > 0 && (epoch + 1) % cfg.save_every_n_epochs == 0) {
            save_trainables(&model, &ckpt.join("trainables.safetensors"))?;
            opt.save(&ckpt.join("optimizer.safetensors"))?;
            write_state(
                ckpt,
                &CheckpointState { epoch: epoch + 1, step: opt.step, fingerprint: fingerprint.to_string() },
            )?;
        }
    }
    Ok(model)
}
