//! End to end through the stage binaries: synthetic embeddings (6 Gaussian blobs in 384 dims,
//! with a `domain` column and a few dominating high-variance dimensions) -> stage-cluster ->
//! stage-gate, as the orchestrator would run them (params from a YAML file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use whisper_moe::artifacts::columns::{f32s, i64s};
use whisper_moe::artifacts::{
    CHECKPOINT_HASH, Clusters, Embeddings, Splits, read_dataset, read_metadata, standard_metadata, write_dataset,
};
use whisper_moe::routing::Gate;

const DIM: usize = 384;
const DOMAINS: [&str; 6] = ["us_male", "scottish_female", "caribbean_male", "rp_noisy", "us_female", "telephone"];

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wm-cg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn embeddings(per: usize, seed: u64) -> Embeddings {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = move || {
        let u1: f64 = 1.0 - rng.random::<f64>();
        let u2: f64 = rng.random::<f64>();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    };
    let centres: Vec<Vec<f32>> = (0..DOMAINS.len()).map(|_| (0..DIM).map(|_| 0.6 * normal()).collect()).collect();
    let n = per * DOMAINS.len();
    let mut e = Embeddings { dim: DIM, ..Default::default() };
    let mut domain = Vec::new();
    for i in 0..n {
        let c = i % DOMAINS.len();
        e.ids.push(format!("utt{i:05}"));
        e.audio_paths.push(format!("clips/{i}.flac"));
        e.durations.push(2.0);
        e.transcriptions.push("a sentence".into());
        domain.push(Some(DOMAINS[c].to_string()));
        // Three dimensions with 40x the spread and no cluster information dominate raw
        // distances, as in raw Whisper embeddings; z-scoring takes care of them.
        e.values.extend((0..DIM).map(|j| if j < 3 { 40.0 * normal() } else { centres[c][j] + normal() }));
    }
    e.extra = vec![("domain".into(), domain)];
    e
}

fn write_embeddings(dir: &Path, e: &Embeddings, pooling: &str) {
    let mut meta = standard_metadata("embed", Some("ckpt-hash-123"));
    meta.insert("pooling".into(), pooling.into());
    meta.insert("layer".into(), "4".into());
    write_dataset(dir, &[e.to_batch().unwrap()], &meta).unwrap();
}

fn run(bin: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(bin).args(args).env_remove("PIPELINE_PARAMS").output().unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn cluster_then_gate_on_synthetic_embeddings() {
    let dir = tmp("e2e");
    let emb_dir = dir.join("embeddings");
    let e = embeddings(50, 11);
    write_embeddings(&emb_dir, &e, "mean_valid");
    let params = dir.join("cluster.yaml");
    std::fs::write(&params, "algorithm: kmeans\nk: 6\nseed: 42\nlabel_column: domain\nmin_cluster_size: 5\n").unwrap();
    let out = dir.join("cluster");
    let o = run(
        env!("CARGO_BIN_EXE_stage-cluster"),
        &[
            "--embeddings",
            emb_dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--params",
            params.to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("NMI vs domain"), "{stderr}");

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["experts"], 6);
    let nmi = summary["nmi"].as_f64().unwrap();
    assert!(nmi >= 0.9, "NMI vs domain {nmi}");
    assert_eq!(summary["sizes"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum::<u64>(), 300);

    let (cl, cmeta) = Clusters::read(&out.join("clusters")).unwrap();
    let (sp, smeta) = Splits::read(&out.join("splits")).unwrap();
    assert_eq!(cl.ids, e.ids);
    assert_eq!(cl.k, 6);
    for m in [&cmeta, &smeta] {
        assert_eq!(m.get(CHECKPOINT_HASH).map(String::as_str), Some("ckpt-hash-123"));
        assert_eq!(m.get("pooling").map(String::as_str), Some("mean_valid"));
        assert_eq!(m.get("layer").map(String::as_str), Some("4"));
        assert_eq!(m.get("experts").map(String::as_str), Some("6"));
        assert_eq!(m.get("producer").map(String::as_str), Some("cluster"));
    }
    assert_eq!(sp.ids, e.ids);
    let count = |s: &str| sp.split.iter().filter(|v| v.as_str() == s).count();
    assert_eq!((count("test"), count("val")), (30, 30));
    assert_eq!(count("expert_pretrain") + count("joint_train"), 240);

    // Gate.
    let gparams = dir.join("gate.yaml");
    std::fs::write(&gparams, "hidden: [64]\nmax_epochs: 30\npatience: 5\nseed: 1\n").unwrap();
    let gout = dir.join("gate");
    let gate_args = |emb: &Path| -> Vec<String> {
        [
            "--embeddings",
            emb.to_str().unwrap(),
            "--clusters",
            out.join("clusters").to_str().unwrap(),
            "--splits",
            out.join("splits").to_str().unwrap(),
            "--out",
            gout.to_str().unwrap(),
            "--params",
            gparams.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args = gate_args(&emb_dir);
    let o = run(env!("CARGO_BIN_EXE_stage-gate"), &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("val accuracy vs clusters"));
    let gs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gout.join("summary.json")).unwrap()).unwrap();
    let acc = gs["val_accuracy"].as_f64().unwrap();
    assert!(acc >= 0.95, "gate val accuracy {acc}");
    assert_eq!(gs["experts"], 6);
    let metrics = read_dataset(&gout.join("metrics")).unwrap();
    let batch = metrics.concat().unwrap();
    let epochs = i64s(&batch, "epoch").unwrap();
    assert_eq!(epochs, (0..gs["epochs_run"].as_i64().unwrap()).collect::<Vec<_>>());
    let val_acc = f32s(&batch, "val_accuracy").unwrap();
    assert_eq!(val_acc[gs["best_epoch"].as_u64().unwrap() as usize], acc as f32);
    assert!(f32s(&batch, "train_loss").unwrap().iter().all(|v| v.is_finite()));
    assert_eq!(metrics.metadata.get(CHECKPOINT_HASH).map(String::as_str), Some("ckpt-hash-123"));
    let gate = Gate::load(&gout, &burn::prelude::Device::flex()).unwrap();
    assert_eq!(gate.config().experts, 6);
    assert_eq!(gate.config().input_dim, DIM);
    let gmeta: BTreeMap<String, String> = Gate::read_metadata(&gout).unwrap();
    assert_eq!(gmeta.get("pooling").map(String::as_str), Some("mean_valid"));

    // Embeddings with another pooling: the gate stage refuses the clusters made from the first.
    let other = dir.join("embeddings-mean");
    write_embeddings(&other, &e, "mean");
    let args = gate_args(&other);
    let o = run(env!("CARGO_BIN_EXE_stage-gate"), &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pooling is `mean_valid`") && err.contains("`mean`"), "{err}");
    assert_eq!(read_metadata(&out.join("clusters")).unwrap().get("pooling").map(String::as_str), Some("mean_valid"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_params_are_refused_with_their_name() {
    let dir = tmp("badparams");
    let emb_dir = dir.join("embeddings");
    write_embeddings(&emb_dir, &embeddings(5, 1), "mean_valid");
    let o = run(
        env!("CARGO_BIN_EXE_stage-cluster"),
        &["--embeddings", emb_dir.to_str().unwrap(), "--out", dir.join("c").to_str().unwrap(), "--set", "kk=3"],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("kk"));
    assert!(!dir.join("c").join("clusters").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pipeline entries proposed for pipeline.yaml, with a copy standing in for stage embed.
const PIPELINE: &str = r#"
stages:
  embed:
    cmd: cp -r data/embeddings artifacts/embeddings
    deps: [data/embeddings]
    outs: [artifacts/embeddings]
  cluster:
    cmd: stage-cluster --embeddings artifacts/embeddings --out artifacts/cluster
    deps: [artifacts/embeddings]
    params: cluster
    outs: [artifacts/cluster]
  gate:
    cmd: stage-gate --embeddings artifacts/embeddings --clusters artifacts/cluster/clusters --splits artifacts/cluster/splits --out artifacts/gate
    deps: [artifacts/embeddings, artifacts/cluster/clusters, artifacts/cluster/splits]
    params: gate
    outs: [artifacts/gate]
  downstream:
    cmd: cp artifacts/gate/gate_config.json artifacts/downstream.json
    deps: [artifacts/gate]
    outs: [artifacts/downstream.json]
params:
  cluster: {algorithm: kmeans, k: 6, seed: 42, label_column: domain, min_cluster_size: 5}
  gate: {hidden: [64], max_epochs: 30, patience: 5, seed: 1}
"#;

fn pipeline(dir: &Path, args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline")).args(args).current_dir(dir).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "pipeline {args:?} failed:\n{stderr}");
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("▶ running "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn changing_k_reruns_cluster_gate_and_downstream_but_not_embed() {
    let dir = tmp("pipeline");
    write_embeddings(&dir.join("data/embeddings"), &embeddings(30, 5), "mean_valid");
    std::fs::write(dir.join("pipeline.yaml"), PIPELINE).unwrap();
    assert_eq!(pipeline(&dir, &["run", "all"]), ["embed", "cluster", "gate", "downstream"]);
    let experts = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(d.join("artifacts/downstream.json")).unwrap()).unwrap()
    };
    assert_eq!(experts(&dir)["experts"], 6);
    assert!(pipeline(&dir, &["run", "all"]).is_empty());

    let text = std::fs::read_to_string(dir.join("pipeline.yaml")).unwrap();
    std::fs::write(dir.join("pipeline.yaml"), text.replace("k: 6,", "k: 5,")).unwrap();
    assert_eq!(pipeline(&dir, &["run", "all"]), ["cluster", "gate", "downstream"]);
    assert_eq!(experts(&dir)["experts"], 5);
    let _ = std::fs::remove_dir_all(&dir);
}
