//! A trained mixture for inference: route each clip with the gate on its pooled embedding
//! (the same pooling and layer as training), then decode with the chosen expert.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;

use crate::audio::mel::valid_encoder_frames;
use crate::embed::{Pooling, pool};
use crate::joint::MixtureConfig;
use crate::lora::Route;
use crate::lora::peft::load_experts;
use crate::routing::gate::Gate;
use crate::whisper::model::Whisper;
use crate::whisper::{Checkpoint, Task, greedy};

pub struct MixtureModel {
    pub ck: Checkpoint,
    pub model: Whisper,
    pub gate: Gate,
    pub config: MixtureConfig,
    pooling: Pooling,
}

/// One routed transcription.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Routed {
    pub text: String,
    pub expert: usize,
    pub probs: Vec<f32>,
}

impl MixtureModel {
    /// Load `dir` (the joint stage's `mixture/`); `base_model` overrides the checkpoint it
    /// names (its hash must still match).
    pub fn load(dir: &Path, base_model: Option<&str>, device: &Device) -> Result<MixtureModel> {
        let cfg_path = dir.join("routing.json");
        let config: MixtureConfig = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?,
        )
        .with_context(|| format!("{} is not a mixture config", cfg_path.display()))?;
        let source = base_model.unwrap_or(&config.base_model);
        let ck = Checkpoint::load(source, device).with_context(|| {
            format!("loading the base model `{source}` of {} (pass --model to point elsewhere)", dir.display())
        })?;
        if ck.hash != config.checkpoint_hash {
            bail!(
                "{source} is not the checkpoint this mixture was trained on (hash {} vs {})",
                ck.hash,
                config.checkpoint_hash
            );
        }
        let mut model = ck.model.clone();
        let dirs: Vec<_> = config.adapters.iter().map(|a| dir.join(a)).collect();
        load_experts(&mut model, &dirs, device)?;
        let gate = Gate::load(&dir.join("gate"), device)?;
        let pooling: Pooling = serde_json::from_value(serde_json::Value::String(config.pooling.clone()))
            .with_context(|| format!("unknown pooling `{}` in {}", config.pooling, cfg_path.display()))?;
        Ok(MixtureModel { ck, model, gate, config, pooling })
    }

    /// Route and transcribe 16-kHz clips.
    pub fn transcribe(&self, clips: &[Vec<f32>], batch: usize, max_new_tokens: usize) -> Result<Vec<Routed>> {
        let ck = &self.ck;
        let layers = ck.config.encoder_layers;
        let layer = self.config.layer.map(|l| if l < 0 { layers as i64 + 1 + l } else { l } as usize).unwrap_or(layers);
        let prompt = ck.prompt(None, Task::Transcribe)?;
        let opts = ck.greedy_options(max_new_tokens);
        let e = self.config.experts;
        let mut out = Vec::new();
        for chunk in clips.chunks(batch.max(1)) {
            let feats: Vec<Vec<f32>> = chunk.iter().map(|c| ck.features(c)).collect();
            let mel = ck.mel_batch(&feats);
            let valid: Vec<usize> = chunk.iter().map(|c| valid_encoder_frames(c.len())).collect();
            // The gate sees the base model's pooled states, as in stage embed.
            let base_states = ck.model.encoder.forward_upto(mel.clone(), layer, None);
            let emb = pool(base_states.clone(), &valid, self.pooling);
            let probs: Vec<f32> =
                burn::tensor::activation::softmax(self.gate.forward(emb, false), 1).into_data().try_into_vec_as()?;
            let experts: Vec<Option<usize>> = (0..chunk.len())
                .map(|i| Some(crate::routing::stats::top_k(&probs[i * e..(i + 1) * e], 1)[0]))
                .collect();
            let route = Route::per_row(&experts, &ck.device);
            let enc = if self.model.encoder_has_adapters() {
                self.model.encoder.forward(mel, Some(&route))
            } else if layer == layers {
                base_states
            } else {
                ck.model.encoder.forward(mel, None)
            };
            for (i, ids) in greedy(&self.model, enc, &prompt, &opts, Some(&route)).into_iter().enumerate() {
                out.push(Routed {
                    text: ck.tokenizer.decode(&ids[prompt.len()..])?.trim().to_string(),
                    expert: experts[i].unwrap(),
                    probs: probs[i * e..(i + 1) * e].to_vec(),
                });
            }
        }
        Ok(out)
    }
}
