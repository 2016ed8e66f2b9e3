//! Stage joint: train the gate and all experts together with the routing curriculum; writes
//! the mixture (PEFT adapters, gate, routing config), training logs and the val routing table.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use whisper_moe::joint::{JointParams, JointPaths, run};
use whisper_moe::stage::ParamArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Joint training of the gate and the experts (routing curriculum)")]
struct Args {
    #[arg(long)]
    model: String,
    #[arg(long)]
    dataset: PathBuf,
    /// Embeddings (the gate's input; their checkpoint hash is checked).
    #[arg(long)]
    embeddings: PathBuf,
    /// The cluster stage's output (clusters/, splits/).
    #[arg(long)]
    clusters: PathBuf,
    /// The experts stage's output.
    #[arg(long)]
    experts: PathBuf,
    /// The gate stage's output.
    #[arg(long)]
    gate: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    params: ParamArgs,
}

fn main() -> Result<()> {
    whisper_moe::tune_allocator();
    let a = Args::parse();
    let p: JointParams = a.params.load()?;
    let paths = JointPaths {
        model: a.model,
        dataset: a.dataset,
        embeddings: a.embeddings,
        clusters: a.clusters,
        experts: a.experts,
        gate: a.gate,
        out: a.out,
    };
    run(&paths, &p)
}
