//! Utterances ready for training and evaluation: 16-kHz audio and the token sequence behind
//! the checkpoint's prompt, read from the dataset in parallel.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::whisper::{Checkpoint, Task};

/// One utterance ready for training: 16-kHz audio and its token sequence
/// (prompt + transcript + <|endoftext|>).
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    pub audio: Vec<f32>,
    pub tokens: Vec<u32>,
    pub text: String,
}

impl Example {
    /// A clip to transcribe: audio without a transcript.
    pub fn clip(id: impl Into<String>, audio: Vec<f32>) -> Example {
        Example { id: id.into(), audio, tokens: Vec::new(), text: String::new() }
    }
}

/// prompt + tokens of the transcript (with a leading space, as Whisper generates text, unless
/// `leading_space` is false) + <|endoftext|>.
pub fn tokens_for(ck: &Checkpoint, text: &str, leading_space: bool, language: Option<&str>) -> Result<Vec<u32>> {
    let mut t = ck.prompt(language, Task::Transcribe)?;
    let text = text.trim();
    let text = if leading_space { format!(" {text}") } else { text.to_string() };
    t.extend(ck.tokenizer.encode(&text)?);
    t.push(ck.tokenizer.eot);
    let max = ck.config.max_target_positions + 1;
    if t.len() > max {
        bail!("transcript of {} tokens is longer than the decoder's {} positions: {text:?}", t.len(), max - 1);
    }
    Ok(t)
}

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
