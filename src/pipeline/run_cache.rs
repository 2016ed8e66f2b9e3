//! The run cache: the outs of earlier runs, keyed by what the stage ran with (its cmd, binary,
//! dep hashes and params). Going back to earlier parameters, or to an earlier version of a
//! dependency, restores the outs that run produced instead of computing them again.
//!
//! An entry lives in `.pipeline/runs/STAGE/KEY/`: `run.yaml` (the lock entry of that run, out
//! hashes included) and `outs/` (the outs, under their manifest paths). Outs the stage wrote in
//! staging are hard links (free until the outs are replaced; a stage never writes into files it
//! did not create); outs a stage writes in place, which could be overwritten through a link, are
//! copies. A restore is checked against the recorded hashes, so an entry damaged by an edit in
//! place is dropped, never restored.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::hash::{HashCache, hash_str};
use super::lock::StageLock;
use super::manifest::replace_path_token;
use super::manifest::{Manifest, Stage};

/// The key of a run: everything a stage's result may depend on, nothing it produced.
pub fn key(entry: &StageLock) -> String {
    let mut s = format!("cmd {}\nparams {}\n", entry.cmd_hash, entry.params_hash);
    if let Some(b) = &entry.binary {
        s += &format!("binary {}\n", b.hash);
    }
    for d in &entry.deps {
        s += &format!("dep {}\t{}\n", d.path, d.hash);
    }
    hash_str(&s)
}

/// True when the inputs recorded in two lock entries are the same.
pub fn same_inputs(a: &StageLock, b: &StageLock) -> bool {
    key(a) == key(b)
}

/// Whether the stage's command names the out (the runner then has it written in staging).
pub(crate) fn written_in_staging(stage: &Stage, out: &str) -> bool {
    replace_path_token(&stage.cmd, out, "").1
}

pub struct RunCache {
    root: PathBuf,
}

/// A stored run that matches what a stage would run with now.
pub struct Hit {
    pub dir: PathBuf,
    pub entry: StageLock,
}

impl RunCache {
    pub fn new(state: &Path) -> RunCache {
        RunCache { root: state.join("runs") }
    }

    fn dir(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join(stage).join(&key[..32.min(key.len())])
    }

    /// The stored run with the same inputs as `current`, if any.
    pub fn lookup(&self, stage: &Stage, current: &StageLock) -> Option<Hit> {
        let dir = self.dir(&stage.name, &key(current));
        let text = fs::read_to_string(dir.join("run.yaml")).ok()?;
        let entry: StageLock = serde_saphyr::from_str(&text).ok()?;
        let complete = same_inputs(&entry, current)
            && stage
                .outs
                .iter()
                .all(|o| entry.outs.iter().any(|e| e.path == o.path) && dir.join("outs").join(&o.path).exists());
        complete.then_some(Hit { dir, entry })
    }

    /// Store the outs a stage just produced (now in place) with its lock entry. Written to a
    /// temporary directory and renamed, so an entry is complete or absent.
    pub fn save(&self, m: &Manifest, stage: &Stage, entry: &StageLock) -> Result<()> {
        if stage.outs.is_empty() {
            return Ok(());
        }
        let final_dir = self.dir(&stage.name, &key(entry));
        let tmp = final_dir.with_extension("tmp");
        remove_any(&tmp)?;
        fs::create_dir_all(tmp.join("outs"))?;
        for o in &stage.outs {
            let to = tmp.join("outs").join(&o.path);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)?;
            }
            link_or_copy(&m.root.join(&o.path), &to, written_in_staging(stage, &o.path))
                .with_context(|| format!("cannot store out {} in the run cache", o.path))?;
        }
        let text = serde_saphyr::to_string(entry).map_err(|e| anyhow::anyhow!("{e}"))?;
        fs::write(tmp.join("run.yaml"), text)?;
        remove_any(&final_dir)?;
        fs::rename(&tmp, &final_dir)?;
        Ok(())
    }

    /// Put a stored run's outs into `into` (under their manifest paths) and check them against
    /// the recorded hashes. A mismatch drops the entry and returns the reason.
    pub fn restore_into(&self, stage: &Stage, hit: &Hit, into: &Path) -> Result<Result<(), String>> {
        remove_any(into)?;
        let mut hashes = HashCache::in_memory();
        for o in &stage.outs {
            let to = into.join(&o.path);
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent)?;
            }
            link_or_copy(&hit.dir.join("outs").join(&o.path), &to, written_in_staging(stage, &o.path))
                .with_context(|| format!("cannot restore out {} from {}", o.path, hit.dir.display()))?;
            let recorded = hit.entry.outs.iter().find(|e| e.path == o.path).map(|e| e.hash.as_str());
            let now = hashes.hash_path(&to)?;
            if now.as_deref() != recorded {
                remove_any(into)?;
                remove_any(&hit.dir)?;
                return Ok(Err(format!("its copy of {} was modified; entry dropped", o.path)));
            }
        }
        Ok(Ok(()))
    }

    /// Delete the stored runs of the given stages (all stages when empty); returns how many.
    pub fn clear(&self, stages: &[String]) -> Result<usize> {
        let mut n = 0;
        let Ok(dirs) = fs::read_dir(&self.root) else { return Ok(0) };
        for d in dirs {
            let d = d?;
            let name = d.file_name().to_string_lossy().into_owned();
            if stages.is_empty() || stages.contains(&name) {
                n += fs::read_dir(d.path())?.count();
                remove_any(&d.path())?;
            }
        }
        Ok(n)
    }

    /// (stage, number of stored runs, bytes not shared with anything else).
    pub fn summary(&self) -> Result<Vec<(String, usize, u64)>> {
        use std::os::unix::fs::MetadataExt;
        fn own_bytes(p: &Path) -> u64 {
            let Ok(md) = fs::symlink_metadata(p) else { return 0 };
            if md.is_dir() {
                fs::read_dir(p).map(|rd| rd.flatten().map(|e| own_bytes(&e.path())).sum()).unwrap_or(0)
            } else if md.nlink() == 1 {
                md.len()
            } else {
                0
            }
        }
        let mut out = Vec::new();
        let Ok(dirs) = fs::read_dir(&self.root) else { return Ok(out) };
        for d in dirs {
            let d = d?;
            let runs = fs::read_dir(d.path())?.count();
            out.push((d.file_name().to_string_lossy().into_owned(), runs, own_bytes(&d.path())));
        }
        out.sort();
        Ok(out)
    }
}

/// Hard-link (or copy, when `hard` is false or linking fails) a file or a directory tree.
pub(crate) fn link_or_copy(from: &Path, to: &Path, hard: bool) -> std::io::Result<()> {
    let md = fs::metadata(from)?;
    if md.is_dir() {
        fs::create_dir_all(to)?;
        for e in fs::read_dir(from)? {
            let e = e?;
            link_or_copy(&e.path(), &to.join(e.file_name()), hard)?;
        }
        Ok(())
    } else if hard && fs::hard_link(from, to).is_ok() {
        Ok(())
    } else {
        fs::copy(from, to).map(|_| ())
    }
}

pub(crate) fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(_) => Ok(()),
    }
}
