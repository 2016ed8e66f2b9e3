//! Training throughput on CPU with whisper-tiny.en and LoRA r 16 (default on the decoder's
//! q_proj/v_proj; `LORA_TARGETS` sets the regex, e.g. the demo's encoder + decoder targets):
//! samples (utterance x expert rows) per second for one expert, and for four experts in one
//! batched step, with the time split into forward, backward and optimizer; peak RSS.
//! The encoder runs once per utterance and is shared (cached), as in the stages.
//!
//!   WHISPER_MOE_SHARED=../shared cargo bench --bench training
//!   LORA_TARGETS='.*(encoder\.layers\.3|decoder).*\.(q_proj|v_proj)' WHISPER_MOE_SHARED=../shared cargo bench --bench training

use std::time::Instant;

use burn::prelude::*;
use whisper_moe::lora::{LoraConfig, Targets};
use whisper_moe::train::{AdamW, AdamWConfig, EncoderCache, Example, GradMap, utterance_losses};
use whisper_moe::whisper::{Checkpoint, Task};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    whisper_moe::tune_allocator();
    let shared = std::env::var_os("WHISPER_MOE_SHARED").map(std::path::PathBuf::from).expect("set WHISPER_MOE_SHARED");
    let dev = Device::flex().autodiff();
    let ck = Checkpoint::load_dir(&shared.join("models/whisper-tiny.en"), &dev).unwrap();
    let targets = std::env::var("LORA_TARGETS").unwrap_or_else(|_| r".*decoder.*\.(q_proj|v_proj)".into());
    let cfg = LoraConfig { target_modules: Targets::Regex(targets.clone()), ..LoraConfig::default() };
    let mut model = ck.model.clone();
    dev.seed(1);
    model.attach_lora(&cfg, 4, &dev).unwrap();
    let text = "and he laid his hands on them and departed thence into the city";
    let prompt = ck.prompt(None, Task::Transcribe).unwrap();
    let examples: Vec<Example> = (0..4)
        .map(|i| {
            let mut tokens = prompt.clone();
            tokens.extend(ck.tokenizer.encode(&format!(" {text}")).unwrap());
            tokens.push(ck.tokenizer.eot);
            Example {
                id: format!("u{i}"),
                audio: (0..64_000).map(|j| ((j * (i + 2)) as f32 * 0.01).sin() * 0.2).collect(),
                tokens,
                text: text.into(),
                ..Default::default()
            }
        })
        .collect();
    let mut cache = EncoderCache::new(16).with_cross_kv(1024);
    let mut opt = AdamW::new(AdamWConfig::default());
    println!(
        "whisper-tiny.en, LoRA r={} on `{targets}`, {} tokens per row, threads {}",
        cfg.r,
        examples[0].tokens.len() - 1,
        rayon::current_num_threads()
    );
    let t = Instant::now();
    let rows: Vec<(usize, Option<usize>)> = (0..4).map(|u| (u, Some(0))).collect();
    let _ = utterance_losses(&ck, &model, &mut cache, &examples, &rows, false, false); // fills the encoder cache
    println!("encoder (4 utterances, once, then cached): {:.2} s", t.elapsed().as_secs_f64());
    for (name, rows) in [
        ("1 expert, batch 4", (0..4).map(|u| (u, Some(0))).collect::<Vec<_>>()),
        (
            "4 experts batched, 4 utterances x 4 experts",
            (0..4).flat_map(|u| (0..4).map(move |e| (u, Some(e)))).collect(),
        ),
    ] {
        let (mut f, mut b, mut o) = (0.0, 0.0, 0.0);
        let reps = 4;
        for _ in 0..reps + 1 {
            let t0 = Instant::now();
            let loss = utterance_losses(&ck, &model, &mut cache, &examples, &rows, true, false).mean();
            let _: f32 = loss.clone().into_scalar();
            let t1 = Instant::now();
            let grads = loss.backward();
            let g = GradMap::of(&model, &grads);
            let t2 = Instant::now();
            model = opt.step(model, &g, 1e-4);
            let t3 = Instant::now();
            if opt.step > 1 {
                f += (t1 - t0).as_secs_f64();
                b += (t2 - t1).as_secs_f64();
                o += (t3 - t2).as_secs_f64();
            }
        }
        let step = (f + b + o) / reps as f64;
        println!(
            "{name}: {:.3} s per step ({} rows) = {:.1} samples/s  [forward {:.3} s, backward {:.3} s, optimizer {:.3} s]",
            step,
            rows.len(),
            rows.len() as f64 / step,
            f / reps as f64,
            b / reps as f64,
            o / reps as f64
        );
    }
    joint(&ck, &examples, &targets);
    println!("peak RSS {:.0} MB", whisper_moe::util::peak_rss_mb());
}

/// Joint training steps per phase: 6 experts, a gate MLP 384 -> 256 -> 6, batch of 4
/// utterances, k = 2; with the encoder caches warm (epochs after the first) and cold (every
/// step encodes, as the first epoch does).
/// With encoder adapters, also with them frozen (the joint stage's `freeze_encoder_adapters`).
fn joint(ck: &Checkpoint, examples: &[Example], targets: &str) {
    use whisper_moe::routing::gate::{Gate, GateConfig};
    use whisper_moe::routing::joint::{JointData, JointModel, batch_loss};
    use whisper_moe::routing::schedule::Phase;
    use whisper_moe::stage::joint::JointParams;
    let dev = ck.device.clone();
    let e = 6;
    let mut whisper = ck.model.clone();
    dev.seed(2);
    let cfg = LoraConfig { target_modules: Targets::Regex(targets.into()), ..LoraConfig::default() };
    whisper.attach_lora(&cfg, e, &dev).unwrap();
    let freezes: &[bool] = if whisper.encoder_has_adapters() { &[false, true] } else { &[false] };
    let d = ck.config.d_model;
    let gate = Gate::new(
        &GateConfig { input_dim: d, hidden: vec![256], experts: e, activation: "gelu".into(), dropout: 0.1 },
        vec![0.0; d],
        vec![1.0; d],
        &dev,
    );
    let mut m = JointModel { whisper, gate, noise: None };
    let data = JointData {
        examples: examples.to_vec(),
        embeddings: (0..examples.len() * d).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect(),
        dim: d,
        train: (0..examples.len()).collect(),
        val: vec![],
    };
    let p = JointParams::default();
    let mut opt = AdamW::new(AdamWConfig::default());
    let batch: Vec<usize> = (0..4).collect();
    for (phase, name) in [(Phase::Soft, "soft"), (Phase::TopkSoft, "topk_soft"), (Phase::TopkHard, "topk_hard")] {
        for &frozen in freezes {
            for warm in [true, false] {
                let fresh = || EncoderCache::new(64).with_cross_kv(1024).with_frozen_encoder_adapters(frozen);
                let mut cache = fresh();
                let reps = 3;
                let mut secs = 0.0;
                for r in 0..reps + 1 {
                    if !warm {
                        cache = fresh();
                    }
                    let t = Instant::now();
                    let bl = batch_loss(ck, &m, &mut cache, &data, &batch, phase, 1.0, 0.5, &p.routing, true, false)
                        .unwrap();
                    let g = GradMap::of(&m, &bl.total.backward());
                    m = opt.step(m, &g, 1e-4);
                    if r > 0 {
                        secs += t.elapsed().as_secs_f64();
                    }
                }
                let step = secs / reps as f64;
                println!(
                    "joint {name:<9} ({}{}): {:.2} s per step of 4 utterances = {:.2} utterances/s",
                    if warm { "encoder cached" } else { "encoder in the step, as in a first epoch" },
                    if frozen { ", encoder adapters frozen" } else { "" },
                    step,
                    4.0 / step
                );
            }
        }
    }
}
