//! `pipeline.lock`: what each stage last ran with and produced. YAML, stages sorted by name,
//! fields in a fixed order, so that it diffs well in version control.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PathHash {
    pub path: String,
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageLock {
    pub cmd: String,
    pub cmd_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<PathHash>,
    #[serde(default)]
    pub deps: Vec<PathHash>,
    /// The stage's params, keyed by the manifest key they come from (values, not just a hash,
    /// so that status can say what changed).
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    pub params_hash: String,
    #[serde(default)]
    pub outs: Vec<PathHash>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Lock {
    pub schema: u32,
    #[serde(default)]
    pub stages: BTreeMap<String, StageLock>,
}

impl Lock {
    pub fn load(path: &Path) -> Result<Lock> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_saphyr::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("{} is not a valid lock file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lock { schema: 1, ..Default::default() }),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Write atomically (temp file + rename), so a crash never leaves half a lock.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_saphyr::to_string(self).map_err(|e| anyhow::anyhow!("{e}"))?;
        let tmp = path.with_extension("lock.tmp");
        std::fs::write(&tmp, format!("# Written by `pipeline run`; do not edit.\n{text}"))
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}
