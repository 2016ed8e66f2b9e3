//! Whisper in burn, built from Hugging Face checkpoints by their own tensor names.
//! Reference: transformers/models/whisper/modeling_whisper.py.

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::module::{attention, conv1d, embedding, layer_norm};
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use burn::tensor::{DType, FloatDType};

use super::config::WhisperConfig;
use super::weights::Loader;
use crate::lora::{MultiLora, Route};

const LN_EPS: f64 = 1e-5;

/// Plain fp32 flex tensors (no autodiff, not on a GPU) take the hand-written CPU kernels,
/// unless they are switched off ([`super::kernels::set_enabled`]).
fn inference_on_cpu<const D: usize>(t: &Tensor<D>) -> bool {
    super::kernels::enabled() && !t.is_autodiff() && t.dtype() == DType::F32 && t.device() == Device::flex()
}

/// The floating-point type of the frozen base model: its weights and activations (`precision:`).
/// Adapters, the gate and the optimizer state stay fp32 whatever it is (master weights); f16
/// training scales the loss ([`crate::train::LossScaler`]). Inputs are cast to it where they
/// enter the model, the adapters' contribution is computed in fp32 and cast to it, and what
/// leaves the model (encoder states, logits) is fp32. Layer norms compute in fp32 (as torch's
/// autocast runs them), and so does the attention in training: in bf16/f16 its backward pass
/// lost the small query gradients (on the CPU backend, errors of 17% of the largest in bf16, far
/// more in f16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
    F16,
}

impl Precision {
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::Fp32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
            Precision::F16 => FloatDType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

/// The fp32 tensor that leaves the model.
fn to_f32<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    t.cast(FloatDType::F32)
}

/// Exact GELU; the vectorised kernel at inference on CPU.
fn gelu<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    if t.shape().num_elements() >= 1 << 16 && inference_on_cpu(&t) {
        let shape = t.shape();
        let device = t.device();
        let mut v = t.into_data().try_into_vec::<f32>().expect("f32");
        super::kernels::gelu_in_place(&mut v);
        Tensor::from_data(TensorData::new(v, shape), &device)
    } else {
        burn::tensor::activation::gelu(t)
    }
}

fn frozen<const D: usize>(t: Tensor<D>) -> Param<Tensor<D>> {
    Param::from_tensor(t).set_require_grad(false)
}

/// A linear projection (weight [d_in, d_out]) with optional multi-expert LoRA.
#[derive(Module, Debug)]
pub struct Proj {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
    pub lora: Option<MultiLora>,
}

impl Proj {
    fn load(l: &mut Loader, name: &str, d_in: usize, d_out: usize, bias: bool) -> Proj {
        let weight = frozen(l.linear_weight(&format!("{name}.weight"), d_in, d_out));
        let bias = bias.then(|| frozen(l.tensor(&format!("{name}.bias"), [d_out])));
        Proj { weight, bias, lora: None }
    }

    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Rows that share inputs: x_u [U, T, d_in], row i reads utterance `row_utt[i]`. The base
    /// projection runs once per utterance; only the adapters run per row.
    pub fn forward_shared(&self, x_u: Tensor<3>, row_utt: &Tensor<1, Int>, route: Option<&Route>) -> Tensor<3> {
        let base = self.forward(x_u.clone(), None).select(0, row_utt.clone()); // [rows, T, d_out]
        match (&self.lora, route) {
            (Some(lora), Some(r)) => {
                let dtype = base.dtype();
                base + lora.delta_shared(x_u, row_utt, r).cast(dtype)
            }
            _ => base,
        }
    }

    pub fn forward(&self, x: Tensor<3>, route: Option<&Route>) -> Tensor<3> {
        let x = x.cast(self.weight.val().dtype()); // a no-op unless the input comes from outside
        // One [b*t, d_in] x [d_in, d_out] GEMM rather than a batched matmul that re-reads the
        // weight for every row.
        let [b, t, d_in] = x.dims();
        let y = x.clone().reshape([b * t, d_in]).matmul(self.weight.val());
        let y = match &self.bias {
            Some(bias) => y + bias.val().unsqueeze::<2>(),
            None => y,
        };
        let y = y.reshape([b, t, self.d_out()]);
        match (&self.lora, route) {
            (Some(lora), Some(r)) => {
                let dtype = y.dtype();
                y + lora.delta(x, r).cast(dtype)
            }
            _ => y,
        }
    }
}

#[derive(Module, Debug)]
pub struct Norm {
    pub gamma: Param<Tensor<1>>,
    pub beta: Param<Tensor<1>>,
}

impl Norm {
    fn load(l: &mut Loader, name: &str, d: usize) -> Norm {
        Norm {
            gamma: frozen(l.tensor(&format!("{name}.weight"), [d])),
            beta: frozen(l.tensor(&format!("{name}.bias"), [d])),
        }
    }
    /// In fp32 whatever the model's precision (as torch's autocast does): the mean and variance
    /// of a row in bf16 lose most of its digits.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let dtype = x.dtype();
        let f32 = FloatDType::F32;
        layer_norm(x.cast(f32), self.gamma.val().cast(f32), Some(self.beta.val().cast(f32)), LN_EPS).cast(dtype)
    }
}

#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Proj,
    pub k_proj: Proj,
    pub v_proj: Proj,
    pub out_proj: Proj,
    pub n_heads: usize,
}

impl Attention {
    fn load(l: &mut Loader, name: &str, d: usize, n_heads: usize) -> Attention {
        Attention {
            q_proj: Proj::load(l, &format!("{name}.q_proj"), d, d, true),
            k_proj: Proj::load(l, &format!("{name}.k_proj"), d, d, false),
            v_proj: Proj::load(l, &format!("{name}.v_proj"), d, d, true),
            out_proj: Proj::load(l, &format!("{name}.out_proj"), d, d, true),
            n_heads,
        }
    }

    /// [b, t, d] -> [b, h, t, dh]
    fn heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [b, t, d] = x.dims();
        x.reshape([b, t, self.n_heads, d / self.n_heads]).swap_dims(1, 2)
    }

    /// Keys and values of `x` (the encoder states for cross-attention): [b, s, d] each.
    pub fn kv(&self, x: Tensor<3>, route: Option<&Route>) -> (Tensor<3>, Tensor<3>) {
        (self.k_proj.forward(x.clone(), route), self.v_proj.forward(x, route))
    }

    /// Keys and values of per-utterance states `x_u` [U, S, d] for rows reading `row_utt`.
    pub fn kv_shared(&self, x_u: Tensor<3>, row_utt: &Tensor<1, Int>, route: Option<&Route>) -> (Tensor<3>, Tensor<3>) {
        (self.k_proj.forward_shared(x_u.clone(), row_utt, route), self.v_proj.forward_shared(x_u, row_utt, route))
    }

    /// Keys and values for rows from precomputed base projections `base` ([U, S, d] each) of
    /// per-utterance states `x_u`: rows select their utterance's base, adapters add per row.
    pub fn kv_from_base(
        &self,
        base: (Tensor<3>, Tensor<3>),
        x_u: Tensor<3>,
        row_utt: &Tensor<1, Int>,
        route: Option<&Route>,
    ) -> (Tensor<3>, Tensor<3>) {
        let with = |proj: &Proj, b: Tensor<3>| {
            let y = b.select(0, row_utt.clone());
            match (&proj.lora, route) {
                (Some(l), Some(r)) => {
                    let dtype = y.dtype();
                    y + l.delta_shared(x_u.clone(), row_utt, r).cast(dtype)
                }
                _ => y,
            }
        };
        (with(&self.k_proj, base.0), with(&self.v_proj, base.1))
    }

    /// Attention of queries from `x` [b, t, d] over keys/values [b, s, d].
    pub fn attend(&self, x: Tensor<3>, k: Tensor<3>, v: Tensor<3>, causal: bool, route: Option<&Route>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let s = k.dims()[1];
        let q = self.q_proj.forward(x, route); // [b, t, d]
        let o = if !causal && t * s >= 4096 && inference_on_cpu(&q) {
            // Long non-causal attention at inference (the encoder, cross-attention of prompts).
            let get = |x: Tensor<3>| x.into_data().try_into_vec::<f32>().expect("f32");
            let dh = d / self.n_heads;
            let o = super::kernels::attention(
                &get(q),
                &get(k),
                &get(v),
                b,
                self.n_heads,
                t,
                s,
                dh,
                1.0 / (dh as f32).sqrt(),
            );
            Tensor::<3>::from_data(TensorData::new(o, [b, t, d]), &self.q_proj.weight.val().device())
        } else {
            let opts = AttentionModuleOptions { scale: None, softcap: None, is_causal: causal };
            // Training in bf16/f16 computes the attention in fp32 (its backward pass loses the
            // small query gradients in the lower precision); inference stays in it.
            let dtype = q.dtype();
            let to = if q.is_autodiff() { FloatDType::F32 } else { dtype.into() };
            let (q, k, v) = (q.cast(to), k.cast(to), v.cast(to));
            let o = attention(self.heads(q), self.heads(k), self.heads(v), None, None, opts); // [b, h, t, dh]
            o.swap_dims(1, 2).reshape([b, t, d]).cast(dtype)
        };
        self.out_proj.forward(o, route)
    }
}

#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub self_attn: Attention,
    pub self_attn_layer_norm: Norm,
    pub fc1: Proj,
    pub fc2: Proj,
    pub final_layer_norm: Norm,
}

impl EncoderLayer {
    pub fn forward(&self, x: Tensor<3>, route: Option<&Route>) -> Tensor<3> {
        let h = self.self_attn_layer_norm.forward(x.clone());
        let (k, v) = self.self_attn.kv(h.clone(), route);
        let x = x + self.self_attn.attend(h, k, v, false, route);
        let h = self.final_layer_norm.forward(x.clone());
        x + self.fc2.forward(gelu(self.fc1.forward(h, route)), route)
    }
}

#[derive(Module, Debug)]
pub struct Encoder {
    pub conv1_weight: Param<Tensor<3>>,
    pub conv1_bias: Param<Tensor<1>>,
    pub conv2_weight: Param<Tensor<3>>,
    pub conv2_bias: Param<Tensor<1>>,
    /// [1500, d] sinusoids, as stored in the checkpoint.
    pub embed_positions: Param<Tensor<2>>,
    pub layers: Vec<EncoderLayer>,
    pub layer_norm: Norm,
}

impl Encoder {
    /// Hidden states as HF numbers them: `upto` = n (the default) is `last_hidden_state`
    /// (after the final layer norm); `upto` = i < n is the output of layer i (0 = the input
    /// embeddings), without the final norm. mel: [b, n_mels, 3000] -> [b, 1500, d].
    pub fn forward_upto(&self, mel: Tensor<3>, upto: usize, route: Option<&Route>) -> Tensor<3> {
        let mel = mel.cast(self.conv1_weight.val().dtype());
        let x =
            gelu(conv1d(mel, self.conv1_weight.val(), Some(self.conv1_bias.val()), ConvOptions::new([1], [1], [1], 1)));
        let x =
            gelu(conv1d(x, self.conv2_weight.val(), Some(self.conv2_bias.val()), ConvOptions::new([2], [1], [1], 1)));
        let x = x.swap_dims(1, 2); // [b, 1500, d]
        self.forward_between(x + self.embed_positions.val().unsqueeze::<3>(), 0, upto, route)
    }

    pub fn forward(&self, mel: Tensor<3>, route: Option<&Route>) -> Tensor<3> {
        self.forward_upto(mel, self.layers.len(), route)
    }

    /// The encoder's output from hidden states `x` [b, 1500, d] after the first `from` layers
    /// (what `forward_upto(mel, from)` returns for `from` < the number of layers).
    pub fn forward_from(&self, x: Tensor<3>, from: usize, route: Option<&Route>) -> Tensor<3> {
        self.forward_between(x, from, self.layers.len(), route)
    }

    /// Hidden states after the first `upto` layers from those after the first `from`
    /// (`forward_upto(mel, upto)` from `forward_upto(mel, from)`, the same operations in the
    /// same order: the result is bit for bit the same as in one pass).
    pub fn forward_between(&self, x: Tensor<3>, from: usize, upto: usize, route: Option<&Route>) -> Tensor<3> {
        let mut x = x.cast(self.conv1_weight.val().dtype());
        for layer in self.layers.iter().take(upto).skip(from) {
            x = layer.forward(x, route);
        }
        to_f32(if upto >= self.layers.len() { self.layer_norm.forward(x) } else { x })
    }
}

#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub self_attn_layer_norm: Norm,
    pub encoder_attn: Attention,
    pub encoder_attn_layer_norm: Norm,
    pub fc1: Proj,
    pub fc2: Proj,
    pub final_layer_norm: Norm,
}

/// Per decoder layer: self-attention keys/values so far, and the cross-attention ones.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// [b, s, d] each.
    pub self_kv: Option<(Tensor<3>, Tensor<3>)>,
    pub cross_kv: (Tensor<3>, Tensor<3>),
}

/// The decoder's state during incremental decoding; `reset` by building a new one.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    /// Tokens already consumed (the position of the next one).
    pub offset: usize,
}

impl DecoderLayer {
    fn forward(&self, x: Tensor<3>, cache: &mut LayerCache, route: Option<&Route>) -> Tensor<3> {
        let h = self.self_attn_layer_norm.forward(x.clone());
        let (k, v) = self.self_attn.kv(h.clone(), route);
        let (k, v) = match cache.self_kv.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 1), Tensor::cat(vec![pv, v], 1)),
            None => (k, v),
        };
        cache.self_kv = Some((k.clone(), v.clone()));
        let x = x + self.self_attn.attend(h, k, v, true, route);
        let h = self.encoder_attn_layer_norm.forward(x.clone());
        let (ck, cv) = cache.cross_kv.clone();
        let x = x + self.encoder_attn.attend(h, ck, cv, false, route);
        let h = self.final_layer_norm.forward(x.clone());
        x + self.fc2.forward(gelu(self.fc1.forward(h, route)), route)
    }
}

#[derive(Module, Debug)]
pub struct Decoder {
    /// [vocab, d]; also the output projection (tied).
    pub embed_tokens: Param<Tensor<2>>,
    /// [448, d] learned positions.
    pub embed_positions: Param<Tensor<2>>,
    pub layers: Vec<DecoderLayer>,
    pub layer_norm: Norm,
    /// embed_tokens transposed once, [d, vocab] contiguous: the tied output projection. (A
    /// transposed view would be copied by every matmul, 80 MB per decoding step for tiny.)
    pub lm_head: Param<Tensor<2>>,
}

impl Decoder {
    /// A cache holding the cross-attention keys/values of `enc` [b, 1500, d].
    pub fn new_cache(&self, enc: Tensor<3>, route: Option<&Route>) -> KvCache {
        let layers = self
            .layers
            .iter()
            .map(|l| LayerCache { self_kv: None, cross_kv: l.encoder_attn.kv(enc.clone(), route) })
            .collect();
        KvCache { layers, offset: 0 }
    }

    /// A cache for rows that share encoder states: `enc_u` [U, 1500, d] holds each utterance
    /// once and row i reads `row_utt[i]` (one utterance trained through several experts).
    pub fn new_cache_shared(&self, enc_u: Tensor<3>, row_utt: &Tensor<1, Int>, route: Option<&Route>) -> KvCache {
        let layers = self
            .layers
            .iter()
            .map(|l| LayerCache { self_kv: None, cross_kv: l.encoder_attn.kv_shared(enc_u.clone(), row_utt, route) })
            .collect();
        KvCache { layers, offset: 0 }
    }

    /// As `new_cache_shared`, with the base cross-attention keys/values already computed
    /// (one (keys, values) pair [U, 1500, d] per layer).
    pub fn new_cache_from_base(
        &self,
        enc_u: Tensor<3>,
        base: Vec<(Tensor<3>, Tensor<3>)>,
        row_utt: &Tensor<1, Int>,
        route: Option<&Route>,
    ) -> KvCache {
        let layers = self
            .layers
            .iter()
            .zip(base)
            .map(|(l, b)| LayerCache {
                self_kv: None,
                cross_kv: l.encoder_attn.kv_from_base(b, enc_u.clone(), row_utt, route),
            })
            .collect();
        KvCache { layers, offset: 0 }
    }

    /// Logits [b, t, vocab] for `tokens` [b, t] following what the cache has seen.
    pub fn forward_cached(&self, tokens: Tensor<2, Int>, cache: &mut KvCache, route: Option<&Route>) -> Tensor<3> {
        let [_, t] = tokens.dims();
        let pos = self.embed_positions.val().slice(s![cache.offset..cache.offset + t, ..]);
        let mut x = embedding(self.embed_tokens.val(), tokens) + pos.unsqueeze::<3>();
        for (layer, c) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, c, route);
        }
        cache.offset += t;
        let x = self.layer_norm.forward(x); // [b, t, d]
        let [b, t, d] = x.dims();
        let logits = x.reshape([b * t, d]).matmul(self.lm_head.val()).reshape([b, t, self.lm_head.dims()[1]]);
        to_f32(logits) // [b, t, vocab]
    }

    /// Teacher-forced logits [b, t, vocab] for `tokens` [b, t] given encoder states.
    pub fn forward(&self, tokens: Tensor<2, Int>, enc: Tensor<3>, route: Option<&Route>) -> Tensor<3> {
        let mut cache = self.new_cache(enc, route);
        self.forward_cached(tokens, &mut cache, route)
    }
}

#[derive(Module, Debug)]
pub struct Whisper {
    pub encoder: Encoder,
    pub decoder: Decoder,
    #[module(skip)]
    pub config: WhisperConfig,
}

impl Whisper {
    /// Build the model from a checkpoint's tensors (HF names). Every problem is reported by
    /// `loader.finish()`.
    pub fn load(cfg: &WhisperConfig, l: &mut Loader) -> Whisper {
        let d = cfg.d_model;
        let enc_layers = (0..cfg.encoder_layers)
            .map(|i| {
                let p = format!("model.encoder.layers.{i}");
                EncoderLayer {
                    self_attn: Attention::load(l, &format!("{p}.self_attn"), d, cfg.encoder_attention_heads),
                    self_attn_layer_norm: Norm::load(l, &format!("{p}.self_attn_layer_norm"), d),
                    fc1: Proj::load(l, &format!("{p}.fc1"), d, cfg.encoder_ffn_dim, true),
                    fc2: Proj::load(l, &format!("{p}.fc2"), cfg.encoder_ffn_dim, d, true),
                    final_layer_norm: Norm::load(l, &format!("{p}.final_layer_norm"), d),
                }
            })
            .collect();
        let encoder = Encoder {
            conv1_weight: frozen(l.tensor("model.encoder.conv1.weight", [d, cfg.num_mel_bins, 3])),
            conv1_bias: frozen(l.tensor("model.encoder.conv1.bias", [d])),
            conv2_weight: frozen(l.tensor("model.encoder.conv2.weight", [d, d, 3])),
            conv2_bias: frozen(l.tensor("model.encoder.conv2.bias", [d])),
            embed_positions: frozen(l.tensor("model.encoder.embed_positions.weight", [cfg.max_source_positions, d])),
            layers: enc_layers,
            layer_norm: Norm::load(l, "model.encoder.layer_norm", d),
        };
        let dec_layers = (0..cfg.decoder_layers)
            .map(|i| {
                let p = format!("model.decoder.layers.{i}");
                DecoderLayer {
                    self_attn: Attention::load(l, &format!("{p}.self_attn"), d, cfg.decoder_attention_heads),
                    self_attn_layer_norm: Norm::load(l, &format!("{p}.self_attn_layer_norm"), d),
                    encoder_attn: Attention::load(l, &format!("{p}.encoder_attn"), d, cfg.decoder_attention_heads),
                    encoder_attn_layer_norm: Norm::load(l, &format!("{p}.encoder_attn_layer_norm"), d),
                    fc1: Proj::load(l, &format!("{p}.fc1"), d, cfg.decoder_ffn_dim, true),
                    fc2: Proj::load(l, &format!("{p}.fc2"), cfg.decoder_ffn_dim, d, true),
                    final_layer_norm: Norm::load(l, &format!("{p}.final_layer_norm"), d),
                }
            })
            .collect();
        let embed_tokens = l.tensor("model.decoder.embed_tokens.weight", [cfg.vocab_size, d]);
        let lm_head = Tensor::from_data(embed_tokens.clone().transpose().into_data(), l.device());
        let decoder = Decoder {
            lm_head: frozen(lm_head),
            embed_tokens: frozen(embed_tokens),
            embed_positions: frozen(l.tensor("model.decoder.embed_positions.weight", [cfg.max_target_positions, d])),
            layers: dec_layers,
            layer_norm: Norm::load(l, "model.decoder.layer_norm", d),
        };
        Whisper { encoder, decoder, config: cfg.clone() }
    }

    /// Random weights of `cfg` ([`Loader::random`]): for checks that need no checkpoint.
    pub fn random(cfg: &WhisperConfig, seed: u64, device: &Device) -> Whisper {
        Whisper::load(cfg, &mut Loader::random(seed, device))
    }

    /// The base model in `precision` (before adapters are attached: every float tensor is
    /// cast, and each stays frozen).
    pub fn with_precision(self, precision: Precision) -> Whisper {
        struct Cast(FloatDType);
        impl ModuleMapper for Cast {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let dtype = self.0;
                param.map(|t| t.cast(dtype)).set_require_grad(false)
            }
        }
        if precision == Precision::Fp32 {
            return self;
        }
        self.map(&mut Cast(precision.dtype()))
    }

    /// The precision of the base model's weights.
    pub fn precision(&self) -> Precision {
        match self.decoder.lm_head.val().dtype() {
            DType::BF16 => Precision::Bf16,
            DType::F16 => Precision::F16,
            _ => Precision::Fp32,
        }
    }

    /// Names a checkpoint may hold that the model does not use: the output projection when it
    /// is tied to the token embedding.
    pub fn ignorable_tensors(cfg: &WhisperConfig) -> &'static [&'static str] {
        if cfg.tie_word_embeddings { &["proj_out.weight"] } else { &[] }
    }

    /// Teacher-forced logits [b, t, vocab].
    pub fn forward(&self, mel: Tensor<3>, tokens: Tensor<2, Int>, route: Option<&Route>) -> Tensor<3> {
        let enc = self.encoder.forward(mel, route);
        self.decoder.forward(tokens, enc, route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::LoraConfig;

    /// A bf16 base model keeps its adapters in fp32, and what leaves it is fp32.
    #[test]
    fn a_bf16_base_model_keeps_fp32_adapters_and_outputs() {
        let dev = Device::flex();
        let cfg = crate::whisper::testing::one_layer_tiny();
        let mut m = Whisper::random(&cfg, 3, &dev).with_precision(Precision::Bf16);
        assert_eq!(m.precision(), Precision::Bf16);
        m.attach_lora(&LoraConfig::on(&["q_proj", "v_proj"], 4, 8.0), 2, &dev).unwrap();
        let mut adapters = 0;
        for (name, p) in m.projs_mut() {
            assert_eq!(p.weight.val().dtype(), DType::BF16, "{name}");
            if let Some(l) = &p.lora {
                assert_eq!((l.a.val().dtype(), l.b.val().dtype()), (DType::F32, DType::F32), "{name}");
                adapters += 1;
            }
        }
        assert_eq!(adapters, 6, "q and v of the encoder's self-attention and the decoder's two attentions");
        let mel = Tensor::<3>::zeros([1, cfg.num_mel_bins, crate::audio::mel::N_FRAMES], &dev);
        let enc = m.encoder.forward(mel, None);
        assert_eq!(enc.dtype(), DType::F32);
        let tokens =
            Tensor::<2, Int>::from_data(TensorData::new(vec![cfg.decoder_start_token_id as i64], [1, 1]), &dev);
        let route = Route::all(1, 1, &dev);
        assert_eq!(m.decoder.forward(tokens, enc, Some(&route)).dtype(), DType::F32);
    }
}
