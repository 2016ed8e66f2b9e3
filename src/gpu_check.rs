//! `gpu-check`: a self-contained check of a compute device, small enough to carry to a GPU
//! machine without network. Random weights of a named Whisper config are generated in-process
//! (no checkpoint); the device's encoder output, decoder logits, and one multi-expert LoRA
//! training step (loss and every adapter gradient) are compared with the CPU reference; then
//! throughput is timed on the device.
//!
//! With `--device cpu` the "device" is the CPU backend with the hand-written kernels switched
//! off (`whisper::kernels::set_enabled(false)`), i.e. the generic burn ops a GPU runs, and the
//! reference is the CPU backend with its kernels: CI checks the device-generic path this way.
//!
//! `--precision bf16|f16` runs the device's base model in that precision (adapters fp32) against
//! the fp32 reference, with the tolerance of that precision ([`tolerance`]); the training step in
//! f16 scales the loss as training does ([`crate::train::LossScaler`]).

use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::Param;
use burn::prelude::*;
use serde::Serialize;

use crate::lora::{LoraConfig, Route};
use crate::train::LossScaler;
use crate::train::optim::GradMap;
use crate::whisper::model::{Precision, Whisper};
use crate::whisper::{WhisperConfig, kernels};

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Config names (WhisperConfig::named).
    pub configs: Vec<String>,
    /// Encoder and decoder layers, overriding the config's depth (a large config's widths,
    /// mel bins and vocabulary at a fraction of the cost).
    pub layers: Option<usize>,
    pub experts: usize,
    pub rank: usize,
    /// 30-s windows per batch.
    pub batch: usize,
    /// Timed repetitions per throughput figure (0: comparisons only).
    pub repeat: usize,
    /// Tokens per teacher-forced sequence.
    pub tokens: usize,
    pub seed: u64,
    /// The device's base model: fp32, bf16 or f16 (the reference is fp32).
    pub precision: Precision,
}

/// Largest absolute difference relative to the reference's largest absolute value.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub what: String,
    pub max_abs_diff: f64,
    pub max_abs_reference: f64,
    pub relative: f64,
    pub tolerance: f64,
    pub ok: bool,
}

/// One config's results.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    pub config: String,
    pub d_model: usize,
    pub layers: usize,
    pub num_mel_bins: usize,
    pub vocab_size: usize,
    pub parameters: usize,
    pub comparisons: Vec<Comparison>,
    /// 30-s windows per second through the encoder (inference).
    pub encoder_windows_per_s: Option<f64>,
    /// Clips per second of a training step (forward and backward) where each clip goes
    /// through one expert (top-1 hard routing) and through every expert (the soft phase).
    pub train_clips_per_s_top1: Option<f64>,
    pub train_clips_per_s_soft: Option<f64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub device: String,
    pub precision: Precision,
    /// What the device path is compared with.
    pub reference: String,
    pub configs: Vec<ConfigReport>,
    /// Peak resident memory of this process (host), MiB.
    pub peak_host_mib: Option<f64>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.configs.iter().all(|c| c.comparisons.iter().all(|x| x.ok))
    }
}

/// fp32 everywhere: the device may order sums differently (GEMM blocking, fused attention),
/// nothing more.
pub const TOLERANCE: f64 = 1e-3;

/// The largest difference allowed, relative to the reference's largest value, when the device's
/// base model computes in `precision`: fp32 [`TOLERANCE`]; bf16 and f16 20 unit roundoffs of
/// the format (bf16: 8-bit significand, u = 2^-8, so 0.078; f16: 11-bit, u = 2^-11, so 0.0098).
/// Measured on tiny (README): 3 u for the encoder output and logits, about 10 u for the worst
/// adapter gradient (a q projection's, the smallest gradients, behind the attention backward).
pub fn tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::Fp32 => TOLERANCE,
        Precision::Bf16 => 20.0 * 2f64.powi(-8),
        Precision::F16 => 20.0 * 2f64.powi(-11),
    }
}

pub fn run(o: &Options) -> Result<Report> {
    let device = crate::whisper::device(&o.device)?;
    let cpu = Device::flex();
    let on_cpu = device == cpu;
    let mut configs = Vec::new();
    for name in &o.configs {
        let mut cfg = WhisperConfig::named(name)?;
        if let Some(l) = o.layers {
            (cfg.encoder_layers, cfg.decoder_layers) = (l, l);
        }
        eprintln!(
            "gpu-check: {name} (d_model {}, {} layers, {} mel bins, vocabulary {}) on {}",
            cfg.d_model, cfg.encoder_layers, cfg.num_mel_bins, cfg.vocab_size, o.device
        );
        configs.push(check_config(name, &cfg, o, &cpu, &device, on_cpu)?);
    }
    Ok(Report {
        device: o.device.clone(),
        precision: o.precision,
        reference: if on_cpu {
            "the CPU backend with its hand-written kernels (device: the same backend, generic burn ops only)".into()
        } else {
            "the CPU backend".into()
        },
        configs,
        peak_host_mib: Some(crate::util::peak_rss_mb()).filter(|&m| m > 0.0),
    })
}

/// The device's model: the random model in the checked precision.
fn device_model(cfg: &WhisperConfig, o: &Options, device: &Device) -> Whisper {
    Whisper::random(cfg, o.seed, device).with_precision(o.precision)
}

/// Deterministic inputs: log-mel-like values and token ids from a seeded generator.
fn inputs(cfg: &WhisperConfig, o: &Options) -> (TensorData, TensorData) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed ^ 0x5eed);
    let n = o.batch * cfg.num_mel_bins * crate::audio::mel::N_FRAMES;
    let mel: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut tok = Vec::with_capacity(o.batch * o.tokens);
    for _ in 0..o.batch {
        tok.push(cfg.decoder_start_token_id as i64);
        for _ in 1..o.tokens {
            tok.push(rng.random_range(0..cfg.eos_token_id as i64));
        }
    }
    (
        TensorData::new(mel, [o.batch, cfg.num_mel_bins, crate::audio::mel::N_FRAMES]),
        TensorData::new(tok, [o.batch, o.tokens]),
    )
}

/// `f` with the CPU kernels switched on or off, the previous state restored afterwards.
fn with_kernels<T>(on: bool, f: impl FnOnce() -> T) -> T {
    let before = kernels::enabled();
    kernels::set_enabled(on);
    let out = f();
    kernels::set_enabled(before);
    out
}

fn check_config(
    name: &str,
    cfg: &WhisperConfig,
    o: &Options,
    cpu: &Device,
    device: &Device,
    on_cpu: bool,
) -> Result<ConfigReport> {
    let (mel, tokens) = inputs(cfg, o);
    // On the CPU the reference model serves both sides (the kernels make the difference).
    let reference = Whisper::random(cfg, o.seed, cpu);
    let parameters = count(&reference);
    let model = if on_cpu { reference.clone().with_precision(o.precision) } else { device_model(cfg, o, device) };
    let tol = tolerance(o.precision);
    let mut comparisons = compare_inference(&reference, &model, cpu, device, on_cpu, &mel, &tokens, tol)?;
    drop(reference);
    let enc_rate = (o.repeat > 0).then(|| {
        with_kernels(!on_cpu, || {
            timed(o.repeat, o.batch, || {
                model.encoder.forward(Tensor::from_data(mel.clone(), device), None).into_data();
            })
        })
    });
    drop(model);
    // One model with adapters on the device, for the training comparison and its timing.
    let ad = device.clone().autodiff();
    let trainee = adapted_model(cfg, o, &ad, o.precision)?;
    comparisons.extend(compare_training(cfg, o, cpu, &trainee, &ad, &mel, &tokens, tol)?);
    let step = |per_clip: usize| {
        timed(o.repeat, o.batch, || {
            let grads = routed_loss(&trainee, o, &ad, &mel, &tokens, per_clip).backward();
            // Reading the gradients back waits for an asynchronous device to finish.
            let _ = GradMap::of(&trainee, &grads).norm();
        })
    };
    let (top1, soft) = if o.repeat > 0 { (Some(step(1)), Some(step(o.experts))) } else { (None, None) };
    Ok(ConfigReport {
        config: name.to_string(),
        d_model: cfg.d_model,
        layers: cfg.encoder_layers,
        num_mel_bins: cfg.num_mel_bins,
        vocab_size: cfg.vocab_size,
        parameters,
        comparisons,
        encoder_windows_per_s: enc_rate,
        train_clips_per_s_top1: top1,
        train_clips_per_s_soft: soft,
    })
}

/// Encoder output and teacher-forced logits: the reference on the CPU with its kernels, the
/// device with the generic ops.
#[allow(clippy::too_many_arguments)]
fn compare_inference(
    reference: &Whisper,
    model: &Whisper,
    cpu: &Device,
    device: &Device,
    on_cpu: bool,
    mel: &TensorData,
    tokens: &TensorData,
    tol: f64,
) -> Result<Vec<Comparison>> {
    let run = |m: &Whisper, dev: &Device| {
        let enc = m.encoder.forward(Tensor::from_data(mel.clone(), dev), None);
        let logits = m.decoder.forward(Tensor::from_data(tokens.clone(), dev), enc.clone(), None);
        (enc.into_data(), logits.into_data())
    };
    let (enc_ref, logits_ref) = with_kernels(true, || run(reference, cpu));
    let (enc, logits) = with_kernels(!on_cpu, || run(model, device));
    Ok(vec![compare("encoder output", enc_ref, enc, tol)?, compare("decoder logits", logits_ref, logits, tol)?])
}

/// One training step of a multi-expert LoRA (adapters on q/v everywhere, B random so that
/// every gradient is non-zero), clip i through expert i mod E: loss and the worst gradient.
/// (On the CPU both sides run the same generic ops: training never uses the kernels.)
#[allow(clippy::too_many_arguments)]
fn compare_training(
    cfg: &WhisperConfig,
    o: &Options,
    cpu: &Device,
    trainee: &Whisper,
    ad: &Device,
    mel: &TensorData,
    tokens: &TensorData,
    tol: f64,
) -> Result<Vec<Comparison>> {
    let cpu_ad = cpu.clone().autodiff();
    let (loss_ref, grads_ref) = train_step(&adapted_model(cfg, o, &cpu_ad, Precision::Fp32)?, o, &cpu_ad, mel, tokens);
    let (loss, grads) = train_step(trainee, o, ad, mel, tokens);
    let mut worst: Option<Comparison> = None;
    for (k, g_ref) in &grads_ref {
        let Some(g) = grads.get(k) else { bail!("the device has no gradient for {k}") };
        let c = compare(&format!("gradient {k}"), g_ref.clone(), g.clone(), tol)?;
        if worst.as_ref().is_none_or(|w| c.relative > w.relative) {
            worst = Some(c);
        }
    }
    let mut worst = worst.ok_or_else(|| anyhow::anyhow!("no adapter gradients"))?;
    worst.what = format!("LoRA gradients ({} tensors; worst: {})", grads_ref.len(), worst.what);
    Ok(vec![compare("training loss", TensorData::from([loss_ref]), TensorData::from([loss]), tol)?, worst])
}

/// Parameters as transformers counts them: the output projection is the token embedding
/// (tied), which this model keeps a transposed copy of.
fn count(m: &Whisper) -> usize {
    m.num_params() - m.decoder.lm_head.val().shape().num_elements()
}

/// LoRA on q/v of every layer, with B drawn like A (fresh adapters have B = 0, which would
/// leave A's gradients at zero and prove nothing).
fn attach(m: &mut Whisper, o: &Options, device: &Device) -> Result<()> {
    let lora = LoraConfig::on(&["q_proj", "v_proj"], o.rank, 2.0 * o.rank as f64);
    device.seed(o.seed);
    m.attach_lora(&lora, o.experts, device)?;
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed ^ 0xb);
    for (_, proj) in m.projs_mut() {
        let Some(l) = proj.lora.as_mut() else { continue };
        let dims = l.b.dims();
        let v: Vec<f32> = (0..dims.iter().product()).map(|_| rng.random_range(-0.02f32..0.02)).collect();
        let a = l.a.val().into_data();
        l.a = Param::initialized(l.a.id, Tensor::from_data(a, device).require_grad());
        l.b = Param::initialized(l.b.id, Tensor::from_data(TensorData::new(v, dims), device).require_grad());
    }
    Ok(())
}

/// Mean next-token cross-entropy of every clip through `per_clip` experts (clip i, copy j
/// through expert (i + j) mod E).
fn routed_loss(
    m: &Whisper,
    o: &Options,
    device: &Device,
    mel: &TensorData,
    tokens: &TensorData,
    per_clip: usize,
) -> Tensor<1> {
    let b = o.batch;
    let t = o.tokens;
    let clip: Vec<i64> = (0..b * per_clip).map(|r| (r / per_clip) as i64).collect();
    let experts: Vec<Option<usize>> =
        (0..b * per_clip).map(|r| Some((r / per_clip + r % per_clip) % o.experts)).collect();
    let index = Tensor::<1, Int>::from_data(TensorData::new(clip, [b * per_clip]), device);
    let route = Route::per_row(&experts, device).training(true);
    let mel = Tensor::<3>::from_data(mel.clone(), device).select(0, index.clone());
    let tok = Tensor::<2, Int>::from_data(tokens.clone(), device).select(0, index);
    let rows = b * per_clip;
    let input = tok.clone().slice(s![.., 0..t - 1]);
    let target = tok.slice(s![.., 1..t]);
    let logits = m.forward(mel, input, Some(&route)); // [rows, t-1, vocab]
    let logp = burn::tensor::activation::log_softmax(logits, 2);
    let picked = logp.gather(2, target.reshape([rows, t - 1, 1])); // [rows, t-1, 1]
    picked.mean().neg().reshape([1])
}

/// The random model of `cfg` on `ad` in `precision`, with the experts' adapters of [`attach`].
fn adapted_model(cfg: &WhisperConfig, o: &Options, ad: &Device, precision: Precision) -> Result<Whisper> {
    let mut m = Whisper::random(cfg, o.seed, ad).with_precision(precision);
    attach(&mut m, o, ad)?;
    Ok(m)
}

/// Loss and adapter gradients of one step, every clip through one expert. A model in f16
/// scales the loss as training does: from the scaler's first scale, halved while the gradients
/// overflow.
fn train_step(
    m: &Whisper,
    o: &Options,
    ad: &Device,
    mel: &TensorData,
    tokens: &TensorData,
) -> (f32, std::collections::BTreeMap<String, TensorData>) {
    let mut scaler = (m.precision() == Precision::F16).then(LossScaler::default);
    loop {
        let loss = routed_loss(m, o, ad, mel, tokens, 1);
        let value: f32 = loss.clone().into_scalar();
        let scale = scaler.map_or(1.0, |s| s.scale);
        let mut grads = GradMap::of(m, &(loss * scale).backward());
        grads.scale(1.0 / scale);
        let finite = grads.norm().is_finite();
        if scaler.as_mut().is_none_or(|s| s.update(finite)) || scale <= 1.0 {
            return (value, grads.0.into_iter().map(|(k, g)| (k, g.into_data())).collect());
        }
        eprintln!("gpu-check: f16 gradients overflowed at loss scale {scale}; halved");
    }
}

fn compare(what: &str, reference: TensorData, device: TensorData, tolerance: f64) -> Result<Comparison> {
    let r: Vec<f32> = reference.try_into_vec_as::<f32>()?;
    let d: Vec<f32> = device.try_into_vec_as::<f32>()?;
    if r.len() != d.len() {
        bail!("{what}: {} values on the reference, {} on the device", r.len(), d.len());
    }
    let max_abs_diff = r.iter().zip(&d).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
    let max_abs_reference = r.iter().map(|a| a.abs() as f64).fold(0.0, f64::max);
    let relative = max_abs_diff / max_abs_reference.max(f64::MIN_POSITIVE);
    let finite = d.iter().all(|x| x.is_finite());
    Ok(Comparison {
        what: what.to_string(),
        max_abs_diff,
        max_abs_reference,
        relative,
        tolerance,
        ok: finite && relative <= tolerance,
    })
}

/// Items per second over `repeat` timed calls after one warm-up call.
fn timed(repeat: usize, items: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    for _ in 0..repeat {
        f();
    }
    (repeat * items) as f64 / t0.elapsed().as_secs_f64()
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        writeln!(f, "device {} ({}) against {}", self.device, self.precision.name(), self.reference)?;
        for c in &self.configs {
            writeln!(
                f,
                "{}: d_model {}, {} layers, {} mel bins, vocabulary {}, {:.1} M parameters",
                c.config,
                c.d_model,
                c.layers,
                c.num_mel_bins,
                c.vocab_size,
                c.parameters as f64 / 1e6
            )?;
            for x in &c.comparisons {
                writeln!(
                    f,
                    "  {} {}: max |diff| {:.3e} (reference max {:.3e}; relative {:.2e}, tolerance {:.0e})",
                    if x.ok { "ok  " } else { "FAIL" },
                    x.what,
                    x.max_abs_diff,
                    x.max_abs_reference,
                    x.relative,
                    x.tolerance
                )?;
            }
            let rate = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.2}"));
            writeln!(
                f,
                "  encoder {} windows/s; training step {} clips/s top-1, {} clips/s through every expert",
                rate(c.encoder_windows_per_s),
                rate(c.train_clips_per_s_top1),
                rate(c.train_clips_per_s_soft)
            )?;
        }
        if let Some(m) = self.peak_host_mib {
            write!(f, "peak host memory {m:.0} MiB")?;
        }
        Ok(())
    }
}

/// What training needs in memory, estimated from parameter and activation counts (not
/// measured): frozen weights at `weight_bytes` per value (with the output projection, which
/// this model keeps as a transposed copy of the token embedding); the LoRA of every expert (q and
/// v of every adapted attention, rank r) with its gradient and AdamW's two moments in fp32 (16
/// bytes per value); and the activations autodiff keeps per training row (a clip through one
/// expert) at `activation_bytes` per value, for the encoder layers from the first adapted one up
/// (those below it run without gradients) and every decoder layer.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryEstimate {
    pub config: String,
    pub weights_gib: f64,
    pub adapters_gib: f64,
    pub activations_per_row_gib: f64,
    /// Rows per step that fit into 24 and 80 GiB with a tenth kept free; 0: not even one.
    pub rows_24gib: usize,
    pub rows_80gib: usize,
}

/// Per layer and row, values kept for the backward pass: layer-norm inputs and outputs, q, k,
/// v, attention output and out_proj output, fc1 and GELU outputs (4 d each), fc2 output:
/// 10 t d + 8 t d; attention scores and probabilities 2 h t s (unfused attention, as burn's
/// generic op computes it); the LoRA products x A of q and v (2 t r). Decoder layers add the
/// cross-attention: its layer norm's input and output, q and output (4 t d), the keys and values
/// of the encoder's s frames (2 s d), scores and probabilities (2 h t s) and the LoRA products of
/// q and v ((t + s) r); the logits and their log-softmax add 2 t V. In bf16/f16 the attention
/// (in training) and the layer norms compute in fp32 ([`crate::whisper::Precision`]): the scores and
/// probabilities, the fp32 copies of q, k and v, and each layer norm's fp32 input stay at 4 bytes,
/// the rest at `activation_bytes`.
#[allow(clippy::too_many_arguments)]
pub fn estimate_memory(
    name: &str,
    cfg: &WhisperConfig,
    experts: usize,
    rank: usize,
    adapted_encoder_layers: usize,
    decoder_tokens: usize,
    weight_bytes: usize,
    activation_bytes: usize,
) -> MemoryEstimate {
    const GIB: f64 = (1u64 << 30) as f64;
    let d = cfg.d_model;
    let (s, t) = (cfg.max_source_positions, decoder_tokens);
    let weights = (cfg.vocab_size * d
        + (cfg.max_source_positions + cfg.max_target_positions) * d
        + d * cfg.num_mel_bins * 3
        + d * d * 3
        + cfg.encoder_layers * (4 * d * d + 2 * d * cfg.encoder_ffn_dim)
        + cfg.decoder_layers * (8 * d * d + 2 * d * cfg.decoder_ffn_dim)
        + cfg.vocab_size * d) as f64;
    let adapted = adapted_encoder_layers.min(cfg.encoder_layers);
    let attentions = adapted + 2 * cfg.decoder_layers;
    let lora = (experts * attentions * 2 * 2 * d * rank) as f64;
    // (values at activation_bytes, values in fp32 below fp32: attention and layer norms)
    let low = activation_bytes < 4;
    let layer = |t: usize, s: usize, h: usize, ffn: usize| {
        let all = (10 * t * d + 2 * t * ffn + 2 * h * t * s + 2 * t * rank) as f64;
        let fp32 = if low { (2 * h * t * s + 3 * t * d + 2 * t * d) as f64 } else { 0.0 };
        (all - if low { (2 * h * t * s) as f64 } else { 0.0 }, fp32)
    };
    let enc = layer(s, s, cfg.encoder_attention_heads, cfg.encoder_ffn_dim);
    let h = cfg.decoder_attention_heads;
    let cross_all = (4 * t * d + 2 * s * d + 2 * h * t * s + (t + s) * rank) as f64;
    let cross_fp32 = if low { (2 * h * t * s + t * d + 2 * s * d + t * d) as f64 } else { 0.0 };
    let cross = (cross_all - if low { (2 * h * t * s) as f64 } else { 0.0 }, cross_fp32);
    let dec = layer(t, t, h, cfg.decoder_ffn_dim);
    let logits = (t * cfg.vocab_size) as f64 * 2.0;
    let n_dec = cfg.decoder_layers as f64;
    let low_values = adapted as f64 * enc.0 + n_dec * (dec.0 + cross.0);
    let fp32_values = adapted as f64 * enc.1 + n_dec * (dec.1 + cross.1) + logits;
    let weights_gib = weights * weight_bytes as f64 / GIB;
    let adapters_gib = lora * 16.0 / GIB;
    let per_row = (low_values * activation_bytes as f64 + fp32_values * 4.0) / GIB;
    let fit = |total: f64| ((0.9 * total - weights_gib - adapters_gib) / per_row).floor().max(0.0) as usize;
    MemoryEstimate {
        config: name.to_string(),
        weights_gib,
        adapters_gib,
        activations_per_row_gib: per_row,
        rows_24gib: fit(24.0),
        rows_80gib: fit(80.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_estimate_by_hand_for_tiny() {
        let cfg = WhisperConfig::named("tiny").unwrap();
        let m = estimate_memory("tiny", &cfg, 1, 16, 1, 4, 4, 4);
        // Encoder layer (t = s = 1500, d 384, ffn 1536, 6 heads, r 16):
        //   10*1500*384 + 2*1500*1536 + 2*6*1500*1500 + 2*1500*16 = 37_416_000
        // Decoder layer (t = 4): 10*4*384 + 2*4*1536 + 2*6*4*4 + 2*4*16 = 27_968, cross-attention
        //   4*4*384 + 2*1500*384 + 2*6*4*1500 + (4 + 1500)*16 = 1_254_208; 4 layers: 5_128_704;
        //   logits 2*4*51865 = 414_920.
        let floats = 37_416_000.0 + 5_128_704.0 + 414_920.0;
        assert!((m.activations_per_row_gib - floats * 4.0 / (1u64 << 30) as f64).abs() < 1e-12);
        // The weight matrices: transformers counts 37_760_640 parameters, biases and norms
        // included (tests/gpu_check.rs); without them 37_713_792, and the output projection's
        // copy of the embedding 51865*384 = 19_916_160.
        assert!((m.weights_gib * (1u64 << 30) as f64 / 4.0 - 57_629_952.0).abs() < 0.5);
        // LoRA on 1 adapted encoder attention and 4 x 2 decoder ones, q and v, A and B
        // (2*384*16), 16 bytes each with grad and moments.
        assert!((m.adapters_gib * (1u64 << 30) as f64 - (9 * 2 * 2 * 384 * 16 * 16) as f64).abs() < 0.5);
        // bf16: the attention (scores and probabilities, fp32 copies of q, k, v) and the layer
        // norms' fp32 inputs stay at 4 bytes. Encoder layer: 37_416_000 - 27_000_000 scores =
        //   10_416_000 at 2 bytes; 27_000_000 + 5*1500*384 = 29_880_000 at 4. Decoder layer:
        //   27_968 - 192 = 27_776 at 2, 192 + 5*4*384 = 7_872 at 4; cross-attention 1_254_208 -
        //   72_000 = 1_182_208 at 2, 72_000 + 4*384 + 2*1500*384 + 4*384 = 1_227_072 at 4;
        //   logits at 4. Bytes: 2*(10_416_000 + 4*1_209_984) + 4*(29_880_000 + 4*1_234_944 + 414_920).
        let b = estimate_memory("tiny", &cfg, 1, 16, 1, 4, 2, 2);
        let bytes = 2.0 * (10_416_000.0 + 4.0 * 1_209_984.0) + 4.0 * (29_880_000.0 + 4.0 * 1_234_944.0 + 414_920.0);
        assert!((b.activations_per_row_gib * (1u64 << 30) as f64 - bytes).abs() < 1.0);
        assert!((b.weights_gib * 2.0 - m.weights_gib).abs() < 1e-12);
    }
}
