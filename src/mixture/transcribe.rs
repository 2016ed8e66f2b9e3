//! Transcription with a chosen expert per row: the one decoding path of the project. Expert
//! validation, joint validation, evaluate (every system) and `pipeline transcribe` all decode
//! through [`transcribe`] (or [`encode`] + [`decode`] when the encoder states are already at
//! hand).

use anyhow::Result;
use burn::prelude::*;

use crate::eval::EvalConfig;
use crate::lora::Route;
use crate::train::{EncoderCache, Example};
use crate::whisper::Checkpoint;
use crate::whisper::decode::{Decoded, generate};
use crate::whisper::model::Whisper;

/// Encoder states [n, 1500, d] of `examples`, row i through expert `experts[i]` when adapters
/// touch the encoder. Without encoder adapters the states are the base model's and come from
/// `cache` when one is given (shared by every expert and system).
pub fn encode(
    ck: &Checkpoint,
    model: &Whisper,
    examples: &[&Example],
    experts: &[Option<usize>],
    mut cache: Option<&mut EncoderCache>,
) -> Tensor<3> {
    if let Some(first) = model.first_adapted_encoder_layer() {
        if let Some(c) = cache.as_deref_mut().filter(|c| c.encoder_adapters_frozen()) {
            let rows: Vec<(&Example, Option<usize>)> = examples.iter().copied().zip(experts.iter().copied()).collect();
            return c.adapted_states(ck, &model.encoder, &rows, first);
        }
        let route = Route::per_row(experts, &ck.device.clone().inner());
        let lower = match cache {
            Some(c) => c.states_upto(ck, &model.encoder, examples, first),
            None => {
                let feats: Vec<Vec<f32>> = examples.iter().map(|e| ck.features(&e.audio)).collect();
                model.encoder.forward_upto(ck.mel_batch(&feats), first, None)
            }
        };
        return model.encoder.forward_from(lower, first, Some(&route));
    }
    match cache {
        Some(c) => c.states(ck, &model.encoder, examples),
        None => {
            let feats: Vec<Vec<f32>> = examples.iter().map(|e| ck.features(&e.audio)).collect();
            model.encoder.forward(ck.mel_batch(&feats), None)
        }
    }
}

/// One decoded clip: its text and the language of its prompt, with the probability when it was
/// detected (multilingual checkpoints; None for English-only ones).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Transcript {
    pub text: String,
    pub language: Option<String>,
    pub language_prob: Option<f32>,
}

/// Transcripts of encoder states `enc` [n, 1500, d] of `examples`, row i through expert
/// `experts[i]` (None = the base model): greedy, with openai-whisper's safeguards when
/// `opts.safeguards` are on (the token limit from each clip's duration; clips whose text
/// repeats itself or whose average log-probability is too low decoded again at the next
/// temperature, by sampling seeded from the clip's audio). Each row's prompt has its example's
/// language and task; a multilingual checkpoint detects the language of rows without one
/// (through the row's expert, as transformers' `generate` does with the model it is given).
pub fn decode(
    ck: &Checkpoint,
    model: &Whisper,
    enc: Tensor<3>,
    examples: &[&Example],
    experts: &[Option<usize>],
    opts: &EvalConfig,
) -> Result<Vec<Transcript>> {
    let gopts = ck.greedy_options(opts.max_new_tokens);
    let route = model.has_adapters().then(|| Route::per_row(experts, &enc.device()));
    let mut langs: Vec<(Option<String>, Option<f32>)> = examples.iter().map(|e| (e.language.clone(), None)).collect();
    if ck.is_multilingual() && langs.iter().any(|(l, _)| l.is_none()) {
        let found = ck.detect_language(model, enc.clone(), route.as_ref())?;
        for ((l, p), d) in langs.iter_mut().zip(found) {
            if l.is_none() {
                *l = Some(d.code);
                *p = Some(d.probability);
            }
        }
    }
    let prompts: Vec<Vec<u32>> =
        examples.iter().zip(&langs).map(|(e, (l, _))| ck.prompt(l.as_deref(), e.task)).collect::<Result<_>>()?;
    let plen = ck.prompt_len();
    let sg = &opts.safeguards;
    let limits: Vec<usize> = examples.iter().map(|e| sg.token_limit(e.audio.len(), opts.max_new_tokens)).collect();
    let text = |d: &Decoded| -> Result<String> { Ok(ck.tokenizer.decode(&d.ids[plen..])?.trim().to_string()) };
    let first = if sg.enabled { sg.temperatures.first().copied().unwrap_or(0.0) } else { 0.0 };
    let seeds: Vec<u64> = examples.iter().map(|e| audio_seed(&e.audio)).collect();
    let mut out = generate(model, enc.clone(), &prompts, &gopts, route.as_ref(), &limits, first, &seeds);
    let mut texts: Vec<String> = out.iter().map(text).collect::<Result<_>>()?;
    let finish = |texts: Vec<String>| -> Vec<Transcript> {
        texts
            .into_iter()
            .zip(langs.iter())
            .map(|(text, (l, p))| Transcript {
                text,
                language: if ck.is_multilingual() { l.clone() } else { None },
                language_prob: *p,
            })
            .collect()
    };
    if !sg.enabled {
        return Ok(finish(texts));
    }
    for &t in sg.temperatures.iter().skip(1) {
        let failing: Vec<usize> =
            (0..out.len()).filter(|&i| sg.needs_fallback(&texts[i], out[i].avg_logprob())).collect();
        if failing.is_empty() {
            break;
        }
        let idx: Vec<i64> = failing.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [failing.len()]), &enc.device());
        let sub_route = route.as_ref().map(|r| r.select(idx.clone()));
        let sub_limits: Vec<usize> = failing.iter().map(|&i| limits[i]).collect();
        let sub_seeds: Vec<u64> = failing.iter().map(|&i| seeds[i] ^ t.to_bits()).collect();
        let sub_prompts: Vec<Vec<u32>> = failing.iter().map(|&i| prompts[i].clone()).collect();
        let again = generate(
            model,
            enc.clone().select(0, idx),
            &sub_prompts,
            &gopts,
            sub_route.as_ref(),
            &sub_limits,
            t,
            &sub_seeds,
        );
        for (d, &i) in again.into_iter().zip(&failing) {
            texts[i] = text(&d)?;
            out[i] = d;
        }
    }
    Ok(finish(texts))
}

/// A seed from a clip's audio: the same clip samples the same way wherever it is decoded.
fn audio_seed(audio: &[f32]) -> u64 {
    let mut h = blake3::Hasher::new();
    for x in audio {
        h.update(&x.to_le_bytes());
    }
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Transcripts of `examples` in batches of `opts.batch_size`, row i through `experts[i]`.
/// `model` must be an inference copy (`valid()`).
pub fn transcribe(
    ck: &Checkpoint,
    model: &Whisper,
    examples: &[&Example],
    experts: &[Option<usize>],
    opts: &EvalConfig,
    cache: Option<&mut EncoderCache>,
) -> Result<Vec<String>> {
    Ok(transcribe_detailed(ck, model, examples, experts, opts, cache)?.into_iter().map(|t| t.text).collect())
}

/// [`transcribe`] with each clip's language (see [`decode`]).
pub fn transcribe_detailed(
    ck: &Checkpoint,
    model: &Whisper,
    examples: &[&Example],
    experts: &[Option<usize>],
    opts: &EvalConfig,
    mut cache: Option<&mut EncoderCache>,
) -> Result<Vec<Transcript>> {
    let b = opts.batch_size.max(1);
    let mut out = Vec::with_capacity(examples.len());
    for (chunk, ex) in examples.chunks(b).zip(experts.chunks(b)) {
        let enc = encode(ck, model, chunk, ex, cache.as_deref_mut());
        out.extend(decode(ck, model, enc, chunk, ex, opts)?);
    }
    Ok(out)
}
