//! gpu-check: compare a compute device with the CPU reference on random weights of a named
//! Whisper config, then time it (`whisper_moe::gpu_check`). Self-contained: no checkpoint, no
//! network; exits non-zero when a comparison is outside its tolerance.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use whisper_moe::gpu_check::{Options, run};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Check a device (cpu: the generic burn ops; cuda[:N]) against the CPU reference, then time it")]
struct Args {
    /// cpu (the CPU backend without its hand-written kernels, against them), cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Whisper configs to check (repeatable): tiny, base, small, medium (.en too), large-v2, large-v3
    #[arg(long = "config", default_values_t = ["tiny".to_string()])]
    configs: Vec<String>,
    /// Encoder and decoder layers instead of the config's (its widths, mel bins and vocabulary kept)
    #[arg(long)]
    layers: Option<usize>,
    /// LoRA experts in the training step
    #[arg(long, default_value_t = 4)]
    experts: usize,
    /// LoRA rank
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// 30-s windows per batch
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Timed repetitions per throughput figure (0: comparisons only)
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Tokens per teacher-forced sequence
    #[arg(long, default_value_t = 16)]
    tokens: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The device's base model: fp32, bf16 or f16 (adapters fp32; the reference is fp32)
    #[arg(long, value_enum, default_value = "fp32")]
    precision: whisper_moe::whisper::Precision,
    /// Also write the report as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print the training memory estimate of each config (fp32 and bf16 weights and
    /// activations, fp32 adapters and AdamW) instead of running anything
    #[arg(long)]
    memory: bool,
    /// With --memory: encoder layers with adapters, counted from the top (default: all)
    #[arg(long)]
    adapted_encoder_layers: Option<usize>,
    /// With --memory: decoder tokens per row
    #[arg(long, default_value_t = 64)]
    decoder_tokens: usize,
}

/// `--memory`: the estimate per config and precision.
fn memory(a: &Args) -> Result<(), String> {
    println!(
        "config     precision  weights GiB  adapters+AdamW GiB  activations GiB/row  rows in 24 GiB  rows in 80 GiB"
    );
    for name in &a.configs {
        let cfg = whisper_moe::whisper::WhisperConfig::named(name).map_err(|e| format!("{e:#}"))?;
        let adapted = a.adapted_encoder_layers.unwrap_or(cfg.encoder_layers);
        for (precision, bytes) in [("fp32", 4), ("bf16", 2)] {
            let m = whisper_moe::gpu_check::estimate_memory(
                name,
                &cfg,
                a.experts,
                a.rank,
                adapted,
                a.decoder_tokens,
                bytes,
                bytes,
            );
            println!(
                "{:<10} {:<10} {:>11.2} {:>19.2} {:>20.3} {:>15} {:>15}",
                name, precision, m.weights_gib, m.adapters_gib, m.activations_per_row_gib, m.rows_24gib, m.rows_80gib
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    if a.memory {
        return match memory(&a) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gpu-check: error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let o = Options {
        device: a.device.clone(),
        configs: a.configs.clone(),
        layers: a.layers,
        experts: a.experts.max(1),
        rank: a.rank.max(1),
        batch: a.batch.max(1),
        repeat: a.repeat,
        tokens: a.tokens.max(2),
        seed: a.seed,
        precision: a.precision,
    };
    let report = match run(&o) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gpu-check: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("{report}");
    if let Some(path) = &a.json
        && let Err(e) = whisper_moe::util::write_json(path, &report)
    {
        eprintln!("gpu-check: error: {e:#}");
        return ExitCode::from(2);
    }
    if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
