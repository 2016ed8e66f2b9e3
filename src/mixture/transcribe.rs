//! Transcription with a chosen expert per row: the one decoding path of the project. Expert
//! validation, joint validation, evaluate (every system) and `pipeline transcribe` all decode
//! through [`transcribe`] (or [`encode`] + [`decode`] when the encoder states are already at
//! hand).

use anyhow::Result;
use burn::prelude::*;

use crate::eval::EvalConfig;
use crate::lora::Route;
use crate::train::{EncoderCache, Example};
use crate::whisper::model::Whisper;
use crate::whisper::{Checkpoint, Task, greedy};

/// Encoder states [n, 1500, d] of `examples`, row i through expert `experts[i]` when adapters
/// touch the encoder. Without encoder adapters the states are the base model's and come from
/// `cache` when one is given (shared by every expert and system).
pub fn encode(
    ck: &Checkpoint,
    model: &Whisper,
    examples: &[&Example],
    experts: &[Option<usize>],
    cache: Option<&mut EncoderCache>,
) -> Tensor<3> {
    if model.encoder_has_adapters() {
        let feats: Vec<Vec<f32>> = examples.iter().map(|e| ck.features(&e.audio)).collect();
        let route = Route::per_row(experts, &ck.device.clone().inner());
        return model.encoder.forward(ck.mel_batch(&feats), Some(&route));
    }
    match cache {
        Some(c) => c.states(ck, &model.encoder, examples),
        None => {
            let feats: Vec<Vec<f32>> = examples.iter().map(|e| ck.features(&e.audio)).collect();
            model.encoder.forward(ck.mel_batch(&feats), None)
        }
    }
}

/// Greedy transcripts of encoder states `enc` [n, 1500, d], row i through expert
/// `experts[i]` (None = the base model).
pub fn decode(
    ck: &Checkpoint,
    model: &Whisper,
    enc: Tensor<3>,
    experts: &[Option<usize>],
    opts: &EvalConfig,
) -> Result<Vec<String>> {
    let prompt = ck.prompt(None, Task::Transcribe)?;
    let gopts = ck.greedy_options(opts.max_new_tokens);
    let route = model.has_adapters().then(|| Route::per_row(experts, &enc.device()));
    greedy(model, enc, &prompt, &gopts, route.as_ref())
        .into_iter()
        .map(|ids| Ok(ck.tokenizer.decode(&ids[prompt.len()..])?.trim().to_string()))
        .collect()
}

/// Transcripts of `examples` in batches of `opts.batch_size`, row i through `experts[i]`.
/// `model` must be an inference copy (`valid()`).
pub fn transcribe(
    ck: &Checkpoint,
    model: &Whisper,
    examples: &[&Example],
    experts: &[Option<usize>],
    opts: &EvalConfig,
    mut cache: Option<&mut EncoderCache>,
) -> Result<Vec<String>> {
    let b = opts.batch_size.max(1);
    let mut out = Vec::with_capacity(examples.len());
    for (chunk, ex) in examples.chunks(b).zip(experts.chunks(b)) {
        let enc = encode(ck, model, chunk, ex, cache.as_deref_mut());
        out.extend(decode(ck, model, enc, ex, opts)?);
    }
    Ok(out)
}
