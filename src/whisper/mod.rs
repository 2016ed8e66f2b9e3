//! Whisper: config, model (burn), weights, tokenizer, decoding, and where checkpoints come
//! from. Model code knows nothing about Parquet or the command line.

pub mod adapters;
pub mod config;
pub mod ct2;
pub mod decode;
pub mod kernels;
pub mod language;
pub mod model;
pub mod peft;
pub mod source;
pub mod testing;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::prelude::*;

pub use config::{GenerationConfig, WhisperConfig};
pub use decode::{GreedyOptions, greedy};
pub use model::{Precision, Whisper};
pub use tokenizer::{Task, WhisperTokenizer};

use crate::audio::mel::{LogMel, N_FRAMES};

/// The compute device: the flex CPU backend, or CUDA when built with the `cuda` feature.
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::flex()),
        s if s == "cuda" || s.starts_with("cuda:") => {
            #[cfg(feature = "cuda")]
            {
                let index: usize = s.strip_prefix("cuda:").map(str::parse).transpose()?.unwrap_or(0);
                let device = Device::cuda(index);
                usable(&device).map_err(|e| {
                    anyhow::anyhow!(
                        "--device {s}: no usable CUDA GPU ({e}); use --device cpu, or a machine with an NVIDIA GPU and its driver"
                    )
                })?;
                Ok(device)
            }
            #[cfg(not(feature = "cuda"))]
            anyhow::bail!(
                "--device {s}: this build has no CUDA support; rebuild with `cargo build --release --features cuda`"
            )
        }
        other => anyhow::bail!("unknown device `{other}` (expected cpu, cuda or cuda:N)"),
    }
}

/// Does a first operation on `device` work? CUDA's runtime panics (no driver library, no GPU,
/// a bad index), possibly on a thread of its own, where a stage needs an error message: the
/// panics are caught and the first one's message returned.
#[cfg(feature = "cuda")]
fn usable(device: &Device) -> Result<(), String> {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook = std::panic::take_hook();
    let record = seen.clone();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        record.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
    }));
    let r = std::panic::catch_unwind(|| Tensor::<1>::ones([1], device).into_data());
    std::panic::set_hook(hook);
    // The first panic is the cause (later ones are its consequences); cudarc's names every
    // library file it tried, which says nothing more.
    let first = seen.lock().unwrap_or_else(|e| e.into_inner()).first().cloned().unwrap_or_default();
    let cause = match first.split(" - searched for library names").next().unwrap_or_default() {
        "" => "an unknown error".to_string(),
        c => c.to_string(),
    };
    r.map(|_| ()).map_err(|_| cause)
}

/// A detected language: its code, token id and probability.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Detected {
    pub code: String,
    pub id: u32,
    pub probability: f32,
}

/// A loaded checkpoint: model, tokenizer, front-end and what generation needs.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: WhisperConfig,
    pub generation: GenerationConfig,
    pub tokenizer: WhisperTokenizer,
    pub model: Whisper,
    pub mel: LogMel,
    /// blake3 of the weight files, so stages can check they use the same model.
    pub hash: String,
    pub device: Device,
}

impl Checkpoint {
    /// Load a Hub id or a local directory in HF layout.
    pub fn load(source: &str, device: &Device) -> Result<Checkpoint> {
        let dir = source::resolve(source)?;
        Self::load_dir(&dir, device)
    }

    pub fn load_dir(dir: &Path, device: &Device) -> Result<Checkpoint> {
        source::check_dir(dir)?;
        let config = WhisperConfig::from_file(&dir.join("config.json"))?;
        let generation = GenerationConfig::from_file(&dir.join("generation_config.json"))?;
        let tokenizer = WhisperTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let weights = weights::Checkpoint::open(dir)?;
        let mut loader = weights::Loader::new(&weights, device);
        let model = Whisper::load(&config, &mut loader);
        loader.finish(Whisper::ignorable_tensors(&config)).with_context(|| format!("loading {}", dir.display()))?;
        let hash = weights_hash(dir)?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            mel: LogMel::new(config.num_mel_bins),
            config,
            generation,
            tokenizer,
            model,
            hash,
            device: device.clone(),
        })
    }

    /// The checkpoint with its base model in `precision` (before any adapter is attached).
    pub fn with_precision(mut self, precision: Precision) -> Checkpoint {
        self.model = self.model.with_precision(precision);
        self
    }

    /// Log-mel features [n_mels, 3000] of 16-kHz audio.
    pub fn features(&self, audio: &[f32]) -> Vec<f32> {
        self.mel.compute(audio)
    }

    /// A batch of features as a tensor [b, n_mels, 3000], on the plain (non-autodiff) device:
    /// features are never differentiated, and plain tensors take the fast inference kernels.
    pub fn mel_batch(&self, feats: &[Vec<f32>]) -> Tensor<3> {
        let n = self.config.num_mel_bins;
        let flat: Vec<f32> = feats.iter().flatten().copied().collect();
        Tensor::from_data(TensorData::new(flat, [feats.len(), n, N_FRAMES]), &self.device.clone().inner())
    }

    pub fn is_multilingual(&self) -> bool {
        self.generation.is_multilingual.unwrap_or_else(|| self.config.is_multilingual())
    }

    pub fn prompt(&self, language: Option<&str>, task: Task) -> Result<Vec<u32>> {
        self.tokenizer.prompt(self.is_multilingual(), language, task)
    }

    pub fn prompt_len(&self) -> usize {
        self.tokenizer.prompt_len(self.is_multilingual())
    }

    /// The language tokens (code, id) in id order: the checkpoint's `lang_to_id`, or every
    /// `<|xx|>` of [`language::LANGUAGES`] the tokenizer has. Empty for English-only checkpoints.
    pub fn language_tokens(&self) -> Vec<(String, u32)> {
        if !self.is_multilingual() {
            return Vec::new();
        }
        let mut out: Vec<(String, u32)> = match &self.generation.lang_to_id {
            Some(m) => {
                m.iter().map(|(t, &id)| (t.trim_start_matches("<|").trim_end_matches("|>").to_string(), id)).collect()
            }
            None => language::LANGUAGES
                .iter()
                .filter_map(|(c, _)| self.tokenizer.token_id(&format!("<|{c}|>")).map(|id| (c.to_string(), id)))
                .collect(),
        };
        out.sort_by_key(|&(_, id)| id);
        out
    }

    /// The language of every row of `enc` [b, 1500, d], as transformers'
    /// `WhisperForConditionalGeneration.detect_language`: one decoder step on
    /// <|startoftranscript|>, every logit but the language tokens' set to -inf, the argmax;
    /// the probability is the softmax over the language tokens (openai-whisper's
    /// `detect_language`). `route` picks each row's adapter, as in decoding.
    pub fn detect_language(
        &self,
        model: &Whisper,
        enc: Tensor<3>,
        route: Option<&crate::lora::Route>,
    ) -> Result<Vec<Detected>> {
        let langs = self.language_tokens();
        if langs.is_empty() {
            anyhow::bail!("{} is English-only: it has no language tokens to detect with", self.dir.display());
        }
        let ids: Vec<u32> = langs.iter().map(|&(_, id)| id).collect();
        let logits = decode::language_logits(model, enc, self.tokenizer.sot, &ids, route);
        Ok(logits
            .iter()
            .map(|row| {
                let (best, _) = row
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |acc, (i, &x)| if x > acc.1 { (i, x) } else { acc });
                let max = row[best] as f64;
                let total: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
                Detected { code: langs[best].0.clone(), id: langs[best].1, probability: (1.0 / total) as f32 }
            })
            .collect())
    }

    pub fn greedy_options(&self, max_new_tokens: usize) -> GreedyOptions {
        GreedyOptions {
            max_new_tokens,
            suppress_tokens: self
                .generation
                .suppress_tokens
                .clone()
                .unwrap_or_else(|| self.config.suppress_tokens.clone()),
            begin_suppress_tokens: self
                .generation
                .begin_suppress_tokens
                .clone()
                .unwrap_or_else(|| self.config.begin_suppress_tokens.clone()),
            eot: self.tokenizer.eot,
        }
    }
}

/// blake3 over the weight files of a checkpoint directory (sorted names and contents).
pub fn weights_hash(dir: &Path) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors") || n == "model.safetensors.index.json")
        .collect();
    names.sort();
    let mut h = blake3::Hasher::new();
    for n in names {
        h.update(n.as_bytes());
        h.update(&crate::util::hash_file(&dir.join(&n))?);
    }
    Ok(h.finalize().to_hex().to_string())
}
