//! Stage experts on real data: one expert trained on one demo domain with the tiny model.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use whisper_moe::artifacts::{Clusters, Splits, standard_metadata, write_dataset};

#[test]
fn training_one_expert_lowers_its_val_loss_and_keeps_its_wer() {
    let Some(shared) = common::shared("training_one_expert_lowers_its_val_loss_and_keeps_its_wer") else { return };
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dataset = root.join("data/demo/metadata.csv");
    let model = shared.join("models/whisper-tiny.en");
    let dir = std::env::temp_dir().join(format!("wm-experts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // One domain: 12 clips to pretrain on, 6 to validate on, all in cluster 0.
    let rows: Vec<csv::StringRecord> =
        csv::Reader::from_path(&dataset).unwrap().records().map(|r| r.unwrap()).collect();
    let ids: Vec<String> =
        rows.iter().filter(|r| &r[2] == "caribbean_male").take(18).map(|r| r[0].to_string()).collect();
    let clusters =
        Clusters { ids: ids.clone(), cluster: vec![0; 18], k: 1, probs: vec![1.0; 18], is_noise: vec![false; 18] };
    let split: Vec<String> = (0..18).map(|i| if i < 12 { "expert_pretrain" } else { "val" }.to_string()).collect();
    let hash = whisper_moe::whisper::weights_hash(&model).unwrap();
    let meta = standard_metadata("cluster", Some(&hash));
    write_dataset(&dir.join("clusters/clusters"), &[clusters.to_batch().unwrap()], &meta).unwrap();
    write_dataset(&dir.join("clusters/splits"), &[Splits { ids, split }.to_batch().unwrap()], &BTreeMap::new())
        .unwrap();

    let out = dir.join("experts");
    let o = Command::new(env!("CARGO_BIN_EXE_stage-experts"))
        .args(["--model", model.to_str().unwrap(), "--dataset", dataset.to_str().unwrap()])
        .args(["--clusters", dir.join("clusters").to_str().unwrap(), "--out", out.to_str().unwrap()])
        .args(["--set", "train.epochs=3", "--set", "train.batch_size=4", "--set", "train.learning_rate=0.001"])
        .args(["--set", "lora.target_modules=.*decoder.*(q_proj|v_proj)", "--set", "lora.dropout=0.0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "stage-experts failed:\n{err}");
    eprintln!("{err}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("experts.json")).unwrap()).unwrap();
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
