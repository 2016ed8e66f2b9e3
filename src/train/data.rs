//! Getting utterances into training: audio of the ids a stage needs, decoded in parallel,
//! with their token sequences; and batched greedy transcription through chosen experts.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;

use super::{EncoderCache, Example, tokens_for};
use crate::dataset::Dataset;
use crate::lora::Route;
use crate::whisper::model::Whisper;
use crate::whisper::{Checkpoint, Task, greedy};

/// The utterances of `ids` from the dataset, as training examples keyed by id.
pub fn examples_from_dataset(
    ck: &Checkpoint,
    ds: &Dataset,
    ids: &HashSet<String>,
    leading_space: bool,
    language: Option<&str>,
) -> Result<HashMap<String, Example>> {
    let rows: Vec<_> = ds
        .iter(0..ds.len())
        .filter(|r| r.as_ref().map(|u| ids.contains(&u.id)).unwrap_or(true))
        .collect::<Result<_>>()?;
    let out: Vec<Result<Example>> = rows
        .par_iter()
        .map(|u| {
            let d = u.decode().with_context(|| u.describe(ds))?;
            let d = crate::audio::to_16k(d, &u.audio_path)?;
            let text = u.text.clone().unwrap_or_default();
            let tokens = tokens_for(ck, &text, leading_space, language).with_context(|| u.describe(ds))?;
            Ok(Example { id: u.id.clone(), audio: d.samples, tokens, text })
        })
        .collect();
    let mut map = HashMap::new();
    for e in out {
        let e = e?;
        map.insert(e.id.clone(), e);
    }
    if let Some(missing) = ids.iter().find(|id| !map.contains_key(*id)) {
        bail!("utterance `{missing}` is in the artifacts but not in the dataset {}", ds.path.display());
    }
    Ok(map)
}

/// Greedy transcripts of `examples`, row i through expert `experts[i]` (None = base model).
/// `model` must be an inference copy (`valid()`).
pub fn transcribe_rows(
    ck: &Checkpoint,
    model: &Whisper,
    cache: &mut EncoderCache,
    examples: &[&Example],
    experts: &[Option<usize>],
    batch: usize,
    max_new_tokens: usize,
) -> Result<Vec<String>> {
    let prompt = ck.prompt(None, Task::Transcribe)?;
    let opts = ck.greedy_options(max_new_tokens);
    let device = model.decoder.embed_tokens.val().device();
    let has_lora = !model.loras().is_empty();
    let mut out = Vec::with_capacity(examples.len());
    for (chunk, ex) in examples.chunks(batch.max(1)).zip(experts.chunks(batch.max(1))) {
        let route = has_lora.then(|| Route::per_row(ex, &device));
        let enc = if model.encoder_has_adapters() {
            let feats: Vec<Vec<f32>> = chunk.iter().map(|e| ck.features(&e.audio)).collect();
            model.encoder.forward(ck.mel_batch(&feats), route.as_ref())
        } else {
            cache.states(ck, &model.encoder, chunk)
        };
        for ids in greedy(model, enc, &prompt, &opts, route.as_ref()) {
            out.push(ck.tokenizer.decode(&ids[prompt.len()..])?.trim().to_string());
        }
    }
    Ok(out)
}
