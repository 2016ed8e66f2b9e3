//! Where a stage's command runs: here (`local`: a process, or one per shard) or on a Slurm
//! cluster (`slurm`: see [`super::chain`], which submits every stage to run at once as a chain of
//! `afterok` jobs; this module has the Slurm mechanics: submitting, following, describing how a
//! task ended). Either way the command writes into the stage's staging directory and the outs
//! are committed when every shard has succeeded, so staleness, the lock and the run cache do not
//! depend on the executor.
//!
//! Shards: shard i of N runs the stage's command with `--shard i/N` appended (and
//! `PIPELINE_SHARD=i/N`); each writes its own part files. The shards that finished are recorded
//! in the staging directory (`.shards.json`, with the inputs they were made from), so after a
//! failure only the failed or missing shards run again.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::manifest::SlurmOptions;

/// How a stage can be split across processes or machines (`--shard i/N`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharding {
    /// One process does all the work.
    None,
    /// Shard i of N takes a contiguous slice of the input rows and writes its own part files
    /// of the stage's datasets; the parts together are the output (no merge step).
    Rows,
    /// Shard i of N trains a contiguous range of the experts (e.g. one per GPU) and writes
    /// their adapters, its part files and its own summary file, which readers put together.
    Experts,
    /// Shard i of N works on a slice of the rows; then the runner runs the command once more
    /// with `--merge-shards N` to put the parts together (evaluate: transcribe, then score).
    RowsThenMerge,
}

/// One stage to run, as the runner hands it over.
#[derive(Clone)]
pub struct Job {
    pub stage: String,
    /// The command with its outs pointing into the staging directory.
    pub cmd: String,
    pub root: PathBuf,
    pub env: Vec<(String, String)>,
    /// The runner's state directory (`.pipeline`).
    pub state: PathBuf,
    pub staging: PathBuf,
    /// Prefix of the stage's output lines (parallel runs).
    pub prefix: String,
    pub shards: usize,
    /// The shards still to run (all of them unless an earlier run finished some).
    pub todo: Vec<usize>,
    /// After the shards, run the command once more with `--merge-shards N` (stages that put
    /// their shards' parts together in a step of their own).
    pub merge: bool,
    /// Local shards at once.
    pub parallel: usize,
}

impl Job {
    fn shard_cmd(&self, i: usize) -> String {
        if self.shards > 1 { format!("{} --shard {i}/{}", self.cmd, self.shards) } else { self.cmd.clone() }
    }

    /// The log of a local run: `.pipeline/logs/STAGE.log`, or one per shard in `logs/STAGE/`.
    pub fn local_log(&self, i: usize) -> PathBuf {
        if self.shards > 1 {
            self.state.join("logs").join(&self.stage).join(format!("shard-{i}.log"))
        } else {
            self.state.join("logs").join(format!("{}.log", self.stage))
        }
    }
}

/// Run a job here to the end: Ok when every shard (and the merge step after them) succeeded.
pub fn run(job: &Job) -> Result<(), String> {
    if job.shards == 1 || !job.todo.is_empty() {
        run_local(job)?;
    }
    if job.shards > 1 && job.merge {
        let merge = Job {
            cmd: format!("{} --merge-shards {}", job.cmd, job.shards),
            prefix: format!("{}[merge] ", job.prefix),
            shards: 1,
            todo: vec![0],
            merge: false,
            parallel: 1,
            ..job.clone()
        };
        eprintln!("{}⧗ {}: merging its {} shards", job.prefix, job.stage, job.shards);
        return run(&merge).map_err(|e| format!("the merge step after the shards: {e}"));
    }
    Ok(())
}

fn run_local(job: &Job) -> Result<(), String> {
    if job.shards == 1 {
        return execute(&job.cmd, &job.root, &job.env, &job.local_log(0), &job.prefix);
    }
    let _ = fs::create_dir_all(job.state.join("logs").join(&job.stage));
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    for chunk in job.todo.chunks(job.parallel.max(1)) {
        std::thread::scope(|s| {
            for &i in chunk {
                let errors = &errors;
                s.spawn(move || {
                    let mut env = job.env.clone();
                    env.push(("PIPELINE_SHARD".into(), format!("{i}/{}", job.shards)));
                    let prefix = format!("{}[shard {i}/{}] ", job.prefix, job.shards);
                    match execute(&job.shard_cmd(i), &job.root, &env, &job.local_log(i), &prefix) {
                        Ok(()) => {
                            if let Err(e) = shard_done(&job.staging, i, job.shards) {
                                eprintln!("warning: cannot record shard {i} as done: {e}");
                            }
                        }
                        Err(e) => errors.lock().unwrap().push(format!(
                            "shard {i}/{}: {e} (log: {})",
                            job.shards,
                            job.local_log(i).display()
                        )),
                    }
                });
            }
        });
        if interrupted() {
            break;
        }
    }
    let errors = errors.into_inner().unwrap();
    if errors.is_empty() && !interrupted() {
        Ok(())
    } else if errors.is_empty() {
        Err("stopped by a signal to the runner".into())
    } else {
        Err(errors.join("; "))
    }
}

/// What `.shards.json` in a stage's staging directory holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ShardState {
    /// The inputs and shard count the finished shards were made with.
    key: String,
    done: Vec<usize>,
}

fn shard_file(staging: &Path) -> PathBuf {
    staging.join(".shards.json")
}

/// `.shards.json` is read and rewritten by the runner's threads and, under Slurm, by the array
/// tasks of a stage (processes on several nodes): a file lock beside the staging directory
/// (which `pending_shards` may empty).
fn lock_shard_file(staging: &Path) -> std::io::Result<fs::File> {
    let name = format!(".{}.shards.lock", staging.file_name().unwrap_or_default().to_string_lossy());
    crate::util::lock_file(&staging.parent().unwrap_or(Path::new(".")).join(name))
}

/// The shards of a stage still to run, given the key of its inputs (`key` covers the shard
/// count). Staged work made from other inputs or another sharding is removed first: part files
/// of another split must never mix with these.
pub fn pending_shards(staging: &Path, key: &str, shards: usize) -> std::io::Result<Vec<usize>> {
    let _guard = lock_shard_file(staging)?;
    let file = shard_file(staging);
    let state: Option<ShardState> = fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str(&t).ok());
    match state {
        Some(s) if s.key == key && shards > 1 => Ok((0..shards).filter(|i| !s.done.contains(i)).collect()),
        Some(_) => {
            super::run_cache::remove_any(staging)?;
            write_state(staging, &ShardState { key: key.into(), done: vec![] }, shards)?;
            Ok((0..shards).collect())
        }
        None => {
            if shards > 1 {
                // Parts of an unsharded attempt would not be a shard's: start clean.
                if staging.exists() {
                    super::run_cache::remove_any(staging)?;
                }
                write_state(staging, &ShardState { key: key.into(), done: vec![] }, shards)?;
            }
            Ok((0..shards).collect())
        }
    }
}

fn write_state(staging: &Path, s: &ShardState, shards: usize) -> std::io::Result<()> {
    if shards <= 1 {
        return Ok(()); // unsharded: no record (an old one was removed with the staging dir)
    }
    fs::create_dir_all(staging)?;
    let tmp = staging.join(".shards.json.tmp");
    fs::write(&tmp, serde_json::to_string(s).unwrap_or_default())?;
    fs::rename(&tmp, shard_file(staging))
}

/// Are all `shards` recorded as finished for the inputs `key`?
pub(crate) fn shards_complete(staging: &Path, key: &str, shards: usize) -> bool {
    let Ok(_guard) = lock_shard_file(staging) else { return false };
    let state: Option<ShardState> =
        fs::read_to_string(shard_file(staging)).ok().and_then(|t| serde_json::from_str(&t).ok());
    state.is_some_and(|s| s.key == key && (0..shards).all(|i| s.done.contains(&i)))
}

/// Record shard `i` as finished.
pub(crate) fn shard_done(staging: &Path, i: usize, shards: usize) -> std::io::Result<()> {
    let _guard = lock_shard_file(staging)?;
    let file = shard_file(staging);
    let mut s: ShardState =
        fs::read_to_string(&file).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    if !s.done.contains(&i) {
        s.done.push(i);
        s.done.sort();
    }
    write_state(staging, &s, shards)
}

/// Shell single quotes.
pub(crate) fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub mod slurm {
    use super::*;

    /// Slurm states after which a job or task does not change any more.
    fn is_final(state: &str) -> bool {
        !matches!(
            state,
            "PENDING"
                | "CONFIGURING"
                | "RUNNING"
                | "COMPLETING"
                | "SUSPENDED"
                | "REQUEUED"
                | "RESIZING"
                | "SIGNALING"
                | "STAGE_OUT"
                | "REQUEUE_FED"
                | "REQUEUE_HOLD"
                | "RESV_DEL_HOLD"
        )
    }

    /// One task's end, as a message for the user.
    fn describe(state: &str, reason: &str, code: Option<i64>, opts: &SlurmOptions) -> String {
        let status =
            code.map(|v| if v & 127 != 0 { format!("signal {}", v & 127) } else { format!("exit {}", v >> 8) });
        match state {
            "FAILED" if reason == "JobLaunchFailure" => {
                "could not start (log directory missing, or killed at once for exceeding --mem)".into()
            }
            "FAILED" => format!("failed ({})", status.unwrap_or_else(|| "non-zero exit".into())),
            "TIMEOUT" => format!(
                "hit its time limit ({}); raise `slurm.time`",
                opts.time.as_deref().map_or("the partition's default".into(), |t| format!("--time={t}"))
            ),
            "OUT_OF_MEMORY" => format!(
                "ran out of memory ({}); raise `slurm.mem`",
                opts.mem.as_deref().map_or("the default".into(), |m| format!("--mem={m}"))
            ),
            "CANCELLED" => "cancelled (scancel, by the runner, you or an admin)".into(),
            "NODE_FAIL" | "PREEMPTED" | "BOOT_FAIL" => {
                format!("{state}: lost to the cluster (node failure or preemption); run again")
            }
            other => format!("{other} ({reason})"),
        }
    }

    /// The Slurm job of `stage` still queued or running (from the last submission), with its
    /// state: what `pipeline status` shows while a run is in flight.
    pub fn in_flight(state_dir: &Path, stage: &str) -> Option<(String, String)> {
        // The ids of the stage's jobs, comma-separated (a sharded stage has three).
        let id = fs::read_to_string(state_dir.join("slurm").join(stage).join("job_id")).ok()?;
        let id = id.trim().to_string();
        // One squeue per job: squeue fails on a list that holds a job it has already purged.
        let mut states: Vec<String> = Vec::new();
        for one in id.split(',') {
            let out =
                Command::new("squeue").args(["-h", "-r", "-j", one, "-O", "JobArrayID:|,State:|"]).output().ok()?;
            if !out.status.success() {
                // A job Slurm has purged is gone; any other failure (the controller busy or
                // unreachable) says nothing, so the job counts as unfinished.
                if !String::from_utf8_lossy(&out.stderr).contains("Invalid job id") {
                    states.push("UNKNOWN (squeue failed)".into());
                }
                continue;
            }
            states.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.split('|').nth(1).map(|s| s.trim().to_string()))
                    .filter(|s| !is_final(s)),
            );
        }
        if states.is_empty() {
            return None;
        }
        let running = states.iter().filter(|s| *s == "RUNNING").count();
        Some((id, format!("{} tasks unfinished, {running} running", states.len())))
    }

    pub fn squeue_available() -> bool {
        Command::new("squeue").arg("--version").output().is_ok_and(|o| o.status.success())
    }

    /// `--array` value for the shards to run: ranges where they are contiguous.
    pub fn array_spec(todo: &[usize], throttle: Option<usize>) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut i = 0;
        while i < todo.len() {
            let mut j = i;
            while j + 1 < todo.len() && todo[j + 1] == todo[j] + 1 {
                j += 1;
            }
            parts.push(if j > i { format!("{}-{}", todo[i], todo[j]) } else { todo[i].to_string() });
            i = j + 1;
        }
        let mut spec = parts.join(",");
        if let Some(k) = throttle {
            spec += &format!("%{k}");
        }
        spec
    }

    /// One `sbatch`: a job, or an array of tasks.
    pub struct Submission<'a> {
        /// The stage (the job is named `pipeline:STAGE`).
        pub stage: &'a str,
        pub script: &'a Path,
        pub root: &'a Path,
        /// Where its logs go (`%x_%j.out`, or `%x_%A_%a.out` for an array).
        pub logs: &'a Path,
        /// Array task ids; None for a plain job.
        pub array: Option<&'a [usize]>,
        /// Jobs that must succeed first (`--dependency=afterok:...`).
        pub after: &'a [String],
        pub opts: &'a SlurmOptions,
    }

    /// Submit; the job id.
    pub fn submit(s: &Submission) -> Result<String, String> {
        let abs = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        // The log directory must exist before sbatch, or the tasks fail at launch with no log.
        fs::create_dir_all(s.logs).map_err(|e| format!("cannot create {}: {e}", s.logs.display()))?;
        let logs = abs(s.logs);
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name=pipeline:{}", s.stage),
            format!("--chdir={}", abs(s.root).display()),
            "--kill-on-invalid-dep=yes".into(),
        ];
        if !s.after.is_empty() {
            args.push(format!("--dependency=afterok:{}", s.after.join(":")));
        }
        match s.array {
            Some(tasks) => {
                args.push(format!("--array={}", array_spec(tasks, s.opts.array_throttle)));
                args.push(format!("--output={}/%x_%A_%a.out", logs.display()));
            }
            None => args.push(format!("--output={}/%x_%j.out", logs.display())),
        }
        args.extend(s.opts.args());
        args.push(abs(s.script).to_string_lossy().into_owned());
        let out = Command::new("sbatch")
            .args(&args)
            .output()
            .map_err(|e| format!("cannot run sbatch (is Slurm installed and SLURM_CONF set?): {e}"))?;
        if !out.status.success() {
            return Err(format!("sbatch {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
        }
        let id = String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or("").to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("sbatch printed no job id: {:?}", String::from_utf8_lossy(&out.stdout)));
        }
        super::slurm_submitted(&id);
        Ok(id)
    }

    /// A submitted job to follow to its end.
    pub struct Followed<'a> {
        pub stage: &'a str,
        pub id: &'a str,
        /// Array task ids, or None for a plain job (task 0).
        pub array: Option<&'a [usize]>,
        /// The shard count, to name a failed task `shard i/N`.
        pub shards: usize,
        /// Where the job script writes each task's exit code (`TASK.rc`).
        pub rc_dir: &'a Path,
        pub logs: &'a Path,
        /// Prefix of the lines of a plain job's log, shown as they are written.
        pub prefix: &'a str,
        pub opts: &'a SlurmOptions,
    }

    /// How a followed job ended badly.
    #[derive(Debug)]
    pub struct JobFailure {
        pub message: String,
        /// Cancelled before any task started: the fate of a job whose dependency failed.
        pub never_started: bool,
    }

    /// Poll squeue until every task is final; the error names each failed task with its state
    /// and log.
    pub fn follow(f: &Followed) -> Result<(), JobFailure> {
        let (id, sharded) = (f.id, f.array.is_some());
        let tasks: Vec<usize> = f.array.map_or(vec![0], <[usize]>::to_vec);
        let poll = std::env::var("PIPELINE_SLURM_POLL_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0f64);
        let mut fin: BTreeMap<usize, (String, String, Option<i64>)> = BTreeMap::new();
        let mut last_report = usize::MAX;
        let mut unlisted: BTreeMap<usize, u32> = BTreeMap::new();
        // A plain job's output is shown as it grows, as a local stage's is.
        let mut shown = 0usize;
        let single_log = f.logs.join(format!("pipeline:{}_{id}.out", f.stage));
        let dir = f.rc_dir;
        loop {
            if !sharded {
                shown = show_new_lines(&single_log, shown, f.prefix);
            }
            let out = Command::new("squeue")
                .args(["-h", "-t", "all", "-r", "-j", id, "-O", "JobArrayID:|,State:|,Reason:|,exit_code:|"])
                .output();
            let listed = out.as_ref().is_ok_and(|o| o.status.success());
            if let Ok(o) = &out
                && listed
            {
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    let f: Vec<&str> = line.split('|').map(str::trim).collect();
                    if f.len() < 4 {
                        continue;
                    }
                    let task = match f[0].split_once('_') {
                        Some((_, t)) => t.parse::<usize>().ok(),
                        None => (!sharded).then_some(0),
                    };
                    if let Some(t) = task
                        && is_final(f[1])
                    {
                        fin.entry(t).or_insert_with(|| (f[1].to_string(), f[2].to_string(), f[3].parse().ok()));
                    }
                }
            }
            // Tasks Slurm no longer lists (purged): their exit code file says how they ended.
            for &t in &tasks {
                if !fin.contains_key(&t)
                    && (!listed || !squeue_lists(&out, id, t, sharded))
                    && let Ok(rc) = fs::read_to_string(dir.join(format!("{t}.rc")))
                {
                    let rc: i64 = rc.trim().parse().unwrap_or(1);
                    let state = if rc == 0 { "COMPLETED" } else { "FAILED" };
                    fin.insert(t, (state.into(), "NonZeroExitCode".into(), Some(rc << 8)));
                }
            }
            // A task neither listed nor with an exit code for three polls running (every task
            // when squeue itself fails): ask accounting (sacct, when the cluster keeps it) how it
            // ended; else it was lost before it could write one (or Slurm is unreachable).
            for &t in &tasks {
                let gone = !fin.contains_key(&t) && (!listed || !squeue_lists(&out, id, t, sharded));
                let n = unlisted.entry(t).or_insert(0u32);
                *n = if gone { *n + 1 } else { 0 };
            }
            let lost: Vec<usize> = unlisted.iter().filter(|&(_, &n)| n >= 3).map(|(&t, _)| t).collect();
            if !lost.is_empty() {
                let ended: BTreeMap<usize, _> = sacct_states(id, sharded).into_iter().collect();
                for t in lost {
                    let end = ended.get(&t).cloned();
                    fin.entry(t).or_insert_with(|| {
                        end.unwrap_or_else(|| ("LOST".into(), "not in squeue and no exit code".into(), None))
                    });
                }
            }
            if fin.len() != last_report && sharded {
                eprintln!("{}⧗ {}: {}/{} tasks of job {id} finished", f.prefix, f.stage, fin.len(), tasks.len());
                last_report = fin.len();
            }
            if tasks.iter().all(|t| fin.contains_key(t)) {
                break;
            }
            std::thread::sleep(Duration::from_secs_f64(poll));
        }
        if !sharded {
            show_new_lines(&single_log, shown, f.prefix);
        }
        let log_of = |t: usize| -> PathBuf {
            let name = format!("pipeline:{}", f.stage);
            if sharded { f.logs.join(format!("{name}_{id}_{t}.out")) } else { f.logs.join(format!("{name}_{id}.out")) }
        };
        let failed: Vec<String> = fin
            .iter()
            .filter(|(_, (state, _, _))| state != "COMPLETED")
            .map(|(&t, (state, reason, code))| {
                let what =
                    if sharded { format!("shard {t}/{} (task {id}_{t})", f.shards) } else { format!("job {id}") };
                format!("{what}: {} (log: {})", describe(state, reason, *code, f.opts), log_of(t).display())
            })
            .collect();
        super::slurm_finished(id);
        if failed.is_empty() {
            return Ok(());
        }
        let never_started = fin.values().all(|(state, _, _)| state == "CANCELLED")
            && tasks.iter().all(|t| !dir.join(format!("{t}.rc")).exists());
        Err(JobFailure { message: failed.join("; "), never_started })
    }

    /// Print the complete lines of `log` after byte `from`; returns where they end.
    fn show_new_lines(log: &Path, from: usize, prefix: &str) -> usize {
        let Ok(bytes) = fs::read(log) else { return from };
        if bytes.len() <= from {
            return from;
        }
        let Some(end) = bytes[from..].iter().rposition(|&b| b == b'\n').map(|p| from + p + 1) else { return from };
        let text = String::from_utf8_lossy(&bytes[from..end]);
        let mut err = std::io::stderr().lock();
        for line in text.lines() {
            // Progress bars redraw with carriage returns: show the last state of each line.
            let line = line.rsplit('\r').next().unwrap_or(line);
            let _ = std::io::Write::write_all(&mut err, format!("{prefix}{line}\n").as_bytes());
        }
        end
    }

    /// How the tasks of job `id` ended, from Slurm's accounting (`sacct`); empty when the
    /// cluster keeps none (sacct fails) or has no final record yet.
    fn sacct_states(id: &str, sharded: bool) -> Vec<(usize, (String, String, Option<i64>))> {
        let Ok(o) = Command::new("sacct").args(["-n", "-P", "-X", "-j", id, "--format=JobID,State,ExitCode"]).output()
        else {
            return Vec::new();
        };
        if !o.status.success() {
            return Vec::new();
        }
        parse_sacct(&String::from_utf8_lossy(&o.stdout), sharded)
    }

    /// `sacct -n -P -X --format=JobID,State,ExitCode` lines (`12_3|TIMEOUT|0:15`, `12|FAILED|2:0`,
    /// `12|CANCELLED by 0|0:0`) as final (task, (state, reason, wait status)).
    pub(super) fn parse_sacct(text: &str, sharded: bool) -> Vec<(usize, (String, String, Option<i64>))> {
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                let (job, state, code) = (f.first()?, f.get(1)?.split_whitespace().next()?, f.get(2)?);
                let task = match job.split_once('_') {
                    Some((_, t)) => t.parse().ok()?,
                    None if !sharded => 0,
                    None => return None,
                };
                if !is_final(state) {
                    return None;
                }
                // ExitCode is "exit:signal".
                let (exit, signal) = code.split_once(':')?;
                let status = (exit.parse::<i64>().ok()? << 8) | signal.parse::<i64>().ok()?;
                Some((task, (state.to_string(), "sacct".to_string(), Some(status))))
            })
            .collect()
    }

    fn squeue_lists(out: &std::io::Result<std::process::Output>, id: &str, t: usize, sharded: bool) -> bool {
        let Ok(o) = out else { return false };
        let want = if sharded { format!("{id}_{t}") } else { id.to_string() };
        String::from_utf8_lossy(&o.stdout).lines().any(|l| l.split('|').next().map(str::trim) == Some(want.as_str()))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn array_specs_use_ranges() {
            assert_eq!(super::array_spec(&[0, 1, 2], None), "0-2");
            assert_eq!(super::array_spec(&[1, 4], Some(2)), "1,4%2");
            assert_eq!(super::array_spec(&[0, 1, 3, 5, 6, 7], None), "0-1,3,5-7");
        }

        #[test]
        fn sacct_lines_give_final_states_and_wait_status() {
            let text =
                "12_0|COMPLETED|0:0\n12_1|TIMEOUT|0:15\n12_2|CANCELLED by 0|0:9\n12_3|RUNNING|0:0\n12_4|FAILED|2:0\n";
            let got = super::parse_sacct(text, true);
            let states: Vec<(usize, &str, Option<i64>)> =
                got.iter().map(|(t, (s, _, c))| (*t, s.as_str(), *c)).collect();
            assert_eq!(
                states,
                vec![
                    (0, "COMPLETED", Some(0)),
                    (1, "TIMEOUT", Some(15)),
                    (2, "CANCELLED", Some(9)),
                    (4, "FAILED", Some(512))
                ]
            );
            let one = super::parse_sacct("77|OUT_OF_MEMORY|0:125\n", false);
            assert_eq!(one.len(), 1);
            assert_eq!(one[0].0, 0);
            assert_eq!(one[0].1.0, "OUT_OF_MEMORY");
            assert!(super::parse_sacct("77|OUT_OF_MEMORY|0:125\n", true).is_empty(), "an array task has an _index");
            assert!(super::parse_sacct("", false).is_empty());
        }
    }
}

/// SIGINT/SIGTERM/SIGHUP to the runner (Ctrl-C on the terminal, `kill PID`, `scancel`) stops
/// every running stage and launches nothing more, so the runner
/// ends as a failed stage ends: previous outs and the lock as they were, the staged work kept
/// to resume from.
pub mod interrupt {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    static STOPPED: AtomicBool = AtomicBool::new(false);
    static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    static SLURM_JOBS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// Install the handler (once per process).
    pub fn install() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let _ = ctrlc::set_handler(|| {
                if !STOPPED.swap(true, Ordering::SeqCst) {
                    eprintln!("\nstopping: the running stages are told to stop (SIGTERM)");
                }
                for pid in RUNNING.lock().map(|r| r.clone()).unwrap_or_default() {
                    signal_group(pid);
                }
                let jobs = SLURM_JOBS.lock().map(|r| r.clone()).unwrap_or_default();
                if !jobs.is_empty() {
                    eprintln!("cancelling Slurm jobs {}", jobs.join(", "));
                    let _ = std::process::Command::new("scancel").args(&jobs).status();
                }
            });
        });
    }

    pub fn stopped() -> bool {
        STOPPED.load(Ordering::SeqCst)
    }

    /// A started stage (the pid of its shell). A stage started after the signal is stopped at
    /// once.
    pub fn started(pid: u32) {
        if let Ok(mut r) = RUNNING.lock() {
            r.push(pid);
        }
        if stopped() {
            signal_group(pid);
        }
    }

    /// A submitted Slurm job: cancelled if the runner is stopped.
    pub fn slurm_job(id: &str) {
        if let Ok(mut r) = SLURM_JOBS.lock() {
            r.push(id.to_string());
        }
        if stopped() {
            let _ = std::process::Command::new("scancel").arg(id).status();
        }
    }

    pub fn slurm_job_ended(id: &str) {
        if let Ok(mut r) = SLURM_JOBS.lock() {
            r.retain(|j| j != id);
        }
    }

    pub fn ended(pid: u32) {
        if let Ok(mut r) = RUNNING.lock() {
            r.retain(|&p| p != pid);
        }
    }

    /// SIGTERM to a stage's process and everything below it (its shell runs the stage binary
    /// as a child or in its place), parents first: a shell whose child died first could run its
    /// next command (`...; wait; touch done`) before its own signal arrived. The processes below
    /// are listed before any is signalled. Stages stay in the runner's process group, so a kill
    /// of that group (`kill -9 -PGID`) still takes them all.
    fn signal_group(pid: u32) {
        let below = descendants(pid);
        for p in std::iter::once(pid).chain(below) {
            // SAFETY: kill(2) with a pid we started (or a descendant of it) and SIGTERM.
            unsafe {
                libc::kill(p as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// The processes below `pid`, parents first (from /proc).
    fn descendants(pid: u32) -> Vec<u32> {
        let mut parent_of: Vec<(u32, u32)> = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
            // pid (comm) state ppid ...: comm may hold spaces and parentheses.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
            if let Some(pp) = ppid {
                parent_of.push((p, pp));
            }
        }
        let mut out = vec![];
        let mut frontier = vec![pid];
        while let Some(x) = frontier.pop() {
            for &(c, _) in parent_of.iter().filter(|(_, pp)| *pp == x) {
                out.push(c);
                frontier.push(c);
            }
        }
        out
    }
}

/// Was the run stopped by SIGINT/SIGTERM/SIGHUP?
pub fn interrupted() -> bool {
    interrupt::stopped()
}

pub(crate) fn slurm_submitted(id: &str) {
    interrupt::slurm_job(id)
}

pub(crate) fn slurm_finished(id: &str) {
    interrupt::slurm_job_ended(id)
}

/// Run `sh -c cmd`, its stdout and stderr going to ours and to the log.
pub(crate) fn execute(
    cmd: &str,
    root: &Path,
    env: &[(String, String)],
    log: &Path,
    prefix: &str,
) -> Result<(), String> {
    let mut logf = fs::File::create(log).map_err(|e| format!("cannot write {}: {e}", log.display()))?;
    let _ = writeln!(logf, "$ {cmd}");
    let logf = Arc::new(Mutex::new(logf));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(root)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start `sh -c {cmd}`: {e}"))?;
    let tee = |src: Box<dyn Read + Send>, to_stderr: bool| {
        let logf = logf.clone();
        let prefix = prefix.to_string();
        std::thread::spawn(move || {
            let mut r = BufReader::new(src);
            let mut line = Vec::new();
            while r.read_until(b'\n', &mut line).map(|n| n > 0).unwrap_or(false) {
                let mut text = prefix.as_bytes().to_vec();
                text.extend_from_slice(&line);
                if to_stderr {
                    let _ = std::io::stderr().lock().write_all(&text);
                } else {
                    let _ = std::io::stdout().lock().write_all(&text);
                }
                let _ = logf.lock().unwrap().write_all(&line);
                line.clear();
            }
        })
    };
    interrupt::started(child.id());
    let t1 = tee(Box::new(child.stdout.take().unwrap()), false);
    let t2 = tee(Box::new(child.stderr.take().unwrap()), true);
    let status = child.wait().map_err(|e| format!("waiting for the stage: {e}"));
    interrupt::ended(child.id());
    let status = status?;
    let _ = t1.join();
    let _ = t2.join();
    if status.success() {
        Ok(())
    } else {
        match status.code() {
            Some(code) => Err(format!("exit code {code}")),
            None if interrupt::stopped() => Err("stopped by a signal to the runner".into()),
            None => Err("killed by a signal".into()),
        }
    }
}
