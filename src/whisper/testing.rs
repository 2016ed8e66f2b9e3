//! A tiny random-weight Whisper checkpoint in Hugging Face layout, for tests that must not
//! depend on a real checkpoint (and for fast end-to-end tests of training code).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::Result;
use serde_json::json;

use super::config::WhisperConfig;

/// Words of the test tokenizer; ids follow this order, then the special tokens.
pub const WORDS: [&str; 24] = [
    "the", "a", "cat", "dog", "sat", "on", "mat", "ran", "to", "house", "big", "small", "red", "blue", "one", "two",
    "and", "is", "it", "we", "go", "see", "sun", "sky",
];

/// The shape of the test checkpoint: vocab = words + <unk> + 4 special tokens.
pub fn tiny_config() -> WhisperConfig {
    let n = WORDS.len() as u32;
    let mut c = WhisperConfig::tiny_test(WORDS.len() + 5);
    c.eos_token_id = n + 1;
    c.pad_token_id = n + 1;
    c.decoder_start_token_id = n + 2;
    c.begin_suppress_tokens = vec![n + 1];
    c.suppress_tokens = vec![n + 4];
    c
}

/// whisper-tiny's shapes cut to one encoder and one decoder layer (unit tests of the model with
/// real widths).
pub fn one_layer_tiny() -> WhisperConfig {
    let mut c = WhisperConfig::named("tiny").expect("tiny is a known config");
    (c.encoder_layers, c.decoder_layers) = (1, 1);
    c
}

fn tensor_names(c: &WhisperConfig) -> Vec<(String, Vec<usize>)> {
    let d = c.d_model;
    let mut v: Vec<(String, Vec<usize>)> = vec![
        ("model.encoder.conv1.weight".into(), vec![d, c.num_mel_bins, 3]),
        ("model.encoder.conv1.bias".into(), vec![d]),
        ("model.encoder.conv2.weight".into(), vec![d, d, 3]),
        ("model.encoder.conv2.bias".into(), vec![d]),
        ("model.encoder.embed_positions.weight".into(), vec![c.max_source_positions, d]),
        ("model.encoder.layer_norm.weight".into(), vec![d]),
        ("model.encoder.layer_norm.bias".into(), vec![d]),
        ("model.decoder.embed_tokens.weight".into(), vec![c.vocab_size, d]),
        ("model.decoder.embed_positions.weight".into(), vec![c.max_target_positions, d]),
        ("model.decoder.layer_norm.weight".into(), vec![d]),
        ("model.decoder.layer_norm.bias".into(), vec![d]),
    ];
    let attn = |v: &mut Vec<(String, Vec<usize>)>, p: &str| {
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            v.push((format!("{p}.{proj}.weight"), vec![d, d]));
            if proj != "k_proj" {
                v.push((format!("{p}.{proj}.bias"), vec![d]));
            }
        }
    };
    let norm = |v: &mut Vec<(String, Vec<usize>)>, p: &str| {
        v.push((format!("{p}.weight"), vec![d]));
        v.push((format!("{p}.bias"), vec![d]));
    };
    for (side, layers, ffn) in
        [("encoder", c.encoder_layers, c.encoder_ffn_dim), ("decoder", c.decoder_layers, c.decoder_ffn_dim)]
    {
        for i in 0..layers {
            let p = format!("model.{side}.layers.{i}");
            attn(&mut v, &format!("{p}.self_attn"));
            norm(&mut v, &format!("{p}.self_attn_layer_norm"));
            if side == "decoder" {
                attn(&mut v, &format!("{p}.encoder_attn"));
                norm(&mut v, &format!("{p}.encoder_attn_layer_norm"));
            }
            v.push((format!("{p}.fc1.weight"), vec![ffn, d]));
            v.push((format!("{p}.fc1.bias"), vec![ffn]));
            v.push((format!("{p}.fc2.weight"), vec![d, ffn]));
            v.push((format!("{p}.fc2.bias"), vec![d]));
            norm(&mut v, &format!("{p}.final_layer_norm"));
        }
    }
    v
}

/// Random weights for `c` in `dir/model.safetensors` (f32; layer norms 1 and 0). `skip` leaves
/// tensors out and `reshape` changes shapes, to make broken checkpoints.
pub fn write_weights(
    dir: &Path,
    c: &WhisperConfig,
    seed: u64,
    skip: &[&str],
    reshape: &[(&str, Vec<usize>)],
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0
    };
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (name, mut shape) in tensor_names(c) {
        if skip.contains(&name.as_str()) {
            continue;
        }
        if let Some((_, s)) = reshape.iter().find(|(n, _)| *n == name) {
            shape = s.clone();
        }
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("layer_norm.weight") {
            vec![1.0; n]
        } else if name.ends_with("layer_norm.bias") {
            vec![0.0; n]
        } else {
            let s = if name.contains("embed") { 0.5 } else { 0.3 };
            (0..n).map(|_| rand() * s).collect()
        };
        tensors.insert(name, (shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, (s, b))| {
            Ok((k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)?))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(
        views,
        Some(HashMap::from([("format".into(), "pt".into())])),
        &dir.join("model.safetensors"),
    )?;

    Ok(())
}

/// `dir/config.json` for `c`, in Hugging Face's field names.
pub fn write_config(dir: &Path, c: &WhisperConfig) -> Result<()> {
    let config = json!({
        "d_model": c.d_model, "encoder_layers": c.encoder_layers, "encoder_attention_heads": c.encoder_attention_heads,
        "decoder_layers": c.decoder_layers, "decoder_attention_heads": c.decoder_attention_heads,
        "encoder_ffn_dim": c.encoder_ffn_dim, "decoder_ffn_dim": c.decoder_ffn_dim, "num_mel_bins": c.num_mel_bins,
        "max_source_positions": c.max_source_positions, "max_target_positions": c.max_target_positions,
        "vocab_size": c.vocab_size, "decoder_start_token_id": c.decoder_start_token_id, "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id, "suppress_tokens": c.suppress_tokens, "begin_suppress_tokens": c.begin_suppress_tokens,
        "activation_function": "gelu", "tie_word_embeddings": true, "model_type": "whisper",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)?)?;
    Ok(())
}

/// Write a random-weight checkpoint (f32 safetensors, config, generation config, tokenizer).
/// `skip` leaves tensors out and `reshape` changes shapes, to make broken checkpoints.
pub fn write_checkpoint(dir: &Path, seed: u64, skip: &[&str], reshape: &[(&str, Vec<usize>)]) -> Result<WhisperConfig> {
    let c = tiny_config();
    write_weights(dir, &c, seed, skip, reshape)?;
    write_config(dir, &c)?;
    let n = WORDS.len() as u32;
    std::fs::write(
        dir.join("generation_config.json"),
        serde_json::to_string_pretty(
            &json!({"is_multilingual": false, "no_timestamps_token_id": n + 3, "max_length": 448}),
        )?,
    )?;
    let mut vocab = serde_json::Map::new();
    for (i, w) in WORDS.iter().enumerate() {
        vocab.insert(w.to_string(), json!(i));
    }
    vocab.insert("<unk>".into(), json!(n));
    let special = |id: u32, content: &str| json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(n + 1, "<|endoftext|>"), special(n + 2, "<|startoftranscript|>"),
                         special(n + 3, "<|notimestamps|>"), special(n + 4, "<|nospeech|>")],
        "normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string_pretty(&tokenizer)?)?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::whisper::Checkpoint;
    use burn::prelude::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("wm-rand-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn random_checkpoint_loads_and_runs_end_to_end() {
        let d = dir("ok");
        write_checkpoint(&d, 7, &[], &[]).unwrap();
        let ck = Checkpoint::load_dir(&d, &Device::flex()).unwrap();
        let clip: Vec<f32> = (0..16000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let feats = [ck.features(&clip), ck.features(&clip[..8000])];
        let enc = ck.model.encoder.forward(ck.mel_batch(&feats), None);
        let prompt = ck.prompt(None, Task::Transcribe).unwrap();
        let out = crate::whisper::greedy(&ck.model, enc, &prompt, &ck.greedy_options(12), None);
        assert_eq!(out.len(), 2);
        for ids in &out {
            let prompt = ck.prompt(None, Task::Transcribe).unwrap();
            assert_eq!(&ids[..2], prompt.as_slice());
            assert!(ids.len() > 2 && ids.len() <= 2 + 12);
            // Suppressed tokens never appear; the first generated token is never EOT.
            assert!(!ids[2..].contains(&(WORDS.len() as u32 + 4)));
            assert_ne!(ids[2], ck.tokenizer.eot);
        }
        assert_eq!(ck.tokenizer.encode("the big dog").unwrap(), vec![0, 10, 3]);
        use crate::whisper::Task;
    }

    #[test]
    fn broken_checkpoints_name_every_problem() {
        let d = dir("broken");
        write_checkpoint(
            &d,
            7,
            &["model.decoder.layers.1.fc2.bias", "model.encoder.conv1.bias"],
            &[("model.encoder.layers.0.fc1.weight", vec![31, 16])],
        )
        .unwrap();
        let err = format!("{:#}", Checkpoint::load_dir(&d, &Device::flex()).err().expect("must fail"));
        assert!(err.contains("missing tensors (2)"), "{err}");
        assert!(err.contains("model.decoder.layers.1.fc2.bias") && err.contains("model.encoder.conv1.bias"), "{err}");
        assert!(err.contains("model.encoder.layers.0.fc1.weight: [31, 16] in the file, [32, 16] expected"), "{err}");
    }

    #[test]
    fn unexpected_tensors_are_reported() {
        let d = dir("extra");
        write_checkpoint(&d, 7, &[], &[]).unwrap();
        // Add a stray tensor by rewriting the file with one more entry.
        let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut items: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
        let extra = vec![0u8; 16];
        items.push((
            "model.encoder.stray.weight".into(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &extra).unwrap(),
        ));
        let out = safetensors::serialize(items, None).unwrap();
        std::fs::write(d.join("model.safetensors"), out).unwrap();
        let err = format!("{:#}", Checkpoint::load_dir(&d, &Device::flex()).err().expect("must fail"));
        assert!(err.contains("unexpected tensors (1): model.encoder.stray.weight"), "{err}");
    }
}

/// A synthetic clip of domain `kind` (0..3: a low clean tone, a noisy mid tone, a high tone),
/// the `i`-th of its domain (1-1.2 s at 16 kHz): the three-domain set of the end-to-end test
/// and the kill campaign.
pub fn domain_tone(kind: usize, i: usize) -> Vec<f32> {
    let n = 16_000 + 800 * (i % 5);
    let mut s = (i as u32 + 1).wrapping_mul(2654435761);
    (0..n)
        .map(|j| {
            let t = j as f32 / 16_000.0;
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let noise = (s as f32 / u32::MAX as f32 - 0.5) * [0.01, 0.3, 0.05][kind];
            let f = [220.0, 550.0, 1300.0][kind] * (1.0 + 0.05 * (i % 3) as f32);
            0.3 * (2.0 * std::f32::consts::PI * f * t).sin() + noise
        })
        .collect()
}

/// The demo manifest (`demo`: the text of pipeline.yaml) rewritten for the tiny test model and
/// the synthetic three-domain set of [`domain_tone`] in `data/` and `heldout/`: k = 3, short
/// training (`expert_epochs`, joint 3), short decoding, adapters on the test model's last
/// encoder layer (it has 2) as the demo adapts tiny's. Used by the end-to-end test and the kill
/// campaign.
pub fn tiny_demo_manifest(demo: &str, expert_epochs: usize) -> String {
    demo.replace("data: data/demo", "data: data")
        .replace("heldout: data/heldout", "heldout: heldout")
        .replace("model: openai/whisper-tiny.en", "model: tiny-model")
        .replace("k: auto", "k: 3")
        .replace("      epochs: 3\n", &format!("      epochs: {expert_epochs}\n"))
        .replace("      epochs: 4\n", "      epochs: 3\n")
        .replace("max_new_tokens: 64", "max_new_tokens: 8")
        .replace("min_cluster_size: 10", "min_cluster_size: 2")
        .replace(r"encoder\.layers\.3", r"encoder\.layers\.1")
}

/// A workspace for whole-pipeline runs on the tiny model: `data/` (three domains of
/// [`domain_tone`] clips, 8 each, audiofolder), `heldout/` (2 each, NeMo JSONL), `tiny-model/`
/// and `pipeline.yaml` (the repository's demo manifest through [`tiny_demo_manifest`]). The
/// kill campaign and the resume test run in it.
pub fn tiny_workspace(dir: &Path, expert_epochs: usize) -> Result<()> {
    let demo = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.yaml"))?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("data/audio"))?;
    std::fs::create_dir_all(dir.join("heldout"))?;
    write_checkpoint(&dir.join("tiny-model"), 21, &[], &[])?;
    let mut csv = String::from("file_name,transcription,domain\n");
    let mut jsonl = String::new();
    for kind in 0..3 {
        for i in 0..10 {
            let words: Vec<&str> = (0..3 + i % 3).map(|w| WORDS[(kind * 7 + i * 3 + w) % WORDS.len()]).collect();
            if i < 8 {
                let f = format!("audio/d{kind}_{i}.wav");
                crate::audio::write_wav_i16(&dir.join("data").join(&f), &[domain_tone(kind, i)], 16_000)?;
                csv.push_str(&format!("{f},{},domain{kind}\n", words.join(" ")));
            } else {
                let f = format!("h{kind}_{i}.wav");
                crate::audio::write_wav_i16(&dir.join("heldout").join(&f), &[domain_tone(kind, i)], 16_000)?;
                let line = json!({"audio_filepath": f, "text": words.join(" "), "domain": format!("domain{kind}")});
                jsonl.push_str(&format!("{line}\n"));
            }
        }
    }
    std::fs::write(dir.join("data/metadata.csv"), csv)?;
    std::fs::write(dir.join("heldout/manifest.jsonl"), jsonl)?;
    std::fs::write(dir.join("pipeline.yaml"), tiny_demo_manifest(&demo, expert_epochs))?;
    Ok(())
}

/// The workspace's manifest with `experts.shared_epochs: n` (a shared start for the experts).
pub fn set_shared_epochs(dir: &Path, n: usize) -> Result<()> {
    let manifest = std::fs::read_to_string(dir.join("pipeline.yaml"))?;
    let with = manifest.replacen("  experts:\n    lora:", &format!("  experts:\n    shared_epochs: {n}\n    lora:"), 1);
    anyhow::ensure!(with != manifest, "the demo manifest's experts params moved");
    std::fs::write(dir.join("pipeline.yaml"), with)?;
    Ok(())
}

/// Every file under `dir/artifacts` with the blake3 of its bytes; JSON files without their
/// timing fields (`seconds`, `*_seconds`), the only bytes two runs may differ in.
pub fn artifact_hashes(dir: &Path) -> Result<BTreeMap<String, String>> {
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
        for e in std::fs::read_dir(p)? {
            let path = e?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
                continue;
            }
            let mut bytes = std::fs::read(&path)?;
            if path.extension().is_some_and(|e| e == "json")
                && let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            {
                drop_timing(&mut v);
                bytes = serde_json::to_vec(&v)?;
            }
            let rel = path.strip_prefix(root).unwrap_or(&path).display().to_string();
            out.insert(rel, blake3::hash(&bytes).to_hex().to_string());
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, &dir.join("artifacts"), &mut out)?;
    Ok(out)
}

fn drop_timing(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            o.retain(|k, _| k != "seconds" && !k.ends_with("_seconds"));
            o.values_mut().for_each(drop_timing);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_timing),
        _ => {}
    }
}

/// The stage `pipeline run`'s output shows running last (`▶ running X` without its `✓`), or
/// "between stages".
pub fn running_stage(output: &str) -> String {
    let mut current: Option<String> = None;
    for l in output.lines() {
        if let Some(rest) = l.strip_prefix("▶ running ") {
            current = rest.split(' ').next().map(str::to_string);
        } else if l.starts_with("✓ ") {
            current = None;
        }
    }
    current.unwrap_or_else(|| "between stages".into())
}
