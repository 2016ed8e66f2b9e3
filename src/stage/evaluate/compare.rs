//! `pipeline compare`: the paired bootstrap of two systems' WER on the same utterances, read
//! from evaluate's predictions tables. Two systems of one run (`--system mixture --against
//! dense`), or one system of two runs: two sweep variants (`sweeps/VARIANT/artifacts/evaluate/
//! predictions`), or a run before and after a change. The numbers are evaluate's own: with the
//! same draws (resamples, seed) on the same table it gives its `comparisons` exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};

use crate::eval::bootstrap::{self, BootstrapConfig, Comparison, Pair};

/// `pipeline compare` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// Evaluate's predictions (`artifacts/evaluate/predictions`) of system A.
    pub a: PathBuf,
    /// The predictions of system B (default: A's table).
    pub b: Option<PathBuf>,
    /// System A (base, mixture, oracle, dense).
    #[arg(long, default_value = "mixture")]
    pub system: String,
    /// System B (default: the same system, from the other table).
    #[arg(long)]
    pub against: Option<String>,
    /// Evaluated sets to compare (repeatable; default: every set of A's table).
    #[arg(long)]
    pub split: Vec<String>,
    /// Also compare within each value of the label column (e.g. each domain).
    #[arg(long)]
    pub by_label: bool,
    #[arg(long, default_value_t = 10_000)]
    pub resamples: usize,
    #[arg(long, default_value_t = 0.95)]
    pub confidence: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// One JSON object per comparison instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One utterance of one system in a predictions table.
struct Row {
    split: String,
    id: String,
    reference: String,
    label: Option<String>,
    errors: u64,
    words: u64,
}

/// The rows of `system` in the predictions at `path`, in the table's order.
fn rows(path: &Path, system: &str) -> Result<Vec<Row>> {
    let b = crate::artifacts::read_dataset(path)
        .with_context(|| format!("reading predictions {}", path.display()))?
        .concat()?;
    let col = |name: &str, t: &DataType| {
        let c = b
            .column_by_name(name)
            .with_context(|| format!("{}: no column `{name}` (not evaluate's predictions?)", path.display()))?;
        arrow::compute::cast(c, t).with_context(|| format!("{}: column `{name}`", path.display()))
    };
    let (sys, split, id, reference, label) = (
        col("system", &DataType::Utf8)?,
        col("split", &DataType::Utf8)?,
        col("id", &DataType::Utf8)?,
        col("reference", &DataType::Utf8)?,
        col("label", &DataType::Utf8)?,
    );
    let (sys, split, id, reference, label) = (
        sys.as_string::<i32>(),
        split.as_string::<i32>(),
        id.as_string::<i32>(),
        reference.as_string::<i32>(),
        label.as_string::<i32>(),
    );
    let ints: Vec<_> = ["substitutions", "insertions", "deletions", "words"]
        .iter()
        .map(|c| col(c, &DataType::Int64))
        .collect::<Result<_>>()?;
    let ints: Vec<_> = ints.iter().map(|a| a.as_primitive::<Int64Type>().clone()).collect();
    let n = |k: usize, i: usize| -> Result<u64> {
        if ints[k].is_null(i) || ints[k].value(i) < 0 {
            bail!("{}: row {i} has no edit counts", path.display());
        }
        Ok(ints[k].value(i) as u64)
    };
    let mut out = Vec::new();
    for i in (0..b.num_rows()).filter(|&i| sys.value(i) == system) {
        out.push(Row {
            split: split.value(i).to_string(),
            id: id.value(i).to_string(),
            reference: reference.value(i).to_string(),
            label: label.is_valid(i).then(|| label.value(i).to_string()),
            errors: n(0, i)? + n(1, i)? + n(2, i)?,
            words: n(3, i)?,
        });
    }
    if out.is_empty() {
        let mut have: Vec<&str> = (0..b.num_rows()).map(|i| sys.value(i)).collect();
        have.sort();
        have.dedup();
        bail!("{}: no rows of system `{system}` (it has {})", path.display(), have.join(", "));
    }
    Ok(out)
}

/// Compare system A of the predictions at `a` with system B of those at `b`, per set (and per
/// label with `by_label`), utterance by utterance.
pub fn compare(
    a: &Path,
    b: &Path,
    system_a: &str,
    system_b: &str,
    splits: &[String],
    by_label: bool,
    cfg: &BootstrapConfig,
) -> Result<Vec<Comparison>> {
    let (ra, rb) = (rows(a, system_a)?, rows(b, system_b)?);
    let of_b: HashMap<(&str, &str), &Row> = rb.iter().map(|r| ((r.split.as_str(), r.id.as_str()), r)).collect();
    let mut sets: Vec<&str> = Vec::new();
    for r in &ra {
        if !sets.contains(&r.split.as_str()) {
            sets.push(&r.split);
        }
    }
    if let Some(s) = splits.iter().find(|s| !sets.contains(&s.as_str())) {
        bail!("{}: no `{s}` rows of system `{system_a}` (sets: {})", a.display(), sets.join(", "));
    }
    let (name_a, name_b) = if a == b {
        (system_a.to_string(), system_b.to_string())
    } else {
        (format!("{system_a} ({})", a.display()), format!("{system_b} ({})", b.display()))
    };
    let mut out = Vec::new();
    for set in sets.into_iter().filter(|s| splits.is_empty() || splits.iter().any(|x| x == s)) {
        let mut pairs: Vec<(Vec<String>, Pair)> = Vec::new();
        for r in ra.iter().filter(|r| r.split == set) {
            let Some(o) = of_b.get(&(set, r.id.as_str())) else {
                bail!("{}: `{set}` utterance `{}` has no row of system `{system_b}`", b.display(), r.id);
            };
            if o.reference != r.reference || o.words != r.words {
                bail!(
                    "`{set}` utterance `{}`: the reference differs between {} and {} ({} vs {} words): \
                     another dataset or normaliser",
                    r.id,
                    a.display(),
                    b.display(),
                    r.words,
                    o.words
                );
            }
            let groups = r.label.iter().filter(|_| by_label).map(|l| format!("label={l}")).collect();
            pairs.push((groups, Pair { errors_a: r.errors, errors_b: o.errors, words: r.words }));
        }
        out.extend(bootstrap::compare_set(&name_a, &name_b, set, &pairs, cfg));
    }
    Ok(out)
}

/// The comparisons as a text table.
pub fn table(comparisons: &[Comparison]) -> String {
    let Some(first) = comparisons.first() else { return "nothing to compare\n".into() };
    let d = &first.difference;
    let mut s = format!(
        "A = {}, B = {}; paired bootstrap, {} draws: WER(A) - WER(B) in points, its {:.0}% interval (* excludes 0), share of draws A is better\n",
        first.a,
        first.b,
        d.resamples,
        100.0 * d.confidence
    );
    let set = |c: &Comparison| match &c.group {
        Some(g) => format!("{} {g}", c.split),
        None => c.split.clone(),
    };
    let w = comparisons.iter().map(|c| set(c).len()).max().unwrap_or(3).max(3);
    s.push_str(&format!("{:<w$}   utts   WER A    WER B    A - B   interval            A better\n", "set"));
    for c in comparisons {
        let d = &c.difference;
        s.push_str(&format!(
            "{:<w$}  {:>5}  {:>6.2}%  {:>6.2}%  {:>+6.2}  [{:>+6.2}, {:>+6.2}]{}  {:.3}\n",
            set(c),
            d.utterances,
            100.0 * d.wer_a,
            100.0 * d.wer_b,
            100.0 * d.delta,
            100.0 * d.low,
            100.0 * d.high,
            if d.significant() { " *" } else { "  " },
            d.a_better
        ));
    }
    s
}

/// `pipeline compare`.
pub fn run(args: &CompareArgs) -> Result<String> {
    let b = args.b.clone().unwrap_or_else(|| args.a.clone());
    let against = args.against.clone().unwrap_or_else(|| args.system.clone());
    if b == args.a && against == args.system {
        bail!("compare `{}` with another system (--against) or another run's predictions", args.system);
    }
    let cfg = BootstrapConfig { resamples: args.resamples.max(1), confidence: args.confidence, seed: args.seed };
    let c = compare(&args.a, &b, &args.system, &against, &args.split, args.by_label, &cfg)?;
    if args.json {
        return c.iter().map(|x| Ok(serde_json::to_string(x)? + "\n")).collect();
    }
    Ok(table(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::table::Table;

    /// A predictions table as evaluate writes it: (system, split, id, reference, label, S, I, D, N).
    fn write(dir: &Path, rows: &[(&str, &str, &str, &str, &str, i64, i64, i64, i64)]) {
        let mut t = Table::default();
        for &(system, split, id, reference, label, s, i, d, n) in rows {
            t.push(vec![
                ("system", system.into()),
                ("split", split.into()),
                ("id", id.into()),
                ("reference", reference.into()),
                ("hypothesis", "".into()),
                ("expert", crate::artifacts::table::Value::Null),
                ("cluster", 0i64.into()),
                ("label", label.into()),
                ("language", crate::artifacts::table::Value::Null),
                ("substitutions", s.into()),
                ("insertions", i.into()),
                ("deletions", d.into()),
                ("words", n.into()),
                ("char_errors", 0i64.into()),
                ("chars", 1i64.into()),
            ])
            .unwrap();
        }
        let _ = std::fs::remove_dir_all(dir);
        t.write(dir, &Default::default()).unwrap();
    }

    fn dir(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("wm-compare-{name}-{}", std::process::id()))
    }

    #[test]
    fn pairs_utterances_by_id_across_tables_and_systems() {
        let (a, b) = (dir("a"), dir("b"));
        // Run A: mixture and dense on two test utterances. Run B: the mixture, rows in another order.
        write(
            &a,
            &[
                ("mixture", "test", "u1", "one two", "x", 1, 0, 0, 2),
                ("mixture", "test", "u2", "three four five", "y", 0, 1, 1, 3),
                ("dense", "test", "u1", "one two", "x", 0, 0, 0, 2),
                ("dense", "test", "u2", "three four five", "y", 1, 0, 0, 3),
            ],
        );
        write(
            &b,
            &[
                ("mixture", "test", "u2", "three four five", "y", 0, 0, 0, 3),
                ("mixture", "test", "u1", "one two", "x", 2, 0, 0, 2),
            ],
        );
        let cfg = BootstrapConfig { resamples: 500, confidence: 0.95, seed: 3 };
        // Within run A: mixture (errors 1, 2) against dense (0, 1).
        let c = compare(&a, &a, "mixture", "dense", &[], false, &cfg).unwrap();
        let want = bootstrap::paired(
            &[Pair { errors_a: 1, errors_b: 0, words: 2 }, Pair { errors_a: 2, errors_b: 1, words: 3 }],
            &cfg,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(Some(c[0].difference.clone()), want);
        assert!((c[0].difference.delta - 2.0 / 5.0).abs() < 1e-12, "3/5 - 1/5");
        assert_eq!((c[0].a.as_str(), c[0].b.as_str(), c[0].split.as_str()), ("mixture", "dense", "test"));
        // Across runs: A's mixture (1, 2) against B's (2, 0), matched by id, per label too.
        let c = compare(&a, &b, "mixture", "mixture", &[], true, &cfg).unwrap();
        assert_eq!(c.len(), 3);
        assert!((c[0].difference.delta - 1.0 / 5.0).abs() < 1e-12, "{:?}", c[0]);
        assert_eq!(c[1].group.as_deref(), Some("label=x"));
        assert!((c[1].difference.delta + 0.5).abs() < 1e-12, "u1 alone: 1/2 - 2/2");
        assert!((c[2].difference.delta - 2.0 / 3.0).abs() < 1e-12, "u2 alone: 2/3 - 0");
        assert!(c[0].a.starts_with("mixture (") && c[0].a.contains("wm-compare-a"));
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }

    #[test]
    fn mismatched_tables_are_refused_with_the_utterance() {
        let (a, b) = (dir("ma"), dir("mb"));
        write(
            &a,
            &[
                ("mixture", "test", "u1", "one two", "x", 1, 0, 0, 2),
                ("mixture", "test", "u2", "three", "y", 0, 0, 0, 1),
            ],
        );
        write(&b, &[("mixture", "test", "u1", "one two", "x", 0, 0, 0, 2)]);
        let cfg = BootstrapConfig::default();
        let e = compare(&a, &b, "mixture", "mixture", &[], false, &cfg).unwrap_err().to_string();
        assert!(
            e.contains("`test` utterance `u2` has no row of system `mixture`") && e.contains("wm-compare-mb"),
            "{e}"
        );
        write(
            &b,
            &[
                ("mixture", "test", "u1", "one too", "x", 0, 0, 0, 2),
                ("mixture", "test", "u2", "three", "y", 0, 0, 0, 1),
            ],
        );
        let e = compare(&a, &b, "mixture", "mixture", &[], false, &cfg).unwrap_err().to_string();
        assert!(e.contains("utterance `u1`: the reference differs"), "{e}");
        let e = compare(&a, &b, "oracle", "mixture", &[], false, &cfg).unwrap_err().to_string();
        assert!(e.contains("no rows of system `oracle` (it has mixture)"), "{e}");
        let e = compare(&a, &a, "mixture", "mixture", &["val".into()], false, &cfg).unwrap_err().to_string();
        assert!(e.contains("no `val` rows"), "{e}");
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }
}
