//! Stage cluster: embeddings -> expert groups (`clusters/`), stratified splits (`splits/`) and
//! a quality summary (`summary.json`), all under one output directory.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use whisper_moe::cluster::{ClusterParams, report, run};
use whisper_moe::stage::ParamArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Cluster utterance embeddings into expert groups and split them")]
struct Args {
    /// The embeddings dataset (stage embed).
    #[arg(long)]
    embeddings: PathBuf,
    /// Output directory: clusters/, splits/ and summary.json.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    params: ParamArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let p: ClusterParams = args.params.load()?;
    let summary = run(&args.embeddings, &args.out, &p)?;
    eprint!("{}", report(&summary));
    Ok(())
}
