//! Shards and the Slurm executor. Local shards always run; the Slurm tests need a running
//! Slurm (`scripts/slurm_local.sh`, which scripts/test.sh starts under CI): with none they
//! fail under CI and are skipped loudly elsewhere.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use whisper_moe::artifacts::Embeddings;
use whisper_moe::audio::write_wav_i16;
use whisper_moe::whisper::testing::domain_tone;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wm-slurm-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn pipeline(dir: &Path, args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_pipeline")).args(args).current_dir(dir).output().unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Is a Slurm reachable (SLURM_CONF set and `sinfo` answering)? Under CI it must be.
fn slurm(test: &str) -> bool {
    let ok = std::env::var_os("SLURM_CONF").is_some()
        && Command::new("sinfo").arg("-h").output().is_ok_and(|o| o.status.success());
    if ok {
        return true;
    }
    let problem = "no Slurm: start one with `eval \"$(scripts/slurm_local.sh start)\"` (scripts/test.sh does under CI)";
    common::skip_or_fail::<()>(test, "Slurm", problem).is_some()
}

/// A stage of 3 shards whose shard 1 fails while `fail1` exists; every shard appends its
/// index to runs.txt (outside the stage's outs and deps) and writes its part.
const SHARDED: &str = "stages:\n  work:\n    cmd: sh work.sh out/parts\n    deps: [work.sh]\n    outs: [out/parts]\n    shards: 3\n  after:\n    cmd: cat out/parts/* > after.txt\n    deps: [out/parts]\n    outs: [after.txt]\n";
const WORK: &str = "set -e\ndir=$1; i=${3%/*}\necho \"$i\" >> runs.txt\nif [ \"$i\" = 1 ] && [ -e fail1 ]; then echo \"shard $i fails\" >&2; exit 3; fi\nmkdir -p \"$dir\"\necho \"part $i of ${3#*/}\" > \"$dir/part-$i.txt\"\n";

fn only_the_failed_shard_runs_again(name: &str, executor: &str) {
    let dir = tmp(name);
    fs::write(dir.join("pipeline.yaml"), SHARDED).unwrap();
    fs::write(dir.join("work.sh"), WORK).unwrap();
    fs::write(dir.join("fail1"), "").unwrap();
    let runs = || -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_to_string(dir.join("runs.txt")).unwrap_or_default().lines().map(str::to_string).collect();
        v.sort();
        v
    };
    let out = pipeline(&dir, &["run", "all", "--executor", executor]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("shard 1/3"), "the failed shard is named: {}", out.stderr);
    assert!(!dir.join("out/parts").exists() && !dir.join("after.txt").exists(), "nothing partial committed");
    assert_eq!(runs(), ["0", "1", "2"]);
    fs::remove_file(dir.join("fail1")).unwrap();
    let out = pipeline(&dir, &["run", "all", "--executor", executor]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("1 of 3 shards"), "{}", out.stderr);
    assert_eq!(runs(), ["0", "1", "1", "2"], "only shard 1 ran again");
    assert_eq!(fs::read_to_string(dir.join("after.txt")).unwrap(), "part 0 of 3\npart 1 of 3\npart 2 of 3\n");
    let out = pipeline(&dir, &["status"]);
    assert_eq!(out.code, 0);
    // The shard count does not make a stage stale (the parts together are the same output);
    // forced, another count is another split: every shard runs, no part of the old one is kept.
    let out = pipeline(&dir, &["run", "all", "--force", "--executor", executor, "--shards", "work=2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("2 of 2 shards"), "{}", out.stderr);
    let parts: Vec<String> = {
        let mut v: Vec<String> = fs::read_dir(dir.join("out/parts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        v.sort();
        v
    };
    assert_eq!(parts, ["part-0.txt", "part-1.txt"]);
}

#[test]
fn local_shards_rerun_only_the_failed_one() {
    only_the_failed_shard_runs_again("local", "local");
}

#[test]
fn slurm_array_reruns_only_the_failed_task() {
    if !slurm("slurm_array_reruns_only_the_failed_task") {
        return;
    }
    only_the_failed_shard_runs_again("array", "slurm");
    let dir = std::env::temp_dir().join(format!("wm-slurm-array-{}", std::process::id()));
    let logs: Vec<String> = fs::read_dir(dir.join(".pipeline/logs/work"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        logs.iter().any(|l| l.starts_with("pipeline:work_") && l.ends_with("_1.out")),
        "one log per task: {logs:?}"
    );
}

/// `pipeline run embed cluster --executor slurm --shards embed=3`: a 3-task array, then a job
/// for cluster; the embeddings equal an unsharded local run's.
#[test]
fn sharded_embed_on_slurm_equals_a_local_run() {
    if !slurm("sharded_embed_on_slurm_equals_a_local_run") {
        return;
    }
    let mk = |name: &str| -> PathBuf {
        let dir = tmp(name);
        whisper_moe::whisper::testing::write_checkpoint(&dir.join("model"), 3, &[], &[]).unwrap();
        fs::create_dir_all(dir.join("data/audio")).unwrap();
        let mut csv = String::from("file_name,transcription,domain\n");
        for i in 0..9 {
            let f = format!("audio/c{i}.wav");
            write_wav_i16(&dir.join("data").join(&f), &[domain_tone(i as usize % 3, i as usize)], 16_000).unwrap();
            csv += &format!("{f},the cat sat {i},d{}\n", i % 3);
        }
        fs::write(dir.join("data/metadata.csv"), csv).unwrap();
        let manifest = "stages:\n  embed:\n    cmd: stage-embed --dataset data --model model --out emb --rejected rej\n    deps: [data, model]\n    params: embed\n    outs: [emb, rej]\n  cluster:\n    cmd: stage-cluster --embeddings emb --out clusters\n    deps: [emb]\n    params: cluster\n    outs: [clusters]\nparams:\n  embed:\n    batch_size: 3\n  cluster:\n    k: 3\n    min_cluster_size: 1\n    test_fraction: 0.0\n    val_fraction: 0.0\n    label_column: domain\n";
        fs::write(dir.join("pipeline.yaml"), manifest).unwrap();
        dir
    };
    let (local, remote) = (mk("embed-local"), mk("embed-slurm"));
    let out = pipeline(&local, &["run", "embed", "cluster"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = pipeline(&remote, &["run", "embed", "cluster", "--executor", "slurm", "--shards", "embed=3"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("running embed on Slurm, 3 of 3 shards"), "{}", out.stderr);
    assert!(out.stderr.contains("(array 0-2)") && out.stderr.contains("running cluster on Slurm"), "{}", out.stderr);
    // Submitted up front: cluster's job waits on embed's last job (afterok) and was submitted
    // before embed ended.
    let line = |prefix: &str| out.stderr.lines().find(|l| l.trim_start().starts_with(prefix)).unwrap_or("").to_string();
    let embed_jobs = line("⇪ submitted embed as Slurm jobs");
    let end_job = embed_jobs.split(", ").find(|p| p.contains("(end)")).and_then(|p| p.split(' ').next()).unwrap();
    let cluster_job = line("⇪ submitted cluster as Slurm job");
    assert!(cluster_job.contains(&format!("after embed (afterok:{end_job})")), "{}", out.stderr);
    let at = |text: &str| out.stderr.find(text).unwrap_or_else(|| panic!("no `{text}` in {}", out.stderr));
    assert!(at("⇪ submitted cluster") < at("✓ embed done"), "{}", out.stderr);
    let parts = fs::read_dir(remote.join("emb"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".parquet"))
        .count();
    assert_eq!(parts, 3, "one part file per shard");
    let (a, _) = Embeddings::read(&local.join("emb")).unwrap();
    let (b, _) = Embeddings::read(&remote.join("emb")).unwrap();
    assert_eq!(a.ids, b.ids);
    assert_eq!(a, b, "sharded on Slurm == unsharded locally");
    let (ca, _) = whisper_moe::artifacts::Clusters::read(&local.join("clusters/clusters")).unwrap();
    let (cb, _) = whisper_moe::artifacts::Clusters::read(&remote.join("clusters/clusters")).unwrap();
    assert_eq!(ca.cluster, cb.cluster);
}

/// Evaluate sharded on Slurm: a 2-task array transcribes, then one more job (the merge step)
/// scores and reports; the outputs equal the unsharded local run's.
#[test]
fn sharded_evaluate_on_slurm_merges_into_the_local_outputs() {
    if !slurm("sharded_evaluate_on_slurm_merges_into_the_local_outputs") {
        return;
    }
    use whisper_moe::whisper::testing::{artifact_hashes, tiny_workspace};
    let dir = tmp("evaluate");
    tiny_workspace(&dir, 1).unwrap();
    let out = pipeline(&dir, &["run", "all"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let evaluate = |d: &Path| -> Vec<(String, String)> {
        artifact_hashes(d).unwrap().into_iter().filter(|(k, _)| k.starts_with("artifacts/evaluate/")).collect()
    };
    let local = evaluate(&dir);
    let out = pipeline(&dir, &["run", "evaluate", "--force", "--executor", "slurm", "--shards", "evaluate=2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("(array 0-1)") && out.stderr.contains("merging its 2 shards"), "{}", out.stderr);
    assert_eq!(out.stderr.matches("submitted evaluate as Slurm jobs").count(), 1, "{}", out.stderr);
    assert_eq!(evaluate(&dir), local);
    let _ = fs::remove_dir_all(&dir);
}

/// The demo manifest end to end on Slurm, detached: every stage is submitted at once as one
/// `afterok` chain and the runner returns; the jobs judge and commit their stages on their own
/// (gate and experts side by side), and the artifacts equal a local run's.
#[test]
fn demo_manifest_runs_detached_on_slurm_as_one_chain() {
    if !slurm("demo_manifest_runs_detached_on_slurm_as_one_chain") {
        return;
    }
    use whisper_moe::whisper::testing::{artifact_hashes, tiny_workspace};
    let (local, remote) = (tmp("chain-local"), tmp("chain-slurm"));
    tiny_workspace(&local, 1).unwrap();
    tiny_workspace(&remote, 1).unwrap();
    let out = pipeline(&local, &["run", "all"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = pipeline(&remote, &["run", "all", "--executor", "slurm", "--detach"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for stage in ["model", "embed", "cluster", "gate", "experts", "joint", "dense", "evaluate"] {
        assert!(out.stderr.contains(&format!("submitted {stage} as Slurm job")), "{stage}: {}", out.stderr);
    }
    let evaluate = out.stderr.lines().find(|l| l.contains("submitted evaluate")).unwrap();
    assert!(evaluate.contains("after ") && evaluate.contains("(afterok:"), "{evaluate}");
    assert!(!remote.join("artifacts/evaluate").exists(), "the runner returned before the chain ended");
    let t0 = std::time::Instant::now();
    let status = loop {
        let st = pipeline(&remote, &["status"]);
        assert_eq!(st.code, 0, "{}", st.stderr);
        if !st.stdout.contains("in flight") {
            break st.stdout;
        }
        assert!(t0.elapsed().as_secs() < 600, "the chain did not end: {}", st.stdout);
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert!(status.contains("everything is up to date"), "{status}");
    assert_eq!(artifact_hashes(&remote).unwrap(), artifact_hashes(&local).unwrap());
    let out = pipeline(&remote, &["run", "all", "--executor", "slurm"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stderr.contains("submitted"), "nothing left to run: {}", out.stderr);
    let _ = fs::remove_dir_all(&local);
    let _ = fs::remove_dir_all(&remote);
}

/// A stage whose out is written in place (not named in its command) fails on Slurm: its
/// previous out is put back (once: the job's end step and the runner must not undo each
/// other), the lock still describes it, and the stage after it is cancelled and reported as
/// skipped.
#[test]
fn a_failed_stage_on_slurm_keeps_its_previous_in_place_out_and_skips_its_dependant() {
    if !slurm("a_failed_stage_on_slurm_keeps_its_previous_in_place_out_and_skips_its_dependant") {
        return;
    }
    let dir = tmp("inplace");
    let manifest = "stages:\n  inplace:\n    cmd: sh step.sh\n    deps: [step.sh]\n    outs: [state.txt]\n  after:\n    cmd: cp state.txt after.txt\n    deps: [state.txt]\n    outs: [after.txt]\n";
    fs::write(dir.join("pipeline.yaml"), manifest).unwrap();
    fs::write(dir.join("step.sh"), "echo v1 > state.txt\n").unwrap();
    let out = pipeline(&dir, &["run", "all", "--executor", "slurm"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(fs::read_to_string(dir.join("after.txt")).unwrap(), "v1\n");
    let lock = fs::read_to_string(dir.join("pipeline.lock")).unwrap();
    fs::write(dir.join("step.sh"), "echo partial > state.txt\nexit 4\n").unwrap();
    let out = pipeline(&dir, &["run", "all", "--executor", "slurm"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("✗ inplace failed") && out.stderr.contains("exit 4"), "{}", out.stderr);
    assert!(out.stderr.contains("after not run: upstream inplace did not complete"), "{}", out.stderr);
    assert!(out.stderr.contains("skipped (upstream inplace did not complete)"), "{}", out.stderr);
    assert_eq!(fs::read_to_string(dir.join("state.txt")).unwrap(), "v1\n", "the previous out is back");
    assert_eq!(fs::read_to_string(dir.join("pipeline.lock")).unwrap(), lock, "the lock is untouched");
    let _ = fs::remove_dir_all(&dir);
}
