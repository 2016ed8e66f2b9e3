//! Stage evaluate: WER and CER of the base model, the mixture with top-1 routing, oracle
//! routing and the dense baseline on test (and val), per cluster and per label column;
//! routing accuracy and the label-versus-expert confusion; plots; the HTML report.
//!
//! In four steps, one module each: [`systems`] transcribes, [`score`] scores, [`plots`]
//! draws, and `run` below writes the predictions, `metrics.json` and the report.

pub mod compare;
pub mod plots;
pub mod score;
pub mod shards;
pub mod systems;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Sharding, Stage};
use crate::artifacts::{Shard, standard_metadata};
use crate::dataset::Columns;
use crate::eval::EvalConfig;
use crate::eval::bootstrap::Comparison;
use crate::eval::report::{ReportData, SystemResult, plots_dir, write_report};
use crate::eval::wer::Score;

crate::params! {
    pub struct EvaluateParams {
        /// The splits of the clusters stage to evaluate; the first one is the report's.
        pub splits: Vec<String> = vec!["test".into(), "val".into()],
        pub eval: EvalConfig = EvalConfig::default(),
        /// Paired bootstrap comparisons of the systems (mixture vs dense, base, oracle; dense vs
        /// base) on every set: is a difference in WER more than the luck of the utterances?
        pub bootstrap: crate::eval::bootstrap::BootstrapConfig = Default::default(),
        /// A column of the dataset to break results down by (e.g. domain); also the rows of the
        /// label-versus-expert confusion.
        pub label_column: Option<String> = Some("domain".into()),
        /// More columns to break results down by where a dataset has them (e.g. the held-out
        /// set's voice_group: seen / new voices).
        pub group_columns: Vec<String> = vec!["voice_group".into()],
        pub device: String = "cpu".into(),
        /// The mixture decodes clips whose top routing probability is below this through the
        /// average of its experts instead of their top expert (None: as its routing.json says,
        /// by default always the top expert).
        pub fallback_below: Option<f32> = None,
        /// fp32, bf16 or f16: the base model's weights and activations when decoding (for GPUs).
        pub precision: crate::whisper::Precision = crate::whisper::Precision::Fp32,
        /// Language of every utterance when the dataset has no language column; None: the
        /// language the embed stage detected, or (held-out sets) detected when decoding.
        pub language: Option<String> = None,
        /// transcribe, or translate (the references are then English translations).
        pub task: crate::whisper::Task = crate::whisper::Task::Transcribe,
        pub columns: Columns = Columns::default(),
    }
}

/// Inputs and outputs of stage evaluate.
#[derive(clap::Args, Debug, Clone)]
pub struct EvaluatePaths {
    #[command(flatten)]
    pub base: super::ModelData,
    #[arg(long)]
    pub embeddings: PathBuf,
    /// The cluster stage's output (clusters/, splits/).
    #[arg(long)]
    pub clusters: PathBuf,
    #[arg(long)]
    pub experts: PathBuf,
    #[arg(long)]
    pub joint: PathBuf,
    #[arg(long)]
    pub dense: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    /// A held-out dataset, NAME=DIR (any supported format; repeatable): speech the training
    /// never saw, run through the same path as `pipeline transcribe --mixture`.
    #[arg(long = "heldout", value_name = "NAME=DIR")]
    pub heldout: Vec<String>,
    /// Transcribe shard i/N's slice of every set and write it to `--out`'s `transcripts/`.
    #[arg(long, conflicts_with = "merge_shards")]
    pub shard: Option<Shard>,
    /// Score, draw and report the transcripts of N shards (the step after the shards).
    #[arg(long, value_name = "N")]
    pub merge_shards: Option<usize>,
}

/// One line of `metrics.json`'s results.
#[derive(Debug, Clone, Serialize)]
pub struct ResultRow {
    pub system: String,
    pub split: String,
    pub wer: f64,
    pub cer: f64,
    pub words: u64,
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub results: Vec<ResultRow>,
    /// Share of the first split's utterances the gate sends to their cluster's expert.
    pub routing_accuracy: Option<f64>,
    /// Per evaluated set: the share routed to the oracle expert (the cluster; for held-out
    /// speech the nearest cluster centre of its embedding).
    pub routing_accuracy_by_set: BTreeMap<String, f64>,
    /// WER and CER per (system, set, language) where utterances have a language.
    pub by_language: Vec<LanguageRow>,
    /// Paired bootstrap comparisons of systems per set (and group of voices).
    pub comparisons: Vec<Comparison>,
}

/// One line of `metrics.json`'s `by_language`.
#[derive(Debug, Clone, Serialize)]
pub struct LanguageRow {
    pub system: String,
    pub split: String,
    pub language: String,
    pub wer: f64,
    pub cer: f64,
    pub words: u64,
    pub chars: u64,
    /// `cer` for languages written without spaces between words (zh, ja, th, ...), where a
    /// "word" is a whole phrase; `wer` otherwise.
    pub headline: &'static str,
}

/// What the stage prints: the result table and where the report is (a shard: what it wrote).
pub enum EvaluateReport {
    Done { results: Vec<(String, String, Score)>, comparisons: Vec<Comparison>, report: PathBuf },
    Shard { shard: Shard, transcripts: usize },
}

impl fmt::Display for EvaluateReport {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            EvaluateReport::Done { results, comparisons, report } => {
                write!(f, "{}", result_table(results))?;
                write!(f, "{}", comparison_table(comparisons))?;
                write!(f, "report: {}", report.display())
            }
            EvaluateReport::Shard { shard, transcripts } => write!(
                f,
                "evaluate shard {}/{}: {transcripts} transcripts written (scored by the merge step)",
                shard.index, shard.count
            ),
        }
    }
}

pub struct Evaluate;

impl Stage for Evaluate {
    const NAME: &'static str = "evaluate";
    const ABOUT: &'static str = "Evaluate the base model, the mixture, oracle routing and the dense baseline";
    const SHARDING: Sharding = Sharding::RowsThenMerge;
    type Paths = EvaluatePaths;
    type Params = EvaluateParams;
    type Summary = EvaluateReport;

    fn run(paths: &EvaluatePaths, p: &EvaluateParams) -> Result<EvaluateReport> {
        let mut inp = systems::Inputs::load(paths, p)?;
        let meta = standard_metadata("evaluate", Some(&inp.ck().hash));
        if let Some(shard) = paths.shard {
            let (runs, routing) = systems::transcribe_sets(&inp, p, Some(shard))?;
            let transcripts = shards::write(&paths.out, shard, &runs, &routing, &meta)?;
            return Ok(EvaluateReport::Shard { shard, transcripts });
        }
        let (runs, routing_probs) = match paths.merge_shards {
            Some(n) => shards::read(&paths.out, &inp, n)?,
            None => systems::transcribe_sets(&inp, p, None)?,
        };
        inp.oracle_from(&runs);
        let scored = score::score_runs(&inp, &runs, p)?;
        let comparisons = score::compare(&inp, &scored, p);
        scored.predictions.write(&paths.out.join("predictions"), &meta)?;
        let first = p.splits.first().cloned().unwrap_or_default();
        let routing = score::routing_summary(&inp, &runs, &first, p.label_column.as_deref());
        let report_dir = paths.out.join("report");
        let figs = plots::draw(
            &plots_dir(&report_dir),
            &plots::PlotInputs {
                joint: &paths.joint,
                clusters: &paths.clusters,
                experts_dir: &paths.experts,
                experts: inp.experts,
                scored: &scored,
                routing: &routing,
                routing_probs: &routing_probs,
                sets: std::iter::once(first.as_str())
                    .chain(inp.sets.iter().filter(|s| s.heldout).map(|s| s.name.as_str()))
                    .collect(),
                label_column: p.label_column.as_deref(),
            },
        )?;
        let accuracy = (routing.total > 0).then(|| routing.correct as f64 / routing.total as f64);
        let by_language: Vec<LanguageRow> = scored
            .by_system
            .iter()
            .flat_map(|((split, system), r)| {
                r.groups.get(score::LANGUAGE).into_iter().flatten().map(move |(l, s)| LanguageRow {
                    system: system.clone(),
                    split: split.clone(),
                    language: l.clone(),
                    wer: s.wer(),
                    cer: s.cer(),
                    words: s.words.words,
                    chars: s.chars.words,
                    headline: if crate::whisper::language::without_spaces(l) { "cer" } else { "wer" },
                })
            })
            .collect();
        let data = ReportData {
            title: "whisper-moe evaluation".into(),
            facts: vec![
                ("model".to_string(), paths.base.model.clone()),
                ("experts".to_string(), inp.experts.to_string()),
                ("sets".to_string(), inp.sets.iter().map(|s| s.name.clone()).collect::<Vec<_>>().join(", ")),
                ("normalizer".to_string(), format!("{:?}", p.eval.normalizer)),
            ],
            notes: vec![
                "By language: for languages written without spaces between words (Chinese, Japanese, Thai, Lao, Burmese, Khmer, Tibetan, Cantonese) read CER; their WER counts whole phrases as words.".to_string(),
                format!(
                    "mixture: the gate's top-1 expert per utterance{}, routed from the audio as `pipeline transcribe --mixture` does; oracle: the expert of the utterance's cluster (held-out speech: the nearest cluster centre of its embedding); dense: one adapter trained on all training utterances with the mixture's step budget.",
                    match inp.mixture.config.fallback_below {
                        Some(t) => format!(" (where its probability is below {t}, the average of the experts)"),
                        None => String::new(),
                    }
                ),
            ],
            systems: ordered_systems(scored.by_system, &inp.sets.iter().map(|s| s.name.clone()).collect::<Vec<_>>()),
            routing: Some(routing),
            comparisons: comparisons.clone(),
            plots: figs,
        };
        write_report(&report_dir, &data)?;
        let results: Vec<ResultRow> = scored
            .results
            .iter()
            .map(|(s, sp, sc)| ResultRow {
                system: s.clone(),
                split: sp.clone(),
                wer: sc.wer(),
                cer: sc.cer(),
                words: sc.words.words,
            })
            .collect();
        let routing_accuracy_by_set = inp
            .sets
            .iter()
            .filter_map(|s| {
                let r = score::routing_summary(&inp, &runs, &s.name, None);
                (r.total > 0).then(|| (s.name.clone(), r.correct as f64 / r.total as f64))
            })
            .collect();
        let metrics = Metrics {
            results,
            routing_accuracy: accuracy,
            routing_accuracy_by_set,
            by_language,
            comparisons: comparisons.clone(),
        };
        crate::util::write_json(&paths.out.join("metrics.json"), &metrics)?;
        if paths.merge_shards.is_some() {
            std::fs::remove_dir_all(paths.out.join(shards::TRANSCRIPTS)).context("removing the shards' transcripts")?;
        }
        Ok(EvaluateReport::Done {
            results: scored.results,
            comparisons,
            report: super::final_path(&report_dir.join("index.html")),
        })
    }
}

/// The report's systems: per split, in [`systems::SYSTEMS`] order.
fn ordered_systems(
    mut by: std::collections::BTreeMap<(String, String), SystemResult>,
    splits: &[String],
) -> Vec<SystemResult> {
    let mut out = Vec::new();
    for split in splits {
        for s in systems::SYSTEMS {
            if let Some(r) = by.remove(&(split.clone(), s.to_string())) {
                out.push(r);
            }
        }
    }
    out
}

/// The result table as text (system x split WER/CER).
pub fn result_table(results: &[(String, String, Score)]) -> String {
    let mut s = String::from("system    split  WER      CER      words\n");
    for (sys, split, sc) in results {
        s.push_str(&format!(
            "{sys:<9} {split:<6} {:>6.2}%  {:>6.2}%  {}\n",
            100.0 * sc.wer(),
            100.0 * sc.cer(),
            sc.words.words
        ));
    }
    s
}

/// The comparisons over whole sets as text: difference in points, interval, share A wins.
pub fn comparison_table(comparisons: &[Comparison]) -> String {
    let whole: Vec<&Comparison> = comparisons.iter().filter(|c| c.group.is_none()).collect();
    let Some(first) = whole.first() else { return String::new() };
    let mut s = format!(
        "paired bootstrap ({} draws): WER(A) - WER(B) in points, {:.0}% interval, share of draws A is better\n",
        first.difference.resamples,
        100.0 * first.difference.confidence
    );
    for c in whole {
        let d = &c.difference;
        s.push_str(&format!(
            "{:<17} {:<8} {:>+6.2}  [{:>+6.2}, {:>+6.2}]{}  {:.2}\n",
            format!("{} - {}", c.a, c.b),
            c.split,
            100.0 * d.delta,
            100.0 * d.low,
            100.0 * d.high,
            if d.significant() { " *" } else { "  " },
            d.a_better
        ));
    }
    s
}
