//! Encoder states of utterances, computed once without gradients and reused across batches,
//! epochs and experts: the output when no adapter touches the encoder, otherwise the input of
//! the first layer an adapter touches; and the base cross-attention
//! keys/values of the decoder, which depend only on those states and frozen weights.

use std::collections::HashMap;

use burn::prelude::*;

use super::examples::Example;
use crate::whisper::Checkpoint;

/// Encoder states of utterances, computed once without gradients and reused across batches
/// and epochs (valid when no adapter touches the encoder).
pub struct EncoderCache {
    /// Keyed by (layers run, utterance id).
    states: HashMap<(usize, String), Tensor<2>>,
    /// Keep at most this many states (an utterance's states at one level: 1500 x d_model floats;
    /// with [`EncoderCache::keep_levels`], one utterance may hold several).
    capacity: usize,
    /// Base (adapter-free) cross-attention keys and values per decoder layer, per utterance.
    cross: HashMap<String, Vec<(Tensor<2>, Tensor<2>)>>,
    /// Budget for `cross` in bytes (each utterance holds 2 x layers x 1500 x d_model values of the
    /// weights' dtype).
    cross_budget: usize,
    /// The encoder's adapters are frozen (trained by an earlier stage): its output through
    /// each expert is a constant, computed once per (expert, utterance) and kept in `adapted`.
    frozen_adapters: bool,
    adapted: HashMap<(Option<usize>, String), Tensor<2>>,
    /// Levels (layers run) also kept on the way to a deeper one ([`EncoderCache::keep_levels`]).
    keep: Vec<usize>,
}

impl EncoderCache {
    pub fn new(capacity: usize) -> EncoderCache {
        EncoderCache {
            states: HashMap::new(),
            capacity,
            cross: HashMap::new(),
            cross_budget: 0,
            frozen_adapters: false,
            adapted: HashMap::new(),
            keep: Vec::new(),
        }
    }

    /// Also keep the states after `levels` layers when computing deeper ones, for callers that
    /// ask for several levels of the same utterances (evaluate: the routing embedding's layer,
    /// the first adapted layer, the base output). Each level is then computed from the one
    /// below it instead of from the audio: one encoder pass per utterance, whichever level is
    /// asked for first.
    pub fn keep_levels(mut self, levels: &[usize]) -> EncoderCache {
        self.keep = levels.to_vec();
        self.keep.sort_unstable();
        self.keep.dedup();
        self
    }

    /// Treat the encoder's adapters as frozen: training then reads each (expert, utterance)'s
    /// encoder output from this cache instead of running (and differentiating) the adapted
    /// layers, and the encoder adapters receive no gradient. Only for training that must not
    /// change them (the joint stage's `freeze_encoder_adapters`).
    pub fn with_frozen_encoder_adapters(mut self, frozen: bool) -> EncoderCache {
        self.frozen_adapters = frozen;
        self
    }

    pub fn encoder_adapters_frozen(&self) -> bool {
        self.frozen_adapters
    }

    /// Encoder outputs [n, 1500, d] of `rows` (utterance, expert) through each row's expert's
    /// (frozen) encoder adapters; `encoder` is an inference copy whose first adapted layer is
    /// `first`. Each (expert, utterance) is computed once, from the cached base states below
    /// `first`.
    pub fn adapted_states(
        &mut self,
        ck: &Checkpoint,
        encoder: &crate::whisper::model::Encoder,
        rows: &[(&Example, Option<usize>)],
        first: usize,
    ) -> Tensor<3> {
        let key = |e: &Example, x: Option<usize>| (x, e.id.clone());
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<(&Example, Option<usize>)> = rows
            .iter()
            .filter(|(e, x)| !self.adapted.contains_key(&key(e, *x)) && seen.insert(key(e, *x)))
            .copied()
            .collect();
        let mut fresh: HashMap<(Option<usize>, String), Tensor<2>> = HashMap::new();
        // One row at a time, for the reason given in `states_upto`.
        for (e, x) in &missing {
            let lower = self.states_upto(ck, encoder, &[*e], first);
            let route = crate::lora::Route::per_row(&[*x], &lower.device());
            let enc = encoder.forward_from(lower, first, Some(&route));
            let [_, t, d] = enc.dims();
            let s = enc.reshape([t, d]);
            if self.adapted.len() < self.capacity {
                self.adapted.insert(key(e, *x), s);
            } else {
                fresh.insert(key(e, *x), s);
            }
        }
        let out: Vec<Tensor<2>> = rows
            .iter()
            .map(|(e, x)| self.adapted.get(&key(e, *x)).or_else(|| fresh.get(&key(e, *x))).expect("encoded").clone())
            .collect();
        Tensor::stack(out, 0)
    }

    /// Also keep the decoder's base cross-attention keys/values, up to `mb` megabytes: they
    /// depend only on frozen weights and the frozen encoder, and computing them is most of a
    /// decoder pass over a short transcript.
    pub fn with_cross_kv(mut self, mb: usize) -> EncoderCache {
        self.cross_budget = mb << 20;
        self
    }

    /// Base cross-attention (keys, values) [n, 1500, d] of each decoder layer for `examples`,
    /// whose encoder states are `enc` [n, 1500, d]. `decoder` must be an inference copy.
    pub fn cross_kv(
        &mut self,
        decoder: &crate::whisper::model::Decoder,
        enc: &Tensor<3>,
        examples: &[&Example],
    ) -> Vec<(Tensor<3>, Tensor<3>)> {
        let [_, t, d] = enc.dims();
        // The keys and values come out in the weights' dtype (2 bytes each in bf16 and f16).
        let bytes = decoder.layers.first().map_or(4, |l| l.encoder_attn.k_proj.weight.val().dtype().size());
        let per_utt = 2 * decoder.layers.len() * t * d * bytes;
        let missing: Vec<usize> = (0..examples.len()).filter(|&i| !self.cross.contains_key(&examples[i].id)).collect();
        let mut fresh: HashMap<usize, Vec<(Tensor<2>, Tensor<2>)>> = HashMap::new();
        if !missing.is_empty() {
            let device = enc.device();
            let idx = Tensor::<1, Int>::from_data(
                TensorData::new(missing.iter().map(|&i| i as i64).collect::<Vec<_>>(), [missing.len()]),
                &device,
            );
            let x = enc.clone().select(0, idx);
            let kv: Vec<(Tensor<3>, Tensor<3>)> = decoder
                .layers
                .iter()
                .map(|l| {
                    (l.encoder_attn.k_proj.forward(x.clone(), None), l.encoder_attn.v_proj.forward(x.clone(), None))
                })
                .collect();
            for (j, &i) in missing.iter().enumerate() {
                let one: Vec<(Tensor<2>, Tensor<2>)> = kv
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.clone().slice(s![j..j + 1, .., ..]).reshape([t, d]),
                            v.clone().slice(s![j..j + 1, .., ..]).reshape([t, d]),
                        )
                    })
                    .collect();
                if (self.cross.len() + 1) * per_utt <= self.cross_budget {
                    self.cross.insert(examples[i].id.clone(), one);
                } else {
                    fresh.insert(i, one);
                }
            }
        }
        (0..decoder.layers.len())
            .map(|l| {
                let get = |i: usize| -> &(Tensor<2>, Tensor<2>) {
                    &self.cross.get(&examples[i].id).unwrap_or_else(|| &fresh[&i])[l]
                };
                let ks: Vec<Tensor<2>> = (0..examples.len()).map(|i| get(i).0.clone()).collect();
                let vs: Vec<Tensor<2>> = (0..examples.len()).map(|i| get(i).1.clone()).collect();
                (Tensor::stack(ks, 0), Tensor::stack(vs, 0))
            })
            .collect()
    }

    /// Base encoder states [n, 1500, d] of `examples` (the encoder's output; plain device:
    /// constants for the autodiff graph).
    pub fn states(
        &mut self,
        ck: &Checkpoint,
        encoder: &crate::whisper::model::Encoder,
        examples: &[&Example],
    ) -> Tensor<3> {
        self.states_upto(ck, encoder, examples, encoder.layers.len())
    }

    /// Base hidden states after the first `upto` encoder layers (HF's `hidden_states[upto]`;
    /// `upto` = all layers: the output, final norm included) of `examples`: the input of the
    /// first layer an adapter touches, which only needs computing once per utterance.
    pub fn states_upto(
        &mut self,
        ck: &Checkpoint,
        encoder: &crate::whisper::model::Encoder,
        examples: &[&Example],
        upto: usize,
    ) -> Tensor<3> {
        let key = |e: &Example| (upto, e.id.clone());
        let missing: Vec<&Example> = {
            let mut seen = std::collections::HashSet::new();
            examples
                .iter()
                .filter(|e| !self.states.contains_key(&key(e)) && seen.insert(e.id.clone()))
                .copied()
                .collect()
        };
        let mut fresh: HashMap<(usize, String), Tensor<2>> = HashMap::new();
        // One utterance at a time: the result must not depend on which utterances happen to be
        // missing together (a batch of 3 and a batch of 4 round differently), or a resumed run
        // would differ from an uninterrupted one in the last bits. Batching the encoder gains
        // nothing on the CPU (README, Performance).
        for e in &missing {
            // From the deepest level below `upto` already at hand (the same operations as one
            // pass from the audio, so the same bits), through the kept levels on the way.
            let start = (0..upto).rev().find_map(|l| self.states.get(&(l, e.id.clone())).map(|s| (l, s.clone())));
            let (mut level, mut x) = match start {
                Some((l, s)) => {
                    let [t, d] = s.dims();
                    (l, s.reshape([1, t, d]))
                }
                None => {
                    let stops = self.keep.iter().copied().filter(|&k| k < upto).min();
                    let first = stops.unwrap_or(upto);
                    let x = encoder.forward_upto(ck.mel_batch(&[ck.features(&e.audio)]), first, None);
                    (first, x)
                }
            };
            let mut on_the_way = Vec::new();
            while level < upto {
                let [_, t, d] = x.dims();
                on_the_way.push(((level, e.id.clone()), x.clone().reshape([t, d])));
                let next = self.keep.iter().copied().filter(|&k| k > level && k < upto).min().unwrap_or(upto);
                x = encoder.forward_between(x, level, next, None);
                level = next;
            }
            let [_, t, d] = x.dims();
            let s = x.reshape([t, d]);
            // The level asked for first, then the kept ones as room allows.
            if self.states.len() < self.capacity {
                self.states.insert(key(e), s);
            } else {
                fresh.insert(key(e), s);
            }
            for (k, s) in on_the_way {
                if self.states.len() < self.capacity && self.keep.contains(&k.0) {
                    self.states.entry(k).or_insert(s);
                }
            }
        }
        let rows: Vec<Tensor<2>> = examples
            .iter()
            .map(|e| self.states.get(&key(e)).or_else(|| fresh.get(&key(e))).expect("encoded").clone())
            .collect();
        Tensor::stack(rows, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Levels computed through the kept ones are the bits of one pass from the audio, each
    /// level is kept, and a later request for a kept level reads it instead of encoding again.
    #[test]
    fn kept_levels_give_the_bits_of_one_pass() {
        let dir = std::env::temp_dir().join(format!("wm-cache-levels-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::whisper::testing::write_checkpoint(&dir, 3, &[], &[]).unwrap();
        let ck = Checkpoint::load_dir(&dir, &Device::flex()).unwrap();
        let n = ck.model.encoder.layers.len();
        assert!(n >= 2, "the test checkpoint needs two encoder layers");
        let clips: Vec<Example> = (0..3)
            .map(|i| {
                Example::clip(
                    format!("u{i}"),
                    (0..8000 + 3000 * i).map(|t| (t as f32 * 0.01 * (i + 1) as f32).sin()).collect(),
                )
            })
            .collect();
        let exs: Vec<&Example> = clips.iter().collect();
        let one_pass = |e: &Example, upto: usize| -> Vec<f32> {
            let x = ck.model.encoder.forward_upto(ck.mel_batch(&[ck.features(&e.audio)]), upto, None);
            x.into_data().try_into_vec_as().unwrap()
        };
        let mut cache = EncoderCache::new(16).keep_levels(&[1]);
        let out: Vec<f32> = cache.states(&ck, &ck.model.encoder, &exs).into_data().try_into_vec_as().unwrap();
        let per = out.len() / exs.len();
        for (i, e) in exs.iter().enumerate() {
            assert!(out[i * per..(i + 1) * per] == one_pass(e, n)[..], "output of {} differs from one pass", e.id);
            assert!(cache.states.contains_key(&(1, e.id.clone())), "level 1 of {} kept", e.id);
            assert!(!cache.states.contains_key(&(0, e.id.clone())));
        }
        // Level 1 now comes from the cache (nothing new is stored), as one pass to level 1 gives it.
        let stored = cache.states.len();
        assert_eq!(stored, 2 * exs.len());
        let lower: Vec<f32> =
            cache.states_upto(&ck, &ck.model.encoder, &exs[..1], 1).into_data().try_into_vec_as().unwrap();
        assert!(lower == one_pass(exs[0], 1));
        assert_eq!(cache.states.len(), stored);
        // Without kept levels only the asked level is stored; a deeper one continues from it.
        let mut plain = EncoderCache::new(16);
        plain.states_upto(&ck, &ck.model.encoder, &exs, 1);
        let deep: Vec<f32> = plain.states(&ck, &ck.model.encoder, &exs).into_data().try_into_vec_as().unwrap();
        assert!(deep == out);
        assert_eq!(plain.states.len(), 2 * exs.len());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
