//! Every stage's parameters checked against that stage's schema before anything runs: a typo
//! under `params.evaluate` must stop `pipeline run` (and `--dry-run`, `status`) at once, not
//! after hours of training. Each stage binary answers `--check-params` (keys and types, the
//! same code that loads them when it runs); commands that are not stage binaries are skipped.

use std::path::Path;
use std::process::Command;

use super::manifest::{Manifest, ManifestError};
use super::status::resolve_binary;

/// Check the parameters of stages `which` (indices into `m.stages`). The error names the
/// manifest, the line of the offending key when it can be found, the key and the stage's
/// complaint.
pub fn check_params(m: &Manifest, which: &[usize]) -> Result<(), ManifestError> {
    let text = std::fs::read_to_string(&m.file).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("pipeline-check-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let result = which.iter().try_for_each(|&i| check_one(m, &m.stages[i], &text, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The stage binary (`stage-*`) a stage's command runs, if it runs one.
fn stage_binary(m: &Manifest, stage: &super::manifest::Stage) -> Option<std::path::PathBuf> {
    resolve_binary(&stage.cmd, &m.root)
        .filter(|b| b.file_name().is_some_and(|n| n.to_string_lossy().starts_with("stage-")))
}

fn check_one(m: &Manifest, stage: &super::manifest::Stage, text: &str, dir: &Path) -> Result<(), ManifestError> {
    let Some(bin) = stage_binary(m, stage) else { return Ok(()) };
    let file = dir.join(format!("{}.json", stage.name));
    let params = serde_json::to_string(&m.stage_params(stage)).unwrap_or_default();
    if std::fs::write(&file, params).is_err() {
        return Ok(());
    }
    // `--set` flags written into the command itself count too.
    let words: Vec<&str> = stage.cmd.split_whitespace().collect();
    let mut args = vec!["--check-params".to_string(), "--params".into(), file.to_string_lossy().into_owned()];
    for w in words.windows(2).filter(|w| w[0] == "--set") {
        args.extend(["--set".to_string(), w[1].to_string()]);
    }
    let Ok(out) = Command::new(&bin).args(&args).current_dir(&m.root).env_remove("PIPELINE_PARAMS").output() else {
        return Ok(()); // cannot start it: running the stage will say why
    };
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let err = err.trim().strip_prefix("error: ").unwrap_or(err.trim());
    // The stage names the offending key as `a.b`: find it under the stage's params key.
    let base = stage.params.first().cloned().unwrap_or_default();
    let sub = err.split('`').nth(1).filter(|_| err.contains("`")).unwrap_or("");
    let sub = if stage.params.len() > 1 { sub.split_once('.').map_or(sub, |(_, r)| r) } else { sub };
    let head = if stage.params.len() > 1 { sub_key_owner(err, &stage.params).unwrap_or(base) } else { base };
    let mut path: Vec<&str> = vec!["params"];
    path.extend(head.split('.'));
    let key_parts: Vec<&str> = sub.split('.').filter(|s| !s.is_empty() && !s.starts_with('[')).collect();
    let mut full = path.clone();
    full.extend(&key_parts);
    // The deepest key the file has (an unknown key is in the file; a wrong type too).
    let line = (path.len()..=full.len()).rev().find_map(|n| key_line(text, &full[..n]));
    let key = full.join(".");
    // The file name the stage saw is a temporary one: say which stage instead.
    let message = err.replace(&format!(" in {}", file.display()), "").replace(&file.display().to_string(), "params");
    Err(ManifestError {
        file: m.file.clone(),
        line,
        key,
        message: format!("stage `{}` refuses its parameters: {message}", stage.name),
    })
}

/// How a stage's binary says it shards (`stage-X --describe`); None for commands that are not
/// stage binaries or do not answer.
pub fn sharding(m: &Manifest, stage: &super::manifest::Stage) -> Option<super::executor::Sharding> {
    let bin = stage_binary(m, stage)?;
    let out = Command::new(&bin).arg("--describe").current_dir(&m.root).output().ok()?;
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    serde_json::from_value(d["sharding"].clone()).ok()
}

/// With several params keys, the stage sees an object keyed by them: the first path
/// component of the error names which.
fn sub_key_owner(err: &str, keys: &[String]) -> Option<String> {
    let sub = err.split('`').nth(1)?;
    keys.iter().find(|k| sub == k.as_str() || sub.starts_with(&format!("{k}."))).cloned()
}

/// The 1-based line of the YAML key at `path` (each component a mapping key nested under the
/// previous one, by indentation).
pub fn key_line(text: &str, path: &[&str]) -> Option<u64> {
    let mut want = 0;
    // Indentation of the last key found, and of its children (set by its first child line).
    let mut parent: Option<usize> = None;
    let mut child: Option<usize> = Some(0);
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let ind = line.len() - trimmed.len();
        if parent.is_some_and(|p| ind <= p) {
            return None; // left the block of the key found last
        }
        if child.is_none() {
            child = Some(ind);
        }
        let key = trimmed.split(':').next().unwrap_or("").trim().trim_matches('"');
        if child == Some(ind) && trimmed.contains(':') && key == path[want] {
            want += 1;
            if want == path.len() {
                return Some(n as u64 + 1);
            }
            parent = Some(ind);
            child = None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::key_line;

    #[test]
    fn key_lines_follow_nesting() {
        let y = "vars:\n  a: 1\nparams:\n  embed:\n    layer: 2\n  evaluate:\n    # note\n    eval:\n      batch_size: 8\n    layer: 9\n";
        assert_eq!(key_line(y, &["params"]), Some(3));
        assert_eq!(key_line(y, &["params", "embed", "layer"]), Some(5));
        assert_eq!(key_line(y, &["params", "evaluate"]), Some(6));
        assert_eq!(key_line(y, &["params", "evaluate", "eval", "batch_size"]), Some(9));
        assert_eq!(key_line(y, &["params", "evaluate", "layer"]), Some(10));
        assert_eq!(key_line(y, &["params", "evaluate", "eval", "layer"]), None);
        assert_eq!(key_line(y, &["params", "gate"]), None);
    }
}
