//! A stage's parameters: defaults, then a YAML or JSON file (the orchestrator's
//! PIPELINE_PARAMS, or --params), then `--set key=value` overrides. Unknown keys and values of
//! the wrong type are refused with the key's full path.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The parameter flags every stage binary takes.
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
    /// Only the parameter flags of a command line (for `--check-params`).
    pub fn from_args(args: &[String]) -> Result<ParamArgs> {
        let mut p = ParamArgs::default();
        let mut it = args.iter().skip(1);
        while let Some(a) = it.next() {
            let mut value = |flag: &str| -> Result<String> {
                match a.split_once('=') {
                    Some((_, v)) => Ok(v.to_string()),
                    None => it.next().cloned().with_context(|| format!("{flag} needs a value")),
                }
            };
            if a == "--params" || a.starts_with("--params=") {
                p.params = Some(PathBuf::from(value("--params")?));
            } else if a == "--set" || a.starts_with("--set=") {
                p.set.push(value("--set")?);
            }
        }
        Ok(p)
    }

    /// The parameters: defaults, then the file, then the overrides.
    pub fn load<T: DeserializeOwned + serde::Serialize + Default>(&self) -> Result<T> {
        let file = self.params.clone().or_else(|| std::env::var_os("PIPELINE_PARAMS").map(PathBuf::from));
        let mut v = serde_json::to_value(T::default())?;
        if let Some(f) = &file {
            merge(&mut v, read_file(f)?);
        }
        for s in &self.set {
            apply_set(&mut v, s)?;
        }
        let from = match (&file, self.set.is_empty()) {
            (Some(f), true) => format!(" in {}", f.display()),
            (Some(f), false) => format!(" in {} or --set", f.display()),
            (None, false) => " in --set".to_string(),
            (None, true) => String::new(),
        };
        from_value(v).map_err(|e| anyhow::anyhow!("invalid parameter{from}: {e}"))
    }
}

fn read_file(f: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(f).with_context(|| format!("cannot read params file {}", f.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))
}

/// `key.path=value` into `v`; the value is YAML (`--set hidden=[256,128]`), else a string.
pub fn apply_set(v: &mut Value, s: &str) -> Result<()> {
    let (k, val) = s.split_once('=').with_context(|| format!("--set `{s}` is not KEY=VALUE"))?;
    let parsed: Value = serde_saphyr::from_str(val).unwrap_or(Value::String(val.to_string()));
    let mut node = v;
    for part in k.split('.') {
        let Some(map) = node.as_object_mut() else {
            bail!("--set {k}: `{part}` is inside a value that is not a mapping");
        };
        node = map.entry(part.to_string()).or_insert(Value::Null);
    }
    *node = parsed;
    Ok(())
}

/// Deserialise, naming the path of the key that failed (`lora.r: invalid type ...`).
pub fn from_value<T: DeserializeOwned>(v: Value) -> std::result::Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path.is_empty() || path == "." { inner } else { format!("`{path}`: {inner}") }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    crate::params! {
        struct P {
            k: usize = 0,
            name: String = String::new(),
            inner: Inner = Inner::default(),
        }
    }
    crate::params! {
        struct Inner {
            r: usize = 0,
        }
    }

    #[test]
    fn file_then_overrides_and_errors_name_the_key() {
        let f = std::env::temp_dir().join(format!("wm-params-{}.yaml", std::process::id()));
        std::fs::write(&f, "k: 6\nname: kmeans\n").unwrap();
        let args = ParamArgs { params: Some(f.clone()), set: vec!["k=8".into(), "inner.r=4".into()] };
        let p: P = args.load().unwrap();
        assert_eq!(p, P { k: 8, name: "kmeans".into(), inner: Inner { r: 4 } });
        std::fs::write(&f, "k: 6\nkk: 1\n").unwrap();
        let err = ParamArgs { params: Some(f.clone()), set: vec![] }.load::<P>().unwrap_err().to_string();
        assert!(err.contains("kk") && err.contains(&f.display().to_string()), "{err}");
        let err = ParamArgs { params: None, set: vec!["inner.r=abc".into()] }.load::<P>().unwrap_err().to_string();
        assert!(err.contains("`inner.r`") && err.contains("--set"), "{err}");
        let err = ParamArgs { params: None, set: vec!["inner.x=1".into()] }.load::<P>().unwrap_err().to_string();
        assert!(err.contains("`inner.x`") || err.contains("unknown field `x`"), "{err}");
    }

    #[test]
    fn only_parameter_flags_are_taken_from_a_command_line() {
        let a: Vec<String> = ["stage-x", "--out", "o", "--set", "k=2", "--params=p.yaml", "--set=name=z"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = ParamArgs::from_args(&a).unwrap();
        assert_eq!(p.set, ["k=2", "name=z"]);
        assert_eq!(p.params, Some(PathBuf::from("p.yaml")));
    }
}
