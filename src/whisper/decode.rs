//! Decoding with a KV cache, batched. Greedy decoding applies suppress_tokens at every step and
//! begin_suppress_tokens at the first generated one, as transformers'
//! `generate(num_beams=1)`; [`generate`] also samples at a temperature and keeps each row's
//! summed log-probability, what openai-whisper's temperature fallback needs
//! (whisper/decoding.py, `GreedyDecoder.update`).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::Whisper;
use crate::lora::Route;

#[derive(Debug, Clone)]
pub struct GreedyOptions {
    pub max_new_tokens: usize,
    pub suppress_tokens: Vec<u32>,
    pub begin_suppress_tokens: Vec<u32>,
    pub eot: u32,
}

/// One decoded row.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// prompt + generated tokens (+ EOT when emitted), like transformers' `generated_ids`.
    pub ids: Vec<u32>,
    /// Sum of the log-probabilities of the generated tokens, EOT included (openai-whisper's
    /// `sum_logprobs`), from the suppressed logits before any temperature.
    pub sum_logprob: f64,
    /// Generated tokens before EOT.
    pub tokens: usize,
}

impl Decoded {
    /// openai-whisper's `avg_logprob`: sum_logprobs / (tokens + 1).
    pub fn avg_logprob(&self) -> f64 {
        self.sum_logprob / (self.tokens + 1) as f64
    }
}

fn suppress_mask(ids: &[u32], vocab: usize, device: &Device) -> Tensor<2> {
    let mut m = vec![0.0f32; vocab];
    for &i in ids {
        if (i as usize) < vocab {
            m[i as usize] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_data(TensorData::new(m, [1, vocab]), device)
}

/// Greedy decoding of every row of `enc` [b, 1500, d] from `prompt`; returns prompt + tokens
/// (+ EOT when emitted) per row.
pub fn greedy(
    model: &Whisper,
    enc: Tensor<3>,
    prompt: &[u32],
    opts: &GreedyOptions,
    route: Option<&Route>,
) -> Vec<Vec<u32>> {
    let prompts = vec![prompt.to_vec(); enc.dims()[0]];
    generate(model, enc, &prompts, opts, route, &[], 0.0, &[]).into_iter().map(|d| d.ids).collect()
}

/// The decoder's logits after <|startoftranscript|> at `ids` (the language tokens), per row of
/// `enc` [b, 1500, d]: what language detection reads.
pub fn language_logits(model: &Whisper, enc: Tensor<3>, sot: u32, ids: &[u32], route: Option<&Route>) -> Vec<Vec<f32>> {
    let device = enc.device();
    let [b, _, _] = enc.dims();
    let mut cache = model.decoder.new_cache(enc, route);
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(vec![sot as i64; b], [b, 1]), &device);
    let vocab = model.config.vocab_size;
    let logits: Vec<f32> =
        model.decoder.forward_cached(tokens, &mut cache, route).into_data().try_into_vec_as().expect("logits");
    (0..b).map(|i| ids.iter().map(|&id| logits[i * vocab + id as usize]).collect()).collect()
}

/// Decode row i of `enc` [b, 1500, d] from `prompts[i]` (prompts of one length): greedy at temperature 0, otherwise
/// sampling from softmax(logits / temperature) with one seeded stream per row (`seeds[i]`).
/// Row i stops at EOT or after `limits[i]` new tokens (`opts.max_new_tokens` when `limits` is
/// empty; never more than the decoder's positions allow).
#[allow(clippy::too_many_arguments)]
pub fn generate(
    model: &Whisper,
    enc: Tensor<3>,
    prompts: &[Vec<u32>],
    opts: &GreedyOptions,
    route: Option<&Route>,
    limits: &[usize],
    temperature: f64,
    seeds: &[u64],
) -> Vec<Decoded> {
    let device = enc.device();
    let [b, _, _] = enc.dims();
    assert_eq!(prompts.len(), b, "one prompt per row");
    let plen = prompts.first().map_or(0, Vec::len);
    assert!(prompts.iter().all(|p| p.len() == plen), "prompts of one length");
    let vocab = model.config.vocab_size;
    let room = model.config.max_target_positions.saturating_sub(plen);
    let limit: Vec<usize> = (0..b)
        .map(|i| limits.get(i).copied().unwrap_or(opts.max_new_tokens).min(opts.max_new_tokens).min(room))
        .collect();
    let steps = limit.iter().copied().max().unwrap_or(0);
    let always = suppress_mask(&opts.suppress_tokens, vocab, &device);
    let mut first: Vec<u32> = opts.suppress_tokens.clone();
    first.extend(&opts.begin_suppress_tokens);
    let at_begin = suppress_mask(&first, vocab, &device);
    let mut rngs: Vec<ChaCha8Rng> =
        (0..b).map(|i| ChaCha8Rng::seed_from_u64(seeds.get(i).copied().unwrap_or(i as u64))).collect();

    let mut out: Vec<Decoded> =
        prompts.iter().map(|p| Decoded { ids: p.clone(), sum_logprob: 0.0, tokens: 0 }).collect();
    let mut done: Vec<bool> = limit.iter().map(|&l| l == 0).collect();
    let mut cache = model.decoder.new_cache(enc, route);
    let ids: Vec<i64> = prompts.iter().flat_map(|p| p.iter().map(|&t| t as i64)).collect();
    let mut tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, plen]), &device);
    for step in 0..steps {
        if done.iter().all(|&d| d) {
            break;
        }
        let logits = model.decoder.forward_cached(tokens, &mut cache, route); // [b, t, vocab]
        let [_, t, _] = logits.dims();
        let mask = if step == 0 { at_begin.clone() } else { always.clone() };
        let last = logits.slice(s![.., t - 1..t, ..]).reshape([b, vocab]) + mask; // [b, vocab]
        let logp: Vec<f32> = log_softmax(last.clone(), 1).into_data().try_into_vec_as().expect("log-probabilities");
        let next: Vec<usize> = if temperature <= 0.0 {
            let a: Vec<i64> = last.argmax(1).into_data().try_into_vec_as().expect("argmax ids");
            a.into_iter().map(|x| x as usize).collect()
        } else {
            (0..b).map(|i| sample(&logp[i * vocab..(i + 1) * vocab], temperature, &mut rngs[i])).collect()
        };
        for (i, &tok) in next.iter().enumerate() {
            if done[i] {
                continue;
            }
            let row = &mut out[i];
            row.ids.push(tok as u32);
            row.sum_logprob += logp[i * vocab + tok] as f64;
            if tok as u32 == opts.eot {
                done[i] = true;
            } else {
                row.tokens += 1;
                done[i] = row.tokens >= limit[i];
            }
        }
        let feed: Vec<i64> =
            next.iter().zip(&done).map(|(&t, &d)| if d { opts.eot as i64 } else { t as i64 }).collect();
        tokens = Tensor::from_data(TensorData::new(feed, [b, 1]), &device);
    }
    out
}

/// A draw from softmax(logp / temperature) (logp are log-probabilities; -inf never drawn).
fn sample(logp: &[f32], temperature: f64, rng: &mut ChaCha8Rng) -> usize {
    let max = logp.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = logp.iter().map(|&l| ((l as f64 - max) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
}
