//! A kill in the worst window of every training stage: right after its last checkpoint, before
//! it writes any output (`WHISPER_MOE_ABORT_AFTER_LAST_CHECKPOINT` makes the stage abort
//! there). `pipeline run all` again must resume and end with artifacts identical to an
//! uninterrupted run's, timing fields aside. The demo manifest on the tiny random Whisper and
//! the synthetic three-domain set (whisper::testing::tiny_workspace).

use std::path::{Path, PathBuf};
use std::process::Command;

use whisper_moe::train::trainer::ABORT_AFTER_LAST_CHECKPOINT;
use whisper_moe::whisper::testing::{artifact_hashes, running_stage, set_shared_epochs, tiny_workspace};

fn workspace(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("whisper-moe-resume-{name}-{}", std::process::id()));
    tiny_workspace(&dir, 3).unwrap();
    dir
}

/// `pipeline run all` in `dir`; (success, output).
fn run_all(dir: &Path, abort: bool) -> (bool, String) {
    run(dir, "all", abort)
}

/// `pipeline run STAGE` in `dir`; (success, output).
fn run(dir: &Path, stage: &str, abort: bool) -> (bool, String) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_pipeline"));
    let bin_dir = bin.parent().unwrap();
    let mut cmd = Command::new(&bin);
    cmd.args(["run", stage])
        .current_dir(dir)
        .env("PATH", format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default()));
    if abort {
        cmd.env(ABORT_AFTER_LAST_CHECKPOINT, "1");
    } else {
        cmd.env_remove(ABORT_AFTER_LAST_CHECKPOINT);
    }
    let o = cmd.output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn a_kill_after_each_training_stages_last_checkpoint_resumes_to_identical_artifacts() {
    let clean = workspace("clean");
    let (ok, out) = run_all(&clean, false);
    assert!(ok, "uninterrupted run failed:\n{out}");

    // With the hook set every run gets one training stage further: the stage trains, writes
    // its last checkpoint and dies; the next run resumes it (a finished checkpoint: no more
    // training), writes its outputs, and the next training stage dies the same way.
    let killed = workspace("killed");
    // A stage with two training phases (dense: all adapters, then encoder adapters frozen)
    // dies once per phase; no checkpoint may be died after twice.
    let mut aborted: Vec<String> = Vec::new();
    let mut windows: Vec<String> = Vec::new();
    let mut finished = false;
    for _ in 0..12 {
        let (ok, out) = run_all(&killed, true);
        if ok {
            finished = true;
            break;
        }
        let window = out
            .lines()
            .find_map(|l| l.split_once("aborting after the last checkpoint in ").map(|(_, d)| d.to_string()))
            .unwrap_or_else(|| panic!("failed otherwise:\n{out}"));
        assert!(
            !windows.contains(&window),
            "died twice after the checkpoint {window}: the resume did not go on\n{out}"
        );
        windows.push(window);
        aborted.push(running_stage(&out));
    }
    assert!(finished, "still failing after {} kills: {windows:?}", windows.len());
    eprintln!("killed after the last checkpoints of {windows:?}");
    for stage in ["gate", "experts", "joint", "dense"] {
        assert!(aborted.iter().any(|s| s == stage), "{stage} never died after its last checkpoint: {aborted:?}");
    }
    let (a, b) = (artifact_hashes(&clean).unwrap(), artifact_hashes(&killed).unwrap());
    assert!(a.len() > 40, "only {} artifact files", a.len());
    let differing: Vec<&String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).collect();
    assert!(differing.is_empty(), "after kills in {aborted:?}, these artifacts differ: {differing:?}");
    let _ = std::fs::remove_dir_all(&clean);
    let _ = std::fs::remove_dir_all(&killed);
}

/// The experts stage with a shared start trains twice (the shared adapter, then the experts):
/// killed after each one's last checkpoint, it resumes to the same adapters.
#[test]
fn a_kill_after_the_shared_starts_checkpoint_resumes_to_identical_experts() {
    let shared = |name: &str| {
        let dir = workspace(name);
        set_shared_epochs(&dir, 2).unwrap();
        dir
    };
    let clean = shared("shared-clean");
    let (ok, out) = run(&clean, "experts", false);
    assert!(ok && out.contains("a shared start"), "uninterrupted run failed:\n{out}");
    let killed = shared("shared-killed");
    let mut windows: Vec<String> = Vec::new();
    loop {
        let (ok, out) = run(&killed, "experts", true);
        if ok {
            break;
        }
        let window = out
            .lines()
            .find_map(|l| l.split_once("aborting after the last checkpoint in ").map(|(_, d)| d.to_string()))
            .unwrap_or_else(|| panic!("failed otherwise:\n{out}"));
        assert!(!windows.contains(&window) && windows.len() < 2, "died twice after {window}: {windows:?}\n{out}");
        windows.push(window);
    }
    assert!(windows.len() == 2 && windows[0].ends_with("shared") && windows[1].ends_with("experts"), "{windows:?}");
    let (a, b) = (artifact_hashes(&clean).unwrap(), artifact_hashes(&killed).unwrap());
    assert!(a.keys().any(|k| k.contains("experts/expert_0")), "{:?}", a.keys());
    let differing: Vec<&String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).collect();
    assert!(differing.is_empty(), "these artifacts differ: {differing:?}");
    let _ = std::fs::remove_dir_all(&clean);
    let _ = std::fs::remove_dir_all(&killed);
}
