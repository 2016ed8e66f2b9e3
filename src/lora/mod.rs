//! LoRA on Whisper's linear layers, with many experts per layer, PEFT-compatible.
//!
//! Targets are chosen with PEFT's rules (peft/tuners/tuners_utils.py,
//! `check_target_module_exists`): a list matches a module whose full name equals an entry or
//! ends with `.entry`; a single string is a regex that must match the full name;
//! `all-linear` matches every linear layer (Whisper's output projection is tied and never one).

pub mod layer;
pub mod peft;

use anyhow::{Result, bail};
use burn::module::{Param, ParamId};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

pub use layer::{MultiLora, Route};

use crate::whisper::model::{Proj, Whisper};

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
    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.alpha / (self.r as f64).sqrt() } else { self.alpha / self.r as f64 }
    }
}

impl Whisper {
    /// Every linear projection with its HF module name (`model.decoder.layers.0.self_attn.q_proj`).
    pub fn projs_mut(&mut self) -> Vec<(String, &mut Proj)> {
        let mut out: Vec<(String, &mut Proj)> = Vec::new();
        for (i, l) in self.encoder.layers.iter_mut().enumerate() {
            let p = format!("model.encoder.layers.{i}");
            for (n, a) in [("self_attn", &mut l.self_attn)] {
                out.push((format!("{p}.{n}.q_proj"), &mut a.q_proj));
                out.push((format!("{p}.{n}.k_proj"), &mut a.k_proj));
                out.push((format!("{p}.{n}.v_proj"), &mut a.v_proj));
                out.push((format!("{p}.{n}.out_proj"), &mut a.out_proj));
            }
            out.push((format!("{p}.fc1"), &mut l.fc1));
            out.push((format!("{p}.fc2"), &mut l.fc2));
        }
        for (i, l) in self.decoder.layers.iter_mut().enumerate() {
            let p = format!("model.decoder.layers.{i}");
            for (n, a) in [("self_attn", &mut l.self_attn), ("encoder_attn", &mut l.encoder_attn)] {
                out.push((format!("{p}.{n}.q_proj"), &mut a.q_proj));
                out.push((format!("{p}.{n}.k_proj"), &mut a.k_proj));
                out.push((format!("{p}.{n}.v_proj"), &mut a.v_proj));
                out.push((format!("{p}.{n}.out_proj"), &mut a.out_proj));
            }
            out.push((format!("{p}.fc1"), &mut l.fc1));
            out.push((format!("{p}.fc2"), &mut l.fc2));
        }
        out
    }

    /// The adapters attached so far, by module name.
    pub fn loras(&self) -> Vec<(String, MultiLora)> {
        let mut m = self.clone();
        m.projs_mut().into_iter().filter_map(|(n, p)| p.lora.clone().map(|l| (n, l))).collect()
    }

    /// Does any adapter touch the encoder? If not, the encoder is shared by all experts and
    /// runs without gradients.
    pub fn encoder_has_adapters(&self) -> bool {
        self.encoder.layers.iter().any(|l| {
            [&l.self_attn.q_proj, &l.self_attn.k_proj, &l.self_attn.v_proj, &l.self_attn.out_proj, &l.fc1, &l.fc2]
                .iter()
                .any(|p| p.lora.is_some())
        })
    }

    /// Attach fresh adapters for `experts` experts to every targeted projection: A uniform in
    /// ±1/sqrt(d_in) (PEFT's kaiming_uniform with a = sqrt(5)), B zero, so an untrained adapter
    /// is exactly the base model. Returns the targeted module names.
    pub fn attach_lora(&mut self, cfg: &LoraConfig, experts: usize, device: &Device) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for (name, proj) in self.projs_mut() {
            if !cfg.target_modules.matches(&name) {
                continue;
            }
            let (d_in, d_out) = (proj.d_in(), proj.d_out());
            let bound = 1.0 / (d_in as f64).sqrt();
            let a =
                Tensor::<3>::random([experts, d_in, cfg.r], burn::tensor::Distribution::Uniform(-bound, bound), device);
            let b = Tensor::<3>::zeros([experts, cfg.r, d_out], device);
            proj.lora = Some(MultiLora {
                a: trainable(&format!("{name}.lora_A"), a),
                b: trainable(&format!("{name}.lora_B"), b),
                scale: cfg.scale(),
                dropout: cfg.dropout,
            });
            names.push(name);
        }
        if names.is_empty() {
            bail!("LoRA target_modules {:?} match no linear layer of this Whisper", cfg.target_modules);
        }
        Ok(names)
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
