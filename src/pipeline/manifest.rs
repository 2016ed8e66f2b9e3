//! `pipeline.yaml`: the typed manifest, variable substitution and validation.
//!
//! Everything a user can get wrong in the manifest is refused here, before anything runs, with
//! the file, the line and the key ([`ManifestError`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

/// A manifest problem, located in its file.
#[derive(Debug, Clone)]
pub struct ManifestError {
    pub file: PathBuf,
    pub line: Option<u64>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file.display(), line)?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ManifestError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    vars: IndexMap<String, Spanned<Value>>,
    stages: IndexMap<String, Spanned<RawStage>>,
    #[serde(default)]
    params: Option<Value>,
    /// Where stages run by default: `local` or `slurm` (`pipeline run --executor` overrides).
    #[serde(default)]
    executor: Option<Executor>,
    /// sbatch options for every stage (a stage's own `slurm:` overrides them).
    #[serde(default)]
    slurm: Option<SlurmOptions>,
}

/// Where the runner starts stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// Processes on this machine.
    #[default]
    Local,
    /// `sbatch` jobs (job arrays for sharded stages) on a Slurm cluster.
    Slurm,
}

impl std::str::FromStr for Executor {
    type Err = String;
    fn from_str(s: &str) -> Result<Executor, String> {
        match s {
            "local" => Ok(Executor::Local),
            "slurm" => Ok(Executor::Slurm),
            other => Err(format!("unknown executor `{other}` (local or slurm)")),
        }
    }
}

/// sbatch options: the manifest's `slurm:` section, overridden per stage by the stage's own.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Time limit, e.g. `2:00:00`.
    pub time: Option<String>,
    /// Memory per node (`16G`), or per CPU with `mem_per_cpu`.
    pub mem: Option<String>,
    pub mem_per_cpu: Option<String>,
    pub cpus_per_task: Option<u32>,
    /// `--gpus` (e.g. `1`, `a100:1`) or a generic resource (`gpu:1`).
    pub gpus: Option<String>,
    pub gres: Option<String>,
    pub constraint: Option<String>,
    pub exclude: Option<String>,
    /// At most this many tasks of a job array at once (`--array=0-N%K`).
    pub array_throttle: Option<usize>,
    /// More sbatch arguments, passed as they are.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

impl SlurmOptions {
    /// `self` with the fields `over` sets replacing ours (extra args appended).
    pub fn overridden_by(&self, over: &SlurmOptions) -> SlurmOptions {
        macro_rules! pick {
            ($($f:ident),*) => { SlurmOptions { $($f: over.$f.clone().or_else(|| self.$f.clone()),)* extra_args: self.extra_args.iter().chain(&over.extra_args).cloned().collect() } };
        }
        pick!(
            partition,
            account,
            qos,
            time,
            mem,
            mem_per_cpu,
            cpus_per_task,
            gpus,
            gres,
            constraint,
            exclude,
            array_throttle
        )
    }

    /// The sbatch flags.
    pub fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        let mut flag = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                a.push(format!("--{name}={v}"));
            }
        };
        flag("partition", &self.partition);
        flag("account", &self.account);
        flag("qos", &self.qos);
        flag("time", &self.time);
        flag("mem", &self.mem);
        flag("mem-per-cpu", &self.mem_per_cpu);
        flag("cpus-per-task", &self.cpus_per_task.map(|c| c.to_string()));
        flag("gpus", &self.gpus);
        flag("gres", &self.gres);
        flag("constraint", &self.constraint);
        flag("exclude", &self.exclude);
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    cmd: Spanned<String>,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    deps: Vec<Spanned<String>>,
    #[serde(default)]
    params: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    outs: Vec<Spanned<String>>,
    #[serde(default)]
    metrics: Vec<Spanned<String>>,
    #[serde(default)]
    plots: Vec<Spanned<String>>,
    /// Run as this many shards (`--shard i/N` appended to the command).
    #[serde(default)]
    shards: Option<usize>,
    /// sbatch options of this stage (over the manifest's `slurm:`).
    #[serde(default)]
    slurm: Option<SlurmOptions>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// What kind of output a path is; metrics and plots are outputs too, listed separately so that
/// reports can find them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum OutKind {
    Out,
    Metric,
    Plot,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Output {
    pub path: String,
    pub kind: OutKind,
    /// Line of the manifest that declares it.
    pub line: u64,
}

/// One validated stage, with variables substituted.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Stage {
    pub name: String,
    pub desc: Option<String>,
    pub cmd: String,
    pub deps: Vec<String>,
    /// Manifest line of each dep.
    pub dep_lines: Vec<u64>,
    /// Dotted keys into the manifest's `params:` section.
    pub params: Vec<String>,
    pub outs: Vec<Output>,
    pub line: u64,
    /// Shards the stage runs as (1 = unsharded).
    pub shards: usize,
    /// sbatch options (the manifest's, overridden by the stage's).
    pub slurm: SlurmOptions,
}

/// A validated manifest (serialized for the Slurm executor's job steps, which must see the
/// same stages, variables and `--set` parameters as the runner that submitted them).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Manifest {
    pub file: PathBuf,
    /// Directory that relative paths and commands are resolved against.
    pub root: PathBuf,
    pub vars: IndexMap<String, String>,
    /// Stages in a topological order (ties broken by their order in the file).
    pub stages: Vec<Stage>,
    pub params: Value,
    /// upstream[i] = indices of the stages whose outs stage i depends on.
    pub upstream: Vec<Vec<usize>>,
    pub executor: Executor,
}

impl Manifest {
    /// Read and validate a manifest; `overrides` replace (or add) variables.
    pub fn load(file: &Path, overrides: &[(String, String)]) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(file).map_err(|e| ManifestError {
            file: file.to_path_buf(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        let root = file
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Self::parse(&text, file, &root, overrides)
    }

    pub fn parse(
        text: &str,
        file: &Path,
        root: &Path,
        overrides: &[(String, String)],
    ) -> Result<Manifest, ManifestError> {
        let err = |line: Option<u64>, key: &str, message: String| ManifestError {
            file: file.to_path_buf(),
            line,
            key: key.to_string(),
            message,
        };
        let protected = protect(text);
        let raw: RawManifest = serde_saphyr::from_str(&protected).map_err(|e| {
            let line = e.location().map(|l| l.line());
            let message = first_line(&e);
            let key = unknown_key_name(&message).unwrap_or_default();
            // The parser notices an unclosed bracket or quote lines later: point at its opening.
            match line.and_then(|l| unclosed_before(text, l)) {
                Some((at, what)) if Some(at) != line => err(
                    Some(at),
                    &key,
                    format!(
                        "{what} opened here is not closed (the YAML parser noticed at line {}: {message})",
                        line.unwrap()
                    ),
                ),
                _ => err(line, &key, message),
            }
        })?;

        let mut vars = IndexMap::new();
        for (name, value) in &raw.vars {
            let s = scalar_string(&value.value).ok_or_else(|| {
                err(
                    Some(value.referenced.line()),
                    &format!("vars.{name}"),
                    "a variable must be a string, number or boolean".into(),
                )
            })?;
            vars.insert(name.clone(), s);
        }
        for (name, value) in overrides {
            vars.insert(name.clone(), value.clone());
        }
        let params = raw.params.unwrap_or(Value::Object(Default::default()));

        let mut stages = Vec::new();
        for (name, spanned) in &raw.stages {
            let rs = &spanned.value;
            let stage_line = spanned.referenced.line();
            let sub = |field: &str, s: &Spanned<String>| -> Result<String, ManifestError> {
                substitute(&s.value, &vars).map_err(|var| {
                    err(
                        Some(s.referenced.line()),
                        &format!("stages.{name}.{field}"),
                        format!("undefined variable `${{{var}}}` (define it under `vars:` or pass --var {var}=...)"),
                    )
                })
            };
            let cmd = sub("cmd", &rs.cmd)?;
            let mut deps = Vec::new();
            let mut dep_lines = Vec::new();
            for d in &rs.deps {
                deps.push(normalize(&sub("deps", d)?));
                dep_lines.push(d.referenced.line());
            }
            let mut outs = Vec::new();
            for (field, kind, list) in [
                ("outs", OutKind::Out, &rs.outs),
                ("metrics", OutKind::Metric, &rs.metrics),
                ("plots", OutKind::Plot, &rs.plots),
            ] {
                for o in list {
                    outs.push(Output { path: normalize(&sub(field, o)?), kind, line: o.referenced.line() });
                }
            }
            let mut keys = Vec::new();
            if let Some(p) = &rs.params {
                let list = match &p.value {
                    OneOrMany::One(s) => vec![s.clone()],
                    OneOrMany::Many(v) => v.clone(),
                };
                for key in list {
                    if lookup(&params, &key).is_none() {
                        return Err(err(
                            Some(p.referenced.line()),
                            &format!("stages.{name}.params"),
                            format!("params key `{key}` does not exist in the `params:` section"),
                        ));
                    }
                    keys.push(key);
                }
            }
            if rs.shards == Some(0) {
                return Err(err(
                    Some(stage_line),
                    &format!("stages.{name}.shards"),
                    "shards must be at least 1".into(),
                ));
            }
            let slurm = match &rs.slurm {
                Some(o) => raw.slurm.clone().unwrap_or_default().overridden_by(o),
                None => raw.slurm.clone().unwrap_or_default(),
            };
            stages.push(Stage {
                name: name.clone(),
                desc: rs.desc.clone(),
                cmd,
                deps,
                dep_lines,
                params: keys,
                outs,
                line: stage_line,
                shards: rs.shards.unwrap_or(1),
                slurm,
            });
        }

        // Two stages (or one stage twice) writing the same path, or one inside the other.
        let mut owners: Vec<(&str, usize, u64)> = Vec::new();
        for (i, s) in stages.iter().enumerate() {
            for o in &s.outs {
                for (p, j, _) in &owners {
                    if path_overlaps(p, &o.path) {
                        return Err(err(
                            Some(o.line),
                            &format!("stages.{}.outs", s.name),
                            format!("output `{}` overlaps output `{}` of stage `{}`", o.path, p, stages[*j].name),
                        ));
                    }
                }
                owners.push((&o.path, i, s.line));
            }
        }

        // Edges: a dep produced by a stage (equal to, inside or containing one of its outs).
        let mut upstream = vec![Vec::new(); stages.len()];
        for (i, s) in stages.iter().enumerate() {
            for (d, &dep_line) in s.deps.iter().zip(&s.dep_lines) {
                let producers: Vec<usize> =
                    owners.iter().filter(|(p, _, _)| path_overlaps(p, d)).map(|(_, j, _)| *j).collect();
                if producers.is_empty() && !root.join(d).exists() {
                    return Err(err(
                        Some(dep_line),
                        &format!("stages.{}.deps", s.name),
                        format!("dependency `{d}` does not exist and no stage produces it"),
                    ));
                }
                for j in producers {
                    if !upstream[i].contains(&j) {
                        upstream[i].push(j);
                    }
                }
            }
        }

        let order = topo_order(&stages, &upstream).map_err(|cycle| {
            let names: Vec<&str> = cycle.iter().map(|&i| stages[i].name.as_str()).collect();
            err(
                Some(stages[cycle[0]].line),
                &format!("stages.{}", stages[cycle[0]].name),
                format!("dependency cycle: {} -> {}", names.join(" -> "), names[0]),
            )
        })?;
        // Re-index everything in topological order.
        let mut new_index = vec![0; stages.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let sorted: Vec<Stage> = order.iter().map(|&i| stages[i].clone()).collect();
        let upstream_sorted: Vec<Vec<usize>> = order
            .iter()
            .map(|&i| {
                let mut u: Vec<usize> = upstream[i].iter().map(|&j| new_index[j]).collect();
                u.sort();
                u
            })
            .collect();

        Ok(Manifest {
            file: file.to_path_buf(),
            root: root.to_path_buf(),
            vars,
            stages: sorted,
            params,
            upstream: upstream_sorted,
            executor: raw.executor.unwrap_or_default(),
        })
    }

    /// Override one parameter (`cluster.k`, `experts.lora.r`) for this run; the key must exist
    /// in the `params:` section. The value is YAML: `8`, `kmeans`, `[256, 128]`.
    /// `pipeline run --set key=value`: errors are manifest errors naming the key (exit 2).
    pub fn set_param(&mut self, key: &str, value: &str) -> Result<(), ManifestError> {
        let err = |message: String| ManifestError {
            file: self.file.clone(),
            line: None,
            key: format!("params.{key}"),
            message,
        };
        if lookup(&self.params, key).is_none() {
            return Err(err(format!("--set {key}={value}: no such key in the manifest's params")));
        }
        let parsed: Value =
            serde_saphyr::from_str(value).map_err(|e| err(format!("--set {key}={value}: not a YAML value: {e}")))?;
        let mut node = &mut self.params;
        for part in key.split('.') {
            node = node.as_object_mut().and_then(|o| o.get_mut(part)).expect("looked up above");
        }
        *node = parsed;
        Ok(())
    }

    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// The parameters a stage sees: its single key's subtree, or an object keyed by its keys.
    pub fn stage_params(&self, stage: &Stage) -> Value {
        match stage.params.as_slice() {
            [] => Value::Object(Default::default()),
            [one] => lookup(&self.params, one).cloned().unwrap_or(Value::Null),
            many => Value::Object(
                many.iter().map(|k| (k.clone(), lookup(&self.params, k).cloned().unwrap_or(Value::Null))).collect(),
            ),
        }
    }

    /// Indices of the stages downstream of `i` (not including `i`).
    pub fn downstream(&self, i: usize) -> Vec<usize> {
        let mut out = vec![false; self.stages.len()];
        // Topological order: a downstream stage always comes after.
        for j in i + 1..self.stages.len() {
            if self.upstream[j].iter().any(|&u| u == i || out[u]) {
                out[j] = true;
            }
        }
        (0..self.stages.len()).filter(|&j| out[j]).collect()
    }

    /// Indices of `i` and everything upstream of it, in topological order.
    pub fn with_upstream(&self, i: usize) -> Vec<usize> {
        let mut keep = vec![false; self.stages.len()];
        keep[i] = true;
        for j in (0..=i).rev() {
            if keep[j] {
                for &u in &self.upstream[j] {
                    keep[u] = true;
                }
            }
        }
        (0..self.stages.len()).filter(|&j| keep[j]).collect()
    }
}

fn first_line(e: &serde_saphyr::Error) -> String {
    // The crate renders a source snippet after the message; we print our own location.
    let full = e.to_string();
    let line = full.lines().next().unwrap_or("invalid YAML").trim().to_string();
    // Strip a trailing " at line X column Y" the crate may add.
    match line.find(" at line ") {
        Some(pos) => line[..pos].to_string(),
        None => line,
    }
}

fn unknown_key_name(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

// `${name}` is not valid inside YAML flow collections (`deps: [${data}]`, as DVC users
// write it): `{` and `}` are flow indicators there. Before parsing, each `${...}` becomes a pair
// of private-use characters that plain scalars may hold; `substitute` reads them back.
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

fn protect(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find(|c| c == '}' || c == '\n') {
            Some(end) if after.as_bytes()[end] == b'}' => {
                out.push_str(&rest[..start]);
                out.push(OPEN);
                out.push_str(&after[..end]);
                out.push(CLOSE);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str(&rest[..start + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Replace `${name}` (protected or not) by its value; the error is the first undefined name.
pub fn substitute(s: &str, vars: &IndexMap<String, String>) -> Result<String, String> {
    let s = protect(s);
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len_utf8()..];
        let end = after.find(CLOSE).ok_or_else(|| after.to_string())?;
        let name = after[..end].trim();
        out.push_str(vars.get(name).ok_or_else(|| name.to_string())?);
        rest = &after[end + CLOSE.len_utf8()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `./a//b/` -> `a/b`.
pub fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let joined = parts.join("/");
    if p.starts_with('/') { format!("/{joined}") } else { joined }
}

/// True when one path is the other or lies inside it.
pub fn path_overlaps(a: &str, b: &str) -> bool {
    a == b || b.starts_with(&format!("{a}/")) || a.starts_with(&format!("{b}/"))
}

/// A dotted lookup (`cluster.k`) in a params tree.
pub fn lookup<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(v, |node, part| node.as_object()?.get(part))
}

/// Kahn's algorithm, ties broken by file order; on a cycle, returns the stages of one cycle.
fn topo_order(stages: &[Stage], upstream: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = stages.len();
    let mut indeg: Vec<usize> = upstream.iter().map(|u| u.len()).collect();
    let mut order = Vec::with_capacity(n);
    let mut done = vec![false; n];
    while order.len() < n {
        let Some(next) = (0..n).find(|&i| !done[i] && indeg[i] == 0) else {
            // Walk upstream edges among the remaining stages until one repeats.
            let mut seen: HashMap<usize, usize> = HashMap::new();
            let mut path = Vec::new();
            let mut cur = (0..n).find(|&i| !done[i]).unwrap();
            loop {
                if let Some(&pos) = seen.get(&cur) {
                    let mut cycle: Vec<usize> = path[pos..].to_vec();
                    cycle.reverse(); // upstream walk -> producer-first order
                    // Start at the stage defined first in the file, so the report is stable.
                    let first = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap();
                    cycle.rotate_left(first);
                    return Err(cycle);
                }
                seen.insert(cur, path.len());
                path.push(cur);
                cur = *upstream[cur].iter().find(|&&u| !done[u]).unwrap();
            }
        };
        done[next] = true;
        order.push(next);
        for (j, u) in upstream.iter().enumerate() {
            if u.contains(&next) {
                indeg[j] -= 1;
            }
        }
    }
    Ok(order)
}

/// Flatten a params tree into dotted keys -> JSON text, for readable diffs.
pub fn flatten_params(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten_params(&key, child, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Replace whole-path occurrences of `path` in a command (also as the prefix of a longer path,
/// `path/file`), leaving `pathX` and `x/path` alone.
pub fn replace_path_token(cmd: &str, path: &str, with: &str) -> (String, bool) {
    let is_start = |c: Option<char>| c.is_none_or(|c| matches!(c, ' ' | '\t' | '=' | '"' | '\'' | ',' | ':'));
    let is_end = |c: Option<char>| c.is_none_or(|c| matches!(c, ' ' | '\t' | '"' | '\'' | '/' | ',' | ';' | ':' | ')'));
    let mut out = String::with_capacity(cmd.len());
    let mut hit = false;
    let mut i = 0;
    while i < cmd.len() {
        if cmd[i..].starts_with(path)
            && is_start(cmd[..i].chars().next_back())
            && is_end(cmd[i + path.len()..].chars().next())
        {
            out.push_str(with);
            i += path.len();
            hit = true;
        } else {
            let c = cmd[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    (out, hit)
}

/// The last bracket (`[`, `{`) or quote still open when the YAML text reaches line `upto`
/// (1-based, inclusive): (the line it opened on, what it is). Comments are skipped; block
/// scalars are not understood (a hint for error messages, not a parser).
fn unclosed_before(text: &str, upto: u64) -> Option<(u64, &'static str)> {
    let mut open: Vec<(u64, char)> = Vec::new();
    let mut quote: Option<(u64, char)> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        if n > upto {
            break;
        }
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some((_, '\'')) if c == '\'' => {
                    if chars.peek() == Some(&'\'') {
                        chars.next(); // '' inside single quotes
                    } else {
                        quote = None;
                    }
                }
                Some((_, '"')) if c == '\\' => {
                    chars.next();
                }
                Some((_, '"')) if c == '"' => quote = None,
                Some(_) => {}
                None => match c {
                    '#' if prev.is_whitespace() => break,
                    '\'' | '"' if prev.is_whitespace() || matches!(prev, '[' | '{' | ',' | ':') => quote = Some((n, c)),
                    '[' | '{' => open.push((n, c)),
                    ']' | '}' => {
                        open.pop();
                    }
                    _ => {}
                },
            }
            prev = c;
        }
    }
    match (quote, open.last()) {
        (Some((n, c)), _) => Some((n, if c == '"' { "the `\"` quote" } else { "the `'` quote" })),
        (None, Some(&(n, c))) => Some((n, if c == '[' { "the `[`" } else { "the `{`" })),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let dir = std::env::temp_dir();
        Manifest::parse(text, Path::new("pipeline.yaml"), &dir, &[])
    }

    #[test]
    fn unclosed_bracket_or_quote_is_reported_where_it_opens() {
        let base =
            "stages:\n  a:\n    cmd: make a\n    outs: [a, c]\n  b:\n    cmd: make b\n    deps: [a]\n    outs: [b]\n";
        assert!(parse(base).is_ok());
        let bracket = base.replace("outs: [a, c]", "outs: [a, c");
        let e = parse(&bracket).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.to_string().contains("the `[` opened here is not closed"), "{e}");
        let quoted = base.replace("cmd: make a", "cmd: \"make a");
        let e = parse(&quoted).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("quote opened here is not closed"), "{e}");
        // Brackets and quotes in comments and in closed strings are not counted.
        let fine = base.replace("cmd: make b", "cmd: 'make [b' # [ not this \"");
        assert!(parse(&fine).is_ok());
        let other = base.replace("    outs: [b]\n", "   outs: [b]\n");
        let e = parse(&other).unwrap_err();
        assert_eq!(e.line, Some(8), "an error that is not an unclosed bracket keeps the parser's line: {e}");
    }

    #[test]
    fn substitutes_and_orders() {
        let m = parse(
            "vars:\n  out: a\nstages:\n  b:\n    cmd: use ${out}\n    deps: [${out}/x]\n    outs: [b]\n  a:\n    cmd: make ${out}\n    outs: [${out}]\n",
        )
        .unwrap();
        assert_eq!(m.stages[0].name, "a");
        assert_eq!(m.stages[1].cmd, "use a");
        assert_eq!(m.upstream[1], vec![0]);
    }

    #[test]
    fn undefined_variable_names_line_and_key() {
        let e = parse("stages:\n  a:\n    cmd: run ${nope}\n    outs: [x]\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key, "stages.a.cmd");
        assert!(e.message.contains("nope"));
    }

    #[test]
    fn cycle_is_refused() {
        let e = parse(
            "stages:\n  a:\n    cmd: x\n    deps: [b]\n    outs: [a]\n  b:\n    cmd: y\n    deps: [a]\n    outs: [b]\n",
        )
        .unwrap_err();
        assert!(e.message.contains("cycle"), "{e}");
        assert!(e.line.is_some());
    }

    #[test]
    fn flatten_and_lookup() {
        let v: Value = serde_json::json!({"cluster": {"k": 6, "algo": {"name": "kmeans"}}});
        assert_eq!(lookup(&v, "cluster.k"), Some(&serde_json::json!(6)));
        assert!(lookup(&v, "cluster.x").is_none());
        let mut flat = BTreeMap::new();
        flatten_params("", &v, &mut flat);
        assert_eq!(flat["cluster.algo.name"], "\"kmeans\"");
    }

    #[test]
    fn overlap_rules() {
        assert!(path_overlaps("a/b", "a/b/c"));
        assert!(path_overlaps("a/b/c", "a/b"));
        assert!(!path_overlaps("a/b", "a/bc"));
        assert_eq!(normalize("./a//b/"), "a/b");
    }
}
