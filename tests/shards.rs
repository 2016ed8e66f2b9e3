//! Stage experts sharded by expert (`--shards experts=N`): each shard trains a contiguous range
//! of the experts and writes their adapters, its metrics part files and its own summary; joint,
//! dense and evaluate read the parts as one stage's output. The demo manifest on the tiny random
//! Whisper (whisper::testing::tiny_workspace).

use std::path::{Path, PathBuf};
use std::process::Command;

use whisper_moe::stage::experts::ExpertsManifest;
use whisper_moe::whisper::testing::{artifact_hashes, set_shared_epochs, tiny_workspace};

fn pipeline(dir: &Path, args: &[&str]) -> (bool, String) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pipeline"));
    let o = Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .env("PATH", format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default()))
        .output()
        .unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn experts_shard_by_expert_and_later_stages_read_the_parts() {
    let dir = std::env::temp_dir().join(format!("whisper-moe-shards-{}", std::process::id()));
    tiny_workspace(&dir, 2).unwrap();
    let (ok, out) = pipeline(&dir, &["run", "all", "--shards", "experts=2"]);
    assert!(ok, "{out}");
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

/// Evaluate in 3 shards (each transcribes a slice of every set) and the merge step after them
/// (scores, plots, report) writes what the unsharded stage writes; a stage that does not shard
/// is refused before anything runs.
#[test]
fn evaluate_shards_then_merges_into_the_unsharded_outputs() {
    let dir = std::env::temp_dir().join(format!("whisper-moe-eval-shards-{}", std::process::id()));
    tiny_workspace(&dir, 1).unwrap();
    let (ok, out) = pipeline(&dir, &["run", "all"]);
    assert!(ok, "{out}");
    let evaluate = |h: std::collections::BTreeMap<String, String>| {
        h.into_iter().filter(|(k, _)| k.starts_with("artifacts/evaluate/")).collect::<Vec<_>>()
    };
    let unsharded = evaluate(artifact_hashes(&dir).unwrap());
    assert!(unsharded.len() > 10, "{unsharded:?}");

    let (ok, out) = pipeline(&dir, &["run", "evaluate", "--force", "--shards", "evaluate=3"]);
    assert!(ok, "{out}");
    assert!(out.contains("evaluate shard 2/3") && out.contains("merging its 3 shards"), "{out}");
    let sharded = evaluate(artifact_hashes(&dir).unwrap());
    assert_eq!(sharded, unsharded, "sharded evaluate wrote other outputs");
    assert!(!dir.join("artifacts/evaluate/transcripts").exists());
    // More shards than the held-out set has clips (6): the last shards transcribe nothing.
    let (ok, out) = pipeline(&dir, &["run", "evaluate", "--force", "--shards", "evaluate=8"]);
    assert!(ok, "{out}");
    assert_eq!(evaluate(artifact_hashes(&dir).unwrap()), unsharded, "8 shards wrote other outputs");

    let (ok, out) = pipeline(&dir, &["run", "cluster", "--force", "--shards", "cluster=2"]);
    assert!(!ok && out.contains("stage `cluster` does not shard"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a shared start (`shared_epochs`) every shard trains the same shared adapter: with no
/// epochs of their own, the sharded experts are byte for byte the unsharded ones, and the merged
/// manifest counts the shared steps once.
#[test]
fn every_shard_trains_the_same_shared_start() {
    let workspace = |name: &str| {
        let dir = std::env::temp_dir().join(format!("whisper-moe-shards-{name}-{}", std::process::id()));
        tiny_workspace(&dir, 0).unwrap();
        set_shared_epochs(&dir, 2).unwrap();
        dir
    };
    let (one, two) = (workspace("shared-one"), workspace("shared-two"));
    let (ok, out) = pipeline(&one, &["run", "experts"]);
    assert!(ok, "{out}");
    let (ok, out) = pipeline(&two, &["run", "experts", "--shards", "experts=2"]);
    assert!(ok, "{out}");
    let (a, b) = (
        ExpertsManifest::read(&one.join("artifacts/experts")).unwrap(),
        ExpertsManifest::read(&two.join("artifacts/experts")).unwrap(),
    );
    assert!(a.shared_steps > 0, "no shared start: {a:?}");
    assert_eq!((a.shared_steps, a.optimizer_steps), (b.shared_steps, b.optimizer_steps));
    assert_eq!(a.total_steps(), a.shared_steps, "no expert trained on its own");
    let loss = |m: &ExpertsManifest| m.shared.as_ref().and_then(|s| s.val_loss);
    assert_eq!(loss(&a), loss(&b));
    let adapters = |dir: &Path| {
        artifact_hashes(dir)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.contains("adapter_model.safetensors"))
            .collect::<Vec<_>>()
    };
    let (ha, hb) = (adapters(&one), adapters(&two));
    assert_eq!(ha.len(), 3, "{ha:?}");
    assert_eq!(ha, hb);
    let _ = std::fs::remove_dir_all(&one);
    let _ = std::fs::remove_dir_all(&two);
}
