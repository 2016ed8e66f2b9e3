//! LoRA with many experts per layer: the multi-expert layer ([`layer`]), the adapter
//! configuration and PEFT's target-matching rules. Attaching adapters to Whisper and the PEFT
//! file layout are in `whisper::adapters` and `whisper::peft` (this module knows no model).
//!
//! Targets are chosen with PEFT's rules (peft/tuners/tuners_utils.py,
//! `check_target_module_exists`): a list matches a module whose full name equals an entry or
//! ends with `.entry`; a single string is a regex that must match the full name;
//! `all-linear` matches every linear layer (Whisper's output projection is tied and never one).

pub mod layer;

use burn::module::{Param, ParamId};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use layer::{MultiLora, Route};

/// `target_modules` as PEFT takes it: a list of names, or one regex.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Targets {
    Names(Vec<String>),
    Regex(String),
}

impl Targets {
    pub fn matches(&self, module: &str) -> bool {
        match self {
            Targets::Names(names) => names.iter().any(|t| module == t || module.ends_with(&format!(".{t}"))),
            Targets::Regex(r) if r == "all-linear" => true,
            Targets::Regex(r) => {
                regex::Regex::new(&format!("^(?:{r})$")).map(|re| re.is_match(module)).unwrap_or(false)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Targets,
    /// rsLoRA scaling alpha / sqrt(r) instead of alpha / r.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: Targets::Names(vec!["q_proj".into(), "v_proj".into()]),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// Rank `r` and `alpha` on the projections named `names` (PEFT's suffix match), no dropout.
    pub fn on(names: &[&str], r: usize, alpha: f64) -> LoraConfig {
        LoraConfig {
            r,
            alpha,
            dropout: 0.0,
            target_modules: Targets::Names(names.iter().map(|n| n.to_string()).collect()),
            use_rslora: false,
        }
    }

    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.alpha / (self.r as f64).sqrt() } else { self.alpha / self.r as f64 }
    }
}

/// A trainable parameter with an id derived from its name, so optimizer state and checkpoints
/// line up across processes.
pub fn trainable<const D: usize>(name: &str, t: Tensor<D>) -> Param<Tensor<D>> {
    let h = blake3::hash(name.as_bytes());
    let mut p = Param::from_tensor(t);
    p.id = ParamId::from(u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap()));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_matching_rules() {
        let names = Targets::Names(vec!["q_proj".into(), "fc1".into()]);
        assert!(names.matches("model.encoder.layers.0.self_attn.q_proj"));
        assert!(names.matches("model.decoder.layers.3.encoder_attn.q_proj"));
        assert!(names.matches("model.decoder.layers.3.fc1"));
        assert!(!names.matches("model.decoder.layers.3.self_attn.k_proj"));
        assert!(!names.matches("model.decoder.layers.3.xq_proj"));
        let re = Targets::Regex(r".*decoder.*\.(q_proj|v_proj)".into());
        assert!(re.matches("model.decoder.layers.0.self_attn.v_proj"));
        assert!(!re.matches("model.encoder.layers.0.self_attn.v_proj"));
        // A regex must match the whole name.
        assert!(!Targets::Regex("q_proj".into()).matches("model.decoder.layers.0.self_attn.q_proj"));
        let parsed: LoraConfig = serde_json::from_str(r#"{"target_modules": ".*decoder.*q_proj"}"#).unwrap();
        assert!(matches!(parsed.target_modules, Targets::Regex(_)));
        assert_eq!(LoraConfig::default().scale(), 2.0);
    }
}
