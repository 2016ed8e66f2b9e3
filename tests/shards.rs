//! Stage experts sharded by expert (`--shards experts=N`): each shard trains a contiguous range
//! of the experts and writes their adapters, its metrics part files and its own summary; joint,
//! dense and evaluate read the parts as one stage's output. The demo manifest on the tiny random
//! Whisper (whisper::testing::tiny_workspace).

use std::path::{Path, PathBuf};
use std::process::Command;

use whisper_moe::stage::experts::ExpertsManifest;
use whisper_moe::whisper::testing::tiny_workspace;

#[test]
fn experts_shard_by_expert_and_later_stages_read_the_parts() {
    let dir = std::env::temp_dir().join(format!("whisper-moe-shards-{}", std::process::id()));
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.yaml")).unwrap();
    tiny_workspace(&dir, &manifest, 2).unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pipeline"));
    let o = Command::new(&bin)
        .args(["run", "all", "--shards", "experts=2"])
        .current_dir(&dir)
        .env("PATH", format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default()))
        .output()
        .unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("experts shard 0/2: experts 0..1 of 3") && out.contains("experts shard 1/2: experts 1..3 of 3"),
        "{out}"
    );

    let experts = dir.join("artifacts/experts");
    assert!(!experts.join("experts.json").exists());
    let m = ExpertsManifest::read(&experts).unwrap();
    assert_eq!(m.experts, 3);
    assert_eq!(m.adapters, vec!["expert_0", "expert_1", "expert_2"]);
    assert_eq!(m.summary.iter().map(|s| s.expert).collect::<Vec<_>>(), vec![0, 1, 2]);
    for a in m.adapter_dirs(&experts) {
        assert!(a.join("adapter_model.safetensors").is_file(), "{}", a.display());
    }
    let shard_steps: u64 = (0..2)
        .map(|i| {
            let j: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(experts.join(format!("experts.shard-{i}-of-2.json"))).unwrap(),
            )
            .unwrap();
            j["optimizer_steps"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(m.optimizer_steps, shard_steps, "the experts' steps are the shards' together");
    assert!(shard_steps > 0);
    // One row per expert and epoch (base + 2), from both shards' part files.
    let metrics = whisper_moe::artifacts::read_dataset(&experts.join("metrics")).unwrap();
    assert_eq!(metrics.num_rows(), 3 * 3);
    assert!(!experts.read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("checkpoint")));
    // The later stages ran on the parts.
    assert!(dir.join("artifacts/evaluate/metrics.json").is_file());

    // A missing shard file is named, not read as a smaller mixture.
    std::fs::remove_file(experts.join("experts.shard-1-of-2.json")).unwrap();
    let e = format!("{:#}", ExpertsManifest::read(&experts).unwrap_err());
    assert!(e.contains("ran in 2 shards but the shard files are [0]"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
