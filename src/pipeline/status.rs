//! Staleness: why a stage must run again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;

use super::hash::{HashCache, hash_str};
use super::lock::{Lock, PathHash, StageLock};
use super::manifest::{Manifest, Stage, flatten_params, lookup};

/// Where stage binaries are looked up first: next to the running `pipeline` executable.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok()?.parent().map(Path::to_path_buf)
}

/// The program a command runs: its first word, resolved next to `pipeline`, then on PATH.
pub fn resolve_binary(cmd: &str, root: &Path) -> Option<PathBuf> {
    let first = cmd.split_whitespace().next()?;
    if first.contains('/') {
        let p = root.join(first);
        return p.is_file().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = exe_dir().into_iter().collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(first)).find(|p| p.is_file())
}

/// What a stage would run with now: everything of its lock entry but the outs.
pub fn fingerprint(m: &Manifest, stage: &Stage, cache: &mut HashCache) -> Result<StageLock> {
    let binary = match resolve_binary(&stage.cmd, &m.root) {
        Some(p) => cache
            .hash_path(&p)?
            .map(|hash| PathHash { path: p.file_name().unwrap_or_default().to_string_lossy().into_owned(), hash }),
        None => None,
    };
    let mut deps = Vec::new();
    for d in &stage.deps {
        let hash = cache.hash_path(&m.root.join(d))?.unwrap_or_else(|| "missing".into());
        deps.push(PathHash { path: d.clone(), hash });
    }
    let params: BTreeMap<String, Value> =
        stage.params.iter().map(|k| (k.clone(), lookup(&m.params, k).cloned().unwrap_or(Value::Null))).collect();
    Ok(StageLock {
        cmd: stage.cmd.clone(),
        cmd_hash: hash_str(&stage.cmd),
        binary,
        deps,
        params_hash: hash_str(&serde_json::to_string(&params)?),
        params,
        outs: Vec::new(),
    })
}

/// The reasons a stage must run, judged on its own (upstream staleness not included).
pub fn own_reasons(
    m: &Manifest,
    stage: &Stage,
    current: &StageLock,
    lock: &Lock,
    cache: &mut HashCache,
) -> Result<Vec<String>> {
    let Some(old) = lock.stages.get(&stage.name) else {
        return Ok(vec!["never run".into()]);
    };
    let mut reasons = Vec::new();
    if old.cmd_hash != current.cmd_hash {
        reasons.push(format!("cmd changed: `{}` -> `{}`", old.cmd, current.cmd));
    }
    match (&old.binary, &current.binary) {
        (Some(a), Some(b)) if a.hash != b.hash => reasons.push(format!("binary {} changed", b.path)),
        (None, Some(b)) => reasons.push(format!("binary {} appeared", b.path)),
        (Some(a), None) => reasons.push(format!("binary {} not found", a.path)),
        _ => {}
    }
    for d in &current.deps {
        match old.deps.iter().find(|o| o.path == d.path) {
            None => reasons.push(format!("dep {} added", d.path)),
            Some(_) if d.hash == "missing" => reasons.push(format!("dep {} missing", d.path)),
            Some(o) if o.hash != d.hash => reasons.push(format!("dep {} changed", d.path)),
            _ => {}
        }
    }
    for o in &old.deps {
        if !current.deps.iter().any(|d| d.path == o.path) {
            reasons.push(format!("dep {} removed", o.path));
        }
    }
    if old.params_hash != current.params_hash {
        reasons.extend(params_diff(&old.params, &current.params));
    }
    for out in &stage.outs {
        let now = cache.hash_path(&m.root.join(&out.path))?;
        match (old.outs.iter().find(|o| o.path == out.path), now) {
            (_, None) => reasons.push(format!("out {} missing", out.path)),
            (None, Some(_)) => reasons.push(format!("out {} added", out.path)),
            (Some(o), Some(h)) if o.hash != h => reasons.push(format!("out {} changed since it was written", out.path)),
            _ => {}
        }
    }
    Ok(reasons)
}

/// "params cluster.k changed 6 -> 8", one line per changed leaf.
pub fn params_diff(old: &BTreeMap<String, Value>, new: &BTreeMap<String, Value>) -> Vec<String> {
    let flat = |m: &BTreeMap<String, Value>| {
        let mut out = BTreeMap::new();
        for (k, v) in m {
            flatten_params(k, v, &mut out);
        }
        out
    };
    let (a, b) = (flat(old), flat(new));
    let mut reasons = Vec::new();
    for (k, v) in &b {
        match a.get(k) {
            None => reasons.push(format!("params {k} added ({v})")),
            Some(o) if o != v => reasons.push(format!("params {k} changed {o} -> {v}")),
            _ => {}
        }
    }
    for (k, o) in &a {
        if !b.contains_key(k) {
            reasons.push(format!("params {k} removed (was {o})"));
        }
    }
    if reasons.is_empty() {
        reasons.push("params changed".into());
    }
    reasons
}

/// Every stage's reasons to run, upstream staleness flowing down ("upstream embed is stale").
pub fn status(m: &Manifest, lock: &Lock, cache: &mut HashCache) -> Result<Vec<Vec<String>>> {
    let mut all: Vec<Vec<String>> = Vec::with_capacity(m.stages.len());
    for (i, stage) in m.stages.iter().enumerate() {
        let current = fingerprint(m, stage, cache)?;
        let mut reasons = own_reasons(m, stage, &current, lock, cache)?;
        for &u in &m.upstream[i] {
            if !all[u].is_empty() {
                reasons.push(format!("upstream {} is stale", m.stages[u].name));
            }
        }
        all.push(reasons);
    }
    Ok(all)
}
