//! `pipeline run`: run stale stages in dependency order, several at a time with `-j`.
//!
//! A stage writes its outs into `.pipeline/staging/STAGE/` (the runner rewrites the out paths in
//! its command) and they are moved into place only when it succeeds; the lock entry is written
//! after that. A stage that fails or is killed therefore leaves the previous outs and the lock
//! as they were, and what it staged stays for it to resume from.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::executor::Sharding;
pub use super::executor::interrupted;
use super::executor::{self, Job};
use super::hash::HashCache;
use super::lock::{Lock, PathHash, StageLock};
use super::manifest::{Executor, Manifest, Stage, replace_path_token};
use super::run_cache::{self, Hit, RunCache, link_or_copy, remove_any};
use super::status::{exe_dir, fingerprint, own_reasons, status};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stages to bring up to date (with what they depend on); empty means all.
    pub targets: Vec<String>,
    pub force: bool,
    pub dry_run: bool,
    pub jobs: usize,
    pub keep_going: bool,
    /// Do not restore outs from the run cache (stages still store their runs in it).
    pub no_run_cache: bool,
    /// Where stages run (default: the manifest's `executor:`, else local).
    pub executor: Option<Executor>,
    /// Shard counts by stage name, over the manifest's `shards:`.
    pub shards: Vec<(String, usize)>,
    /// Slurm: submit the jobs and return without following them (they commit on their own).
    pub detach: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    UpToDate,
    Ran(Duration),
    /// Its inputs matched an earlier run, whose outs were put back from the run cache.
    Restored,
    Failed(String),
    Skipped(String),
    /// Dry run: would run, for these reasons.
    WouldRun(Vec<String>),
    /// Submitted to Slurm and not followed (`--detach`).
    Submitted,
}

/// Paths of the state the runner keeps beside a manifest.
pub struct Paths {
    pub lock: PathBuf,
    pub state: PathBuf,
}

impl Paths {
    pub fn of(m: &Manifest) -> Paths {
        Paths { lock: m.file.with_extension("lock"), state: m.root.join(".pipeline") }
    }
    pub fn hash_cache(&self) -> PathBuf {
        self.state.join("hash-cache.tsv")
    }
    pub fn log(&self, stage: &str) -> PathBuf {
        self.state.join("logs").join(format!("{stage}.log"))
    }
    pub fn staging(&self, stage: &str) -> PathBuf {
        self.state.join("staging").join(stage)
    }
    /// Where a run cache entry is put together before it is moved into place.
    pub(super) fn restoring(&self, stage: &str) -> PathBuf {
        self.state.join("restore").join(stage)
    }
    /// Where the previous outs wait while the new ones are moved into place.
    pub(super) fn old(&self, stage: &str) -> PathBuf {
        self.state.join("old").join(stage)
    }
    /// The previous version of outs a stage writes in place.
    pub(super) fn backup(&self, stage: &str) -> PathBuf {
        self.state.join("backup").join(stage)
    }
}

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
                        match restore(m, &paths, stage, &hit, current.clone(), &mut lock, &mut cache, &runs) {
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

/// What the finished shards of a stage are recorded with: its inputs and the shard count.
pub(super) fn shard_key(current: &StageLock, shards: usize) -> Result<String> {
    Ok(format!("{}|{shards}", crate::util::hash_str(&serde_json::to_string(current)?)))
}

/// Stage `i`'s shard count: `--shards` over the manifest's `shards:`.
pub(super) fn shard_count(m: &Manifest, opts: &RunOptions, i: usize) -> usize {
    let stage = &m.stages[i];
    opts.shards.iter().rev().find(|(s, _)| *s == stage.name).map_or(stage.shards, |s| s.1)
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

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 { format!("{s:.1} s") } else { format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64) }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct StagedOut {
    out: PathBuf,
    /// Where the stage writes it; None when the command does not name the out (it then writes
    /// in place and `backup` holds the previous version).
    staged: Option<PathBuf>,
    backup: Option<PathBuf>,
}

/// The command with the out paths it names rewritten to their staging paths.
pub(super) fn staged_command(m: &Manifest, paths: &Paths, stage: &Stage) -> String {
    let staging = paths.staging(&stage.name);
    let staging_rel = staging.strip_prefix(&m.root).unwrap_or(&staging).to_path_buf();
    stage.outs.iter().fold(stage.cmd.clone(), |cmd, o| {
        replace_path_token(&cmd, &o.path, &staging_rel.join(&o.path).to_string_lossy()).0
    })
}

/// Rewrite the out paths in the command to their staging paths; back up outs written in place.
pub(super) fn prepare(m: &Manifest, paths: &Paths, stage: &Stage, _fp: &StageLock) -> Result<(String, Vec<StagedOut>)> {
    let staging = paths.staging(&stage.name);
    let staging_rel = staging.strip_prefix(&m.root).unwrap_or(&staging).to_path_buf();
    let mut cmd = stage.cmd.clone();
    let mut staged = Vec::new();
    for o in &stage.outs {
        let target_rel = staging_rel.join(&o.path);
        let (new_cmd, hit) = replace_path_token(&cmd, &o.path, &target_rel.to_string_lossy());
        let out = m.root.join(&o.path);
        if hit {
            cmd = new_cmd;
            let st = staging.join(&o.path);
            if let Some(parent) = st.parent() {
                fs::create_dir_all(parent)?;
            }
            staged.push(StagedOut { out, staged: Some(st), backup: None });
        } else {
            let backup = if out.exists() {
                // The previous version moves to the backup and the stage gets a fresh copy, so
                // that writing in place never goes through a hard link the run cache holds.
                let b = paths.backup(&stage.name).join(&o.path);
                if let Some(parent) = b.parent() {
                    fs::create_dir_all(parent)?;
                }
                remove_any(&b)?;
                fs::rename(&out, &b)?;
                if let Err(e) = link_or_copy(&b, &out, false) {
                    let _ = remove_any(&out);
                    fs::rename(&b, &out)?;
                    return Err(e.into());
                }
                Some(b)
            } else {
                None
            };
            if let Some(parent) = out.parent() {
                fs::create_dir_all(parent)?;
            }
            staged.push(StagedOut { out, staged: None, backup });
        }
    }
    Ok((cmd, staged))
}

pub(super) fn stage_env(m: &Manifest, paths: &Paths, stage: &Stage, fp: &StageLock) -> Result<Vec<(String, String)>> {
    let params_file = paths.state.join("params").join(format!("{}.json", stage.name));
    fs::write(&params_file, serde_json::to_string_pretty(&m.stage_params(stage))?)?;
    let mut path = exe_dir().map(|d| d.into_os_string()).unwrap_or_default();
    if let Some(p) = std::env::var_os("PATH") {
        path.push(":");
        path.push(p);
    }
    let abs = |p: &Path| fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).to_string_lossy().into_owned();
    let staging = paths.staging(&stage.name);
    // Stages print paths for the user without this prefix (`stage::final_path`).
    let staging_rel = staging.strip_prefix(&m.root).unwrap_or(&staging).to_string_lossy().into_owned();
    Ok(vec![
        ("PIPELINE_STAGING".into(), staging_rel),
        ("PATH".into(), path.to_string_lossy().into_owned()),
        ("PIPELINE_STAGE".into(), stage.name.clone()),
        ("PIPELINE_PARAMS".into(), abs(&params_file)),
        ("PIPELINE_PARAMS_HASH".into(), fp.params_hash.clone()),
        ("PIPELINE_ROOT".into(), abs(&m.root)),
    ])
}

/// The run cache entry to restore instead of running: one with the same inputs as now, when the
/// inputs differ from the last run's (an out deleted or edited by hand with unchanged inputs
/// makes the stage run again, not restore).
pub(super) fn restorable(lock: &Lock, stage: &Stage, current: &StageLock, runs: &RunCache) -> Option<Hit> {
    if stage.outs.is_empty() {
        return None; // a stage run for its side effects is never skipped
    }
    let inputs_changed = lock.stages.get(&stage.name).is_none_or(|old| !run_cache::same_inputs(old, current));
    if inputs_changed { runs.lookup(stage, current) } else { None }
}

/// Before a stage's outs are replaced: keep them in the run cache if they are still what the lock
/// says the last run wrote and the cache lacks them (outs from before the run cache existed, or
/// after `pipeline cache clear`), so that going back restores rather than recomputes them.
pub(super) fn preserve_previous(m: &Manifest, stage: &Stage, lock: &Lock, runs: &RunCache, cache: &mut HashCache) {
    let Some(old) = lock.stages.get(&stage.name) else { return };
    if stage.outs.is_empty() || runs.lookup(stage, old).is_some() {
        return;
    }
    let intact = stage.outs.iter().all(|o| {
        let recorded = old.outs.iter().find(|e| e.path == o.path).map(|e| e.hash.as_str());
        matches!(cache.hash_path(&m.root.join(&o.path)), Ok(Some(h)) if Some(h.as_str()) == recorded)
    });
    if intact {
        if let Err(e) = runs.save(m, stage, old) {
            eprintln!("warning: the previous outs of {} could not be kept in the run cache: {e:#}", stage.name);
        }
    }
}

/// Put a cached run's outs in place (through a staging directory of their own, so that a
/// partial run's checkpoint in the stage's staging directory stays) and record it in the lock.
#[allow(clippy::too_many_arguments)]
pub(super) fn restore(
    m: &Manifest,
    paths: &Paths,
    stage: &Stage,
    hit: &Hit,
    current: StageLock,
    lock: &mut Lock,
    cache: &mut HashCache,
    runs: &RunCache,
) -> Result<Result<(), String>> {
    let into = paths.restoring(&stage.name);
    if let Err(why) = runs.restore_into(stage, hit, &into)? {
        return Ok(Err(why));
    }
    let staged: Vec<StagedOut> = stage
        .outs
        .iter()
        .map(|o| StagedOut { out: m.root.join(&o.path), staged: Some(into.join(&o.path)), backup: None })
        .collect();
    commit_outs(m, paths, stage, &staged, &into, current, lock, cache)?;
    Ok(Ok(()))
}

/// Move staged outs into place, hash them and record the stage in the lock; `staging` (where
/// they were written) is removed.
#[allow(clippy::too_many_arguments)]
pub(super) fn commit_outs(
    m: &Manifest,
    paths: &Paths,
    stage: &Stage,
    staged: &[StagedOut],
    staging: &Path,
    mut entry: StageLock,
    lock: &mut Lock,
    cache: &mut HashCache,
) -> Result<()> {
    for s in staged {
        let produced = s.staged.as_ref().unwrap_or(&s.out);
        if !produced.exists() {
            bail!("the stage succeeded but did not write its out {}", rel(m, &s.out));
        }
    }
    let trash = paths.old(&stage.name);
    remove_any(&trash)?;
    // Moves done so far, undone in reverse if one fails: (from, to).
    let mut done: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut move_all = || -> Result<()> {
        for s in staged {
            if let Some(st) = &s.staged {
                if s.out.exists() {
                    let t = trash.join(rel(m, &s.out));
                    fs::create_dir_all(t.parent().unwrap())?;
                    fs::rename(&s.out, &t)?;
                    done.push((s.out.clone(), t));
                }
                if let Some(parent) = s.out.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::rename(st, &s.out).with_context(|| format!("cannot move {} into place", rel(m, &s.out)))?;
                done.push((st.clone(), s.out.clone()));
            }
        }
        Ok(())
    };
    if let Err(e) = move_all() {
        for (from, to) in done.iter().rev() {
            let _ = fs::rename(to, from);
        }
        return Err(e);
    }
    remove_any(&trash)?;
    remove_any(staging)?;
    remove_any(&paths.backup(&stage.name))?;
    entry.outs = Vec::new();
    for o in &stage.outs {
        let hash = cache.hash_path(&m.root.join(&o.path))?.context("out vanished")?;
        entry.outs.push(PathHash { path: o.path.clone(), hash });
    }
    lock.stages.insert(stage.name.clone(), entry);
    lock.save(&paths.lock)
}

/// Put back the previous version of outs written in place (those whose backup is still there:
/// a second call, or one after a commit that removed the backups, leaves the outs alone).
pub(super) fn restore_backups(staged: &[StagedOut]) {
    for s in staged {
        if let Some(b) = s.backup.as_ref().filter(|b| b.exists()) {
            let _ = remove_any(&s.out);
            let _ = fs::rename(b, &s.out);
        }
    }
}

fn rel(m: &Manifest, p: &Path) -> String {
    p.strip_prefix(&m.root).unwrap_or(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
