//! The training loss of Whisper: teacher-forced cross-entropy of the transcript tokens behind
//! the prompt (labels = inputs shifted left by one, padding masked out, as Hugging Face's
//! recipe), one mean per row, through each row's expert. The encoder runs once per utterance
//! and is cached when no adapter touches it.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

use super::encoder_cache::EncoderCache;
use super::examples::Example;
use crate::audio::mel::N_SAMPLES;
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

fn decoder_losses(model: &Whisper, cache: &mut KvCache, seqs: &[&[u32]], route: Option<&Route>) -> Tensor<1> {
    let (nll, mask) = token_nll(model, cache, seqs, route); // [r, t]
    let [r, _] = nll.dims();
    let counts = mask.clone().sum_dim(1).reshape([r]);
    (nll * mask).sum_dim(1).reshape([r]) / counts
}

/// Per-token negative log-likelihood [r, t] of teacher-forced `seqs`, and the mask of real
/// labels [r, t] (padding 0).
fn token_nll(model: &Whisper, cache: &mut KvCache, seqs: &[&[u32]], route: Option<&Route>) -> (Tensor<2>, Tensor<2>) {
    let device = model.decoder.embed_tokens.val().device();
    let pad = model.config.eos_token_id;
    let (inp, lab, mask) = teacher_forcing(seqs, pad, &device);
    let [r, t] = inp.dims();
    let logits = model.decoder.forward_cached(inp, cache, route); // [r, t, vocab]
    let logp = log_softmax(logits, 2);
    (logp.gather(2, lab.reshape([r, t, 1])).reshape([r, t]).neg(), mask)
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
    pack: bool,
) -> Tensor<1> {
    if pack && model.encoder_has_adapters() && !cache.encoder_adapters_frozen() {
        return packed_losses(ck, model, examples, rows, train);
    }
    let device = model.decoder.embed_tokens.val().device();
    let route = Route::per_row(&rows.iter().map(|r| r.1).collect::<Vec<_>>(), &device).training(train);
    let exs: Vec<&Example> = rows.iter().map(|r| &examples[r.0]).collect();
    let seqs: Vec<&[u32]> = exs.iter().map(|e| e.tokens.as_slice()).collect();
    if let Some(first) = model.first_adapted_encoder_layer().filter(|_| cache.encoder_adapters_frozen()) {
        // Frozen encoder adapters: each (expert, utterance)'s encoder output is a constant.
        let pairs: Vec<(&Example, Option<usize>)> = rows.iter().map(|r| (&examples[r.0], r.1)).collect();
        let enc = cache.adapted_states(ck, &model.encoder.valid(), &pairs, first);
        let enc = Tensor::from_data(enc.into_data(), &device);
        return sequence_losses(model, enc, &seqs, Some(&route));
    }
    if let Some(first) = model.first_adapted_encoder_layer() {
        // The layers below the first adapted one are shared by every expert: from the cache.
        let lower = cache.states_upto(ck, &model.encoder.valid(), &exs, first);
        let lower = Tensor::from_data(lower.into_data(), &device);
        let enc = model.encoder.forward_from(lower, first, Some(&route));
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
    pack: bool,
) -> (Tensor<1>, Tensor<1>) {
    let device = model.decoder.embed_tokens.val().device();
    let pairs: Vec<(usize, Option<usize>)> = rows.iter().map(|r| (r.example, r.expert)).collect();
    let losses = utterance_losses(ck, model, cache, examples, &pairs, train, pack);
    let w: Vec<f32> = rows.iter().map(|r| r.weight).collect();
    let w = Tensor::<1>::from_data(TensorData::new(w, [rows.len()]), &device);
    ((losses.clone() * w).sum() / utterances.max(1) as f32, losses)
}

/// Rows packed into shared 30-s windows: the utterances of rows with the same expert are
/// concatenated (audio one after the other, transcripts joined behind one prompt), as
/// Whisper's own training windows hold several utterances, so the encoder runs once per
/// window instead of once per row. Packing changes what the model sees (several utterances per
/// window, earlier transcripts as context), not what is scored: each row's loss is the mean
/// cross-entropy of its own tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub expert: Option<usize>,
    /// Indices into the packed rows, in the window's order.
    pub rows: Vec<usize>,
}

/// Pack `rows` (example, expert) greedily in order of appearance per expert: a window takes
/// rows while its audio fits 30 s and its decoder sequence the model's positions.
pub fn pack(
    examples: &[Example],
    rows: &[(usize, Option<usize>)],
    prompt_len: usize,
    max_positions: usize,
) -> Vec<Window> {
    let mut experts: Vec<Option<usize>> = Vec::new();
    for r in rows {
        if !experts.contains(&r.1) {
            experts.push(r.1);
        }
    }
    let mut out = Vec::new();
    for e in experts {
        let mut cur = Window { expert: e, rows: Vec::new() };
        let (mut samples, mut tokens) = (0usize, prompt_len + 1);
        for (i, r) in rows.iter().enumerate().filter(|(_, r)| r.1 == e) {
            let ex = &examples[r.0];
            let text = ex.tokens.len().saturating_sub(prompt_len + 1);
            let fits = samples + ex.audio.len() <= N_SAMPLES && tokens + text <= max_positions;
            if !cur.rows.is_empty() && !fits {
                out.push(std::mem::replace(&mut cur, Window { expert: e, rows: Vec::new() }));
                (samples, tokens) = (0, prompt_len + 1);
            }
            cur.rows.push(i);
            samples += ex.audio.len();
            tokens += text;
        }
        if !cur.rows.is_empty() {
            out.push(cur);
        }
    }
    out
}

/// Each row's sequence loss L [rows] with rows packed into windows ([`pack`]): one encoder
/// pass per window, through the window's expert.
pub fn packed_losses(
    ck: &Checkpoint,
    model: &Whisper,
    examples: &[Example],
    rows: &[(usize, Option<usize>)],
    train: bool,
) -> Tensor<1> {
    let device = model.decoder.embed_tokens.val().device();
    let prompt_len = ck.prompt_len();
    let windows = pack(examples, rows, prompt_len, ck.config.max_target_positions + 1);
    let mut feats = Vec::with_capacity(windows.len());
    let mut seqs: Vec<Vec<u32>> = Vec::with_capacity(windows.len());
    // For every row: (window, first label index, end label index).
    let mut spans = vec![(0usize, 0usize, 0usize); rows.len()];
    for (w, win) in windows.iter().enumerate() {
        let mut audio = Vec::new();
        let first = &examples[rows[win.rows[0]].0].tokens;
        let mut seq: Vec<u32> = first[..prompt_len].to_vec();
        for (j, &r) in win.rows.iter().enumerate() {
            let ex = &examples[rows[r].0];
            audio.extend_from_slice(&ex.audio);
            let start = seq.len();
            seq.extend_from_slice(&ex.tokens[prompt_len..ex.tokens.len() - 1]);
            // Label i predicts token i + 1: the row's labels are those predicting its text (the
            // first row's also the prompt's, the last row's also <|endoftext|>), as unpacked.
            let from = if j == 0 { 0 } else { start - 1 };
            let to = if j + 1 == win.rows.len() { seq.len() } else { seq.len() - 1 };
            spans[r] = (w, from, to);
        }
        seq.push(ck.tokenizer.eot);
        feats.push(ck.features(&audio));
        seqs.push(seq);
    }
    let experts: Vec<Option<usize>> = windows.iter().map(|w| w.expert).collect();
    let route = Route::per_row(&experts, &device).training(train);
    let mel = Tensor::from_data(ck.mel_batch(&feats).into_data(), &device);
    let enc = model.encoder.forward(mel, Some(&route));
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let mut cache = model.decoder.new_cache(enc, Some(&route));
    let (nll, _) = token_nll(model, &mut cache, &refs, Some(&route)); // [W, T], padding masked below
    let [w, t] = nll.dims();
    // Row losses = A nll, with A[r, window(r) * T + i] = 1 / span length over the row's span.
    let mut a = vec![0.0f32; rows.len() * w * t];
    for (r, &(win, from, to)) in spans.iter().enumerate() {
        let n = (to - from).max(1) as f32;
        for i in from..to {
            a[r * w * t + win * t + i] = 1.0 / n;
        }
    }
    let a = Tensor::<2>::from_data(TensorData::new(a, [rows.len(), w * t]), &device);
    a.matmul(nll.reshape([w * t, 1])).reshape([rows.len()])
}
