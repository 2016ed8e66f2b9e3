//! `pipeline run`: run stale stages in dependency order, several at a time with `-j`.
//!
//! A stage writes its outs into `.pipeline/staging/STAGE/` (the runner rewrites the out paths in
//! its command) and they are moved into place only when it succeeds; the lock entry is written
//! after that. A stage that fails or is killed therefore leaves the previous outs and the lock
//! as they were, and what it staged stays for it to resume from.

use std::fs;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result, bail};

pub use super::commit::{Outcome, Paths, RunOptions, fmt_duration};
use super::commit::{
    StagedOut, commit_outs, lock_the_lock, prepare, preserve_previous, restorable, restore, restore_backups,
    shard_count, shard_key, stage_env,
};
use super::executor::Sharding;
pub use super::executor::interrupted;
use super::executor::{self, Job};
use super::hash::HashCache;
use super::lock::{Lock, StageLock};
use super::manifest::{Executor, Manifest, Stage};
use super::run_cache::RunCache;
use super::status::{fingerprint, own_reasons, status};

pub fn run(m: &Manifest, opts: &RunOptions) -> Result<Vec<(String, Outcome)>> {
    let paths = Paths::of(m);
    let n = m.stages.len();
    let (selected, forced) = selection(m, opts)?;
    // Every selected stage's parameters against its schema, before anything runs.
    super::check::check_params(m, &(0..n).filter(|&i| selected[i]).collect::<Vec<_>>())?;
    // How each sharded stage shards (and that it can).
    let mut merges = vec![false; n];
    for i in (0..n).filter(|&i| selected[i] && shard_count(m, opts, i) > 1) {
        match super::check::sharding(m, &m.stages[i]) {
            Some(Sharding::None) => bail!(
                "stage `{}` does not shard (its binary says so); drop its `shards:` / `--shards`",
                m.stages[i].name
            ),
            Some(Sharding::RowsThenMerge) => merges[i] = true,
            _ => {}
        }
    }
    let lock = Lock::load(&paths.lock)?;
    let mut cache = HashCache::open(&paths.hash_cache());
    let runs = RunCache::new(&paths.state);
    let use_run_cache = |i: usize| !forced[i] && !opts.no_run_cache;

    if opts.dry_run {
        return dry_run(m, &lock, &mut cache, &runs, &selected, &forced, opts);
    }

    executor::interrupt::install();
    let executor = opts.executor.unwrap_or(m.executor);
    if executor == Executor::Slurm && !executor::slurm::squeue_available() {
        bail!("--executor slurm: `squeue` does not run here (install Slurm's client and set SLURM_CONF)");
    }
    // Jobs of an earlier `--executor slurm` run (detached, or whose runner was killed) commit
    // their stages themselves: nothing may run those stages beside them.
    if executor::slurm::squeue_available() {
        for i in (0..n).filter(|&i| selected[i]) {
            if let Some((ids, what)) = executor::slurm::in_flight(&paths.state, &m.stages[i].name) {
                bail!(
                    "stage `{}` still has Slurm jobs of an earlier run in flight (jobs {ids}: {what}); wait for \
                     them (`pipeline status`) or cancel them (`scancel {}`)",
                    m.stages[i].name,
                    ids.replace(',', " ")
                );
            }
        }
    }
    fs::create_dir_all(paths.state.join("logs"))?;
    fs::create_dir_all(paths.state.join("params"))?;
    if executor == Executor::Slurm {
        let plan = super::chain::Plan { selected: &selected, forced: &forced, merges: &merges };
        let out = super::chain::run(m, opts, &plan, &lock, &mut cache);
        cache.save()?;
        return out;
    }
    let mut lock = lock;
    let jobs = opts.jobs.max(1);
    let mut outcome: Vec<Option<Outcome>> = vec![None; n];
    let mut launched: Vec<Option<(StageLock, Vec<StagedOut>, Instant)>> = vec![None; n];
    let mut running = 0;
    let mut stop = false;
    let (tx, rx) = mpsc::channel::<(usize, Result<(), String>)>();

    loop {
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..n {
                if !selected[i] || outcome[i].is_some() || launched[i].is_some() {
                    continue;
                }
                let ups = &m.upstream[i];
                if let Some(&u) =
                    ups.iter().find(|&&u| matches!(outcome[u], Some(Outcome::Failed(_) | Outcome::Skipped(_))))
                {
                    outcome[i] = Some(Outcome::Skipped(format!("upstream {} did not complete", m.stages[u].name)));
                    progressed = true;
                    continue;
                }
                let ready = ups
                    .iter()
                    .all(|&u| matches!(outcome[u], Some(Outcome::UpToDate | Outcome::Ran(_) | Outcome::Restored)));
                if !ready || stop || executor::interrupt::stopped() || running >= jobs {
                    continue;
                }
                let stage = &m.stages[i];
                // Judged now, after upstream stages ran: an upstream rerun that reproduced the
                // same outs does not force this stage to run.
                let current = fingerprint(m, stage, &mut cache)?;
                let mut reasons = own_reasons(m, stage, &current, &lock, &mut cache)?;
                if forced[i] {
                    reasons.insert(0, "forced".into());
                }
                if reasons.is_empty() {
                    eprintln!("· {} is up to date", stage.name);
                    outcome[i] = Some(Outcome::UpToDate);
                    progressed = true;
                    continue;
                }
                preserve_previous(m, stage, &lock, &runs, &mut cache);
                if use_run_cache(i) {
                    if let Some(hit) = restorable(&lock, stage, &current, &runs) {
                        // Under the file lock, from the lock file as it is now: jobs of a
                        // detached Slurm run may have committed other stages since it was read.
                        let restored = fresh_lock(&paths, &mut lock).and_then(|_guard| {
                            restore(m, &paths, stage, &hit, current.clone(), &mut lock, &mut cache, &runs)
                        });
                        match restored {
                            Ok(Ok(())) => {
                                eprintln!("↺ restored {} from the run cache ({})", stage.name, reasons.join("; "));
                                outcome[i] = Some(Outcome::Restored);
                                progressed = true;
                                continue;
                            }
                            Ok(Err(why)) => eprintln!("· run cache entry of {} not used: {why}", stage.name),
                            Err(e) => eprintln!("· run cache entry of {} not used: {e:#}", stage.name),
                        }
                    }
                }
                let shards = shard_count(m, opts, i);
                // Shards that finished in an earlier run with the same inputs are not run again.
                let key = shard_key(&current, shards)?;
                let staging = paths.staging(&stage.name);
                let todo = executor::pending_shards(&staging, &key, shards)
                    .with_context(|| format!("preparing {}", staging.display()))?;
                let split = if shards > 1 { format!(", {} of {shards} shards", todo.len()) } else { String::new() };
                eprintln!("▶ running {}{split} ({})", stage.name, reasons.join("; "));
                let (cmd, staged) = prepare(m, &paths, stage, &current)?;
                let env = stage_env(m, &paths, stage, &current)?;
                let job = Job {
                    stage: stage.name.clone(),
                    cmd,
                    root: m.root.clone(),
                    env,
                    state: paths.state.clone(),
                    staging,
                    prefix: if jobs > 1 { format!("[{}] ", stage.name) } else { String::new() },
                    shards,
                    todo,
                    merge: merges[i],
                    parallel: jobs,
                };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let r = executor::run(&job);
                    let _ = tx.send((i, r));
                });
                launched[i] = Some((current, staged, Instant::now()));
                running += 1;
                progressed = true;
            }
        }
        if running == 0 {
            break;
        }
        let (i, result) = rx.recv().expect("stage thread ended without reporting");
        running -= 1;
        let (current, staged, started) = launched[i].take().expect("launched stage");
        outcome[i] =
            Some(settle(m, &paths, &m.stages[i], result, current, &staged, started, &mut lock, &mut cache, &runs));
        if matches!(outcome[i], Some(Outcome::Failed(_))) && !opts.keep_going {
            stop = true;
        }
    }
    cache.save()?;
    let out = (0..n)
        .filter(|&i| selected[i])
        .map(|i| {
            let o = outcome[i].clone().unwrap_or_else(|| Outcome::Skipped("not started after a failure".into()));
            (m.stages[i].name.clone(), o)
        })
        .collect();
    Ok(out)
}

/// The stages to bring up to date (the targets and everything upstream of them; all without
/// targets) and those forced to run.
fn selection(m: &Manifest, opts: &RunOptions) -> Result<(Vec<bool>, Vec<bool>)> {
    let n = m.stages.len();
    let mut selected = vec![opts.targets.is_empty(); n];
    let mut forced = vec![opts.force && opts.targets.is_empty(); n];
    for t in &opts.targets {
        let Some(i) = m.stage_index(t) else {
            let names: Vec<&str> = m.stages.iter().map(|s| s.name.as_str()).collect();
            bail!("no stage named `{t}` in {} (stages: {})", m.file.display(), names.join(", "));
        };
        for j in m.with_upstream(i) {
            selected[j] = true;
        }
        forced[i] |= opts.force;
    }
    Ok((selected, forced))
}

/// `--dry-run`: what would run and why (or be restored from the run cache), running nothing.
fn dry_run(
    m: &Manifest,
    lock: &Lock,
    cache: &mut HashCache,
    runs: &RunCache,
    selected: &[bool],
    forced: &[bool],
    opts: &RunOptions,
) -> Result<Vec<(String, Outcome)>> {
    let n = m.stages.len();
    let reasons = status(m, lock, cache)?;
    let mut would = vec![false; n];
    let mut out = Vec::new();
    for i in 0..n {
        if !selected[i] {
            continue;
        }
        let mut r = reasons[i].clone();
        if forced[i] {
            r.insert(0, "forced".into());
        }
        let upstream_would = m.upstream[i].iter().any(|&u| would[u]);
        would[i] = !r.is_empty() || upstream_would;
        if would[i] && !upstream_would && !forced[i] && !opts.no_run_cache {
            let current = fingerprint(m, &m.stages[i], cache)?;
            if restorable(lock, &m.stages[i], &current, runs).is_some() {
                r.push("an earlier run with these inputs is in the run cache: would restore its outs".into());
            }
        }
        let outcome = if would[i] { Outcome::WouldRun(r) } else { Outcome::UpToDate };
        out.push((m.stages[i].name.clone(), outcome));
    }
    cache.save()?;
    Ok(out)
}

/// Take the file lock and reread `lock` from disk, for a commit: the file holds every commit
/// this run made and those of Slurm jobs of a detached run beside it (saving the copy read at
/// the start would drop theirs).
fn fresh_lock(paths: &Paths, lock: &mut Lock) -> Result<fs::File> {
    let guard = lock_the_lock(paths)?;
    *lock = Lock::load(&paths.lock)?;
    Ok(guard)
}

/// A stage's job ended: commit its outs (staging -> place, lock, run cache) or, on failure,
/// put back the outs it wrote in place; the outcome, reported as it happens.
#[allow(clippy::too_many_arguments)]
fn settle(
    m: &Manifest,
    paths: &Paths,
    stage: &Stage,
    result: Result<(), String>,
    current: StageLock,
    staged: &[StagedOut],
    started: Instant,
    lock: &mut Lock,
    cache: &mut HashCache,
    runs: &RunCache,
) -> Outcome {
    let staging = paths.staging(&stage.name);
    let result = result.and_then(|()| {
        let _guard = fresh_lock(paths, lock).map_err(|e| format!("{e:#}"))?;
        commit_outs(m, paths, stage, staged, &staging, current, lock, cache).map_err(|e| format!("{e:#}"))
    });
    match result {
        Ok(()) => {
            if let Err(e) = runs.save(m, stage, &lock.stages[&stage.name]) {
                eprintln!("warning: {} ran, but its outs could not be stored in the run cache: {e:#}", stage.name);
            }
            let took = started.elapsed();
            eprintln!("✓ {} done in {}", stage.name, fmt_duration(took));
            Outcome::Ran(took)
        }
        Err(msg) => {
            restore_backups(staged);
            let log = paths.log(&stage.name);
            if log.exists() {
                eprintln!("✗ {} failed: {msg}\n  log: {}", stage.name, log.display());
            } else {
                eprintln!("✗ {} failed: {msg}", stage.name);
            }
            Outcome::Failed(msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::manifest::replace_path_token;

    #[test]
    fn replaces_whole_paths_only() {
        let (c, hit) = replace_path_token(
            "stage --out artifacts/c --summary artifacts/c/s.json --x artifacts/cc --y=artifacts/c",
            "artifacts/c",
            "T/artifacts/c",
        );
        assert!(hit);
        assert_eq!(c, "stage --out T/artifacts/c --summary T/artifacts/c/s.json --x artifacts/cc --y=T/artifacts/c");
        assert!(!replace_path_token("cp a/b c", "b", "x").1);
    }
}
