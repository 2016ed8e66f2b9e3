//! Utterances ready for training and evaluation: 16-kHz audio and the token sequence behind
//! the checkpoint's prompt, read from the dataset in parallel.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;

use crate::dataset::Dataset;
use crate::whisper::{Checkpoint, Task};

/// One utterance ready for training: 16-kHz audio and its token sequence
/// (prompt + transcript + <|endoftext|>), and what its prompts say.
#[derive(Debug, Clone, Default)]
pub struct Example {
    pub id: String,
    pub audio: Vec<f32>,
    pub tokens: Vec<u32>,
    pub text: String,
    /// The utterance's language (a Whisper code); None: detected when decoding (multilingual
    /// checkpoints) or English.
    pub language: Option<String>,
    pub task: Task,
}

impl Example {
    /// A clip to transcribe: audio without a transcript.
    pub fn clip(id: impl Into<String>, audio: Vec<f32>) -> Example {
        Example { id: id.into(), audio, ..Default::default() }
    }
}

/// Where each utterance's language comes from, first match wins: the dataset's language column,
/// the stage's `language` parameter, the language the embed stage detected (by id).
#[derive(Debug, Clone, Copy, Default)]
pub struct Prompting<'a> {
    pub language: Option<&'a str>,
    pub detected: Option<&'a HashMap<String, String>>,
    pub task: Task,
    /// Examples to decode, not to train on: a multilingual utterance with no language keeps
    /// none (it is detected when decoded) and gets no token sequence.
    pub decode_only: bool,
}

/// prompt + tokens of the transcript (with a leading space, as Whisper generates text, unless
/// `leading_space` is false) + <|endoftext|>.
pub fn tokens_for(
    ck: &Checkpoint,
    text: &str,
    leading_space: bool,
    language: Option<&str>,
    task: Task,
) -> Result<Vec<u32>> {
    let mut t = ck.prompt(language, task)?;
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
    prompting: Prompting,
) -> Result<HashMap<String, Example>> {
    let mut examples = examples_without_audio(ck, ds, ids, leading_space, prompting)?;
    for (id, audio) in audio_of(ds, ids)? {
        if let Some(e) = examples.get_mut(&id) {
            e.audio = audio;
        }
    }
    Ok(examples)
}

/// The 16-kHz audio of the utterances `ids` of `ds`, read in parallel.
pub fn audio_of(ds: &Dataset, ids: &HashSet<String>) -> Result<HashMap<String, Vec<f32>>> {
    let rows: Vec<_> = ds
        .iter(0..ds.len())
        .filter(|r| r.as_ref().map(|u| ids.contains(&u.id)).unwrap_or(true))
        .collect::<Result<_>>()?;
    let out: Vec<Result<(String, Vec<f32>)>> = rows
        .par_iter()
        .map(|u| {
            let d = u.decode().with_context(|| u.describe(ds))?;
            Ok((u.id.clone(), crate::audio::to_16k(d, &u.audio_path)?.samples))
        })
        .collect();
    let map: HashMap<String, Vec<f32>> = out.into_iter().collect::<Result<_>>()?;
    if let Some(missing) = ids.iter().find(|id| !map.contains_key(*id)) {
        bail!("utterance `{missing}` is not in the dataset {}", ds.path.display());
    }
    Ok(map)
}

/// [`examples_from_dataset`] without the audio (`audio` empty): transcripts, tokens and
/// languages, for a caller that reads the audio later, a part at a time ([`audio_of`]).
pub fn examples_without_audio(
    ck: &Checkpoint,
    ds: &Dataset,
    ids: &HashSet<String>,
    leading_space: bool,
    prompting: Prompting,
) -> Result<HashMap<String, Example>> {
    let lang_col = ds.language_index();
    let stage_language =
        prompting.language.map(crate::whisper::language::code).transpose().context("the stage's `language`")?;
    let rows: Vec<_> = ds
        .iter(0..ds.len())
        .filter(|r| r.as_ref().map(|u| ids.contains(&u.id)).unwrap_or(true))
        .collect::<Result<_>>()?;
    let out: Vec<Result<Example>> = rows
        .par_iter()
        .map(|u| {
            let text = u.text.clone().unwrap_or_default();
            // Whisper's code, whatever the source wrote (`German`, `pt-BR`): prompts and the
            // per-language scores key on it.
            let given = lang_col.and_then(|i| u.extra[i].as_deref()).filter(|l| !l.trim().is_empty());
            let language = match given.or_else(|| prompting.detected.and_then(|m| m.get(&u.id)).map(String::as_str)) {
                Some(l) if given.is_some() || stage_language.is_none() => {
                    Some(crate::whisper::language::code(l).with_context(|| u.describe(ds))?)
                }
                _ => stage_language.clone(),
            };
            if language.is_none() && ck.is_multilingual() {
                if prompting.decode_only {
                    return Ok(Example { id: u.id.clone(), text, task: prompting.task, ..Default::default() });
                }
                bail!(
                    "{}: no language for this utterance (a multilingual checkpoint's prompt needs one: give the dataset \
                     a `language` column, set the stage's `language`, or let the embed stage detect it)",
                    u.describe(ds)
                );
            }
            let tokens = tokens_for(ck, &text, leading_space, language.as_deref(), prompting.task)
                .with_context(|| u.describe(ds))?;
            Ok(Example { id: u.id.clone(), audio: Vec::new(), tokens, text, language, task: prompting.task })
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
