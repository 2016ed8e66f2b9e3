//! Stage experts: one LoRA adapter per cluster, pretrained on the cluster's expert_pretrain
//! utterances; PEFT-layout adapters and per-expert metrics.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use whisper_moe::experts::{ExpertsParams, run};
use whisper_moe::stage::ParamArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Pretrain one LoRA expert per cluster")]
struct Args {
    /// Hub id or local checkpoint directory (the one the embeddings came from).
    #[arg(long)]
    model: String,
    /// The dataset manifest (audio and transcripts).
    #[arg(long)]
    dataset: PathBuf,
    /// The cluster stage's output (clusters/, splits/).
    #[arg(long)]
    clusters: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    params: ParamArgs,
}

fn main() -> Result<()> {
    whisper_moe::tune_allocator();
    let args = Args::parse();
    let p: ExpertsParams = args.params.load()?;
    let summary = run(&args.model, &args.dataset, &args.clusters, &args.out, &p)?;
    for s in summary {
        eprintln!(
            "expert {}: {} rows; val loss {:?} -> {:?}; val WER {:?} -> {:?}",
            s.expert, s.train_rows, s.val_loss_base, s.val_loss, s.val_wer_base, s.val_wer
        );
    }
    Ok(())
}
