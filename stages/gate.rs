//! Stage gate: pretrain the routing MLP on the cluster labels. Writes gate.safetensors,
//! gate_config.json, a per-epoch metrics table (metrics/) and summary.json to --out.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use whisper_moe::routing::pretrain::{GateParams, run};
use whisper_moe::stage::ParamArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Pretrain the gate (embedding -> expert logits) on the clusters")]
struct Args {
    /// The embeddings dataset (stage embed).
    #[arg(long)]
    embeddings: PathBuf,
    /// The clusters dataset (stage cluster, <out>/clusters).
    #[arg(long)]
    clusters: PathBuf,
    /// The splits dataset (stage cluster, <out>/splits).
    #[arg(long)]
    splits: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    params: ParamArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let p: GateParams = args.params.load()?;
    let s = run(&args.embeddings, &args.clusters, &args.splits, &args.out, &p)?;
    let acc = s.val_accuracy.map(|a| format!("{a:.4}")).unwrap_or_else(|| "n/a (no val rows)".into());
    eprintln!(
        "gate: {} experts, {} train / {} val rows; best epoch {} of {}; val accuracy vs clusters {acc}",
        s.experts, s.train_rows, s.val_rows, s.best_epoch, s.epochs_run
    );
    Ok(())
}
