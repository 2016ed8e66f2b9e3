//! The orchestrator on a toy pipeline of shell commands: what runs, what does not, and why.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

const TOY: &str = r#"
vars:
  src: input
stages:
  a:
    cmd: mkdir -p out/a && cat ${src}/a.txt $PIPELINE_PARAMS > out/a/data.txt
    deps: [${src}/a.txt]
    params: a
    outs: [out/a]
  b:
    cmd: cp ${src}/b.txt out_b.txt
    deps: [${src}/b.txt]
    outs: [out_b.txt]
  c:
    cmd: cat out/a/data.txt out_b.txt $PIPELINE_PARAMS > out_c.txt
    deps: [out/a, out_b.txt]
    params: c
    outs: [out_c.txt]
  d:
    cmd: wc -c < out_c.txt > out_d.txt
    deps: [out_c.txt]
    outs: [out_d.txt]
params:
  a: {scale: 1}
  c: {k: 6, algorithm: kmeans}
"#;

struct Toy {
    dir: PathBuf,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// Stages the runner started, in order.
    fn ran(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix("▶ running "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    }
}

impl Toy {
    fn new(name: &str, manifest: &str) -> Toy {
        let dir = std::env::temp_dir().join(format!("wm-toy-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("input")).unwrap();
        fs::write(dir.join("input/a.txt"), "alpha\n").unwrap();
        fs::write(dir.join("input/b.txt"), "beta\n").unwrap();
        fs::write(dir.join("pipeline.yaml"), manifest).unwrap();
        Toy { dir }
    }

    fn pipeline(&self, args: &[&str]) -> Out {
        let out = Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run pipeline");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let out = self.pipeline(&all);
        assert_eq!(out.code, 0, "pipeline run {args:?} failed:\n{}", out.stderr);
        out
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn read(&self, p: &str) -> String {
        fs::read_to_string(self.path(p)).unwrap()
    }

    fn edit_manifest(&self, from: &str, to: &str) {
        let text = self.read("pipeline.yaml");
        assert!(text.contains(from), "manifest lacks {from}");
        fs::write(self.path("pipeline.yaml"), text.replacen(from, to, 1)).unwrap();
    }
}

fn age(path: &Path, secs: u64) {
    // Files written in the last second are re-hashed (racy stat); age them to exercise the cache.
    let t = SystemTime::now() - Duration::from_secs(secs);
    fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

#[test]
fn reruns_exactly_what_changed() {
    let t = Toy::new("rerun", TOY);
    assert_eq!(t.run(&["all"]).ran(), ["a", "b", "c", "d"]);
    assert!(t.read("out_c.txt").contains("alpha") && t.read("out_c.txt").contains("\"k\": 6"));
    assert_eq!(t.read("out_d.txt").trim(), t.read("out_c.txt").len().to_string());
    assert!(t.run(&["all"]).ran().is_empty(), "second run must run nothing");
    let status = t.pipeline(&["status"]);
    assert!(status.stdout.contains("everything is up to date"), "{}", status.stdout);

    // Touching a dep (mtime only) reruns nothing.
    age(&t.path("input/a.txt"), 100);
    assert!(t.run(&["all"]).ran().is_empty());

    // Changing a dep's content reruns that stage and everything downstream, nothing else.
    fs::write(t.path("input/a.txt"), "ALPHA\n").unwrap();
    let st = t.pipeline(&["status"]).stdout;
    assert!(st.contains("dep input/a.txt changed"), "{st}");
    assert!(st.contains("b: up to date"), "{st}");
    assert_eq!(t.run(&["all"]).ran(), ["a", "c", "d"]);
    assert!(t.read("out_c.txt").contains("ALPHA"));

    // Changing one stage's params subtree reruns that stage and its downstream only.
    t.edit_manifest("c: {k: 6,", "c: {k: 8,");
    let st = t.pipeline(&["status"]).stdout;
    assert!(st.contains("params c.k changed 6 -> 8"), "{st}");
    assert!(st.contains("upstream c is stale"), "{st}");
    assert_eq!(t.run(&["all"]).ran(), ["c", "d"]);

    // Deleting an out reruns its producer; the same content comes back, so nothing downstream.
    fs::remove_file(t.path("out_b.txt")).unwrap();
    assert!(t.pipeline(&["status"]).stdout.contains("out out_b.txt missing"));
    assert_eq!(t.run(&["all"]).ran(), ["b"]);

    // An out edited by hand is noticed.
    fs::write(t.path("out_d.txt"), "tampered").unwrap();
    assert!(t.pipeline(&["status"]).stdout.contains("out out_d.txt changed since it was written"));
    assert_eq!(t.run(&["all"]).ran(), ["d"]);

    // --dry-run says what would run and runs nothing; --force runs the named stage.
    fs::write(t.path("input/b.txt"), "BETA\n").unwrap();
    let dry = t.run(&["all", "--dry-run"]);
    assert!(dry.ran().is_empty());
    assert!(dry.stdout.contains("would run b: dep input/b.txt changed"), "{}", dry.stdout);
    assert!(dry.stdout.contains("would run d"), "{}", dry.stdout);
    assert!(dry.stdout.contains("a: up to date"), "{}", dry.stdout);
    assert_eq!(t.read("out_b.txt"), "beta\n");
    t.run(&["all"]);
    assert_eq!(t.run(&["a", "--force"]).ran(), ["a"]);
}

#[test]
fn run_stage_runs_stale_upstream_first() {
    let t = Toy::new("upstream", TOY);
    assert_eq!(t.run(&["c"]).ran(), ["a", "b", "c"]);
    assert!(!t.path("out_d.txt").exists());
    fs::write(t.path("input/b.txt"), "BETA\n").unwrap();
    assert_eq!(t.run(&["d"]).ran(), ["b", "c", "d"]);
}

#[test]
fn failing_stage_keeps_outs_and_lock() {
    let t = Toy::new("fail", TOY);
    t.run(&["all"]);
    let lock_before = t.read("pipeline.lock");
    let c_before = t.read("out_c.txt");
    t.edit_manifest(
        "cmd: cat out/a/data.txt out_b.txt $PIPELINE_PARAMS > out_c.txt",
        "cmd: echo partial > out_c.txt; exit 3",
    );
    let out = t.pipeline(&["run", "all"]);
    assert_ne!(out.code, 0);
    assert_eq!(out.ran(), ["c"]);
    assert!(out.stderr.contains("c failed: exit code 3"), "{}", out.stderr);
    assert!(out.stderr.contains("upstream c did not complete"), "{}", out.stderr);
    assert_eq!(t.read("out_c.txt"), c_before, "the previous out must stay");
    assert_eq!(t.read("pipeline.lock"), lock_before, "the lock must not change");
    assert!(t.read(".pipeline/logs/c.log").contains("exit 3"));
    // It is still stale, and a fixed command runs it and its downstream.
    assert!(t.pipeline(&["status"]).stdout.contains("cmd changed"));
    t.edit_manifest("cmd: echo partial > out_c.txt; exit 3", "cmd: echo fixed > out_c.txt");
    assert_eq!(t.run(&["all"]).ran(), ["c", "d"]);
    assert_eq!(t.read("out_c.txt"), "fixed\n");
}

#[test]
fn keep_going_runs_independent_stages() {
    let t = Toy::new("keepgoing", TOY);
    t.edit_manifest("cmd: mkdir -p out/a", "cmd: exit 1; mkdir -p out/a");
    let out = t.pipeline(&["run", "all", "--keep-going"]);
    assert_ne!(out.code, 0);
    let ran = out.ran();
    assert!(ran.contains(&"a".to_string()) && ran.contains(&"b".to_string()), "{ran:?}");
    assert!(t.path("out_b.txt").exists());
    assert!(!t.path("out_c.txt").exists());
}

#[test]
fn jobs_run_independent_stages_at_the_same_time() {
    // Each stage announces itself, then waits for the other's announcement: they can only
    // both finish when they run at the same time. Run one after the other, the first gives up
    // after 20 s without its out and fails the run.
    let wait = |me: &str, other: &str| {
        format!(
            "touch here_{me}; i=0; while [ ! -e here_{other} ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; \
             [ -e here_{other} ] && echo {me} > out_{me}"
        )
    };
    let manifest = format!(
        "stages:\n  x:\n    cmd: {}\n    outs: [out_x]\n  y:\n    cmd: {}\n    outs: [out_y]\n",
        wait("x", "y"),
        wait("y", "x")
    );
    let t = Toy::new("jobs", &manifest);
    let out = t.run(&["all", "-j", "2"]);
    assert_eq!(out.ran().len(), 2);
    assert_eq!(t.read("out_x"), "x\n");
    assert_eq!(t.read("out_y"), "y\n");
    // Output is prefixed with the stage name when stages run in parallel.
    assert!(t.read(".pipeline/logs/x.log").starts_with("$ "));
}

#[test]
fn var_override_points_stages_elsewhere() {
    let t = Toy::new("vars", TOY);
    fs::create_dir_all(t.path("other")).unwrap();
    fs::write(t.path("other/a.txt"), "other-a\n").unwrap();
    fs::write(t.path("other/b.txt"), "other-b\n").unwrap();
    t.run(&["all", "--var", "src=other"]);
    assert!(t.read("out_c.txt").contains("other-a"));
}

fn refused(name: &str, manifest: &str, key: &str, line: u32, words: &str) {
    let t = Toy::new(name, manifest);
    let out = t.pipeline(&["run", "all"]);
    assert_eq!(out.code, 2, "{name}: expected exit code 2, got {}: {}", out.code, out.stderr);
    let want_loc = format!("pipeline.yaml:{line}:");
    assert!(out.stderr.contains(&want_loc), "{name}: no `{want_loc}` in: {}", out.stderr);
    assert!(out.stderr.contains(key), "{name}: key `{key}` not named in: {}", out.stderr);
    assert!(out.stderr.contains(words), "{name}: `{words}` not in: {}", out.stderr);
    assert!(!t.path(".pipeline/logs").exists(), "{name}: something ran");
}

#[test]
fn malformed_manifests_are_refused_with_key_and_line() {
    refused("unknown", "stages:\n  a:\n    cmd: echo\n    outz: [x]\n", "outz", 4, "unknown field");
    refused(
        "cycle",
        "stages:\n  a:\n    cmd: x\n    deps: [b.txt]\n    outs: [a.txt]\n  b:\n    cmd: y\n    deps: [a.txt]\n    outs: [b.txt]\n",
        "stages.a",
        3,
        "cycle: a -> b -> a",
    );
    refused(
        "missing",
        "stages:\n  a:\n    cmd: x\n    deps:\n      - input/a.txt\n      - nowhere.txt\n    outs: [o]\n",
        "stages.a.deps",
        6,
        "nowhere.txt",
    );
    refused(
        "dup",
        "stages:\n  a:\n    cmd: x\n    outs: [o]\n  b:\n    cmd: y\n    outs:\n      - o\n",
        "stages.b.outs",
        8,
        "overlaps",
    );
    refused("var", "vars:\n  x: 1\nstages:\n  a:\n    cmd: run ${y}\n    outs: [o]\n", "stages.a.cmd", 5, "${y}");
    refused(
        "params",
        "stages:\n  a:\n    cmd: x\n    params: cluster.k\n    outs: [o]\nparams:\n  cluster: {n: 3}\n",
        "stages.a.params",
        4,
        "cluster.k",
    );
}

impl Out {
    /// Stages the runner restored from the run cache, in order.
    fn restored(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix("↺ restored "))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    }
}

/// The run cache entries of a stage whose run.yaml contains `needle`.
fn cache_entries(t: &Toy, stage: &str, needle: &str) -> Vec<PathBuf> {
    let dir = t.path(&format!(".pipeline/runs/{stage}"));
    let mut found = Vec::new();
    for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if fs::read_to_string(p.join("run.yaml")).unwrap().contains(needle) {
            found.push(p);
        }
    }
    found
}

#[test]
fn run_cache_restores_earlier_outputs() {
    let t = Toy::new("runcache", TOY);
    t.run(&["all"]);
    let (c6, d6) = (t.read("out_c.txt"), t.read("out_d.txt"));
    t.edit_manifest("c: {k: 6,", "c: {k: 8,");
    assert_eq!(t.run(&["all"]).ran(), ["c", "d"]);
    let (c8, d8) = (t.read("out_c.txt"), t.read("out_d.txt"));
    assert_ne!(c6, c8);

    // Going back to k = 6: nothing runs; c and d come back as they were, and are up to date.
    t.edit_manifest("c: {k: 8,", "c: {k: 6,");
    let dry = t.run(&["all", "--dry-run"]);
    assert!(dry.stdout.contains("would run c: params c.k changed 8 -> 6; an earlier run"), "{}", dry.stdout);
    let out = t.run(&["all"]);
    assert!(out.ran().is_empty(), "{}", out.stderr);
    assert_eq!(out.restored(), ["c", "d"]);
    assert_eq!((t.read("out_c.txt"), t.read("out_d.txt")), (c6.clone(), d6));
    assert!(t.pipeline(&["status"]).stdout.contains("everything is up to date"));

    // An entry modified in place is never restored: it is dropped and the stage runs. Its
    // output is the same as before, so d (same inputs as its k = 8 run) is restored.
    let entries = cache_entries(&t, "c", "k: 8");
    assert_eq!(entries.len(), 1);
    fs::write(entries[0].join("outs/out_c.txt"), "damaged\n").unwrap();
    t.edit_manifest("c: {k: 6,", "c: {k: 8,");
    let out = t.run(&["all"]);
    assert!(out.stderr.contains("run cache entry of c not used"), "{}", out.stderr);
    assert_eq!(out.ran(), ["c"]);
    assert_eq!(out.restored(), ["d"]);
    assert_eq!((t.read("out_c.txt"), t.read("out_d.txt")), (c8, d8));

    // --no-run-cache runs them; a deleted out with unchanged inputs is run, not restored.
    t.edit_manifest("c: {k: 8,", "c: {k: 6,");
    assert_eq!(t.run(&["all", "--no-run-cache"]).ran(), ["c", "d"]);
    assert_eq!(t.read("out_c.txt"), c6);
    fs::remove_file(t.path("out_c.txt")).unwrap();
    assert_eq!(t.run(&["all"]).ran(), ["c"]);

    // The runs' outs are hard links while they are the current outs: no extra space.
    let list = t.pipeline(&["cache", "list"]).stdout;
    assert!(list.lines().any(|l| l.starts_with("c ") && l.contains(" 2 runs")), "{list}");
    let cleared = t.pipeline(&["cache", "clear", "c"]).stdout;
    assert!(cleared.contains("deleted 2 stored runs"), "{cleared}");
    assert!(!t.path(".pipeline/runs/c").exists() && t.path(".pipeline/runs/d").exists());
}

/// A stage whose metric is c's k squared, computed by the stage from its params file.
const SCORE: &str = r#"  score:
    cmd: >-
      k=$(sed -n 's/.*"k": \([0-9]*\).*/\1/p' $PIPELINE_PARAMS);
      echo "{\"score\": $((k*k))}" > score.json
    deps: [out_c.txt]
    params: c
    metrics: [score.json]
"#;

#[test]
fn sweep_runs_every_variant_and_compares_metrics() {
    let manifest = TOY.replace("    outs: [out_c.txt]\n", &format!("    outs: [out_c.txt]\n{SCORE}"));
    let t = Toy::new("sweep", &manifest);
    t.run(&["all"]);
    assert_eq!(t.read("score.json").trim(), r#"{"score": 36}"#);
    let before = t.read("out_c.txt");

    let out = t.pipeline(&["sweep", "--set", "c.k=2,3", "--set", "c.algorithm=gmm,kmeans"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Four variants; a and b never rerun (their inputs do not change); the base comes back from
    // the run cache.
    let ran = out.ran();
    assert_eq!(ran.iter().filter(|s| *s == "c").count(), 4, "{}", out.stderr);
    assert!(!ran.contains(&"a".to_string()) && !ran.contains(&"b".to_string()));
    assert!(out.stderr.contains("↺ restored c"), "{}", out.stderr);
    let table: Vec<Vec<String>> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("score.json:") || l.starts_with("metric"))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    assert_eq!(
        table[0],
        [
            "metric",
            "base",
            "c.k=2+c.algorithm=gmm",
            "c.k=2+c.algorithm=kmeans",
            "c.k=3+c.algorithm=gmm",
            "c.k=3+c.algorithm=kmeans"
        ]
    );
    assert_eq!(table[1], ["score.json:score", "36", "4", "4", "9", "9"]);
    assert_eq!(t.read("sweeps/comparison.tsv").lines().count(), 2);
    // Each variant's outs in a directory of its own; the workspace is back to the manifest.
    assert!(t.read("sweeps/c.k=3+c.algorithm=gmm/out_c.txt").contains("\"algorithm\": \"gmm\""));
    assert!(t.read("sweeps/c.k=3+c.algorithm=gmm/sweep-params.json").contains("\"c.k\": \"3\""));
    assert_eq!(t.read("out_c.txt"), before);
    assert!(t.pipeline(&["status"]).stdout.contains("everything is up to date"));

    // --only keeps the metrics named; the variants seen before are all restored.
    let out = t.pipeline(&["sweep", "--set", "c.k=2,3", "--only", "nothing-matches"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.ran().is_empty(), "{}", out.stderr);
    assert!(!out.stdout.contains("score.json:score") && out.stdout.contains("no metrics"), "{}", out.stdout);

    // A key that does not exist is refused before anything runs.
    let bad = t.pipeline(&["sweep", "--set", "c.kk=1,2"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("c.kk") && bad.ran().is_empty(), "{}", bad.stderr);
}

#[test]
fn sweep_reports_only_what_each_variant_produced() {
    // score fails for k = 3; the workspace was built without the run cache (cleared), so the
    // sweep must keep its outs before replacing them and put them back at the end unrun.
    let failing = SCORE.replace("k=$(sed", "k=$(sed").replace(
        "echo \"{\\\"score\\\": $((k*k))}\" > score.json",
        "test \"$k\" != 3 && echo \"{\\\"score\\\": $((k*k))}\" > score.json",
    );
    assert_ne!(failing, SCORE);
    let t =
        Toy::new("sweepfail", &TOY.replace("    outs: [out_c.txt]\n", &format!("    outs: [out_c.txt]\n{failing}")));
    t.run(&["all"]);
    let (before_c, before_score) = (t.read("out_c.txt"), t.read("score.json"));
    assert!(t.pipeline(&["cache", "clear"]).stdout.contains("deleted"));

    let out = t.pipeline(&["sweep", "--set", "c.k=2,3", "--keep-going"]);
    assert_ne!(out.code, 0, "a failed variant makes the sweep fail");
    assert_eq!(out.ran(), ["c", "score", "d", "c", "score", "d"], "{}", out.stderr);
    assert_eq!(out.restored(), ["c", "score", "d"], "the base comes back from the run cache: {}", out.stderr);
    let table: Vec<Vec<String>> =
        t.read("sweeps/comparison.tsv").lines().map(|l| l.split('\t').map(String::from).collect()).collect();
    assert_eq!(table[0], ["metric", "base", "c.k=2", "c.k=3 (FAILED)"]);
    assert_eq!(table[1], ["score.json:score", "36", "4", ""], "the failed variant shows no stale score");
    assert!(t.path("sweeps/c.k=3/out_c.txt").exists() && !t.path("sweeps/c.k=3/score.json").exists());
    assert_eq!((t.read("out_c.txt"), t.read("score.json")), (before_c, before_score));
    assert!(t.pipeline(&["status"]).stdout.contains("everything is up to date"));

    // An output directory inside the pipeline's outs is refused.
    let bad = t.pipeline(&["sweep", "--set", "c.k=2", "--out", "out/a/sweeps"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("overlaps the out out/a"), "{}", bad.stderr);
}

/// A stage binary's parameters are checked against its schema before anything runs, by
/// `run`, `run --dry-run` and `status`, naming the manifest line and the key; `--set` errors
/// too, with the same exit code (2) as other manifest errors.
#[test]
fn stage_parameters_are_checked_before_anything_runs() {
    let manifest = "stages:\n  first:\n    cmd: echo hi > first.txt\n    outs: [first.txt]\n  gate:\n    cmd: stage-gate --embeddings first.txt --clusters c --splits s --out g\n    deps: [first.txt]\n    params: gate\n    outs: [g]\nparams:\n  gate:\n    hidden: [8]\n    lr: 0.01\n    hiddn: [4]\n";
    let t = Toy::new("check-params", manifest);
    for args in [&["run", "all"][..], &["run", "all", "--dry-run"], &["status"]] {
        let out = t.pipeline(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        for w in ["pipeline.yaml:14:", "params.gate.hiddn", "stage `gate`", "unknown field"] {
            assert!(out.stderr.contains(w), "{args:?}: `{w}` not in: {}", out.stderr);
        }
        assert!(!t.path("first.txt").exists(), "{args:?}: nothing may run");
    }
    // A value of the wrong type, given with --set: the key and its line.
    let t = Toy::new("check-set", &manifest.replace("    hiddn: [4]\n", ""));
    let out = t.pipeline(&["run", "all", "--set", "gate.lr=fast"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    for w in ["pipeline.yaml:13:", "params.gate.lr", "invalid type"] {
        assert!(out.stderr.contains(w), "`{w}` not in: {}", out.stderr);
    }
    let out = t.pipeline(&["run", "all", "--set", "gate.nope=1"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("params.gate.nope") && out.stderr.contains("no such key"), "{}", out.stderr);
    assert!(!t.path("first.txt").exists());
    // Good parameters: the first stage runs (the gate then fails on its inputs, which is fine).
    let out = t.pipeline(&["run", "first"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// SIGTERM to the runner alone (as `kill PID` or a batch system sends it) stops the running
/// stage, launches nothing more, and leaves outs and lock as a failure does.
#[test]
fn sigterm_to_the_runner_stops_its_stages() {
    let manifest = "stages:\n  slow:\n    cmd: sleep 60 & echo $! > sleep.pid; wait; touch slow.txt\n    outs: [slow.txt]\n  after:\n    cmd: cp slow.txt after.txt\n    deps: [slow.txt]\n    outs: [after.txt]\n";
    let t = Toy::new("sigterm", manifest);
    let mut child = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["run", "all"])
        .current_dir(&t.dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (by files, not by time) until the stage's sleep runs.
    let pid_file = t.path("sleep.pid");
    for _ in 0..600 {
        if fs::read_to_string(&pid_file).is_ok_and(|s| s.trim().parse::<u32>().is_ok()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let sleep_pid: u32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(Path::new(&format!("/proc/{sleep_pid}")).exists());
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let code = child.wait().unwrap().code();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("stopped by a signal"), "{err}");
    // The stage's own process is gone (it may take a moment to be reaped).
    let mut gone = false;
    for _ in 0..200 {
        let stat = fs::read_to_string(format!("/proc/{sleep_pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone, "the stage's sleep {sleep_pid} survived the runner");
    assert!(!t.path("slow.txt").exists() && !t.path("after.txt").exists());
    let lock = fs::read_to_string(t.path("pipeline.lock")).unwrap_or_default();
    assert!(!lock.contains("slow"), "no lock entry for a stopped stage: {lock}");
    // The next run starts it again.
    let out = t.pipeline(&["status"]);
    assert!(out.stdout.contains("slow: stale"), "{}", out.stdout);
}

/// A commit keeps what another process committed while the run went on (a detached Slurm
/// run's jobs, or a second `pipeline run`): the runner rereads the lock file under its file
/// lock before each commit instead of saving the copy it read at the start. Here stage `y`'s
/// command itself reruns stage `x`, which commits; `y`'s commit must keep `x`'s new entry.
#[test]
fn a_commit_keeps_what_another_run_committed_meanwhile() {
    let exe = env!("CARGO_BIN_EXE_pipeline");
    let manifest = format!(
        r#"
stages:
  x:
    cmd: cp input/a.txt out_x.txt
    deps: [input/a.txt]
    outs: [out_x.txt]
  y:
    cmd: {exe} run x && cp input/b.txt out_y.txt
    deps: [input/b.txt]
    outs: [out_y.txt]
"#
    );
    let toy = Toy::new("concurrent-commit", &manifest);
    toy.run(&["x"]);
    fs::write(toy.path("input/a.txt"), "alpha, changed\n").unwrap();
    let out = toy.run(&["y"]);
    // (the nested run's output is part of y's)
    assert_eq!(out.ran(), ["y", "x"], "{}", out.stderr);
    assert_eq!(toy.read("out_x.txt"), "alpha, changed\n", "y's command reran x");
    let status = toy.pipeline(&["status"]);
    assert!(status.stdout.contains("everything is up to date"), "x's new entry was lost:\n{}", status.stdout);
    let _ = fs::remove_dir_all(&toy.dir);
}
