//! Evaluate, step 3: the report's plots (PNG and SVG): joint training (loss curves,
//! temperature and phase, routing entropy, expert load over time and against uniform), expert
//! pretraining, the gate-probability heat map, the label-versus-expert confusion, WER per
//! system and group. A plot that fails is reported and left out; it never fails the stage.

use std::path::Path;

use anyhow::Result;
use arrow::array::RecordBatch;

use super::score::Scored;
use super::systems::RoutingProbs;
use crate::artifacts::columns::{f32s, i64s, strings, vectors};
use crate::artifacts::read_dataset;
use crate::eval::plots::{self, PlotFiles, Series};
use crate::eval::report::{ReportPlot, RoutingSummary};

/// Collects plots, reporting failures.
struct Figures<'a> {
    dir: &'a Path,
    out: Vec<ReportPlot>,
}

impl Figures<'_> {
    fn add(&mut self, f: Result<PlotFiles>, caption: &str) {
        match f {
            Ok(files) => self.out.push(ReportPlot { files, caption: caption.into() }),
            Err(e) => eprintln!("warning: plot `{caption}` failed: {e:#}"),
        }
    }
}

/// What the plots are drawn from.
pub struct PlotInputs<'a> {
    pub joint: &'a Path,
    /// The cluster stage's output (its summary.json holds the `k: auto` curve).
    pub clusters: &'a Path,
    pub experts_dir: &'a Path,
    pub experts: usize,
    pub scored: &'a Scored,
    pub routing: &'a RoutingSummary,
    pub routing_probs: &'a RoutingProbs,
    /// The sets the per-group plots show (the first split, then the held-out sets).
    pub sets: Vec<&'a str>,
    pub label_column: Option<&'a str>,
}

/// Draw every plot into `dir`.
pub fn draw(dir: &Path, inp: &PlotInputs) -> Result<Vec<ReportPlot>> {
    std::fs::create_dir_all(dir)?;
    let mut figs = Figures { dir, out: Vec::new() };
    let names: Vec<String> = (0..inp.experts).map(|e| format!("expert {e}")).collect();
    if let Ok(steps) = read_dataset(&inp.joint.join("log_steps")).and_then(|d| d.concat()) {
        joint_plots(&mut figs, inp, &steps, &names)?;
    }
    if let Ok(m) = read_dataset(&inp.experts_dir.join("metrics")).and_then(|d| d.concat()) {
        experts_plot(&mut figs, &m, inp.experts)?;
    }
    k_plot(&mut figs, inp.clusters);
    let val_probs: Vec<Vec<f64>> = inp
        .routing_probs
        .iter()
        .filter(|(s, _, _)| s == "val")
        .map(|(_, _, p)| p.iter().map(|&x| x as f64).collect())
        .collect();
    if !val_probs.is_empty() {
        figs.add(
            plots::gate_heatmap(figs.dir, "gate_heatmap", "Gate probabilities on val utterances", &val_probs, &names),
            "Gate probabilities on val, rows sorted by the chosen expert.",
        );
    }
    if let Some(c) = inp.routing.confusions.first() {
        figs.add(
            plots::confusion_heatmap(
                figs.dir,
                "confusion",
                &format!("{} vs chosen expert ({})", c.label_column, inp.sets[0]),
                &c.labels,
                &c.experts,
                &c.counts,
            ),
            "Label column against the mixture's chosen expert.",
        );
    }
    for (i, set) in inp.sets.iter().enumerate() {
        wer_plot(&mut figs, inp, set, if i == 0 { "wer_by_group".to_string() } else { format!("wer_by_group_{set}") });
    }
    Ok(figs.out)
}

/// Loss curves, temperature and phase, entropy, load over time and in the last epoch.
fn joint_plots(figs: &mut Figures, inp: &PlotInputs, steps: &RecordBatch, names: &[String]) -> Result<()> {
    let k = inp.experts;
    let step: Vec<f64> = i64s(steps, "step")?.into_iter().map(|s| s as f64).collect();
    let col = |n: &str| f32s(steps, n).map(|v| v.into_iter().map(|x| x as f64).collect::<Vec<f64>>());
    let (main, bal, temp, ent) = (col("main_loss")?, col("balance_loss")?, col("temperature")?, col("entropy")?);
    let phases = strings(steps, "phase")?;
    let (load, _) = vectors(steps, "load_topk", Some(k))?;
    let load_rows: Vec<Vec<f64>> = load.chunks(k).map(|c| c.iter().map(|&x| x as f64).collect()).collect();
    let mut loss_series = vec![
        Series::new("joint: main loss", step.iter().copied().zip(main)),
        Series::new("joint: balance loss", step.iter().copied().zip(bal)),
    ];
    if let Ok(ep) = read_dataset(&inp.joint.join("log_epochs")).and_then(|d| d.concat()) {
        let s: Vec<f64> = i64s(&ep, "step")?.into_iter().map(|x| x as f64).collect();
        if let Some(c) = ep.column_by_name("val_loss") {
            let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Float64)?;
            let a = c.as_any().downcast_ref::<arrow::array::Float64Array>().expect("cast to f64");
            let points = s.iter().zip(a.iter()).filter_map(|(x, y)| y.map(|y| (*x, y)));
            loss_series.push(Series::new("joint: val loss", points));
        }
        if let Some(last) = ep.num_rows().checked_sub(1) {
            let (el, _) = vectors(&ep, "load_topk", Some(k))?;
            let final_load: Vec<f64> = el[last * k..(last + 1) * k].iter().map(|&x| x as f64).collect();
            figs.add(
                plots::expert_load_bars(
                    figs.dir,
                    "load_bars",
                    "Expert load in the last epoch (top-k share)",
                    &final_load,
                    names,
                ),
                "Per-expert load in the last joint epoch against uniform.",
            );
        }
    }
    figs.add(
        plots::loss_curves(figs.dir, "loss", "Joint training loss", &loss_series),
        "Joint training: main loss, balance loss and validation loss.",
    );
    figs.add(
        plots::temperature_phases(figs.dir, "temperature", "Routing temperature and phase", &step, &temp, &phases),
        "Temperature over steps; the background shows the phase.",
    );
    figs.add(
        plots::routing_entropy(
            figs.dir,
            "entropy",
            "Routing entropy",
            &[Series::new("entropy", step.iter().copied().zip(ent))],
            k,
        ),
        "Mean routing entropy per step.",
    );
    figs.add(
        plots::expert_load_over_time(figs.dir, "load_time", "Expert load over steps", &step, &load_rows, names),
        "Share of top-k assignments per expert over steps.",
    );
    Ok(())
}

/// The `k: auto` curve of the cluster stage, when it chose k.
fn k_plot(figs: &mut Figures, clusters: &Path) {
    let Ok(summary) = crate::util::read_json::<serde_json::Value>(&clusters.join("summary.json")) else { return };
    let sel = &summary["k_selection"];
    let (Some(criterion), Some(curve), Some(chosen)) =
        (sel["criterion"].as_str(), sel["curve"].as_array(), sel["chosen"].as_u64())
    else {
        return;
    };
    let points: Vec<(f64, f64)> =
        curve.iter().filter_map(|c| Some((c["k"].as_f64()?, c["scores"][criterion].as_f64()?))).collect();
    let picked: Vec<(f64, f64)> = points.iter().copied().filter(|(k, _)| *k == chosen as f64).collect();
    figs.add(
        plots::line_chart(
            figs.dir,
            "k_selection",
            &format!("Number of experts: {criterion} by k (chose {chosen})"),
            "k",
            criterion,
            &[Series::new(criterion, points), Series::new(format!("chosen k = {chosen}"), picked)],
        ),
        &format!("The cluster stage's `k: auto`: {criterion} for each k tried, and the k chosen."),
    );
}

/// Each expert's val loss over pretraining epochs.
fn experts_plot(figs: &mut Figures, m: &RecordBatch, k: usize) -> Result<()> {
    let ex = i64s(m, "expert")?;
    let ep = i64s(m, "epoch")?;
    let vl = f32s(m, "val_loss").unwrap_or_default();
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
    figs.add(
        plots::line_chart(
            figs.dir,
            "experts_val_loss",
            "Expert pretraining: val loss on each expert's cluster",
            "epoch",
            "val loss",
            &series,
        ),
        "Expert pretraining: each expert's val loss on its cluster (epoch 0 = base model).",
    );
    Ok(())
}

/// WER per system and group (the label column when scored, else the cluster).
fn wer_plot(figs: &mut Figures, inp: &PlotInputs, set: &str, file: String) {
    let by = &inp.scored.by_system;
    let group_col = inp
        .label_column
        .map(str::to_string)
        .filter(|c| by.values().any(|s| s.groups.contains_key(c)))
        .unwrap_or_else(|| "cluster".into());
    let mut groups: Vec<String> = by
        .iter()
        .filter(|((s, _), _)| s == set)
        .flat_map(|(_, r)| r.groups.get(&group_col).map(|g| g.keys().cloned().collect::<Vec<_>>()).unwrap_or_default())
        .collect();
    groups.sort();
    groups.dedup();
    groups.push("all".into());
    // Bars in this order: the baselines first.
    let systems = ["base", "dense", "mixture", "oracle"];
    let wer: Vec<Vec<f64>> = systems
        .iter()
        .map(|s| {
            let Some(r) = by.get(&(set.to_string(), s.to_string())) else { return vec![f64::NAN; groups.len()] };
            groups
                .iter()
                .map(|g| match g.as_str() {
                    "all" => r.overall.wer(),
                    _ => r.groups.get(&group_col).and_then(|m| m.get(g)).map_or(f64::NAN, |x| x.wer()),
                })
                .collect()
        })
        .collect();
    figs.add(
        plots::wer_by_group(
            figs.dir,
            &file,
            &format!("WER per {group_col} ({set})"),
            &systems.map(String::from),
            &groups,
            &wer,
        ),
        &format!("WER per system and {group_col} on {set}."),
    );
}
