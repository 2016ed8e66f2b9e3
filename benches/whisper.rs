//! Whisper throughput on CPU: encoder 30-s windows per second at batch 1 and 8, greedy
//! decoding tokens per second, and the achieved GFLOP/s. The hot loops only.
//!
//!   WHISPER_MOE_SHARED=../shared cargo bench --bench whisper
//!   (or: cargo bench --bench whisper -- path/to/checkpoint)

use std::time::Instant;

use burn::prelude::*;
use whisper_moe::whisper::{Checkpoint, Task, greedy};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Multiply-adds x2 of one encoder window (convs, projections, attention, MLP).
fn encoder_flops(c: &whisper_moe::whisper::WhisperConfig) -> f64 {
    let (d, f, t, m) = (c.d_model as f64, c.encoder_ffn_dim as f64, 1500.0, c.num_mel_bins as f64);
    let conv = 2.0 * (3000.0 * m * d * 3.0 + t * d * d * 3.0);
    let per_layer = 2.0 * (4.0 * t * d * d + 2.0 * t * t * d + 2.0 * t * d * f);
    conv + c.encoder_layers as f64 * per_layer
}

fn main() {
    whisper_moe::tune_allocator();
    let model = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("WHISPER_MOE_SHARED").map(|s| std::path::PathBuf::from(s).join("models/whisper-tiny.en"))
        })
        .expect("give a checkpoint directory or set WHISPER_MOE_SHARED");
    let dev = Device::flex();
    let ck = Checkpoint::load_dir(&model, &dev).unwrap();
    let threads = rayon::current_num_threads();
    let flops = encoder_flops(&ck.config);
    println!("model {} | threads {threads} | encoder {:.1} GFLOP per window", model.display(), flops / 1e9);

    // A 4-s speech-like clip; features are the same work for every clip (30-s window).
    let clip: Vec<f32> = (0..64_000).map(|i| ((i as f32 * 0.031).sin() + (i as f32 * 0.0071).sin()) * 0.2).collect();
    let t0 = Instant::now();
    let feats = ck.features(&clip);
    println!("log-mel: {:.1} ms per clip", t0.elapsed().as_secs_f64() * 1e3);

    for batch in [1usize, 8] {
        let mel = ck.mel_batch(&vec![feats.clone(); batch]);
        let _ = ck.model.encoder.forward(mel.clone(), None).into_data(); // warm-up
        let reps = if batch == 1 { 6 } else { 2 };
        let t = Instant::now();
        for _ in 0..reps {
            let _ = ck.model.encoder.forward(mel.clone(), None).into_data();
        }
        let secs = t.elapsed().as_secs_f64() / (reps * batch) as f64;
        println!(
            "encoder batch {batch}: {:.3} s per window, {:.2} windows/s, {:.1} GFLOP/s",
            secs,
            1.0 / secs,
            flops / secs / 1e9
        );
    }

    let prompt = ck.prompt(None, Task::Transcribe).unwrap();
    for batch in [1usize, 8] {
        let enc = ck.model.encoder.forward(ck.mel_batch(&vec![feats.clone(); batch]), None);
        let mut opts = ck.greedy_options(64);
        opts.suppress_tokens.push(ck.tokenizer.eot); // decode exactly 64 tokens per row
        let t = Instant::now();
        let out = greedy(&ck.model, enc, &prompt, &opts, None);
        let secs = t.elapsed().as_secs_f64();
        let tokens: usize = out.iter().map(|o| o.len() - prompt.len()).sum();
        println!("greedy decoding batch {batch}: {tokens} tokens in {secs:.2} s, {:.1} tokens/s", tokens as f64 / secs);
    }
}
