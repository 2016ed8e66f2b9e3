//! Stage evaluate: WER and CER of the base model, the mixture with top-1 routing, oracle
//! routing and the dense baseline on test (and val), per cluster and per label column;
//! routing accuracy and the label-versus-expert confusion; plots and the HTML report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::artifacts::columns::{f32s, i64s, strings, vectors};
use crate::artifacts::read_dataset;
use crate::artifacts::table::Table;
use crate::artifacts::{CHECKPOINT_HASH, Embeddings, standard_metadata};
use crate::dataset::{Columns, Dataset};
use crate::eval::plots::{self, Series};
use crate::eval::report::{Confusion, ReportData, ReportPlot, RoutingSummary, SystemResult, plots_dir, write_report};
use crate::eval::wer::{Score, score};
use crate::experts::{EvalConfig, Grouping};
use crate::lora::peft::load_experts;
use crate::routing::gate::Gate;
use crate::routing::stats::top_k;
use crate::train::data::{examples_from_dataset, transcribe_rows};
use crate::train::{EncoderCache, Example};
use crate::whisper::{Checkpoint, device};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateParams {
    pub splits: Vec<String>,
    pub eval: EvalConfig,
    /// A column of the dataset to break results down by (e.g. domain).
    pub label_column: Option<String>,
    pub device: String,
    pub language: Option<String>,
    pub columns: Columns,
}

impl Default for EvaluateParams {
    fn default() -> Self {
        EvaluateParams {
            splits: vec!["test".into(), "val".into()],
            eval: EvalConfig::default(),
            label_column: Some("domain".into()),
            device: "cpu".into(),
            language: None,
            columns: Columns::default(),
        }
    }
}

/// Inputs and output of the evaluate stage (also the stage binary's flags).
#[derive(clap::Args, Debug, Clone)]
pub struct EvaluatePaths {
    /// Hub id or local checkpoint directory (the base model).
    #[arg(long)]
    pub model: String,
    /// The dataset manifest (audio and transcripts).
    #[arg(long)]
    pub dataset: PathBuf,
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
}

/// One system's transcripts of one split.
struct Run {
    system: String,
    split: String,
    /// (example, expert used, hypothesis)
    rows: Vec<(usize, Option<usize>, String)>,
}

pub fn run(paths: &EvaluatePaths, p: &EvaluateParams) -> Result<Vec<(String, String, Score)>> {
    let dev = device(&p.device)?;
    let ck = Checkpoint::load(&paths.model, &dev)?;
    let g = Grouping::read(&paths.clusters)?;
    g.check_checkpoint(&ck)?;
    let k = g.experts();
    let (emb, _) = Embeddings::read(&paths.embeddings)?;
    let emb_row: HashMap<&str, usize> = emb.ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
    let label_of: HashMap<&str, String> = match &p.label_column {
        Some(c) => match emb.column(c) {
            Some(v) => {
                emb.ids.iter().map(String::as_str).zip(v.iter().map(|x| x.clone().unwrap_or_default())).collect()
            }
            None => {
                eprintln!("warning: the embeddings have no `{c}` column; no per-label breakdown");
                HashMap::new()
            }
        },
        None => HashMap::new(),
    };
    let cluster_of: HashMap<&str, usize> =
        g.clusters.ids.iter().map(String::as_str).zip(g.clusters.cluster.iter().map(|&c| c.max(0) as usize)).collect();

    // The utterances of the evaluated splits.
    let mut split_ids: Vec<(String, Vec<String>)> = Vec::new();
    for s in &p.splits {
        split_ids.push((s.clone(), g.split(s).into_iter().map(|(_, id)| id.to_string()).collect()));
    }
    let wanted: HashSet<String> = split_ids.iter().flat_map(|(_, v)| v.iter().cloned()).collect();
    let ds = Dataset::open(&paths.dataset, &p.columns)?;
    let by_id = examples_from_dataset(&ck, &ds, &wanted, true, p.language.as_deref())?;
    let mut examples: Vec<Example> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for id in split_ids.iter().flat_map(|(_, v)| v) {
        index.entry(id.clone()).or_insert_with(|| {
            examples.push(by_id[id].clone());
            examples.len() - 1
        });
    }

    // Models: the mixture's adapters (+ gate) and the dense adapter.
    let mix = paths.joint.join("mixture");
    let mut mixture = ck.model.clone();
    let dirs: Vec<PathBuf> = (0..k).map(|e| mix.join(format!("expert_{e}"))).collect();
    load_experts(&mut mixture, &dirs, &dev)?;
    let gate = Gate::load(&mix.join("gate"), &dev)?;
    let gate_hash = Gate::read_metadata(&mix.join("gate"))?.get(CHECKPOINT_HASH).cloned();
    if gate_hash.as_ref().is_some_and(|h| h != &ck.hash) {
        anyhow::bail!("the mixture's gate was trained with another checkpoint than {}", paths.model);
    }
    let mut dense = ck.model.clone();
    load_experts(&mut dense, &[paths.dense.join("adapter")], &dev)?;

    let mut cache = EncoderCache::new(examples.len().max(1));
    let mut runs: Vec<Run> = Vec::new();
    let eval = &p.eval;
    let mut routing_probs: Vec<(String, usize, Vec<f32>)> = Vec::new();
    for (split, ids) in &split_ids {
        let idx: Vec<usize> = ids.iter().map(|id| index[id]).collect();
        let exs: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
        // Gate routing on the stored embeddings (as in training).
        let x: Vec<f32> = ids
            .iter()
            .map(|id| {
                emb_row.get(id.as_str()).map(|&r| emb.row(r).to_vec()).with_context(|| format!("{id}: no embedding"))
            })
            .collect::<Result<Vec<_>>>()?
            .concat();
        let probs: Vec<f32> = if ids.is_empty() {
            vec![]
        } else {
            let z = gate.forward(Tensor::from_data(TensorData::new(x, [ids.len(), emb.dim]), &dev), false);
            burn::tensor::activation::softmax(z, 1).into_data().try_into_vec_as()?
        };
        let top1: Vec<Option<usize>> = (0..ids.len()).map(|i| Some(top_k(&probs[i * k..(i + 1) * k], 1)[0])).collect();
        let oracle: Vec<Option<usize>> = ids.iter().map(|id| Some(cluster_of[id.as_str()])).collect();
        for (i, id) in ids.iter().enumerate() {
            routing_probs.push((split.clone(), cluster_of[id.as_str()], probs[i * k..(i + 1) * k].to_vec()));
        }
        let systems: Vec<(&str, &crate::whisper::model::Whisper, Vec<Option<usize>>)> = vec![
            ("base", &ck.model, vec![None; ids.len()]),
            ("mixture", &mixture, top1),
            ("oracle", &mixture, oracle),
            ("dense", &dense, vec![Some(0); ids.len()]),
        ];
        for (name, model, experts) in systems {
            let t0 = std::time::Instant::now();
            let hyps = transcribe_rows(&ck, model, &mut cache, &exs, &experts, eval.batch_size, eval.max_new_tokens)?;
            eprintln!("{name} on {split}: {} utterances in {:.1} s", ids.len(), t0.elapsed().as_secs_f64());
            runs.push(Run {
                system: name.into(),
                split: split.clone(),
                rows: idx.iter().zip(&experts).zip(hyps).map(|((&i, &e), h)| (i, e, h)).collect(),
            });
        }
    }

    // Predictions and scores.
    let mut predictions = Table::default();
    let mut results: Vec<(String, String, Score)> = Vec::new();
    let mut by_system: BTreeMap<(String, String), SystemResult> = BTreeMap::new();
    for run in &runs {
        let mut overall = Score::default();
        let mut groups: BTreeMap<String, BTreeMap<String, Score>> = BTreeMap::new();
        for (i, e, hyp) in &run.rows {
            let ex = &examples[*i];
            let s = score(eval.normalizer, &ex.text, hyp);
            overall += s;
            let cluster = cluster_of[ex.id.as_str()];
            *groups.entry("cluster".into()).or_default().entry(format!("cluster {cluster}")).or_default() += s;
            if let Some(l) = label_of.get(ex.id.as_str()) {
                *groups.entry(p.label_column.clone().unwrap()).or_default().entry(l.clone()).or_default() += s;
            }
            predictions.push(vec![
                ("system", run.system.as_str().into()),
                ("split", run.split.as_str().into()),
                ("id", ex.id.as_str().into()),
                ("reference", ex.text.as_str().into()),
                ("hypothesis", hyp.as_str().into()),
                ("expert", e.map(|x| x as i64).into()),
                ("cluster", (cluster as i64).into()),
                ("label", label_of.get(ex.id.as_str()).cloned().into()),
                ("substitutions", (s.words.substitutions as i64).into()),
                ("insertions", (s.words.insertions as i64).into()),
                ("deletions", (s.words.deletions as i64).into()),
                ("words", (s.words.words as i64).into()),
                ("char_errors", (s.chars.errors() as i64).into()),
                ("chars", (s.chars.words as i64).into()),
            ])?;
        }
        results.push((run.system.clone(), run.split.clone(), overall));
        by_system.insert(
            (run.split.clone(), run.system.clone()),
            SystemResult {
                name: format!("{} ({})", run.system, run.split),
                utterances: run.rows.len() as u64,
                overall,
                groups,
            },
        );
    }
    let meta = standard_metadata("evaluate", Some(&ck.hash));
    predictions.write(&paths.out.join("predictions"), &meta)?;

    // Routing accuracy against the clusters and the label-versus-expert confusion (test split
    // first: the first evaluated split).
    let first = p.splits.first().cloned().unwrap_or_default();
    let mix_run = runs.iter().find(|r| r.system == "mixture" && r.split == first);
    let mut correct = 0;
    let mut total = 0;
    let mut confusions = Vec::new();
    if let Some(run) = mix_run {
        for (i, e, _) in &run.rows {
            total += 1;
            if Some(cluster_of[examples[*i].id.as_str()]) == *e {
                correct += 1;
            }
        }
        if let Some(col) = &p.label_column {
            let mut labels: Vec<String> =
                run.rows.iter().filter_map(|(i, _, _)| label_of.get(examples[*i].id.as_str()).cloned()).collect();
            labels.sort();
            labels.dedup();
            if !labels.is_empty() {
                let mut counts = vec![vec![0u64; k]; labels.len()];
                for (i, e, _) in &run.rows {
                    if let (Some(l), Some(e)) = (label_of.get(examples[*i].id.as_str()), e) {
                        counts[labels.iter().position(|x| x == l).unwrap()][*e] += 1;
                    }
                }
                confusions.push(Confusion {
                    label_column: col.clone(),
                    labels,
                    experts: (0..k).map(|e| format!("expert {e}")).collect(),
                    counts,
                });
            }
        }
    }
    let routing = RoutingSummary { correct, total, confusions };

    // Plots.
    let report_dir = paths.out.join("report");
    let pd = plots_dir(&report_dir);
    std::fs::create_dir_all(&pd)?;
    let mut figs: Vec<ReportPlot> = Vec::new();
    let mut add = |f: Result<plots::PlotFiles>, caption: &str| match f {
        Ok(files) => figs.push(ReportPlot { files, caption: caption.into() }),
        Err(e) => eprintln!("warning: plot `{caption}` failed: {e:#}"),
    };
    let expert_names: Vec<String> = (0..k).map(|e| format!("expert {e}")).collect();
    if let Ok(steps) = read_dataset(&paths.joint.join("log_steps")).and_then(|d| d.concat()) {
        let step: Vec<f64> = i64s(&steps, "step")?.into_iter().map(|s| s as f64).collect();
        let col = |n: &str| f32s(&steps, n).map(|v| v.into_iter().map(|x| x as f64).collect::<Vec<f64>>());
        let (main, bal, temp, ent) = (col("main_loss")?, col("balance_loss")?, col("temperature")?, col("entropy")?);
        let phases = strings(&steps, "phase")?;
        let (load, _) = vectors(&steps, "load_topk", Some(k))?;
        let load_rows: Vec<Vec<f64>> = load.chunks(k).map(|c| c.iter().map(|&x| x as f64).collect()).collect();
        let mut loss_series = vec![
            Series::new("joint: main loss", step.iter().copied().zip(main)),
            Series::new("joint: balance loss", step.iter().copied().zip(bal)),
        ];
        if let Ok(ep) = read_dataset(&paths.joint.join("log_epochs")).and_then(|d| d.concat()) {
            let s: Vec<f64> = i64s(&ep, "step")?.into_iter().map(|x| x as f64).collect();
            let vl = ep.column_by_name("val_loss").map(|c| {
                let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Float64).unwrap();
                let a = c.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap().clone();
                a.iter().collect::<Vec<_>>()
            });
            if let Some(vl) = vl {
                loss_series
                    .push(Series::new("joint: val loss", s.iter().zip(vl).filter_map(|(x, y)| y.map(|y| (*x, y)))));
            }
            if let Some(last) = ep.num_rows().checked_sub(1) {
                let (el, _) = vectors(&ep, "load_topk", Some(k))?;
                let final_load: Vec<f64> = el[last * k..(last + 1) * k].iter().map(|&x| x as f64).collect();
                add(
                    plots::expert_load_bars(
                        &pd,
                        "load_bars",
                        "Expert load in the last epoch (top-k share)",
                        &final_load,
                        &expert_names,
                    ),
                    "Per-expert load in the last joint epoch against uniform.",
                );
            }
        }
        add(
            plots::loss_curves(&pd, "loss", "Joint training loss", &loss_series),
            "Joint training: main loss, balance loss and validation loss.",
        );
        add(
            plots::temperature_phases(&pd, "temperature", "Routing temperature and phase", &step, &temp, &phases),
            "Temperature over steps; the background shows the phase.",
        );
        add(
            plots::routing_entropy(
                &pd,
                "entropy",
                "Routing entropy",
                &[Series::new("entropy", step.iter().copied().zip(ent))],
                k,
            ),
            "Mean routing entropy per step.",
        );
        add(
            plots::expert_load_over_time(&pd, "load_time", "Expert load over steps", &step, &load_rows, &expert_names),
            "Share of top-k assignments per expert over steps.",
        );
    }
    if let Ok(m) = read_dataset(&paths.experts.join("metrics")).and_then(|d| d.concat()) {
        let ex = i64s(&m, "expert")?;
        let ep = i64s(&m, "epoch")?;
        let vl = f32s(&m, "val_loss").unwrap_or_default();
        let series: Vec<Series> = (0..k)
            .map(|e| {
                Series::new(
                    format!("expert {e}"),
                    (0..ex.len())
                        .filter(|&i| ex[i] == e as i64 && i < vl.len() && vl[i].is_finite())
                        .map(|i| (ep[i] as f64, vl[i] as f64)),
                )
            })
            .collect();
        add(
            plots::line_chart(
                &pd,
                "experts_val_loss",
                "Expert pretraining: val loss on each expert's cluster",
                "epoch",
                "val loss",
                &series,
            ),
            "Expert pretraining: each expert's val loss on its cluster (epoch 0 = base model).",
        );
    }
    let val_probs: Vec<Vec<f64>> = routing_probs
        .iter()
        .filter(|(s, _, _)| s == "val")
        .map(|(_, _, p)| p.iter().map(|&x| x as f64).collect())
        .collect();
    if !val_probs.is_empty() {
        add(
            plots::gate_heatmap(&pd, "gate_heatmap", "Gate probabilities on val utterances", &val_probs, &expert_names),
            "Gate probabilities on val, rows sorted by the chosen expert.",
        );
    }
    if let Some(c) = routing.confusions.first() {
        add(
            plots::confusion_heatmap(
                &pd,
                "confusion",
                &format!("{} vs chosen expert ({first})", c.label_column),
                &c.labels,
                &c.experts,
                &c.counts,
            ),
            "Label column against the mixture's chosen expert.",
        );
    }
    let group_col = p
        .label_column
        .clone()
        .filter(|c| by_system.values().any(|s| s.groups.contains_key(c)))
        .unwrap_or_else(|| "cluster".into());
    let sys_names = ["base", "dense", "mixture", "oracle"];
    let mut groups: Vec<String> = by_system
        .iter()
        .filter(|((s, _), _)| *s == first)
        .flat_map(|(_, r)| r.groups.get(&group_col).map(|g| g.keys().cloned().collect::<Vec<_>>()).unwrap_or_default())
        .collect();
    groups.sort();
    groups.dedup();
    groups.push("all".into());
    let wer: Vec<Vec<f64>> = sys_names
        .iter()
        .map(|s| {
            let r = &by_system[&(first.clone(), s.to_string())];
            groups
                .iter()
                .map(|g| {
                    if g == "all" {
                        r.overall.wer()
                    } else {
                        r.groups.get(&group_col).and_then(|m| m.get(g)).map_or(f64::NAN, |x| x.wer())
                    }
                })
                .collect()
        })
        .collect();
    add(
        plots::wer_by_group(
            &pd,
            "wer_by_group",
            &format!("WER per {group_col} ({first})"),
            &sys_names.map(String::from),
            &groups,
            &wer,
        ),
        "WER per system and group.",
    );

    let mut systems: Vec<SystemResult> = Vec::new();
    for split in &p.splits {
        for s in sys_names {
            if let Some(r) = by_system.remove(&(split.clone(), s.to_string())) {
                systems.push(r);
            }
        }
    }
    let facts = vec![
        ("model".to_string(), paths.model.clone()),
        ("experts".to_string(), k.to_string()),
        ("splits".to_string(), p.splits.join(", ")),
        ("normalizer".to_string(), format!("{:?}", eval.normalizer)),
    ];
    let notes = vec![
        "mixture: the gate's top-1 expert per utterance (on the stored embeddings); oracle: the expert of the utterance's cluster; dense: one adapter trained on all training utterances with the mixture's step budget.".to_string(),
    ];
    let data = ReportData {
        title: "whisper-moe evaluation".into(),
        facts,
        notes,
        systems,
        routing: Some(routing),
        plots: figs,
    };
    write_report(&report_dir, &data)?;
    let summary: Vec<serde_json::Value> = results
        .iter()
        .map(|(s, sp, sc)| serde_json::json!({"system": s, "split": sp, "wer": sc.wer(), "cer": sc.cer(), "words": sc.words.words}))
        .collect();
    crate::stage::write_json(
        &paths.out.join("metrics.json"),
        &serde_json::json!({"results": summary, "routing_accuracy": if total > 0 { Some(correct as f64 / total as f64) } else { None }}),
    )?;
    Ok(results)
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
