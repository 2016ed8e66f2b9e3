//! Evaluate, step 1: the systems' transcripts of each evaluated set. Every system decodes
//! through `mixture::transcribe`; the mixture routes each clip from its audio exactly as
//! `pipeline transcribe --mixture` does (embedding -> gate -> expert), not from stored
//! embeddings. The sets are the cluster stage's splits (test, val) and any held-out datasets
//! (`--heldout NAME=DIR`): speech the training never saw, whose oracle expert is the nearest
//! cluster centre of its embedding.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{EvaluateParams, EvaluatePaths};
use crate::artifacts::{CHECKPOINT_HASH, Embeddings, Grouping, Shard};
use crate::dataset::Dataset;
use crate::mixture::transcribe::transcribe;
use crate::mixture::{Mixture, MixtureConfig};
use crate::routing::centroid::Centroids;
use crate::routing::gate::Gate;
use crate::train::{EncoderCache, Example, Prompting, audio_of, examples_without_audio};
use crate::whisper::Checkpoint;
use crate::whisper::model::Whisper;

/// The systems compared, in report order.
pub const SYSTEMS: [&str; 4] = ["base", "mixture", "oracle", "dense"];

/// An evaluated set of utterances.
pub struct Set {
    pub name: String,
    /// Indices into `Inputs::examples`.
    pub examples: Vec<usize>,
    /// A held-out dataset (not a split of the training data).
    pub heldout: bool,
}

/// Everything the systems need: the mixture (with the base checkpoint), the dense adapter,
/// and the evaluated utterances with their oracle expert and labels.
pub struct Inputs {
    pub mixture: Mixture,
    pub dense: Whisper,
    pub experts: usize,
    /// The evaluated utterances without their audio ([`Inputs::with_audio`] reads it, a block
    /// at a time, when they are transcribed).
    pub examples: Vec<Example>,
    /// Per example: its dataset (in `datasets`) and its id there.
    source: Vec<(usize, String)>,
    datasets: Vec<Dataset>,
    /// Per example: the expert of its cluster, or for held-out speech of its nearest centre
    /// (known once transcribed: [`Inputs::oracle_from`]).
    pub oracle: Vec<usize>,
    /// The cluster centres (the joint stage's), which find held-out speech's oracle expert.
    pub centroids: Centroids,
    /// Per example: label columns (e.g. domain, voice_group) and their values.
    pub labels: Vec<BTreeMap<String, String>>,
    pub sets: Vec<Set>,
}

impl Inputs {
    pub fn ck(&self) -> &Checkpoint {
        &self.mixture.ck
    }

    pub fn load(paths: &EvaluatePaths, p: &EvaluateParams) -> Result<Inputs> {
        let (ck, g) =
            super::super::checkpoint_and_grouping(&paths.base.model, &paths.clusters, &p.device, p.precision, false)?;
        let dev = ck.device.clone();
        let (emb, _) = Embeddings::read(&paths.embeddings)?;
        let mix_dir = paths.joint.join("mixture");
        let gate_hash = Gate::read_metadata(&mix_dir.join("gate"))?.get(CHECKPOINT_HASH).cloned();
        if gate_hash.as_ref().is_some_and(|h| h != &ck.hash) {
            bail!("the mixture's gate was trained with another checkpoint than {}", paths.base.model);
        }
        let mut dense = ck.model.clone();
        crate::whisper::peft::load_experts(&mut dense, &[paths.dense.join("adapter")], &dev)?;
        // The joint stage saved the centres it fitted on these clusters; older mixtures lack them.
        let centroids = Centroids::load(&mix_dir).or_else(|_| Centroids::fit(&emb, &g.clusters))?;
        let mut inp = Inputs {
            dense,
            centroids,
            experts: g.experts(),
            examples: Vec::new(),
            source: Vec::new(),
            datasets: Vec::new(),
            oracle: Vec::new(),
            labels: Vec::new(),
            sets: Vec::new(),
            mixture: {
                let mut config = MixtureConfig::read(&mix_dir)?;
                config.fallback_below = p.fallback_below.or(config.fallback_below);
                Mixture::with_checkpoint(&mix_dir, config, ck)?
            },
        };
        inp.add_splits(&g, &emb, &paths.base.dataset, p)?;
        for spec in &paths.heldout {
            let (name, dir) = spec.split_once('=').map(|(n, d)| (n.to_string(), d)).unwrap_or(("heldout".into(), spec));
            inp.add_heldout(&name, Path::new(dir), p)?;
        }
        Ok(inp)
    }

    /// The cluster stage's splits: labels from the embeddings, oracle = the cluster.
    fn add_splits(&mut self, g: &Grouping, emb: &Embeddings, dataset: &Path, p: &EvaluateParams) -> Result<()> {
        let columns = group_columns(p);
        let row_of: HashMap<&str, usize> = emb.ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        let cluster_of: HashMap<&str, usize> = g
            .clusters
            .ids
            .iter()
            .map(String::as_str)
            .zip(g.clusters.cluster.iter().map(|&c| c.max(0) as usize))
            .collect();
        let split_ids: Vec<(String, Vec<String>)> = p
            .splits
            .iter()
            .map(|s| (s.clone(), g.split(s).into_iter().map(|(_, id)| id.to_string()).collect()))
            .collect();
        let wanted: HashSet<String> = split_ids.iter().flat_map(|(_, v)| v.iter().cloned()).collect();
        let ds = Dataset::open(dataset, &p.columns)?;
        let detected = emb.languages();
        let prompting =
            Prompting { language: p.language.as_deref(), detected: Some(&detected), task: p.task, decode_only: true };
        let mut by_id = examples_without_audio(self.ck(), &ds, &wanted, true, prompting)?;
        warn_missing(&columns, &emb.extra.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), "the embeddings");
        self.datasets.push(ds);
        let source = self.datasets.len() - 1;
        let mut index: HashMap<String, usize> = HashMap::new();
        for (split, ids) in split_ids {
            let mut idx = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(&i) = index.get(&id) {
                    idx.push(i);
                    continue;
                }
                let labels = columns
                    .iter()
                    .filter_map(|c| {
                        let v = emb.column(c)?[*row_of.get(id.as_str())?].clone()?;
                        Some((c.clone(), v))
                    })
                    .collect();
                let ex = by_id.remove(&id).context("an utterance of the splits")?;
                self.push(ex, (source, id.clone()), cluster_of[id.as_str()], labels);
                index.insert(id, self.examples.len() - 1);
                idx.push(self.examples.len() - 1);
            }
            self.sets.push(Set { name: split, examples: idx, heldout: false });
        }
        Ok(())
    }

    /// A held-out dataset: every row with audio and a transcript; labels from its columns;
    /// oracle = the nearest centre of its embedding (computed from the audio, as routing, by
    /// [`transcribe_sets`]; [`Inputs::oracle_from`] records it).
    fn add_heldout(&mut self, name: &str, dir: &Path, p: &EvaluateParams) -> Result<()> {
        let ds = Dataset::open(dir, &p.columns).with_context(|| format!("held-out dataset `{name}`"))?;
        let columns = group_columns(p);
        warn_missing(&columns, ds.extra_columns(), &format!("held-out dataset `{name}`"));
        let rows: Vec<_> = ds.iter(0..ds.len()).collect::<Result<_>>()?;
        let usable: Vec<_> = rows.iter().filter(|u| u.text.as_deref().is_some_and(|t| !t.trim().is_empty())).collect();
        if usable.len() < rows.len() {
            eprintln!("warning: held-out `{name}`: {} rows without a transcript left out", rows.len() - usable.len());
        }
        let wanted: HashSet<String> = usable.iter().map(|u| u.id.clone()).collect();
        let prompting = Prompting { language: p.language.as_deref(), detected: None, task: p.task, decode_only: true };
        let mut by_id = examples_without_audio(self.ck(), &ds, &wanted, true, prompting)?;
        let source = self.datasets.len();
        let mut idx = Vec::new();
        for u in &usable {
            let mut ex = by_id.remove(&u.id).context("a held-out utterance")?;
            // Ids are only unique within a dataset; the encoder cache keys on them.
            ex.id = format!("{name}:{}", ex.id);
            let labels = ds
                .extra_columns()
                .iter()
                .zip(&u.extra)
                .filter(|(c, v)| columns.contains(c) && v.is_some())
                .map(|(c, v)| (c.clone(), v.clone().unwrap_or_default()))
                .collect();
            // The oracle expert (the nearest centre of its embedding) is found when it is
            // transcribed, from the encoder states routing computes anyway.
            self.push(ex, (source, u.id.clone()), 0, labels);
            idx.push(self.examples.len() - 1);
        }
        eprintln!("held-out `{name}`: {} utterances from {}", idx.len(), ds.path.display());
        self.datasets.push(ds);
        self.sets.push(Set { name: name.to_string(), examples: idx, heldout: true });
        Ok(())
    }

    /// Record the oracle experts of held-out speech from the oracle system's runs (computed
    /// while transcribing, in this process or a shard's).
    pub fn oracle_from(&mut self, runs: &[Run]) {
        let heldout: HashSet<&str> = self.sets.iter().filter(|s| s.heldout).map(|s| s.name.as_str()).collect();
        for run in runs.iter().filter(|r| r.system == "oracle" && heldout.contains(r.split.as_str())) {
            for &(i, e, _) in &run.rows {
                if let Some(e) = e {
                    self.oracle[i] = e;
                }
            }
        }
    }

    /// The examples `part` with their audio, read now (in parallel per dataset).
    pub fn with_audio(&self, part: &[usize]) -> Result<Vec<Example>> {
        let mut audio: HashMap<(usize, String), Vec<f32>> = HashMap::new();
        for (d, ds) in self.datasets.iter().enumerate() {
            let ids: HashSet<String> =
                part.iter().map(|&i| &self.source[i]).filter(|(s, _)| *s == d).map(|(_, id)| id.clone()).collect();
            if !ids.is_empty() {
                audio.extend(audio_of(ds, &ids)?.into_iter().map(|(id, a)| ((d, id), a)));
            }
        }
        part.iter()
            .map(|&i| {
                let audio = audio.remove(&self.source[i]).context("audio read")?;
                Ok(Example { audio, ..self.examples[i].clone() })
            })
            .collect()
    }

    fn push(&mut self, ex: Example, source: (usize, String), oracle: usize, labels: BTreeMap<String, String>) {
        self.examples.push(ex);
        self.source.push(source);
        self.oracle.push(oracle);
        self.labels.push(labels);
    }
}

/// The columns results are broken down by: the label column, then the group columns.
pub fn group_columns(p: &EvaluateParams) -> Vec<String> {
    p.label_column.iter().chain(&p.group_columns).cloned().collect()
}

fn warn_missing(columns: &[String], have: &[String], what: &str) {
    for c in columns.iter().filter(|c| !have.contains(c)) {
        eprintln!("warning: {what} has no `{c}` column; no breakdown by it there");
    }
}

/// One system's transcripts of one set.
pub struct Run {
    pub system: String,
    pub split: String,
    /// (example, expert used, hypothesis)
    pub rows: Vec<(usize, Option<usize>, String)>,
}

/// The mixture's routing of every evaluated utterance: (set, example, gate probabilities).
pub type RoutingProbs = Vec<(String, usize, Vec<f32>)>;

/// Every system on every evaluated set (with `shard`, on that shard's contiguous slice of each
/// set). The systems take each set in blocks of whole batches, which share an encoder cache:
/// each clip's lower encoder layers run once for the routing embedding, the adapted systems and
/// the base model, and the cache holds one block at a time.
pub fn transcribe_sets(inp: &Inputs, p: &EvaluateParams, shard: Option<Shard>) -> Result<(Vec<Run>, RoutingProbs)> {
    let ck = inp.ck();
    let b = p.eval.batch_size.max(1);
    let block = b * (BLOCK / b).max(1);
    let mut levels = inp.mixture.levels();
    levels.extend(inp.dense.first_adapted_encoder_layer());
    let mut runs = Vec::new();
    let mut routing = Vec::new();
    for set in &inp.sets {
        let mine = &set.examples[shard.map_or(0..set.examples.len(), |s| s.range(set.examples.len()))];
        let mut rows: Vec<Vec<(usize, Option<usize>, String)>> = vec![Vec::new(); SYSTEMS.len()];
        let mut seconds = [0.0f64; SYSTEMS.len()];
        for part in mine.chunks(block) {
            let mut cache = EncoderCache::new(part.len() * (levels.len() + 1)).keep_levels(&levels);
            let block = inp.with_audio(part)?;
            let exs: Vec<&Example> = block.iter().collect();
            for (s, name) in SYSTEMS.iter().enumerate() {
                let t0 = std::time::Instant::now();
                let (experts, hyps) = match *name {
                    "base" => {
                        let none = vec![None; exs.len()];
                        (none.clone(), transcribe(ck, &ck.model, &exs, &none, &p.eval, Some(&mut cache))?)
                    }
                    "mixture" => {
                        let routed = inp.mixture.transcribe_examples(&exs, &p.eval, Some(&mut cache))?;
                        for (&i, r) in part.iter().zip(&routed) {
                            routing.push((set.name.clone(), i, r.probs.clone()));
                        }
                        routed.into_iter().map(|r| (Some(r.expert), r.transcript.text)).unzip()
                    }
                    "oracle" => {
                        let oracle: Vec<Option<usize>> = if set.heldout {
                            let emb: Vec<f32> =
                                inp.mixture.embed(&exs, Some(&mut cache))?.into_data().try_into_vec_as()?;
                            inp.centroids.nearest(&emb).into_iter().map(Some).collect()
                        } else {
                            part.iter().map(|&i| Some(inp.oracle[i])).collect()
                        };
                        (oracle.clone(), transcribe(ck, &inp.mixture.model, &exs, &oracle, &p.eval, Some(&mut cache))?)
                    }
                    _ => {
                        let one = vec![Some(0); exs.len()];
                        (one.clone(), transcribe(ck, &inp.dense, &exs, &one, &p.eval, Some(&mut cache))?)
                    }
                };
                seconds[s] += t0.elapsed().as_secs_f64();
                rows[s].extend(part.iter().zip(experts).zip(hyps).map(|((&i, e), h)| (i, e, h)));
            }
        }
        for ((name, rows), secs) in SYSTEMS.iter().zip(rows).zip(seconds) {
            eprintln!("{name} on {}: {} utterances in {secs:.1} s", set.name, rows.len());
            runs.push(Run { system: name.to_string(), split: set.name.clone(), rows });
        }
    }
    Ok((runs, routing))
}

/// Utterances per block of [`transcribe_sets`] (rounded down to whole batches): the encoder
/// cache holds a block's states at a few levels (tiny: 2.3 MB per clip and level).
const BLOCK: usize = 64;
