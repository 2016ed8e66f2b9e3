//! Stage experts on real data: one expert trained on one demo domain with the tiny model.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use whisper_moe::artifacts::{Clusters, Splits, standard_metadata, write_dataset};

/// Clusters and splits for `domains` of the demo set (cluster i = domains[i]): 12 clips each to
/// pretrain on, 6 to validate on. Returns (model, dataset, workspace).
fn workspace(test: &str, domains: &[&str]) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let shared = common::shared(test)?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dataset = root.join("data/demo/metadata.csv");
    let model = shared.join("models/whisper-tiny.en");
    let dir = std::env::temp_dir().join(format!("wm-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rows: Vec<csv::StringRecord> =
        csv::Reader::from_path(&dataset).unwrap().records().map(|r| r.unwrap()).collect();
    let (mut ids, mut cluster, mut split) = (Vec::new(), Vec::new(), Vec::new());
    for (c, d) in domains.iter().enumerate() {
        for (i, r) in rows.iter().filter(|r| &r[2] == *d).take(18).enumerate() {
            ids.push(r[0].to_string());
            cluster.push(c as i32);
            split.push(if i < 12 { "expert_pretrain" } else { "val" }.to_string());
        }
    }
    let n = ids.len();
    let k = domains.len();
    let probs: Vec<f32> =
        cluster.iter().flat_map(|&c| (0..k).map(move |j| if j == c as usize { 1.0 } else { 0.0 })).collect();
    let clusters = Clusters { ids: ids.clone(), cluster, k, probs, is_noise: vec![false; n] };
    let hash = whisper_moe::whisper::weights_hash(&model).unwrap();
    let meta = standard_metadata("cluster", Some(&hash));
    write_dataset(&dir.join("clusters/clusters"), &[clusters.to_batch().unwrap()], &meta).unwrap();
    write_dataset(&dir.join("clusters/splits"), &[Splits { ids, split }.to_batch().unwrap()], &BTreeMap::new())
        .unwrap();
    Some((model, dataset, dir))
}

fn stage_experts(model: &Path, dataset: &Path, dir: &Path, sets: &[&str]) -> serde_json::Value {
    let out = dir.join("experts");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stage-experts"));
    cmd.args(["--model", model.to_str().unwrap(), "--dataset", dataset.to_str().unwrap()]).args([
        "--clusters",
        dir.join("clusters").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let o = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stage-experts failed:\n{err}");
    eprintln!("{err}");
    serde_json::from_str(&std::fs::read_to_string(out.join("experts.json")).unwrap()).unwrap()
}

#[test]
fn training_one_expert_lowers_its_val_loss_and_keeps_its_wer() {
    let test = "training_one_expert_lowers_its_val_loss_and_keeps_its_wer";
    let Some((model, dataset, dir)) = workspace(test, &["caribbean_male"]) else { return };
    let out = dir.join("experts");
    let summary = stage_experts(
        &model,
        &dataset,
        &dir,
        &[
            "train.epochs=3",
            "train.batch_size=4",
            "train.learning_rate=0.001",
            "lora.target_modules=.*decoder.*(q_proj|v_proj)",
            "lora.dropout=0.0",
        ],
    );
    let s = &summary["summary"][0];
    let (l0, l1) = (s["val_loss_base"].as_f64().unwrap(), s["val_loss"].as_f64().unwrap());
    let (w0, w1) = (s["val_wer_base"].as_f64().unwrap(), s["val_wer"].as_f64().unwrap());
    eprintln!("val loss {l0:.4} -> {l1:.4}, val WER {w0:.3} -> {w1:.3}");
    assert!(l1 < l0, "val loss did not fall: {l0} -> {l1}");
    assert!(w1 <= w0, "val WER got worse: {w0} -> {w1}");
    assert!(
        out.join("expert_0/adapter_model.safetensors").exists() && out.join("expert_0/adapter_config.json").exists()
    );
    assert!(!out.join("checkpoint").exists());
    let (m, _) = (whisper_moe::artifacts::read_dataset(&out.join("metrics")).unwrap(), ());
    assert_eq!(m.num_rows(), 4, "epoch 0 (base) + 3 epochs");
}

/// `shared_epochs`: one adapter trained on both clusters' clips, copied into every expert. With
/// no epochs of their own the experts are exactly that adapter: the same weights, and their
/// epoch-0 val losses average (weighted by val clips) to the shared adapter's own val loss.
#[test]
fn experts_start_from_the_shared_adapter() {
    let test = "experts_start_from_the_shared_adapter";
    let Some((model, dataset, dir)) = workspace(test, &["caribbean_male", "us_male"]) else { return };
    let sets = [
        "shared_epochs=1",
        "train.epochs=0",
        "train.batch_size=4",
        "train.learning_rate=0.001",
        "lora.target_modules=.*decoder.*(q_proj|v_proj)",
    ];
    let m = stage_experts(&model, &dataset, &dir, &sets);
    let shared = &m["shared"];
    assert_eq!(shared["train_rows"], 24, "{m}");
    assert_eq!(m["shared_steps"], 6, "one epoch of 24 clips in batches of 4");
    assert_eq!(m["optimizer_steps"], 0, "none of the experts' own");
    let (base, after) = (shared["val_loss_base"].as_f64().unwrap(), shared["val_loss"].as_f64().unwrap());
    assert!(after < base, "the shared adapter did not learn: {base} -> {after}");
    let experts = m["summary"].as_array().unwrap();
    let n = |e: &serde_json::Value| e["val_utterances"].as_f64().unwrap();
    let total: f64 = experts.iter().map(n).sum();
    assert_eq!(total, shared["val_utterances"].as_f64().unwrap());
    let mean: f64 = experts.iter().map(|e| e["val_loss_base"].as_f64().unwrap() * n(e)).sum::<f64>() / total;
    assert!((mean - after).abs() < 1e-5, "experts' start {mean} vs the shared adapter {after}");
    let read = |e: usize| std::fs::read(dir.join(format!("experts/expert_{e}/adapter_model.safetensors"))).unwrap();
    assert_eq!(read(0), read(1), "both experts hold the shared adapter");
    let _ = std::fs::remove_dir_all(&dir);
}
