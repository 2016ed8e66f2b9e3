//! The checkpoint's own description of itself: config.json and generation_config.json, in
//! Hugging Face's field names.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// Whisper's architecture, from `config.json` (tiny to large-v3, .en and multilingual).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct WhisperConfig {
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_layers: usize,
    pub decoder_attention_heads: usize,
    #[serde(default = "default_ffn")]
    pub encoder_ffn_dim: usize,
    #[serde(default = "default_ffn")]
    pub decoder_ffn_dim: usize,
    pub num_mel_bins: usize,
    #[serde(default = "default_source_positions")]
    pub max_source_positions: usize,
    #[serde(default = "default_target_positions")]
    pub max_target_positions: usize,
    pub vocab_size: usize,
    #[serde(default = "default_sot")]
    pub decoder_start_token_id: u32,
    #[serde(default = "default_eot")]
    pub eos_token_id: u32,
    #[serde(default = "default_eot")]
    pub pad_token_id: u32,
    #[serde(default)]
    pub suppress_tokens: Vec<u32>,
    #[serde(default)]
    pub begin_suppress_tokens: Vec<u32>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
}

fn default_ffn() -> usize {
    0
}
fn default_source_positions() -> usize {
    1500
}
fn default_target_positions() -> usize {
    448
}
fn default_sot() -> u32 {
    50257
}
fn default_eot() -> u32 {
    50256
}
fn default_activation() -> String {
    "gelu".into()
}
fn default_true() -> bool {
    true
}

impl WhisperConfig {
    pub fn from_file(path: &Path) -> Result<WhisperConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut c: WhisperConfig =
            serde_json::from_str(&text).with_context(|| format!("{} is not a Whisper config.json", path.display()))?;
        if c.encoder_ffn_dim == 0 {
            c.encoder_ffn_dim = 4 * c.d_model;
        }
        if c.decoder_ffn_dim == 0 {
            c.decoder_ffn_dim = 4 * c.d_model;
        }
        if c.activation_function != "gelu" {
            anyhow::bail!(
                "{}: activation_function `{}` is not supported (Whisper uses gelu)",
                path.display(),
                c.activation_function
            );
        }
        Ok(c)
    }

    /// Multilingual checkpoints have 51865 tokens (large-v3: 51866); English-only ones 51864.
    pub fn is_multilingual(&self) -> bool {
        self.vocab_size >= 51865
    }

    /// The architecture of a released checkpoint by its short name (tiny, base, small, medium,
    /// large-v2, large-v3; `.en` for the English-only ones below large), as its config.json has
    /// it: for random-weight checks of any size without a download.
    pub fn named(name: &str) -> Result<WhisperConfig> {
        let (size, english) = match name.strip_suffix(".en") {
            Some(s) => (s, true),
            None => (name, false),
        };
        let (d, layers, heads) = match size {
            "tiny" => (384, 4, 6),
            "base" => (512, 6, 8),
            "small" => (768, 12, 12),
            "medium" => (1024, 24, 16),
            "large" | "large-v1" | "large-v2" | "large-v3" if !english => (1280, 32, 20),
            _ => anyhow::bail!(
                "unknown Whisper config `{name}` (expected tiny, base, small, medium with or without .en, large-v2 or large-v3)"
            ),
        };
        let v3 = size == "large-v3";
        let mut c = WhisperConfig::tiny_test(if english {
            51864
        } else if v3 {
            51866
        } else {
            51865
        });
        (c.d_model, c.encoder_layers, c.decoder_layers) = (d, layers, layers);
        (c.encoder_attention_heads, c.decoder_attention_heads) = (heads, heads);
        (c.encoder_ffn_dim, c.decoder_ffn_dim) = (4 * d, 4 * d);
        c.num_mel_bins = if v3 { 128 } else { 80 };
        if !english {
            (c.decoder_start_token_id, c.eos_token_id, c.pad_token_id) = (50258, 50257, 50257);
        }
        Ok(c)
    }

    /// A small random-weight configuration for tests.
    pub fn tiny_test(vocab_size: usize) -> WhisperConfig {
        WhisperConfig {
            d_model: 16,
            encoder_layers: 2,
            encoder_attention_heads: 2,
            decoder_layers: 2,
            decoder_attention_heads: 2,
            encoder_ffn_dim: 32,
            decoder_ffn_dim: 32,
            num_mel_bins: 80,
            max_source_positions: 1500,
            max_target_positions: 448,
            vocab_size,
            decoder_start_token_id: default_sot(),
            eos_token_id: default_eot(),
            pad_token_id: default_eot(),
            suppress_tokens: vec![],
            begin_suppress_tokens: vec![],
            activation_function: "gelu".into(),
            scale_embedding: false,
            tie_word_embeddings: true,
        }
    }
}

/// What `generate` needs from `generation_config.json`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct GenerationConfig {
    #[serde(default)]
    pub suppress_tokens: Option<Vec<u32>>,
    #[serde(default)]
    pub begin_suppress_tokens: Option<Vec<u32>>,
    #[serde(default)]
    pub no_timestamps_token_id: Option<u32>,
    #[serde(default)]
    pub is_multilingual: Option<bool>,
    #[serde(default)]
    pub lang_to_id: Option<std::collections::BTreeMap<String, u32>>,
    #[serde(default)]
    pub task_to_id: Option<std::collections::BTreeMap<String, u32>>,
    #[serde(default)]
    pub max_length: Option<usize>,
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

impl GenerationConfig {
    /// Missing file = empty config (older checkpoints have none; config.json then applies).
    pub fn from_file(path: &Path) -> Result<GenerationConfig> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(GenerationConfig::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
}
