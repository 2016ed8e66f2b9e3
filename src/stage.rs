//! What every stage binary shares: parameters from the orchestrator (PIPELINE_PARAMS), a YAML
//! or JSON file (--params) or `--set key=value`, and progress reporting that works both in a
//! terminal and in a log.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Common flags of a stage binary.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ParamArgs {
    /// Parameters file (YAML or JSON); defaults to $PIPELINE_PARAMS, set by `pipeline run`.
    #[arg(long)]
    pub params: Option<PathBuf>,
    /// Override one parameter, e.g. --set k=8 or --set lora.r=8 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ParamArgs {
    /// The stage's parameters: defaults, then the file, then --set overrides. Unknown keys are
    /// refused with their name.
    pub fn load<T: DeserializeOwned + serde::Serialize + Default>(&self) -> Result<T> {
        let file = self.params.clone().or_else(|| std::env::var_os("PIPELINE_PARAMS").map(PathBuf::from));
        let mut v = serde_json::to_value(T::default())?;
        if let Some(f) = &file {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("cannot read params file {}", f.display()))?;
            let given: Value = serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            merge(&mut v, given);
        }
        for s in &self.set {
            let (k, val) = s.split_once('=').with_context(|| format!("--set `{s}` is not KEY=VALUE"))?;
            let parsed: Value = serde_saphyr::from_str(val).unwrap_or(Value::String(val.to_string()));
            let mut node = &mut v;
            for part in k.split('.') {
                if !node.is_object() {
                    bail!("--set {k}: `{part}` is inside a value that is not a mapping");
                }
                node = node.as_object_mut().unwrap().entry(part.to_string()).or_insert(Value::Null);
            }
            *node = parsed;
        }
        let where_ = file.as_deref().map(|f| format!(" in {}", f.display())).unwrap_or_default();
        serde_json::from_value(v).map_err(|e| anyhow::anyhow!("invalid parameters{where_}: {e}"))
    }
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Progress over a known number of items: an indicatif bar in a terminal, otherwise a line
/// every few seconds (so logs show rate and ETA too).
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: String,
    total: u64,
    done: u64,
    start: Instant,
    last_line: Instant,
}

impl Progress {
    pub fn new(what: &str, total: usize) -> Progress {
        use std::io::IsTerminal;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
                    .unwrap()
                    .progress_chars("=> "),
            );
            b.set_message(what.to_string());
            b
        });
        Progress {
            bar,
            what: what.into(),
            total: total as u64,
            done: 0,
            start: Instant::now(),
            last_line: Instant::now(),
        }
    }

    pub fn inc(&mut self, n: usize) {
        self.done += n as u64;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        } else if self.last_line.elapsed() > Duration::from_secs(5) || self.done == self.total {
            self.last_line = Instant::now();
            let secs = self.start.elapsed().as_secs_f64();
            let rate = self.done as f64 / secs.max(1e-9);
            let eta = (self.total.saturating_sub(self.done)) as f64 / rate.max(1e-9);
            eprintln!("{}: {}/{} ({rate:.2}/s, ETA {eta:.0} s)", self.what, self.done, self.total);
        }
    }

    pub fn set_message(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.set_message(format!("{} {msg}", self.what));
        }
    }

    pub fn finish(self) -> Duration {
        if let Some(b) = &self.bar {
            b.finish();
        }
        self.start.elapsed()
    }
}

/// Write a small JSON summary atomically.
pub fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(v)? + "\n")?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize, Default, Debug, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct P {
        k: usize,
        name: String,
        inner: Inner,
    }
    #[derive(serde::Deserialize, serde::Serialize, Default, Debug, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        r: usize,
    }

    #[test]
    fn params_merge_file_and_overrides_and_refuse_unknown_keys() {
        let f = std::env::temp_dir().join(format!("wm-params-{}.yaml", std::process::id()));
        std::fs::write(&f, "k: 6\nname: kmeans\n").unwrap();
        let args = ParamArgs { params: Some(f.clone()), set: vec!["k=8".into(), "inner.r=4".into()] };
        let p: P = args.load().unwrap();
        assert_eq!(p, P { k: 8, name: "kmeans".into(), inner: Inner { r: 4 } });
        std::fs::write(&f, "k: 6\nkk: 1\n").unwrap();
        let err = ParamArgs { params: Some(f.clone()), set: vec![] }.load::<P>().unwrap_err().to_string();
        assert!(err.contains("kk"), "{err}");
    }
}
