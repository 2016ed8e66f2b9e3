//! `pipeline run --executor slurm`: every stage to run is submitted at once, as a chain of Slurm
//! jobs joined by `--dependency=afterok:...` (with `--kill-on-invalid-dep=yes`, so the jobs
//! after a failed one are cancelled rather than left pending), and each job commits its own
//! stage. The runner then only follows the jobs and reports; stopped by a signal it cancels
//! them, and killed outright (or with `--detach`) it leaves them to finish and commit on their own.
//!
//! A stage's job runs three steps of this binary and the stage's command between them:
//! `pipeline slurm-step begin` judges the stage on the inputs its upstream jobs left (up to date,
//! restored from the run cache, or staged to run: which shards are still to do, outs written in
//! place backed up), then the command, then `slurm-step end` commits exactly as the local runner
//! does (staging -> atomic move, hashes, the lock entry under a file lock, the run cache). A
//! sharded stage is three jobs: `begin`, the array (one task per shard; each records itself as
//! finished, so a failed shard is the only one to run again) and `end` (after the merge step
//! where the stage has one).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::commit::{self, Outcome, Paths, RunOptions, StagedOut, fmt_duration, lock_the_lock, shard_key};
use super::executor::slurm::{self, Followed, JobFailure, Submission};
use super::executor::{pending_shards, shard_done, shards_complete, sq};
use super::hash::HashCache;
use super::lock::{Lock, StageLock};
use super::manifest::{Manifest, SlurmOptions};
use super::run_cache::{RunCache, remove_any};
use super::status::{fingerprint, own_reasons, status};

/// What the runner decided before submitting: the stages selected, those forced, and those
/// whose shards are put together by a merge step.
pub struct Plan<'a> {
    pub selected: &'a [bool],
    pub forced: &'a [bool],
    pub merges: &'a [bool],
}

/// What a stage's job steps read (`.pipeline/slurm/STAGE/step.json`), written at submission:
/// the manifest as the runner had it (variables and `--set` applied, paths absolute).
#[derive(Serialize, Deserialize)]
struct Step {
    manifest: Manifest,
    stage: usize,
    forced: bool,
    use_run_cache: bool,
    shards: usize,
    /// The shards submitted in the array (those `begin` may ask to run).
    submitted: Vec<usize>,
    /// The command as the job scripts run it (outs in the staging directory).
    cmd: String,
}

/// What `begin` leaves for `end`: the inputs it judged the stage on, and where the outs go.
#[derive(Serialize, Deserialize)]
struct Pending {
    current: StageLock,
    staged: Vec<StagedOut>,
}

/// One submitted job of a stage, in the order they run.
struct Part {
    id: String,
    array: Option<Vec<usize>>,
    /// Where its script writes each task's exit code.
    rc_dir: PathBuf,
    /// The stage's shard count (names a failed task `shard i/N`).
    shards: usize,
}

/// Submit every stage that is stale, forced or after one that runs, then follow the jobs.
pub fn run(
    m: &Manifest,
    opts: &RunOptions,
    plan: &Plan,
    lock: &Lock,
    cache: &mut HashCache,
) -> Result<Vec<(String, Outcome)>> {
    let n = m.stages.len();
    let reasons = status(m, lock, cache)?;
    let mut m = m.clone();
    m.root = fs::canonicalize(&m.root).with_context(|| format!("{}", m.root.display()))?;
    m.file = fs::canonicalize(&m.file).with_context(|| format!("{}", m.file.display()))?;
    let m = &m;
    let paths = &Paths::of(m);
    let exe = std::env::current_exe().context("the path of this `pipeline` binary")?;
    let started = Instant::now();
    let mut parts: Vec<Vec<Part>> = (0..n).map(|_| Vec::new()).collect();
    let mut outcome: Vec<Option<Outcome>> = vec![None; n];
    for i in (0..n).filter(|&i| plan.selected[i]) {
        if super::executor::interrupted() {
            break;
        }
        let stage = &m.stages[i];
        let ups: Vec<usize> = m.upstream[i].iter().copied().filter(|&u| !parts[u].is_empty()).collect();
        let mut why = reasons[i].clone();
        if plan.forced[i] {
            why.insert(0, "forced".into());
        }
        if why.is_empty() && ups.is_empty() {
            eprintln!("· {} is up to date", stage.name);
            outcome[i] = Some(Outcome::UpToDate);
            continue;
        }
        if why.is_empty() {
            why.push("its upstream runs first".into());
        }
        let submitted = submit_stage(m, opts, plan, paths, cache, &exe, i, &ups, &parts, &why);
        match submitted {
            Ok(p) => parts[i] = p,
            Err(e) => {
                let ids: Vec<&str> = parts.iter().flatten().map(|p| p.id.as_str()).collect();
                if !ids.is_empty() {
                    eprintln!("cancelling the jobs submitted so far: {}", ids.join(" "));
                    let _ = std::process::Command::new("scancel").args(&ids).status();
                }
                return Err(e.context(format!("submitting {}", stage.name)));
            }
        }
    }
    if opts.detach {
        eprintln!("detached: the jobs run and commit on their own; `pipeline status` shows them, `scancel` stops them");
        for i in (0..n).filter(|&i| !parts[i].is_empty()) {
            outcome[i] = Some(Outcome::Submitted);
        }
    } else {
        follow_all(m, paths, &parts, &mut outcome, started);
    }
    Ok((0..n)
        .filter(|&i| plan.selected[i])
        .map(|i| {
            let o = outcome[i].clone().unwrap_or_else(|| Outcome::Skipped("not submitted (stopped)".into()));
            (m.stages[i].name.clone(), o)
        })
        .collect())
}

/// Write the stage's job scripts and submit them after the last jobs of its upstream stages.
#[allow(clippy::too_many_arguments)]
fn submit_stage(
    m: &Manifest,
    opts: &RunOptions,
    plan: &Plan,
    paths: &Paths,
    cache: &mut HashCache,
    exe: &Path,
    i: usize,
    ups: &[usize],
    parts: &[Vec<Part>],
    why: &[String],
) -> Result<Vec<Part>> {
    let stage = &m.stages[i];
    let shards = commit::shard_count(m, opts, i);
    let current = fingerprint(m, stage, cache)?;
    // A stage whose upstream runs first is judged when its `begin` job runs: all its shards are
    // submitted, and those already done for the inputs it then finds exit at once.
    let todo = if ups.is_empty() {
        pending_shards(&paths.staging(&stage.name), &shard_key(&current, shards)?, shards)?
    } else {
        (0..shards).collect()
    };
    let dir = paths.state.join("slurm").join(&stage.name);
    remove_any(&dir)?;
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = commit::staged_command(m, paths, stage);
    let env = commit::stage_env(m, paths, stage, &current)?;
    let step = Step {
        manifest: m.clone(),
        stage: i,
        forced: plan.forced[i],
        use_run_cache: !plan.forced[i] && !opts.no_run_cache,
        shards,
        submitted: todo.clone(),
        cmd: cmd.clone(),
    };
    fs::write(dir.join("step.json"), serde_json::to_string(&step)?)?;
    let logs = paths.state.join("logs").join(&stage.name);
    let mut header = String::from("#!/bin/sh\n# Written by `pipeline run --executor slurm`.\n");
    header += &format!("cd {} || exit 97\n", sq(&m.root.to_string_lossy()));
    for (k, v) in &env {
        header += &format!("export {k}={}\n", sq(v));
    }
    header += &format!("P={}\nD={}\nCMD={}\n", sq(&exe.to_string_lossy()), sq(&dir.to_string_lossy()), sq(&cmd));
    // Light jobs (judging, committing) drop the stage's gpus, gres, mem and cpus_per_task (its
    // partition, time and extra_args stay: a GPU asked for in extra_args is asked for here too).
    let light = SlurmOptions {
        gpus: None,
        gres: None,
        mem: None,
        mem_per_cpu: None,
        cpus_per_task: None,
        ..stage.slurm.clone()
    };
    // The jobs of this stage submitted so far: cancelled if a later sbatch fails.
    let mine: std::cell::RefCell<Vec<String>> = Default::default();
    let submit =
        |name: &str, body: String, array: Option<&[usize]>, after: &[String], o: &SlurmOptions| -> Result<Part> {
            let script = dir.join(format!("{name}.sh"));
            let rc_dir = dir.join(name);
            fs::create_dir_all(&rc_dir)?;
            fs::write(
                &script,
                format!("{header}{body}echo \"$rc\" > \"$D/{name}/${{SLURM_ARRAY_TASK_ID:-0}}.rc\"\nexit \"$rc\"\n"),
            )
            .with_context(|| format!("cannot write {}", script.display()))?;
            let sub =
                Submission { stage: &stage.name, script: &script, root: &m.root, logs: &logs, array, after, opts: o };
            let id = slurm::submit(&sub).map_err(|e| {
                let ids = mine.borrow();
                if !ids.is_empty() {
                    let _ = std::process::Command::new("scancel").args(ids.iter()).status();
                }
                anyhow::Error::msg(e)
            })?;
            mine.borrow_mut().push(id.clone());
            Ok(Part { id, array: array.map(<[usize]>::to_vec), rc_dir, shards })
        };
    let after: Vec<String> = ups.iter().filter_map(|&u| parts[u].last()).map(|p| p.id.clone()).collect();
    // The steps that commit (begin may restore from the run cache) ignore SIGTERM and SIGINT
    // (scancel, the runner's Ctrl-C): stopped halfway, a commit would lose outs. Slurm's SIGKILL
    // after KillWait still ends them.
    let begin = "trap '' TERM INT\n\"$P\" slurm-step begin \"$D\"; rc=$?\ntrap - TERM INT\n";
    let end = "  trap '' TERM INT\n  \"$P\" slurm-step end \"$D\" --rc \"$rc\"; e=$?\n  [ \"$rc\" = 0 ] && rc=$e\n";
    let mut described = Vec::new();
    let out = if shards == 1 {
        let body =
            format!("{begin}if [ \"$rc\" = 0 ] && [ ! -e \"$D/skip\" ]; then\n  sh -c \"$CMD\"; rc=$?\n{end}fi\n");
        let p = submit("job", body, None, &after, &stage.slurm)?;
        described.push(p.id.clone());
        vec![p]
    } else {
        let first = submit("begin", begin.to_string(), None, &after, &light)?;
        described.push(format!("{} (begin)", first.id));
        let mut out = vec![first];
        if !todo.is_empty() {
            let body = format!(
                "rc=0\ntask=$SLURM_ARRAY_TASK_ID\nif [ ! -e \"$D/skip\" ] && grep -qx \"$task\" \"$D/todo\"; then\n  \
                 export PIPELINE_SHARD=\"$task/{shards}\"\n  sh -c \"$CMD --shard $task/{shards}\"; rc=$?\n  \
                 if [ \"$rc\" = 0 ]; then \"$P\" slurm-step shard-done \"$D\" --task \"$task\"; rc=$?; fi\nfi\n"
            );
            let p = submit("shards", body, Some(&todo), &[out[0].id.clone()], &stage.slurm)?;
            described.push(format!("{} (array {})", p.id, slurm::array_spec(&todo, stage.slurm.array_throttle)));
            out.push(p);
        }
        let (body, o, what) = if plan.merges[i] {
            let merge =
                format!("  echo \"merging its {shards} shards\"\n  sh -c \"$CMD --merge-shards {shards}\"; rc=$?\n");
            (format!("rc=0\nif [ ! -e \"$D/skip\" ]; then\n{merge}{end}fi\n"), &stage.slurm, "merging its shards, end")
        } else {
            (format!("rc=0\nif [ ! -e \"$D/skip\" ]; then\n{end}fi\n"), &light, "end")
        };
        let last = out.last().map(|p| p.id.clone()).into_iter().collect::<Vec<_>>();
        let p = submit("end", body, None, &last, o)?;
        described.push(format!("{} ({what})", p.id));
        out.push(p);
        out
    };
    let ids: Vec<&str> = out.iter().map(|p| p.id.as_str()).collect();
    fs::write(dir.join("job_id"), ids.join(","))?;
    let split = if shards > 1 { format!(", {} of {shards} shards", todo.len()) } else { String::new() };
    let upstream: Vec<&str> = ups.iter().map(|&u| m.stages[u].name.as_str()).collect();
    let after_text = if after.is_empty() {
        String::new()
    } else {
        format!(" after {} (afterok:{})", upstream.join(", "), after.join(":"))
    };
    eprintln!("▶ running {} on Slurm{split} ({})", stage.name, why.join("; "));
    eprintln!(
        "  ⇪ submitted {} as Slurm job{} {}{after_text} (logs: {})",
        stage.name,
        if out.len() > 1 { "s" } else { "" },
        described.join(", "),
        logs.display()
    );
    Ok(out)
}

/// Follow every submitted stage (a thread each) and report each as it ends; a stage whose jobs
/// were cancelled before they started, after an upstream stage failed, is reported as skipped.
fn follow_all(m: &Manifest, paths: &Paths, parts: &[Vec<Part>], outcome: &mut [Option<Outcome>], started: Instant) {
    let n = m.stages.len();
    let (tx, rx) = mpsc::channel::<(usize, Result<(), JobFailure>)>();
    let mut ended: Vec<Option<Result<(), JobFailure>>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let mut count = 0;
        for i in (0..n).filter(|&i| !parts[i].is_empty()) {
            count += 1;
            let tx = tx.clone();
            let stage = &m.stages[i];
            let logs = paths.state.join("logs").join(&stage.name);
            s.spawn(move || {
                let prefix = format!("[{}] ", stage.name);
                let result = parts[i].iter().try_for_each(|p| {
                    slurm::follow(&Followed {
                        stage: &stage.name,
                        id: &p.id,
                        array: p.array.as_deref(),
                        shards: p.shards,
                        rc_dir: &p.rc_dir,
                        logs: &logs,
                        prefix: &prefix,
                        opts: &stage.slurm,
                    })
                });
                let _ = tx.send((i, result));
            });
        }
        drop(tx);
        for _ in 0..count {
            let Ok((i, result)) = rx.recv() else { break };
            let stage = &m.stages[i].name;
            let dir = paths.state.join("slurm").join(stage);
            match &result {
                Ok(()) => {
                    let text = fs::read_to_string(dir.join("outcome")).unwrap_or_default();
                    let o = match text.split_whitespace().next().unwrap_or("") {
                        // From `begin` to `end`: the command's time (a sharded stage's array
                        // may also have waited in the queue).
                        "ran" => Outcome::Ran(
                            text.split_whitespace()
                                .nth(1)
                                .and_then(|t| t.parse().ok())
                                .map_or(started.elapsed(), Duration::from_secs_f64),
                        ),
                        "restored" => Outcome::Restored,
                        "up-to-date" => Outcome::UpToDate,
                        _ => Outcome::Failed(format!("its jobs ended without recording an outcome ({text:?})")),
                    };
                    match &o {
                        Outcome::Ran(t) => eprintln!("✓ {stage} done in {}", fmt_duration(*t)),
                        Outcome::Restored => eprintln!("↺ restored {stage} from the run cache"),
                        Outcome::UpToDate => eprintln!("· {stage} is up to date (its inputs came out as before)"),
                        _ => eprintln!("✗ {stage} failed: {o:?}"),
                    }
                    outcome[i] = Some(o);
                }
                Err(f) => {
                    restore_backups(&dir);
                    if !f.never_started {
                        eprintln!("✗ {stage} failed: {}", f.message);
                        outcome[i] = Some(Outcome::Failed(f.message.clone()));
                    }
                }
            }
            ended[i] = Some(result);
        }
    });
    // Jobs cancelled before they started: skipped after a failed upstream stage, else failed
    // (cancelled by someone).
    for i in 0..n {
        let Some(Err(f)) = &ended[i] else { continue };
        if outcome[i].is_some() {
            continue;
        }
        let stage = &m.stages[i].name;
        let failed_up =
            m.upstream[i].iter().find(|&&u| matches!(outcome[u], Some(Outcome::Failed(_) | Outcome::Skipped(_))));
        outcome[i] = Some(match failed_up {
            Some(&u) => {
                let why = format!("upstream {} did not complete", m.stages[u].name);
                eprintln!("· {stage} not run: {why} (its jobs were cancelled)");
                Outcome::Skipped(why)
            }
            None => {
                eprintln!("✗ {stage} failed: {}", f.message);
                Outcome::Failed(f.message.clone())
            }
        });
    }
}

/// A failed stage's outs written in place go back to their previous version (the `end` step
/// does it when the command fails; this covers a failed array, after which `end` never runs).
fn restore_backups(dir: &Path) {
    if let Ok(p) = read_json::<Pending>(&dir.join("pending.json")) {
        commit::restore_backups(&p.staged);
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid step file", path.display()))
}

/// The steps a stage's Slurm job runs around its command (`pipeline slurm-step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StepKind {
    /// Judge the stage on its inputs now: up to date, restored, or staged to run.
    Begin,
    /// Record a shard (array task) as finished.
    ShardDone,
    /// Commit the staged outs (or, after a failed command, put back outs written in place).
    End,
}

/// Run one step for the stage whose job directory is `dir` (`.pipeline/slurm/STAGE`).
pub fn step(dir: &Path, kind: StepKind, task: Option<usize>, rc: Option<i32>) -> Result<()> {
    let step: Step = read_json(&dir.join("step.json"))?;
    let m = &step.manifest;
    let stage = m.stages.get(step.stage).context("the step file names no stage of its manifest")?;
    let paths = Paths::of(m);
    let staging = paths.staging(&stage.name);
    match kind {
        StepKind::Begin => begin(dir, &step, &paths),
        StepKind::ShardDone => {
            let task = task.context("shard-done needs --task")?;
            shard_done(&staging, task, step.shards)
                .with_context(|| format!("cannot record shard {task} of {} as done", stage.name))
        }
        StepKind::End => {
            let pending_file = dir.join("pending.json");
            let pending: Pending = read_json(&pending_file)?;
            if rc.unwrap_or(1) != 0 {
                commit::restore_backups(&pending.staged);
                let _ = fs::remove_file(&pending_file);
                return Ok(());
            }
            // Every shard must be done for the inputs `begin` judged (not a subset left from
            // another submission).
            let key = shard_key(&pending.current, step.shards)?;
            if step.shards > 1 && !shards_complete(&staging, &key, step.shards) {
                commit::restore_backups(&pending.staged);
                let _ = fs::remove_file(&pending_file);
                bail!("{}: not every shard finished for its current inputs; run again", stage.name);
            }
            let mut cache = HashCache::open(&paths.hash_cache());
            let _guard = lock_the_lock(&paths)?;
            let mut lock = Lock::load(&paths.lock)?;
            let committed = commit::commit_outs(
                m,
                &paths,
                stage,
                &pending.staged,
                &staging,
                pending.current,
                &mut lock,
                &mut cache,
            );
            let _ = fs::remove_file(&pending_file);
            if let Err(e) = committed {
                commit::restore_backups(&pending.staged);
                return Err(e);
            }
            let runs = RunCache::new(&paths.state);
            if let Err(e) = runs.save(m, stage, &lock.stages[&stage.name]) {
                eprintln!("warning: {} ran, but its outs could not be stored in the run cache: {e:#}", stage.name);
            }
            let began = fs::read_to_string(dir.join("began")).ok().and_then(|t| t.trim().parse::<f64>().ok());
            let took = began.map_or(0.0, |b| (unix_now() - b).max(0.0));
            fs::write(dir.join("outcome"), format!("ran {took:.3}"))?;
            cache.save()
        }
    }
}

fn begin(dir: &Path, step: &Step, paths: &Paths) -> Result<()> {
    let m = &step.manifest;
    let stage = &m.stages[step.stage];
    let mut cache = HashCache::open(&paths.hash_cache());
    let runs = RunCache::new(&paths.state);
    let lock = Lock::load(&paths.lock)?;
    let current = fingerprint(m, stage, &mut cache)?;
    let mut reasons = own_reasons(m, stage, &current, &lock, &mut cache)?;
    if step.forced {
        reasons.insert(0, "forced".into());
    }
    let skip = |outcome: &str| -> Result<()> {
        fs::write(dir.join("outcome"), outcome)?;
        fs::write(dir.join("skip"), "")?;
        Ok(())
    };
    if reasons.is_empty() {
        eprintln!("{} is up to date: its inputs came out as the last run's", stage.name);
        skip("up-to-date")?;
        return cache.save();
    }
    commit::preserve_previous(m, stage, &lock, &runs, &mut cache);
    if step.use_run_cache
        && let Some(hit) = commit::restorable(&lock, stage, &current, &runs)
    {
        let _guard = lock_the_lock(paths)?;
        let mut lock = Lock::load(&paths.lock)?;
        match commit::restore(m, paths, stage, &hit, current.clone(), &mut lock, &mut cache, &runs) {
            Ok(Ok(())) => {
                eprintln!("{}: restored from the run cache ({})", stage.name, reasons.join("; "));
                skip("restored")?;
                return cache.save();
            }
            Ok(Err(why)) => eprintln!("{}: run cache entry not used: {why}", stage.name),
            Err(e) => eprintln!("{}: run cache entry not used: {e:#}", stage.name),
        }
    }
    let todo = pending_shards(&paths.staging(&stage.name), &shard_key(&current, step.shards)?, step.shards)?;
    if let Some(t) = todo.iter().find(|t| !step.submitted.contains(t)) {
        bail!(
            "{}: its inputs changed since the jobs were submitted (shard {t} must run again but is not in \
             the array); run `pipeline run` again",
            stage.name
        );
    }
    fs::write(dir.join("began"), format!("{}", unix_now()))?;
    let lines: String = todo.iter().map(|t| format!("{t}\n")).collect();
    fs::write(dir.join("todo"), lines)?;
    let (cmd, staged) = commit::prepare(m, paths, stage, &current)?;
    if cmd != step.cmd {
        bail!("{}: the staged command changed since submission (`{}` vs `{cmd}`)", stage.name, step.cmd);
    }
    fs::write(dir.join("pending.json"), serde_json::to_string(&Pending { current, staged })?)?;
    let split = if step.shards > 1 { format!(", {} of {} shards", todo.len(), step.shards) } else { String::new() };
    eprintln!("{} runs{split} ({})", stage.name, reasons.join("; "));
    cache.save()
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
