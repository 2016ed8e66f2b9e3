//! Stage evaluate: base, mixture (top-1), oracle and dense WER/CER per group; routing
//! accuracy; plots and report/index.html.

use anyhow::Result;
use clap::Parser;
use whisper_moe::evaluate::{EvaluateParams, EvaluatePaths, result_table, run};
use whisper_moe::stage::ParamArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Evaluate the base model, the mixture, oracle routing and the dense baseline")]
struct Args {
    #[command(flatten)]
    paths: EvaluatePaths,
    #[command(flatten)]
    params: ParamArgs,
}

fn main() -> Result<()> {
    whisper_moe::tune_allocator();
    let a = Args::parse();
    let p: EvaluateParams = a.params.load()?;
    let paths = a.paths;
    let results = run(&paths, &p)?;
    eprint!("{}", result_table(&results));
    eprintln!("report: {}", paths.out.join("report/index.html").display());
    Ok(())
}
