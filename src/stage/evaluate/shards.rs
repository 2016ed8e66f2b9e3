//! Evaluate in shards: shard i of N transcribes a contiguous slice of every evaluated set with
//! every system and writes its part of `transcripts/` (one row per system and utterance, with
//! the mixture's gate probabilities); the merge step (`--merge-shards N`, which the runner runs
//! once every shard succeeded) reads the parts back as the unsharded transcription would have
//! returned them and scores, draws and reports as usual, then removes `transcripts/`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};

use super::systems::{Inputs, RoutingProbs, Run, SYSTEMS};
use crate::artifacts::columns::{i64s, string_array, strings};
use crate::artifacts::{DatasetWriter, Shard, read_dataset};

/// The shards' transcripts, inside the stage's output until the merge.
pub const TRANSCRIPTS: &str = "transcripts";

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("shard", DataType::Int64, false),
        Field::new("system", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("example", DataType::Int64, false),
        // -1: no expert (the base model)
        Field::new("expert", DataType::Int64, false),
        Field::new("hypothesis", DataType::Utf8, false),
        // the mixture's gate probabilities, comma-separated (shortest round-trip f32 text); empty otherwise
        Field::new("probs", DataType::Utf8, false),
    ]))
}

/// Write shard `shard`'s runs and routing into `out/transcripts`.
pub fn write(
    out: &Path,
    shard: Shard,
    runs: &[Run],
    routing: &RoutingProbs,
    meta: &BTreeMap<String, String>,
) -> Result<usize> {
    let probs_of: BTreeMap<(&str, usize), String> = routing
        .iter()
        .map(|(set, i, p)| ((set.as_str(), *i), p.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",")))
        .collect();
    let (mut system, mut split, mut example, mut expert, mut hyp, mut probs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in runs {
        for (i, e, h) in &r.rows {
            system.push(r.system.clone());
            split.push(r.split.clone());
            example.push(*i as i64);
            expert.push(e.map_or(-1, |e| e as i64));
            hyp.push(h.clone());
            let p = if r.system == "mixture" { probs_of.get(&(r.split.as_str(), *i)).cloned() } else { None };
            probs.push(p.unwrap_or_default());
        }
    }
    let n = system.len();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![shard.index as i64; n])),
        string_array(&system),
        string_array(&split),
        Arc::new(Int64Array::from(example)),
        Arc::new(Int64Array::from(expert)),
        string_array(&hyp),
        string_array(&probs),
    ];
    let batch = RecordBatch::try_new(schema(), cols)?;
    let mut w = DatasetWriter::create(&out.join(TRANSCRIPTS), schema(), meta, Some(shard))?;
    w.write(&batch)?;
    w.finish()?;
    Ok(n)
}

/// The runs and routing of all `shards` shards, in the order the unsharded transcription
/// returns them (sets, then systems, then each set's utterances).
pub fn read(out: &Path, inp: &Inputs, shards: usize) -> Result<(Vec<Run>, RoutingProbs)> {
    let dir = out.join(TRANSCRIPTS);
    let b = read_dataset(&dir)
        .with_context(|| format!("the shards' transcripts in {} (did every shard run?)", dir.display()))?
        .concat()?;
    let shard = i64s(&b, "shard")?;
    let mut seen: Vec<i64> = shard.clone();
    seen.sort();
    seen.dedup();
    // A shard may have no rows (more shards than utterances); a missing row is caught below.
    if let Some(s) = seen.iter().find(|&&s| s < 0 || s >= shards as i64) {
        bail!("{}: transcripts of shard {s}, expected shards 0..{shards}", dir.display());
    }
    let (system, split, example, expert, hyp, probs) = (
        strings(&b, "system")?,
        strings(&b, "split")?,
        i64s(&b, "example")?,
        i64s(&b, "expert")?,
        strings(&b, "hypothesis")?,
        strings(&b, "probs")?,
    );
    let mut by_key: BTreeMap<(&str, &str, usize), usize> = BTreeMap::new();
    for r in 0..b.num_rows() {
        if by_key.insert((system[r].as_str(), split[r].as_str(), example[r] as usize), r).is_some() {
            bail!("{}: {} on {} example {} transcribed twice", dir.display(), system[r], split[r], example[r]);
        }
    }
    let mut runs = Vec::new();
    let mut routing = Vec::new();
    for set in &inp.sets {
        for name in SYSTEMS {
            let mut rows = Vec::with_capacity(set.examples.len());
            for &i in &set.examples {
                let r = *by_key.get(&(name, set.name.as_str(), i)).with_context(|| {
                    format!(
                        "{}: no {name} transcript of {} example {i} (did every shard run?)",
                        dir.display(),
                        set.name
                    )
                })?;
                rows.push((i, (expert[r] >= 0).then_some(expert[r] as usize), hyp[r].clone()));
                if name == "mixture" {
                    let p: Vec<f32> = probs[r].split(',').map(str::parse).collect::<Result<_, _>>()?;
                    routing.push((set.name.clone(), i, p));
                }
            }
            runs.push(Run { system: name.into(), split: set.name.clone(), rows });
        }
    }
    Ok((runs, routing))
}
