//! What a stage's run shares between the executors: the runner's options and outcomes, the
//! state paths, and the steps around a stage's command: staging its outs, its environment, the
//! run cache, and committing (staging -> place, hashes, the lock entry) or putting back what it
//! wrote in place. The local runner ([`super::runner`]) and the Slurm jobs ([`super::chain`])
//! both go through them.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::hash::HashCache;
use super::lock::{Lock, PathHash, StageLock};
use super::manifest::{Executor, Manifest, Stage, replace_path_token};
use super::run_cache::{self, Hit, RunCache, link_or_copy, remove_any};
use super::status::exe_dir;

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
    pub fn restoring(&self, stage: &str) -> PathBuf {
        self.state.join("restore").join(stage)
    }
    /// Where the previous outs wait while the new ones are moved into place.
    pub fn old(&self, stage: &str) -> PathBuf {
        self.state.join("old").join(stage)
    }
    /// The previous version of outs a stage writes in place.
    pub fn backup(&self, stage: &str) -> PathBuf {
        self.state.join("backup").join(stage)
    }
}

/// What the finished shards of a stage are recorded with: its inputs and the shard count.
pub fn shard_key(current: &StageLock, shards: usize) -> Result<String> {
    Ok(format!("{}|{shards}", crate::util::hash_str(&serde_json::to_string(current)?)))
}

/// Stage `i`'s shard count: `--shards` over the manifest's `shards:`.
pub fn shard_count(m: &Manifest, opts: &RunOptions, i: usize) -> usize {
    let stage = &m.stages[i];
    opts.shards.iter().rev().find(|(s, _)| *s == stage.name).map_or(stage.shards, |s| s.1)
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 { format!("{s:.1} s") } else { format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64) }
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StagedOut {
    out: PathBuf,
    /// Where the stage writes it; None when the command does not name the out (it then writes
    /// in place and `backup` holds the previous version).
    staged: Option<PathBuf>,
    backup: Option<PathBuf>,
}

/// The command with the out paths it names rewritten to their staging paths.
pub fn staged_command(m: &Manifest, paths: &Paths, stage: &Stage) -> String {
    let staging = paths.staging(&stage.name);
    let staging_rel = staging.strip_prefix(&m.root).unwrap_or(&staging).to_path_buf();
    stage.outs.iter().fold(stage.cmd.clone(), |cmd, o| {
        replace_path_token(&cmd, &o.path, &staging_rel.join(&o.path).to_string_lossy()).0
    })
}

/// Rewrite the out paths in the command to their staging paths; back up outs written in place.
pub fn prepare(m: &Manifest, paths: &Paths, stage: &Stage, _fp: &StageLock) -> Result<(String, Vec<StagedOut>)> {
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

pub fn stage_env(m: &Manifest, paths: &Paths, stage: &Stage, fp: &StageLock) -> Result<Vec<(String, String)>> {
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
pub fn restorable(lock: &Lock, stage: &Stage, current: &StageLock, runs: &RunCache) -> Option<Hit> {
    if stage.outs.is_empty() {
        return None; // a stage run for its side effects is never skipped
    }
    let inputs_changed = lock.stages.get(&stage.name).is_none_or(|old| !run_cache::same_inputs(old, current));
    if inputs_changed { runs.lookup(stage, current) } else { None }
}

/// Before a stage's outs are replaced: keep them in the run cache if they are still what the lock
/// says the last run wrote and the cache lacks them (outs from before the run cache existed, or
/// after `pipeline cache clear`), so that going back restores rather than recomputes them.
pub fn preserve_previous(m: &Manifest, stage: &Stage, lock: &Lock, runs: &RunCache, cache: &mut HashCache) {
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
pub fn restore(
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
pub fn commit_outs(
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

/// Hold the file lock of `pipeline.lock` (`.pipeline/lock.flock`): the lock file is read and
/// rewritten by the local runner and by the jobs of stages that run side by side (on several
/// nodes), one at a time under this.
pub fn lock_the_lock(paths: &Paths) -> Result<fs::File> {
    let path = paths.state.join("lock.flock");
    crate::util::lock_file(&path).with_context(|| format!("cannot lock {}", path.display()))
}

/// Put back the previous version of outs written in place (those whose backup is still there:
/// a second call, or one after a commit that removed the backups, leaves the outs alone).
pub fn restore_backups(staged: &[StagedOut]) {
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
