//! The training loss of Whisper: teacher-forced cross-entropy of the transcript tokens behind
//! the prompt (labels = inputs shifted left by one, padding masked out, as Hugging Face's
//! recipe), one mean per row, through each row's expert. The encoder runs once per utterance
//! and is cached when no adapter touches it.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::encoder_cache::EncoderCache;
use super::examples::Example;
use crate::lora::Route;
use crate::whisper::Checkpoint;
use crate::whisper::model::{KvCache, Whisper};

/// One training row: an utterance (an index into the examples) trained through an expert
/// (None = the base model) with a weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub example: usize,
    pub expert: Option<usize>,
    pub weight: f32,
}

/// Decoder inputs [rows, T], labels [rows, T] and the label mask [rows, T] (1 = real token),
/// padded with <|endoftext|>. Labels are the inputs shifted left by one (HF's recipe).
pub fn teacher_forcing(seqs: &[&[u32]], pad: u32, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2>) {
    let t = seqs.iter().map(|s| s.len() - 1).max().unwrap_or(1);
    let r = seqs.len();
    let (mut inp, mut lab, mut mask) =
        (Vec::with_capacity(r * t), Vec::with_capacity(r * t), Vec::with_capacity(r * t));
    for s in seqs {
        let n = s.len() - 1;
        for i in 0..t {
            inp.push(if i < n { s[i] } else { pad } as i64);
            lab.push(if i < n { s[i + 1] } else { pad } as i64);
            mask.push(if i < n { 1.0f32 } else { 0.0 });
        }
    }
    (
        Tensor::from_data(TensorData::new(inp, [r, t]), device),
        Tensor::from_data(TensorData::new(lab, [r, t]), device),
        Tensor::from_data(TensorData::new(mask, [r, t]), device),
    )
}

/// Mean token cross-entropy of each row [rows] (a sequence loss L(x) per row).
pub fn sequence_losses(model: &Whisper, enc: Tensor<3>, seqs: &[&[u32]], route: Option<&Route>) -> Tensor<1> {
    let mut cache = model.decoder.new_cache(enc, route);
    decoder_losses(model, &mut cache, seqs, route)
}

fn decoder_losses(
    model: &Whisper,
    cache: &mut KvCache,
    seqs: &[&[u32]],
    route: Option<&Route>,
) -> Tensor<1> {
    let device = model.decoder.embed_tokens.val().device();
    let pad = model.config.eos_token_id;
    let (inp, lab, mask) = teacher_forcing(seqs, pad, &device);
    let [r, t] = inp.dims();
    let logits = model.decoder.forward_cached(inp, cache, route); // [r, t, vocab]
    let logp = log_softmax(logits, 2);
    let nll = logp.gather(2, lab.reshape([r, t, 1])).reshape([r, t]).neg(); // [r, t]
    let counts = mask.clone().sum_dim(1).reshape([r]);
    (nll * mask).sum_dim(1).reshape([r]) / counts
}

/// Each row's sequence loss L [rows] for (example, expert) rows: the encoder runs once per
/// utterance without gradients (cached) unless adapters touch it.
pub fn utterance_losses(
    ck: &Checkpoint,
    model: &Whisper,
    cache: &mut EncoderCache,
    examples: &[Example],
    rows: &[(usize, Option<usize>)],
    train: bool,
) -> Tensor<1> {
    let device = model.decoder.embed_tokens.val().device();
    let route = Route::per_row(&rows.iter().map(|r| r.1).collect::<Vec<_>>(), &device).training(train);
    let exs: Vec<&Example> = rows.iter().map(|r| &examples[r.0]).collect();
    let seqs: Vec<&[u32]> = exs.iter().map(|e| e.tokens.as_slice()).collect();
    if model.encoder_has_adapters() {
        let feats: Vec<Vec<f32>> = exs.iter().map(|e| ck.features(&e.audio)).collect();
        let mel = Tensor::from_data(ck.mel_batch(&feats).into_data(), &device);
        let enc = model.encoder.forward(mel, Some(&route));
        return sequence_losses(model, enc, &seqs, Some(&route));
    }
    // The encoder is shared: each utterance's states once, rows index into them.
    let mut utts: Vec<usize> = Vec::new();
    let row_utt: Vec<i64> = rows
        .iter()
        .map(|r| match utts.iter().position(|&u| u == r.0) {
            Some(i) => i as i64,
            None => {
                utts.push(r.0);
                (utts.len() - 1) as i64
            }
        })
        .collect();
    let uexs: Vec<&Example> = utts.iter().map(|&u| &examples[u]).collect();
    let enc_u = cache.states(ck, &model.encoder.valid(), &uexs);
    let base = cache.cross_kv(&model.decoder.valid(), &enc_u, &uexs);
    let row_utt = Tensor::<1, Int>::from_data(TensorData::new(row_utt, [rows.len()]), &device);
    let mut kv = model.decoder.new_cache_from_base(enc_u, base, &row_utt, Some(&route));
    decoder_losses(model, &mut kv, &seqs, Some(&route))
}

/// Weighted loss of `rows`: sum_r w_r L_r / utterances, and each row's L_r.
pub fn weighted_loss(
    ck: &Checkpoint,
    model: &Whisper,
    cache: &mut EncoderCache,
    examples: &[Example],
    rows: &[Row],
    utterances: usize,
    train: bool,
) -> (Tensor<1>, Tensor<1>) {
    let device = model.decoder.embed_tokens.val().device();
    let pairs: Vec<(usize, Option<usize>)> = rows.iter().map(|r| (r.example, r.expert)).collect();
    let losses = utterance_losses(ck, model, cache, examples, &pairs, train);
    let w: Vec<f32> = rows.iter().map(|r| r.weight).collect();
    let w = Tensor::<1>::from_data(TensorData::new(w, [rows.len()]), &device);
    ((losses.clone() * w).sum() / utterances.max(1) as f32, losses)
}

