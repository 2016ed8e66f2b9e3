//! Evaluate, step 1: the systems' transcripts of each evaluated split. Every system decodes
//! through `mixture::transcribe`; the mixture routes each clip from its audio exactly as
//! `pipeline transcribe --mixture` does (embedding -> gate -> expert), not from stored
//! embeddings.

use std::collections::{HashMap, HashSet};

use anyhow::{Result, bail};

use super::{EvaluateParams, EvaluatePaths};
use crate::artifacts::{CHECKPOINT_HASH, Embeddings};
use crate::dataset::Dataset;
use crate::mixture::transcribe::transcribe;
use crate::mixture::{Mixture, MixtureConfig};
use crate::routing::gate::Gate;
use crate::train::{EncoderCache, Example, examples_from_dataset};
use crate::whisper::model::Whisper;
use crate::whisper::Checkpoint;

/// The systems compared, in report order.
pub const SYSTEMS: [&str; 4] = ["base", "mixture", "oracle", "dense"];

/// Everything the systems need: the base checkpoint, the mixture, the dense adapter, and the
/// evaluated utterances.
pub struct Inputs {
    pub mixture: Mixture,
    pub dense: Whisper,
    pub experts: usize,
    pub examples: Vec<Example>,
    /// Per evaluated split: its utterances (indices into `examples`).
    pub splits: Vec<(String, Vec<usize>)>,
    /// Cluster of every clustered utterance (the oracle's expert).
    pub cluster_of: HashMap<String, usize>,
    /// The label column's value per utterance, when the embeddings carry it.
    pub label_of: HashMap<String, String>,
}

impl Inputs {
    pub fn ck(&self) -> &Checkpoint {
        &self.mixture.ck
    }

    pub fn load(paths: &EvaluatePaths, p: &EvaluateParams) -> Result<Inputs> {
        let (ck, g) = super::super::checkpoint_and_grouping(&paths.base.model, &paths.clusters, &p.device, false)?;
        let dev = ck.device.clone();
        let (emb, _) = Embeddings::read(&paths.embeddings)?;
        let label_of = labels(&emb, p.label_column.as_deref());
        let cluster_of = g.clusters.ids.iter().cloned().zip(g.clusters.cluster.iter().map(|&c| c.max(0) as usize)).collect();
        let mix_dir = paths.joint.join("mixture");
        let gate_hash = Gate::read_metadata(&mix_dir.join("gate"))?.get(CHECKPOINT_HASH).cloned();
        if gate_hash.as_ref().is_some_and(|h| h != &ck.hash) {
            bail!("the mixture's gate was trained with another checkpoint than {}", paths.base.model);
        }
        let mut dense = ck.model.clone();
        crate::whisper::peft::load_experts(&mut dense, &[paths.dense.join("adapter")], &dev)?;

        let split_ids: Vec<(String, Vec<String>)> =
            p.splits.iter().map(|s| (s.clone(), g.split(s).into_iter().map(|(_, id)| id.to_string()).collect())).collect();
        let wanted: HashSet<String> = split_ids.iter().flat_map(|(_, v)| v.iter().cloned()).collect();
        let ds = Dataset::open(&paths.base.dataset, &p.columns)?;
        let by_id = examples_from_dataset(&ck, &ds, &wanted, true, p.language.as_deref())?;
        let mut examples: Vec<Example> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let splits = split_ids
            .into_iter()
            .map(|(s, ids)| {
                let idx = ids
                    .iter()
                    .map(|id| {
                        *index.entry(id.clone()).or_insert_with(|| {
                            examples.push(by_id[id].clone());
                            examples.len() - 1
                        })
                    })
                    .collect();
                (s, idx)
            })
            .collect();
        let experts = g.experts();
        let mixture = Mixture::with_checkpoint(&mix_dir, MixtureConfig::read(&mix_dir)?, ck)?;
        Ok(Inputs { mixture, dense, experts, examples, splits, cluster_of, label_of })
    }
}

fn labels(emb: &Embeddings, column: Option<&str>) -> HashMap<String, String> {
    let Some(c) = column else { return HashMap::new() };
    match emb.column(c) {
        Some(v) => emb.ids.iter().cloned().zip(v.iter().map(|x| x.clone().unwrap_or_default())).collect(),
        None => {
            eprintln!("warning: the embeddings have no `{c}` column; no per-label breakdown");
            HashMap::new()
        }
    }
}

/// One system's transcripts of one split.
pub struct Run {
    pub system: String,
    pub split: String,
    /// (example, expert used, hypothesis)
    pub rows: Vec<(usize, Option<usize>, String)>,
}

/// Gate probabilities of the mixture's routing: (split, cluster, probabilities).
pub type RoutingProbs = Vec<(String, usize, Vec<f32>)>;

/// Every system on every evaluated split.
pub fn transcribe_splits(inp: &Inputs, p: &EvaluateParams) -> Result<(Vec<Run>, RoutingProbs)> {
    let ck = inp.ck();
    let mut cache = EncoderCache::new(inp.examples.len().max(1));
    let mut runs = Vec::new();
    let mut routing = Vec::new();
    for (split, idx) in &inp.splits {
        let exs: Vec<&Example> = idx.iter().map(|&i| &inp.examples[i]).collect();
        let oracle: Vec<Option<usize>> = exs.iter().map(|e| Some(inp.cluster_of[&e.id])).collect();
        for name in SYSTEMS {
            let t0 = std::time::Instant::now();
            let (experts, hyps) = match name {
                "base" => (vec![None; exs.len()], transcribe(ck, &ck.model, &exs, &vec![None; exs.len()], &p.eval, Some(&mut cache))?),
                "mixture" => {
                    let routed = inp.mixture.transcribe_examples(&exs, &p.eval, Some(&mut cache))?;
                    for (e, r) in exs.iter().zip(&routed) {
                        routing.push((split.clone(), inp.cluster_of[&e.id], r.probs.clone()));
                    }
                    routed.into_iter().map(|r| (Some(r.expert), r.text)).unzip()
                }
                "oracle" => (oracle.clone(), transcribe(ck, &inp.mixture.model, &exs, &oracle, &p.eval, Some(&mut cache))?),
                _ => {
                    let one = vec![Some(0); exs.len()];
                    (one.clone(), transcribe(ck, &inp.dense, &exs, &one, &p.eval, Some(&mut cache))?)
                }
            };
            eprintln!("{name} on {split}: {} utterances in {:.1} s", exs.len(), t0.elapsed().as_secs_f64());
            let rows = idx.iter().zip(experts).zip(hyps).map(|((&i, e), h)| (i, e, h)).collect();
            runs.push(Run { system: name.into(), split: split.clone(), rows });
        }
    }
    Ok((runs, routing))
}
