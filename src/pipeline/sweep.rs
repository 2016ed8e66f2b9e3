//! `pipeline sweep`: run the pipeline once per combination of parameter values and compare.
//!
//! Every variant runs in the workspace like `pipeline run --set ...`, so a stage whose inputs a
//! variant does not change is not run again, and a variant seen before is restored from the
//! run cache. After each variant its outs are hard-linked into `OUT/VARIANT/` (a separate
//! output directory that costs no space; outs a stage writes in place are copied; treat these
//! directories as read-only, as writing into a file there writes into the workspace's file
//! too, which `pipeline status` then reports as changed) and its metrics files are read. Last, the manifest's
//! own parameters run again (restored from the run cache when they ran before), so the
//! workspace ends as `pipeline.yaml` says, and a table compares every numeric metric.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::manifest::{Manifest, OutKind, normalize, path_overlaps};
use super::run_cache::{link_or_copy, remove_any, written_in_staging};
use super::runner::{Outcome, RunOptions, run};

/// One combination of `--set` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// `cluster.k=4+gate.lr=0.01`; `base` for the manifest's own parameters.
    pub name: String,
    pub sets: Vec<(String, String)>,
}

/// Split `v1,v2,[a, b]` at the commas that are not inside brackets or quotes.
pub fn split_values(text: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None::<char>);
    for c in text.chars() {
        match (c, quote) {
            ('"' | '\'', None) => quote = Some(c),
            (q, Some(open)) if q == open => quote = None,
            ('[' | '{', None) => depth += 1,
            (']' | '}', None) => depth -= 1,
            (',', None) if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur.trim().to_string());
    out
}

/// The cartesian product of `KEY=V1,V2,...` specs, first key varying slowest.
pub fn variants(specs: &[String]) -> Result<Vec<Variant>> {
    let mut axes: Vec<(String, Vec<String>)> = Vec::new();
    for s in specs {
        let Some((k, v)) = s.split_once('=') else { bail!("--set `{s}` is not KEY=VALUE[,VALUE...]") };
        let values = split_values(v);
        if values.iter().any(|v| v.is_empty()) {
            bail!("--set `{s}` has an empty value");
        }
        axes.push((k.trim().to_string(), values));
    }
    let mut out = vec![Variant { name: String::new(), sets: Vec::new() }];
    for (key, values) in &axes {
        out = out
            .iter()
            .flat_map(|v| {
                values.iter().map(move |val| {
                    let mut sets = v.sets.clone();
                    sets.push((key.clone(), val.clone()));
                    Variant { name: String::new(), sets }
                })
            })
            .collect();
    }
    for v in &mut out {
        v.name = v.sets.iter().map(|(k, val)| format!("{k}={}", dir_safe(val))).collect::<Vec<_>>().join("+");
    }
    Ok(out)
}

fn dir_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_alphanumeric() || "._-=,".contains(c) { c } else { '_' }).collect()
}

/// Numeric leaves of a JSON document under dotted keys (array items by index).
pub fn flatten_numbers(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(prefix.to_string(), x);
            }
        }
        Value::Object(o) => {
            for (k, child) in o {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten_numbers(&key, child, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                // Rows such as {"system": "base", "split": "test", "wer": 0.4} are named by their
                // text fields (`results[system=base,split=test].wer`), not by position.
                let label: Vec<String> = child
                    .as_object()
                    .map(|o| o.iter().filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?))).collect())
                    .unwrap_or_default();
                let key =
                    if label.is_empty() { format!("{prefix}.{i}") } else { format!("{prefix}[{}]", label.join(",")) };
                flatten_numbers(&key, child, out);
            }
        }
        _ => {}
    }
}

/// Whether `part` is one of the parts of a metric name: `wer` is a part of
/// `m.json:results[system=base].wer`, not of `m.json:lower`.
pub fn names_part(name: &str, part: &str) -> bool {
    name.split(|c| ".:[],".contains(c)).any(|p| p == part || p.strip_suffix(part).is_some_and(|k| k.ends_with('=')))
}

pub struct SweepResult {
    /// Variant name, whether all its stages completed, its metrics (`FILE:key` -> value).
    pub rows: Vec<(String, bool, BTreeMap<String, f64>)>,
    pub table: PathBuf,
}

/// Run every variant, then the manifest's own parameters; see the module docs.
/// `only`: keep the metrics that have one of these as a part of their name (all when empty).
pub fn sweep(
    base: &Manifest,
    specs: &[String],
    opts: &RunOptions,
    metrics: &[String],
    only: &[String],
    out: &Path,
) -> Result<SweepResult> {
    let mut all = variants(specs)?;
    all.push(Variant { name: "base".into(), sets: Vec::new() });
    // Every variant's manifest, so that a bad key or value is refused before anything runs.
    let manifests: Vec<Manifest> = all
        .iter()
        .map(|v| {
            let mut m = base.clone();
            v.sets.iter().try_for_each(|(k, val)| m.set_param(k, val)).map(|()| m).map_err(anyhow::Error::from)
        })
        .collect::<Result<_>>()?;
    // Distinct directory names, even where two values map to the same safe name.
    let mut seen = std::collections::HashSet::new();
    for v in &mut all {
        let stem = v.name.clone();
        let mut n = 1;
        while !seen.insert(v.name.clone()) {
            n += 1;
            v.name = format!("{stem}-{n}");
        }
    }
    let mut metric_files: Vec<String> = base
        .stages
        .iter()
        .flat_map(|s| s.outs.iter())
        .filter(|o| o.kind == OutKind::Metric)
        .map(|o| o.path.clone())
        .collect();
    metric_files.extend(metrics.iter().map(|f| normalize(f)));
    let out_rel = normalize(&out.to_string_lossy());
    if let Some(o) = base.stages.iter().flat_map(|s| s.outs.iter()).find(|o| path_overlaps(&o.path, &out_rel)) {
        bail!("--out {out_rel} overlaps the out {} of the pipeline; choose another directory", o.path);
    }
    let out = base.root.join(out);
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

    let mut rows = Vec::new();
    for (n, (v, m)) in all.iter().zip(&manifests).enumerate() {
        let what = if v.sets.is_empty() { "the manifest's own parameters".to_string() } else { v.name.clone() };
        eprintln!("\n=== sweep {}/{}: {what} ===", n + 1, all.len());
        let results = match run(m, opts) {
            Ok(r) => r,
            Err(e) if !v.sets.is_empty() => {
                eprintln!("\nsweep stopped: {e:#}\n=== putting the manifest's own parameters back ===");
                if let Err(e2) = run(base, opts) {
                    eprintln!("that failed too: {e2:#}; `pipeline status` says what is stale");
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let ok = results.iter().all(|(_, o)| matches!(o, Outcome::UpToDate | Outcome::Ran(_) | Outcome::Restored));
        // Only what this variant's run brought up to date is its result: not the outs of a
        // stage that failed or was skipped (they are the previous variant's), nor of stages
        // outside the sweep's targets.
        let good: Vec<&str> = results
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::UpToDate | Outcome::Ran(_) | Outcome::Restored))
            .map(|(name, _)| name.as_str())
            .collect();
        let owner = |path: &str| m.stages.iter().find(|s| s.outs.iter().any(|o| path_overlaps(&o.path, path)));
        // Its outs, hard-linked into a directory of its own.
        let dir = out.join(&v.name);
        remove_any(&dir)?;
        fs::create_dir_all(&dir)?;
        for s in m.stages.iter().filter(|s| good.contains(&s.name.as_str())) {
            for o in &s.outs {
                let from = m.root.join(&o.path);
                if from.exists() {
                    let to = dir.join(&o.path);
                    fs::create_dir_all(to.parent().unwrap_or(&dir))?;
                    link_or_copy(&from, &to, written_in_staging(s, &o.path))
                        .with_context(|| format!("cannot copy {} into {}", o.path, dir.display()))?;
                }
            }
        }
        let sets: BTreeMap<&str, &str> = v.sets.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        fs::write(dir.join("sweep-params.json"), serde_json::to_string_pretty(&sets)?)?;
        let mut values = BTreeMap::new();
        for f in &metric_files {
            if owner(f).is_some_and(|s| !good.contains(&s.name.as_str())) {
                continue;
            }
            let Ok(text) = fs::read_to_string(m.root.join(f)) else { continue };
            match serde_json::from_str::<Value>(&text) {
                Ok(doc) => {
                    let mut flat = BTreeMap::new();
                    flatten_numbers("", &doc, &mut flat);
                    values.extend(
                        flat.into_iter()
                            .map(|(k, x)| (format!("{f}:{k}"), x))
                            .filter(|(k, _)| only.is_empty() || only.iter().any(|o| names_part(k, o))),
                    );
                }
                Err(e) => eprintln!("warning: metrics file {f} is not JSON: {e}"),
            }
        }
        rows.push((v.name.clone(), ok, values));
    }
    // The table: one row per metric, one column per variant, base first.
    rows.rotate_right(1);
    let mut keys: Vec<&String> = rows.iter().flat_map(|r| r.2.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut tsv = String::from("metric");
    for (name, ok, _) in &rows {
        tsv += &format!("\t{name}{}", if *ok { "" } else { " (FAILED)" });
    }
    tsv.push('\n');
    for k in keys {
        tsv += k;
        for (_, _, vals) in &rows {
            tsv += &vals.get(k).map(|x| format!("\t{x}")).unwrap_or_else(|| "\t".into());
        }
        tsv.push('\n');
    }
    let table = out.join("comparison.tsv");
    fs::write(&table, tsv)?;
    Ok(SweepResult { rows, table })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_values_at_top_level_commas() {
        assert_eq!(split_values("4,6, 8"), ["4", "6", "8"]);
        assert_eq!(split_values("[256, 128],[64]"), ["[256, 128]", "[64]"]);
        assert_eq!(split_values("'a,b',c"), ["'a,b'", "c"]);
    }

    #[test]
    fn variants_are_the_cartesian_product() {
        let v = variants(&["cluster.k=4,8".into(), "gate.lr=0.1,0.01,0.001".into()]).unwrap();
        assert_eq!(v.len(), 6);
        assert_eq!(v[0].name, "cluster.k=4+gate.lr=0.1");
        assert_eq!(v[5].sets, [("cluster.k".to_string(), "8".to_string()), ("gate.lr".into(), "0.001".into())]);
        assert_eq!(variants(&["gate.hidden=[256, 128]".into()]).unwrap()[0].name, "gate.hidden=_256,_128_");
        assert!(variants(&["cluster.k".into()]).is_err());
        assert!(variants(&["cluster.k=4,".into()]).is_err());
    }

    #[test]
    fn only_matches_whole_name_parts() {
        assert!(names_part("summary.json:ari", "ari"));
        assert!(!names_part("summary.json:labels_by_expert.0.caribbean_male", "ari"));
        assert!(names_part("m.json:results[split=test,system=base].wer", "wer"));
        assert!(names_part("m.json:results[split=test,system=base].wer", "base"));
        assert!(!names_part("m.json:lower", "wer"));
    }

    #[test]
    fn flattens_numeric_leaves() {
        let doc: Value = serde_json::json!({
            "wer": {"base": 0.4, "by_domain": [0.1, 0.2]}, "name": "x", "n": 3,
            "results": [{"system": "base", "split": "test", "wer": 0.5}, {"system": "dense", "wer": 0.25}],
        });
        let mut out = BTreeMap::new();
        flatten_numbers("", &doc, &mut out);
        let keys: Vec<&str> = out.keys().map(|s| s.as_str()).collect();
        assert_eq!(
            keys,
            [
                "n",
                "results[split=test,system=base].wer",
                "results[system=dense].wer",
                "wer.base",
                "wer.by_domain.0",
                "wer.by_domain.1"
            ]
        );
        assert_eq!(out["wer.by_domain.1"], 0.2);
        assert_eq!(out["results[system=dense].wer"], 0.25);
    }
}
