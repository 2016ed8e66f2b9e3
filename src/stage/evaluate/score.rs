//! Evaluate, step 2: score every transcript (WER/CER after the normaliser), overall, per
//! cluster and per label; the predictions table; routing accuracy against the clusters and
//! the label-versus-expert confusion of the first evaluated split.

use std::collections::BTreeMap;

use anyhow::Result;

use super::EvaluateParams;
use super::systems::{Inputs, Run};
use crate::artifacts::table::Table;
use crate::eval::bootstrap::{self, Comparison, Pair};
use crate::eval::report::{Confusion, RoutingSummary, SystemResult};
use crate::eval::wer::{Score, score};

/// The group of per-language scores (utterances whose language is known: the dataset's column,
/// the stage's `language`, or what the embed stage detected).
pub const LANGUAGE: &str = "language";

/// Scores of every run.
pub struct Scored {
    /// One row per (system, split, utterance).
    pub predictions: Table,
    /// (system, split, overall score), in run order.
    pub results: Vec<(String, String, Score)>,
    /// Per (split, system): overall and per-group scores.
    pub by_system: BTreeMap<(String, String), SystemResult>,
    /// Per (system, split): each utterance's (example, word errors, reference words).
    pub per_utterance: BTreeMap<(String, String), Vec<(usize, u64, u64)>>,
}

pub fn score_runs(inp: &Inputs, runs: &[Run], p: &EvaluateParams) -> Result<Scored> {
    let mut predictions = Table::default();
    let mut results = Vec::new();
    let mut by_system = BTreeMap::new();
    let mut per_utterance = BTreeMap::new();
    for run in runs {
        let mut utts = Vec::with_capacity(run.rows.len());
        let mut overall = Score::default();
        let mut groups: BTreeMap<String, BTreeMap<String, Score>> = BTreeMap::new();
        for (i, e, hyp) in &run.rows {
            let ex = &inp.examples[*i];
            let s = score(p.eval.normalizer, &ex.text, hyp);
            overall += s;
            utts.push((*i, s.words.errors(), s.words.words));
            let cluster = inp.oracle[*i];
            *groups.entry("cluster".into()).or_default().entry(format!("cluster {cluster}")).or_default() += s;
            for (col, value) in &inp.labels[*i] {
                *groups.entry(col.clone()).or_default().entry(value.clone()).or_default() += s;
            }
            // (unless a group column of the dataset is already called `language`)
            if let Some(l) = ex.language.as_ref().filter(|_| !inp.labels[*i].contains_key(LANGUAGE)) {
                *groups.entry(LANGUAGE.into()).or_default().entry(l.clone()).or_default() += s;
            }
            let label = p.label_column.as_ref().and_then(|c| inp.labels[*i].get(c));
            predictions.push(vec![
                ("system", run.system.as_str().into()),
                ("split", run.split.as_str().into()),
                ("id", ex.id.as_str().into()),
                ("reference", ex.text.as_str().into()),
                ("hypothesis", hyp.as_str().into()),
                ("expert", e.map(|x| x as i64).into()),
                ("cluster", (cluster as i64).into()),
                ("label", label.cloned().into()),
                ("language", ex.language.clone().into()),
                ("substitutions", (s.words.substitutions as i64).into()),
                ("insertions", (s.words.insertions as i64).into()),
                ("deletions", (s.words.deletions as i64).into()),
                ("words", (s.words.words as i64).into()),
                ("char_errors", (s.chars.errors() as i64).into()),
                ("chars", (s.chars.words as i64).into()),
            ])?;
        }
        results.push((run.system.clone(), run.split.clone(), overall));
        per_utterance.insert((run.system.clone(), run.split.clone()), utts);
        let name = format!("{} ({})", run.system, run.split);
        let r = SystemResult { name, utterances: run.rows.len() as u64, overall, groups };
        by_system.insert((run.split.clone(), run.system.clone()), r);
    }
    Ok(Scored { predictions, results, by_system, per_utterance })
}

/// The pairs of systems compared, as (A, B): is A's WER below B's?
pub const COMPARED: [(&str, &str); 4] =
    [("mixture", "dense"), ("mixture", "base"), ("mixture", "oracle"), ("dense", "base")];

/// Paired bootstrap comparisons of [`COMPARED`] on every evaluated set, over all its utterances
/// and over each group of the group columns (e.g. seen and new voices).
pub fn compare(inp: &Inputs, scored: &Scored, p: &EvaluateParams) -> Vec<Comparison> {
    let mut out = Vec::new();
    for set in &inp.sets {
        for (a, b) in COMPARED {
            let get = |s: &str| scored.per_utterance.get(&(s.to_string(), set.name.clone()));
            let (Some(ra), Some(rb)) = (get(a), get(b)) else { continue };
            let errors_b: BTreeMap<usize, u64> = rb.iter().map(|&(i, e, _)| (i, e)).collect();
            let pairs: Vec<(Vec<String>, Pair)> = ra
                .iter()
                .filter_map(|&(i, e, w)| {
                    let groups =
                        p.group_columns.iter().filter_map(|c| Some(format!("{c}={}", inp.labels[i].get(c)?))).collect();
                    Some((groups, Pair { errors_a: e, errors_b: *errors_b.get(&i)?, words: w }))
                })
                .collect();
            out.extend(bootstrap::compare_set(a, b, &set.name, &pairs, &p.bootstrap));
        }
    }
    out
}

/// Routing accuracy of the mixture on `split` against the oracle expert (the cluster; for
/// held-out speech the nearest centre), and the confusion of the label column against the
/// chosen expert.
pub fn routing_summary(inp: &Inputs, runs: &[Run], split: &str, label_column: Option<&str>) -> RoutingSummary {
    let Some(run) = runs.iter().find(|r| r.system == "mixture" && r.split == split) else {
        return RoutingSummary { correct: 0, total: 0, confusions: vec![] };
    };
    let label = |i: usize| label_column.and_then(|c| inp.labels[i].get(c));
    let correct = run.rows.iter().filter(|(i, e, _)| Some(inp.oracle[*i]) == *e).count();
    let mut confusions = Vec::new();
    if let Some(col) = label_column {
        let mut labels: Vec<String> = run.rows.iter().filter_map(|(i, _, _)| label(*i).cloned()).collect();
        labels.sort();
        labels.dedup();
        if !labels.is_empty() {
            let mut counts = vec![vec![0u64; inp.experts]; labels.len()];
            for (i, e, _) in &run.rows {
                if let (Some(l), Some(e)) = (label(*i), e) {
                    counts[labels.iter().position(|x| x == l).unwrap()][*e] += 1;
                }
            }
            confusions.push(Confusion {
                label_column: col.to_string(),
                labels,
                experts: (0..inp.experts).map(|e| format!("expert {e}")).collect(),
                counts,
            });
        }
    }
    RoutingSummary { correct: correct as u64, total: run.rows.len() as u64, confusions }
}
