//! Stage joint: train the gate and all experts together with the routing curriculum; writes
//! the mixture (PEFT adapters, gate, routing config), training logs and the val routing table.

use anyhow::Result;
use clap::Parser;
use whisper_moe::joint::{JointParams, JointPaths, run};
use whisper_moe::stage::ParamArgs;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Joint training of the gate and the experts (routing curriculum)")]
struct Args {
    #[command(flatten)]
    paths: JointPaths,
    #[command(flatten)]
    params: ParamArgs,
}

fn main() -> Result<()> {
    whisper_moe::tune_allocator();
    let a = Args::parse();
    let p: JointParams = a.params.load()?;
    run(&a.paths, &p)
}
