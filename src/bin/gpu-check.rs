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
    /// Also write the report as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let o = Options {
        device: a.device,
        configs: a.configs,
        layers: a.layers,
        experts: a.experts.max(1),
        rank: a.rank.max(1),
        batch: a.batch.max(1),
        repeat: a.repeat,
        tokens: a.tokens.max(2),
        seed: a.seed,
    };
    let report = match run(&o) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gpu-check: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("{report}");
    if let Some(path) = a.json
        && let Err(e) = whisper_moe::util::write_json(&path, &report)
    {
        eprintln!("gpu-check: error: {e:#}");
        return ExitCode::from(2);
    }
    if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
