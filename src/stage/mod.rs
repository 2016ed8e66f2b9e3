//! The stage layer. Every stage of the pipeline is a type implementing [`Stage`]: its inputs
//! and outputs as command-line flags ([`Stage::Paths`]), its parameters ([`Stage::Params`],
//! from the manifest's `params:` section, a YAML file or `--set`), what it prints when done
//! ([`Stage::Summary`]) and one [`Stage::run`]. The binaries under `stages/` are one line,
//! `stage::main::<TheStage>()`; what a stage does reads top to bottom in its module here:
//!
//! | stage | module | reads | writes |
//! |---|---|---|---|
//! | embed | [`embed`] | dataset, model | embeddings, rejected |
//! | cluster | [`cluster`] | embeddings | clusters, splits, summary |
//! | gate | [`gate`] | embeddings, clusters, splits | gate, metrics |
//! | experts | [`experts`] | model, dataset, clusters | one PEFT adapter per expert, metrics |
//! | joint | [`joint`] | model, dataset, embeddings, clusters, experts, gate | the mixture, logs, routing |
//! | dense | [`dense`] | model, dataset, clusters, experts, joint | one adapter with the mixture's budget |
//! | evaluate | [`evaluate`] | all of the above (+ a held-out dataset) | predictions, metrics, report |

pub mod cluster;
pub mod dense;
pub mod embed;
pub mod evaluate;
pub mod experts;
pub mod gate;
pub mod joint;
mod params;
mod progress;

use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, FromArgMatches};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use params::ParamArgs;
pub use progress::Progress;

/// The flags of every stage that trains or evaluates: the base checkpoint and the dataset.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelData {
    /// Hub id or local checkpoint directory (the one the embeddings came from).
    #[arg(long)]
    pub model: String,
    /// The dataset (audio and transcripts): a directory holding metadata.csv, a .jsonl
    /// manifest or Parquet files, or one such file.
    #[arg(long)]
    pub dataset: std::path::PathBuf,
}

/// The checkpoint (on the autodiff device when `training`) and the cluster stage's grouping
/// in `clusters`, refused when they come from different checkpoints.
pub fn checkpoint_and_grouping(
    model: &str,
    clusters: &std::path::Path,
    device: &str,
    precision: crate::whisper::Precision,
    training: bool,
) -> Result<(crate::whisper::Checkpoint, crate::artifacts::Grouping)> {
    let dev = crate::whisper::device(device)?;
    let dev = if training { dev.autodiff() } else { dev };
    let ck = crate::whisper::Checkpoint::load(model, &dev)?.with_precision(precision);
    let g = crate::artifacts::Grouping::read(clusters)?;
    g.check_checkpoint(&ck.hash, &ck.dir)?;
    Ok((ck, g))
}

/// How a stage shards: the runner's protocol with the stage binaries.
pub use crate::pipeline::Sharding;

/// One stage of the pipeline.
pub trait Stage {
    /// The stage's name (its manifest key in the demo pipeline).
    const NAME: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// Whether and how the stage shards.
    const SHARDING: Sharding = Sharding::None;
    /// Inputs and outputs, as flags.
    type Paths: clap::Args;
    /// Parameters, with a default for every field.
    type Params: Serialize + DeserializeOwned + Default;
    /// What the stage prints when it is done.
    type Summary: std::fmt::Display;

    fn run(paths: &Self::Paths, params: &Self::Params) -> Result<Self::Summary>;
}

#[derive(clap::Parser)]
struct Cli<P: clap::Args> {
    #[command(flatten)]
    paths: P,
    #[command(flatten)]
    params: ParamArgs,
}

/// What `--describe` prints: what the orchestrator may ask of a stage binary.
#[derive(Serialize)]
struct Description {
    name: &'static str,
    sharding: Sharding,
    /// The parameters with their defaults.
    params: serde_json::Value,
}

/// The whole `main` of a stage binary: parse the flags and parameters, run, print the
/// summary. `--describe` prints the stage's [`Description`] as JSON; `--check-params` only
/// checks the parameters (keys and types) and exits.
pub fn main<S: Stage>() -> ExitCode {
    crate::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--describe") {
        let d = Description {
            name: S::NAME,
            sharding: S::SHARDING,
            params: serde_json::to_value(S::Params::default()).unwrap_or_default(),
        };
        println!("{}", serde_json::to_string_pretty(&d).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--check-params") {
        let rest: Vec<String> = args.iter().filter(|a| *a != "--check-params").cloned().collect();
        let p = match ParamArgs::from_args(&rest) {
            Ok(p) => p,
            Err(e) => return fail(&e),
        };
        return match p.load::<S::Params>() {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let cmd = Cli::<S::Paths>::command().name(S::NAME).bin_name(format!("stage-{}", S::NAME)).about(S::ABOUT);
    let cli = match cmd.try_get_matches().and_then(|m| Cli::<S::Paths>::from_arg_matches(&m)) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = cli.params.load::<S::Params>().and_then(|p| S::run(&cli.paths, &p));
    match result {
        Ok(summary) => {
            eprintln!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Where a path a stage writes will be once the stage is done: the runner gives stages
/// staging paths (`PIPELINE_STAGING`, relative to the workspace) and moves them into place on
/// success, so paths a stage prints for the user drop that prefix.
pub fn final_path(p: &std::path::Path) -> std::path::PathBuf {
    match std::env::var_os("PIPELINE_STAGING") {
        Some(s) => p.strip_prefix(&s).map(std::path::Path::to_path_buf).unwrap_or_else(|_| p.to_path_buf()),
        None => p.to_path_buf(),
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

/// Declares a parameters struct with each default beside its field, as burn's
/// `#[derive(Config)]` does. The struct deserialises from YAML/JSON with unknown keys refused
/// (naming them) and missing keys taking their defaults.
///
/// ```ignore
/// params! {
///     pub struct GateParams {
///         /// Hidden layer sizes.
///         pub hidden: Vec<usize> = vec![256],
///         pub lr: f64 = 1e-3,
///     }
/// }
/// ```
#[macro_export]
macro_rules! params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty = $default:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }
    };
}
