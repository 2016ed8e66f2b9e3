//! A trained mixture for inference, and the one path every caller decodes through:
//! audio -> pooled base-encoder embedding (the same pooling and layer as training) -> gate
//! ([`router`]) -> the chosen expert's adapters -> greedy decoding ([`transcribe`]).

pub mod router;
pub mod transcribe;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use router::{Router, RouterKind, Routes};

use crate::audio::mel::valid_encoder_frames;
use crate::embedding::{Pooling, embed_features, pool, resolve_layer};
use crate::eval::EvalConfig;
use crate::lora::LoraConfig;
use crate::routing::centroid::Centroids;
use crate::routing::gate::Gate;
use crate::train::{EncoderCache, Example};
use crate::whisper::model::Whisper;
use crate::whisper::{Checkpoint, Precision};

/// The routing configuration saved with a mixture (`routing.json`): what inference needs to
/// route new audio exactly as training did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MixtureConfig {
    pub experts: usize,
    pub adapters: Vec<String>,
    pub top_k_experts: usize,
    /// The temperature at the end of training: routing probabilities are softmax(z / T).
    pub temperature: f64,
    pub checkpoint_hash: String,
    pub base_model: String,
    pub pooling: String,
    pub layer: Option<i64>,
    pub lora: LoraConfig,
    /// The gate, or the cluster centres saved beside it (`centroids.json`).
    #[serde(default)]
    pub router: RouterKind,
    /// Clips whose top routing probability is below this decode through the average of every
    /// expert instead of their top expert (None: always the top expert). Callers may override
    /// it ([`Mixture::set_fallback`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_below: Option<f32>,
}

impl MixtureConfig {
    pub fn read(dir: &Path) -> Result<MixtureConfig> {
        crate::util::read_json(&dir.join("routing.json")).context("reading a mixture (stage joint's mixture/)")
    }

    pub fn adapter_dirs(&self, dir: &Path) -> Vec<PathBuf> {
        self.adapters.iter().map(|a| dir.join(a)).collect()
    }
}

/// A loaded mixture: the base checkpoint, the experts' adapters on one model, the gate.
pub struct Mixture {
    pub ck: Checkpoint,
    pub model: Whisper,
    pub gate: Gate,
    /// The cluster centres, when the mixture has them (the joint stage writes them).
    pub centroids: Option<Centroids>,
    pub config: MixtureConfig,
    pooling: Pooling,
    layer: usize,
    /// With `config.fallback_below`: the base model with one adapter, the average of the experts'.
    averaged: Option<Whisper>,
}

/// One routed transcription.
#[derive(Debug, Clone, Serialize)]
pub struct Routed {
    /// Decoded through the average of the experts (its top probability was below the
    /// fallback threshold) rather than through `expert`.
    pub averaged: bool,
    /// The text and the prompt's language.
    pub transcript: transcribe::Transcript,
    pub expert: usize,
    pub probs: Vec<f32>,
}

impl Mixture {
    /// Load `dir` (the joint stage's `mixture/`); `base_model` overrides the checkpoint it
    /// names (its hash must still match).
    pub fn load(dir: &Path, base_model: Option<&str>, device: &Device, precision: Precision) -> Result<Mixture> {
        let config = MixtureConfig::read(dir)?;
        let source = base_model.unwrap_or(&config.base_model);
        let ck = Checkpoint::load(source, device).with_context(|| {
            format!("loading the base model `{source}` of {} (pass --model to point elsewhere)", dir.display())
        })?;
        let ck = ck.with_precision(precision);
        Self::with_checkpoint(dir, config, ck)
    }

    /// As [`Mixture::load`] with the base checkpoint already loaded.
    pub fn with_checkpoint(dir: &Path, config: MixtureConfig, ck: Checkpoint) -> Result<Mixture> {
        if ck.hash != config.checkpoint_hash {
            bail!(
                "{} is not the checkpoint the mixture in {} was trained on (hash {} vs {})",
                ck.dir.display(),
                dir.display(),
                ck.hash,
                config.checkpoint_hash
            );
        }
        let mut model = ck.model.clone();
        crate::whisper::peft::load_experts(&mut model, &config.adapter_dirs(dir), &ck.device)?;
        let gate = Gate::load(&dir.join("gate"), &ck.device)?;
        let centroids = match Centroids::load(dir) {
            Ok(c) => Some(c),
            Err(_) if config.router == RouterKind::Gate => None,
            Err(e) => return Err(e.context(format!("{} routes by centroid but has no centroids.json", dir.display()))),
        };
        let pooling = Pooling::from_name(&config.pooling).with_context(|| format!("{}/routing.json", dir.display()))?;
        let layer = resolve_layer(config.layer, ck.config.encoder_layers)?;
        let averaged = config.fallback_below.map(|_| model.averaged_experts());
        Ok(Mixture { ck, model, gate, centroids, config, pooling, layer, averaged })
    }

    /// Decode clips whose top routing probability is below `below` through the average of the
    /// experts ([`Whisper::averaged_experts`]). Gate routing is sharp on the voices
    /// it was trained on and flat on new ones, where a single expert does worse than all of
    /// them together (README, "Demo results").
    pub fn set_fallback(&mut self, below: Option<f32>) {
        self.averaged = below.and(self.averaged.take()).or_else(|| below.map(|_| self.model.averaged_experts()));
        self.config.fallback_below = below;
    }

    /// The encoder levels (layers run) routing and decoding read for each clip: the pooled
    /// layer and the first one an adapter touches. An [`EncoderCache`] that keeps them runs the
    /// encoder's lower layers once per clip for both.
    pub fn levels(&self) -> Vec<usize> {
        std::iter::once(self.layer).chain(self.model.first_adapted_encoder_layer()).collect()
    }

    pub fn router(&self) -> Router<'_> {
        let centroids = self.centroids.as_ref().filter(|_| self.config.router == RouterKind::Centroid);
        Router { gate: &self.gate, temperature: self.config.temperature, centroids }
    }

    /// Route utterances from their audio: [`Mixture::embed`] -> gate.
    pub fn route(&self, examples: &[&Example], cache: Option<&mut EncoderCache>) -> Result<Routes> {
        self.router().route(self.embed(examples, cache)?)
    }

    /// Embeddings [n, dim] of utterances from their audio, as the embed stage makes them:
    /// pooled base-encoder states (through `cache` when given: the adapted layers above the
    /// pooled one then continue from its states; the cache encodes one clip at a time, the
    /// embed stage in batches, which can differ in the last bits).
    pub fn embed(&self, examples: &[&Example], cache: Option<&mut EncoderCache>) -> Result<Tensor<2>> {
        let samples: Vec<usize> = examples.iter().map(|e| e.audio.len()).collect();
        Ok(match cache {
            Some(c) => {
                let valid: Vec<usize> = samples.iter().map(|&n| valid_encoder_frames(n)).collect();
                pool(c.states_upto(&self.ck, &self.ck.model.encoder, examples, self.layer), &valid, self.pooling)
            }
            None => {
                let feats: Vec<Vec<f32>> = examples.iter().map(|e| self.ck.features(&e.audio)).collect();
                embed_features(&self.ck, &feats, &samples, self.layer, self.pooling).0
            }
        })
    }

    /// Route and transcribe utterances in batches of `opts.batch_size`: the path of
    /// `pipeline transcribe --mixture` and of evaluate's mixture system. `cache` holds base
    /// encoder states shared with other systems.
    pub fn transcribe_examples(
        &self,
        examples: &[&Example],
        opts: &EvalConfig,
        mut cache: Option<&mut EncoderCache>,
    ) -> Result<Vec<Routed>> {
        let mut out = Vec::with_capacity(examples.len());
        for chunk in examples.chunks(opts.batch_size.max(1)) {
            // Without a shared cache, one for the batch: routing and decoding share the pass.
            let mut local = EncoderCache::new(2 * chunk.len()).keep_levels(&self.levels());
            let c = match cache.as_deref_mut() {
                Some(c) => c,
                None => &mut local,
            };
            let routes = self.route(chunk, Some(&mut *c))?;
            let top = routes.top1();
            let below: Vec<bool> = (0..chunk.len())
                .map(|i| self.config.fallback_below.is_some_and(|t| routes.row(i)[top[i]] < t))
                .collect();
            // Two groups: clips through their top expert, clips through the average.
            let (avg, own): (Vec<usize>, Vec<usize>) = (0..chunk.len()).partition(|&i| below[i]);
            let mut texts: Vec<Option<transcribe::Transcript>> = vec![None; chunk.len()];
            for (rows, averaged) in [(&own, false), (&avg, true)] {
                if rows.is_empty() {
                    continue;
                }
                let model = match &self.averaged {
                    Some(m) if averaged => m,
                    _ => &self.model,
                };
                let exs: Vec<&Example> = rows.iter().map(|&i| chunk[i]).collect();
                let experts: Vec<Option<usize>> =
                    rows.iter().map(|&i| Some(if averaged { 0 } else { top[i] })).collect();
                let t = transcribe::transcribe_detailed(&self.ck, model, &exs, &experts, opts, Some(&mut *c))?;
                for (&i, t) in rows.iter().zip(t) {
                    texts[i] = Some(t);
                }
            }
            for (i, t) in texts.into_iter().enumerate() {
                let transcript = t.expect("every row decoded");
                out.push(Routed { transcript, expert: top[i], averaged: below[i], probs: routes.row(i).to_vec() });
            }
        }
        Ok(out)
    }

    /// Route and transcribe 16-kHz clips.
    pub fn transcribe(&self, clips: &[Vec<f32>], opts: &EvalConfig) -> Result<Vec<Routed>> {
        let exs: Vec<Example> =
            clips.iter().enumerate().map(|(i, c)| Example::clip(i.to_string(), c.clone())).collect();
        let refs: Vec<&Example> = exs.iter().collect();
        self.transcribe_examples(&refs, opts, None)
    }
}
