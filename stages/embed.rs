//! Stage embed: dataset manifest + audio -> pooled Whisper encoder embeddings (Parquet), and a
//! table of rejected inputs.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use whisper_moe::artifacts::Shard;
use whisper_moe::dataset::Dataset;
use whisper_moe::embed::{EmbedParams, embed};
use whisper_moe::stage::ParamArgs;
use whisper_moe::whisper::{Checkpoint, device};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Whisper encoder embeddings per utterance")]
struct Args {
    /// metadata.csv (audiofolder), a NeMo .jsonl manifest, or HF-datasets Parquet.
    #[arg(long)]
    dataset: PathBuf,
    /// Hub id or local checkpoint directory.
    #[arg(long)]
    model: String,
    #[arg(long)]
    out: PathBuf,
    /// Where rejected inputs are written.
    #[arg(long)]
    rejected: PathBuf,
    /// Process a deterministic slice i/N and write its own part file.
    #[arg(long)]
    shard: Option<Shard>,
    #[command(flatten)]
    params: ParamArgs,
}

fn main() -> Result<()> {
    whisper_moe::tune_allocator();
    let args = Args::parse();
    let p: EmbedParams = args.params.load()?;
    let ds = Dataset::open(&args.dataset, &p.columns)?;
    let ck = Checkpoint::load(&args.model, &device(&p.device)?)?;
    let s = embed(&ck, &ds, &p, &args.out, &args.rejected, args.shard, &args.model)?;
    eprintln!(
        "embedded {} of {} utterances in {:.1} s ({:.2} clips/s, peak RSS {:.0} MB); rejected {} {:?}",
        s.embedded, s.rows, s.seconds, s.clips_per_second, s.peak_rss_mb, s.rejected, s.rejected_by_reason
    );
    Ok(())
}
