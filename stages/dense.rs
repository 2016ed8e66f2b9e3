//! Stage dense: the single-adapter baseline with the mixture's budget of optimizer steps.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use whisper_moe::experts::{ExpertsParams, run_dense};
use whisper_moe::stage::ParamArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "One LoRA adapter on all training utterances, with the mixture's step budget")]
struct Args {
    #[arg(long)]
    model: String,
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long)]
    clusters: PathBuf,
    /// The experts stage's output (its optimizer steps count toward the budget).
    #[arg(long)]
    experts: PathBuf,
    /// The joint stage's output (its optimizer steps count toward the budget).
    #[arg(long)]
    joint: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    params: ParamArgs,
}

fn main() -> Result<()> {
    whisper_moe::tune_allocator();
    let a = Args::parse();
    let p: ExpertsParams = a.params.load()?;
    let s = run_dense(&a.model, &a.dataset, &a.clusters, &a.experts, &a.joint, &a.out, &p)?;
    eprintln!("dense: {s}");
    Ok(())
}
