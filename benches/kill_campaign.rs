//! A kill campaign: `kill -9` of `pipeline run all`'s whole process group at random moments
//! inside every stage, then `pipeline run all` again until it finishes; the artifacts must be
//! byte-identical to an uninterrupted run's. The demo manifest runs on a tiny random Whisper
//! and a synthetic three-domain dataset (as tests/pipeline_e2e.rs), so one run takes seconds.
//!
//!   cargo bench --bench kill_campaign [-- KILLS [SEED]]      (default 25 kills, seed 1)
//!
//! Prints where each kill landed (the stage running), then every artifact that differs.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use whisper_moe::whisper::testing::{artifact_hashes, tiny_workspace};

/// The workspace: data, held-out set, tiny model and the demo manifest with short training.
fn fixture(dir: &Path) {
    // Three expert epochs (the e2e test takes one): checkpoints to resume from.
    tiny_workspace(dir, 3).unwrap();
}

fn bin_dir() -> PathBuf {
    // target/release/deps/kill_campaign-HASH -> target/release
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf()
}

/// Start `pipeline run all` in a process group of its own (the stages are in it too).
fn start(dir: &Path, log: &Path) -> std::process::Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(bin_dir().join("pipeline"))
        .args(["run", "all"])
        .current_dir(dir)
        .env("PATH", format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default()))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn files(dir: &Path) -> BTreeMap<String, String> {
    artifact_hashes(dir).unwrap()
}

/// A tiny xorshift for the kill times (reproducible with the seed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn running_stage(log: &Path) -> String {
    whisper_moe::whisper::testing::running_stage(&std::fs::read_to_string(log).unwrap_or_default())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let kills: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(25);
    let mut rng = Rng(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1u64).wrapping_mul(0x9E3779B97F4A7C15) | 1);
    let base = std::env::temp_dir().join(format!("wm-kill-campaign-{}", std::process::id()));
    let (reference, victim) = (base.join("reference"), base.join("victim"));

    fixture(&reference);
    let t0 = Instant::now();
    let mut child = start(&reference, &base.join("reference.log"));
    assert!(child.wait().unwrap().success(), "the uninterrupted run failed: {}", base.join("reference.log").display());
    let whole = t0.elapsed().as_secs_f64();
    println!("uninterrupted run: {whole:.1} s");
    let want = files(&reference);

    // Episodes: a fresh workspace, kills until a run gets to the end, then its artifacts are
    // compared with the uninterrupted run's; until `kills` kills have landed.
    let mut landed: BTreeMap<String, usize> = BTreeMap::new();
    let (mut killed, mut runs, mut episodes) = (0, 0, 0);
    let mut differ: Vec<String> = Vec::new();
    let mut compared = 0;
    while killed < kills {
        episodes += 1;
        fixture(&victim);
        let mut episode_kills = 0;
        loop {
            runs += 1;
            let log = base.join(format!("run-{runs}.log"));
            let mut child = start(&victim, &log);
            // Anywhere in what an uninterrupted run would take; a run that ends first ends
            // the episode.
            let delay = 0.05 + rng.next() * whole;
            let t = Instant::now();
            while t.elapsed().as_secs_f64() < delay && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
            if killed < kills && child.try_wait().unwrap().is_none() {
                let stage = running_stage(&log);
                let _ = Command::new("kill").args(["-9", "--", &format!("-{}", child.id())]).status();
                let _ = child.wait();
                killed += 1;
                episode_kills += 1;
                *landed.entry(stage.clone()).or_default() += 1;
                println!("episode {episodes}, kill {killed:>2} after {delay:5.2} s: {stage}");
                continue;
            }
            let status = child.wait().unwrap();
            assert!(status.success(), "`pipeline run all` failed after {killed} kills: see {}", log.display());
            break;
        }
        if episode_kills == 0 {
            continue;
        }
        let got = files(&victim);
        compared += 1;
        for (f, h) in &want {
            match got.get(f) {
                Some(g) if g == h => {}
                Some(_) => differ.push(format!("episode {episodes}: differs: {f}")),
                None => differ.push(format!("episode {episodes}: missing: {f}")),
            }
        }
        for f in got.keys().filter(|f| !want.contains_key(*f)) {
            differ.push(format!("episode {episodes}: extra: {f}"));
        }
        println!("episode {episodes}: {episode_kills} kills, then a complete run; artifacts compared");
    }
    println!("\n{killed} kills in {runs} runs ({compared} episodes compared); where they landed:");
    for (stage, n) in &landed {
        println!("  {stage:<24} {n}");
    }
    println!(
        "\n{} artifact files per episode compared with the uninterrupted run (timing fields aside): {} differ",
        want.len(),
        differ.len()
    );
    for d in &differ {
        println!("  {d}");
    }
    if !differ.is_empty() {
        std::process::exit(1);
    }
    let _ = std::fs::remove_dir_all(&base);
}
