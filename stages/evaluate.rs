//! Stage evaluate: base, mixture (top-1), oracle and dense WER/CER per group; routing
//! accuracy; plots and report/index.html.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use whisper_moe::evaluate::{EvaluateParams, EvaluatePaths, result_table, run};
use whisper_moe::stage::ParamArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Evaluate the base model, the mixture, oracle routing and the dense baseline")]
struct Args {
    #[arg(long)]
    model: String,
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long)]
    embeddings: PathBuf,
    #[arg(long)]
    clusters: PathBuf,
    #[arg(long)]
    experts: PathBuf,
    #[arg(long)]
    joint: PathBuf,
    #[arg(long)]
    dense: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    params: ParamArgs,
}

fn main() -> Result<()> {
    whisper_moe::tune_allocator();
    let a = Args::parse();
    let p: EvaluateParams = a.params.load()?;
    let paths = EvaluatePaths {
        model: a.model,
        dataset: a.dataset,
        embeddings: a.embeddings,
        clusters: a.clusters,
        experts: a.experts,
        joint: a.joint,
        dense: a.dense,
        out: a.out,
    };
    let results = run(&paths, &p)?;
    eprint!("{}", result_table(&results));
    eprintln!("report: {}", paths.out.join("report/index.html").display());
    Ok(())
}
