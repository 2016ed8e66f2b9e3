//! Greedy decoding with a KV cache, batched; applies suppress_tokens at every step and
//! begin_suppress_tokens at the first generated one, as transformers' `generate(num_beams=1)`.

use burn::prelude::*;

use super::model::Whisper;
use crate::lora::Route;

#[derive(Debug, Clone)]
pub struct GreedyOptions {
    pub max_new_tokens: usize,
    pub suppress_tokens: Vec<u32>,
    pub begin_suppress_tokens: Vec<u32>,
    pub eot: u32,
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

/// Decode every row of `enc` [b, 1500, d] from `prompt`; returns prompt + tokens (+ EOT when
/// emitted) per row, like transformers' `generated_ids`.
pub fn greedy(
    model: &Whisper,
    enc: Tensor<3>,
    prompt: &[u32],
    opts: &GreedyOptions,
    route: Option<&Route>,
) -> Vec<Vec<u32>> {
    let device = enc.device();
    let [b, _, _] = enc.dims();
    let vocab = model.config.vocab_size;
    let max_new = opts.max_new_tokens.min(model.config.max_target_positions.saturating_sub(prompt.len()));
    let always = suppress_mask(&opts.suppress_tokens, vocab, &device);
    let mut first: Vec<u32> = opts.suppress_tokens.clone();
    first.extend(&opts.begin_suppress_tokens);
    let at_begin = suppress_mask(&first, vocab, &device);

    let mut out: Vec<Vec<u32>> = vec![prompt.to_vec(); b];
    let mut done = vec![false; b];
    let mut cache = model.decoder.new_cache(enc, route);
    let ids: Vec<i64> = (0..b).flat_map(|_| prompt.iter().map(|&t| t as i64)).collect();
    let mut tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, prompt.len()]), &device);
    for step in 0..max_new {
        let logits = model.decoder.forward_cached(tokens, &mut cache, route); // [b, t, vocab]
        let [_, t, _] = logits.dims();
        let last = logits.slice(s![.., t - 1..t, ..]).reshape([b, vocab]);
        let mask = if step == 0 { at_begin.clone() } else { always.clone() };
        let next: Vec<i64> = (last + mask).argmax(1).into_data().try_into_vec_as::<i64>().expect("argmax ids");
        for (i, &tok) in next.iter().enumerate() {
            if !done[i] {
                out[i].push(tok as u32);
                done[i] = tok as u32 == opts.eot;
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        let feed: Vec<i64> = next.iter().zip(&done).map(|(&t, &d)| if d { opts.eot as i64 } else { t }).collect();
        tokens = Tensor::from_data(TensorData::new(feed, [b, 1]), &device);
    }
    out
}
