//! Stage embed: dataset + audio -> one pooled encoder embedding per utterance (the
//! `embeddings` dataset) and the table of inputs it could not use (`rejected`), streamed in
//! batches. Shards by rows: `--shard i/N` embeds a contiguous slice into its own part files.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Progress, Sharding, Stage};
use crate::artifacts::{DatasetWriter, Embeddings, Rejected, Shard, standard_metadata};
use crate::audio::mel::N_SAMPLES;
use crate::dataset::{Columns, Dataset, Utterance};
use crate::embedding::{Pooling, embed_features, resolve_layer};
use crate::whisper::{Checkpoint, device};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Record the row in `rejected` and go on.
    #[default]
    Skip,
    /// Stop the stage, naming the row.
    Fail,
}

crate::params! {
    pub struct EmbedParams {
        /// Utterances per encoder pass.
        pub batch_size: usize = 8,
        /// How the frames of a clip are pooled into one vector.
        pub pooling: Pooling = Pooling::MeanValid,
        /// Encoder hidden state to pool, numbered as HF's `hidden_states` (0 = input
        /// embeddings, n = the last layer after the final norm); negative counts from the end;
        /// None = the last.
        pub layer: Option<i64> = None,
        pub on_error: OnError = OnError::Skip,
        /// cpu, cuda or cuda:N.
        pub device: String = "cpu".into(),
        /// fp32, bf16 or f16: the base model's weights and activations (fp32 is the default, and
        /// the only one with the CPU kernels; bf16 and f16 are for GPUs).
        pub precision: crate::whisper::Precision = crate::whisper::Precision::Fp32,
        /// Clips longer than this are rejected (Whisper sees 30 s).
        pub max_seconds: f32 = 30.0,
        /// Clips whose RMS level is below this (dBFS) are rejected as silent.
        pub silence_dbfs: f32 = -60.0,
        pub columns: Columns = Columns::default(),
    }
}

/// Inputs and outputs of stage embed.
#[derive(clap::Args, Debug, Clone)]
pub struct EmbedPaths {
    /// The dataset: a directory holding metadata.csv, a .jsonl manifest or Parquet files, or
    /// one such file.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Hub id or local checkpoint directory.
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub out: PathBuf,
    /// Where rejected inputs are written.
    #[arg(long)]
    pub rejected: PathBuf,
    /// Process a deterministic slice i/N and write its own part files.
    #[arg(long)]
    pub shard: Option<Shard>,
}

#[derive(Debug, Serialize)]
pub struct EmbedSummary {
    pub rows: usize,
    pub embedded: usize,
    pub rejected: usize,
    pub rejected_by_reason: BTreeMap<String, usize>,
    pub seconds: f64,
    pub clips_per_second: f64,
    /// Peak resident memory of the process (VmHWM), MB.
    pub peak_rss_mb: f64,
}

impl fmt::Display for EmbedSummary {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "embedded {} of {} utterances in {:.1} s ({:.2} clips/s, peak RSS {:.0} MB); rejected {} {:?}",
            self.embedded,
            self.rows,
            self.seconds,
            self.clips_per_second,
            self.peak_rss_mb,
            self.rejected,
            self.rejected_by_reason
        )
    }
}

pub struct Embed;

impl Stage for Embed {
    const NAME: &'static str = "embed";
    const ABOUT: &'static str = "Whisper encoder embeddings per utterance";
    const SHARDING: Sharding = Sharding::Rows;
    type Paths = EmbedPaths;
    type Params = EmbedParams;
    type Summary = EmbedSummary;

    fn run(paths: &EmbedPaths, p: &EmbedParams) -> Result<EmbedSummary> {
        let ds = Dataset::open(&paths.dataset, &p.columns)?;
        let ck = Checkpoint::load(&paths.model, &device(&p.device)?)?.with_precision(p.precision);
        embed(&ck, &ds, p, paths)
    }
}

/// One usable clip, ready for the encoder.
struct Prepared {
    utt: Utterance,
    samples: usize,
    features: Vec<f32>,
}

/// Decode and check one row; Err is (reason, detail) for the rejected table.
fn prepare(u: &Utterance, ck: &Checkpoint, p: &EmbedParams) -> std::result::Result<Prepared, (String, String)> {
    if let Some(why) = &u.bad_text {
        return Err(("bad_text".into(), why.clone()));
    }
    let text = u.text.as_deref().unwrap_or("");
    if text.trim().is_empty() {
        return Err(("no_transcript".into(), "the transcript is empty".into()));
    }
    if !text.chars().any(char::is_alphanumeric) {
        return Err(("no_words".into(), format!("the transcript has no letters or digits: {text:?}")));
    }
    let d = u.decode().map_err(|e| (e.kind().to_string(), e.to_string()))?;
    let d = crate::audio::to_16k(d, &u.audio_path).map_err(|e| (e.kind().to_string(), e.to_string()))?;
    let secs = d.samples.len() as f32 / crate::audio::SAMPLE_RATE as f32;
    if d.samples.is_empty() {
        return Err(("empty".into(), "no samples".into()));
    }
    if secs > p.max_seconds || d.samples.len() > N_SAMPLES {
        return Err(("too_long".into(), format!("{secs:.1} s is longer than {} s", p.max_seconds)));
    }
    let rms = (d.samples.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / d.samples.len() as f64).sqrt();
    let dbfs = 20.0 * rms.max(1e-12).log10();
    if dbfs < p.silence_dbfs as f64 {
        return Err(("silent".into(), format!("RMS level {dbfs:.1} dBFS is below {} dBFS", p.silence_dbfs)));
    }
    Ok(Prepared { utt: u.clone(), samples: d.samples.len(), features: ck.features(&d.samples) })
}

/// Columns of the embeddings of a multilingual checkpoint: every utterance's language (text: the
/// dataset's value, else the detected Whisper code) and a detected one's probability (Float32,
/// null where the dataset gave the language).
pub const DETECTED_COLUMNS: [&str; 2] = ["language", "language_prob"];

/// Embed every row of `ds` (or the shard's slice) into `paths.out`; rejected rows go to
/// `paths.rejected`.
pub fn embed(ck: &Checkpoint, ds: &Dataset, p: &EmbedParams, paths: &EmbedPaths) -> Result<EmbedSummary> {
    let layer = resolve_layer(p.layer, ck.config.encoder_layers)?;
    let dim = p.pooling.dim(ck.config.d_model);
    let range = paths.shard.map(|s| s.range(ds.len())).unwrap_or(0..ds.len());
    let mut meta = standard_metadata("embed", Some(&ck.hash));
    meta.insert("pooling".into(), p.pooling.name().into());
    meta.insert("layer".into(), layer.to_string());
    meta.insert("model".into(), paths.model.clone());
    meta.insert("dataset".into(), ds.path.display().to_string());
    let mut extra = ds.extra_columns().to_vec();
    // A multilingual checkpoint: every utterance's language in `language` (the dataset's own,
    // else detected here, once, so every later stage prompts with the same one) and the
    // probability of a detected one in `language_prob`.
    let mut numbers = Vec::new();
    let lang = ck.is_multilingual().then(|| {
        let given = ds.language_index();
        let out = match given {
            Some(i) if extra[i] == DETECTED_COLUMNS[0] => i,
            _ => {
                extra.push(DETECTED_COLUMNS[0].to_string());
                extra.len() - 1
            }
        };
        numbers.push(DETECTED_COLUMNS[1].to_string());
        let how = match given {
            Some(i) => {
                format!("the dataset's `{}` column, detected (transformers' detect_language) where empty", extra[i])
            }
            None => "detected (transformers' detect_language)".into(),
        };
        meta.insert("language".into(), how);
        Languages { given, out }
    });
    let mut writer = DatasetWriter::create(&paths.out, Embeddings::schema(dim, &extra, &numbers), &meta, paths.shard)?;
    let mut rejected = Rejected::default();
    let mut progress = Progress::new("embed", range.len());
    let mut embedded = 0;
    let start = std::time::Instant::now();

    let mut rows = ds.iter(range.clone()).peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Utterance> = rows.by_ref().take(p.batch_size.max(1)).collect::<Result<_>>()?;
        let results: Vec<_> = chunk.par_iter().map(|u| prepare(u, ck, p)).collect();
        let mut ready = Vec::new();
        for (u, r) in chunk.iter().zip(results) {
            match r {
                Ok(prep) => ready.push(prep),
                Err((reason, detail)) => {
                    if p.on_error == OnError::Fail {
                        bail!("{}: {reason}: {detail} (on_error: fail; nothing was written)", u.describe(ds));
                    }
                    rejected.push(&u.id, &u.audio_path, &reason, &detail);
                }
            }
        }
        if !ready.is_empty() {
            writer.write(&embed_batch(ck, &mut ready, layer, p.pooling, &extra, lang, dim)?.to_batch()?)?;
            embedded += ready.len();
        }
        progress.inc(chunk.len());
    }
    progress.finish();
    write_rejected(ck, ds, &rejected, paths)?;
    if embedded == 0 {
        bail!(
            "embed: no usable utterance in {} ({} rejected; the reasons are in {})",
            ds.path.display(),
            rejected.ids.len(),
            paths.rejected.display()
        );
    }
    writer.finish().context("finishing the embeddings dataset")?;
    let mut by_reason = BTreeMap::new();
    for r in &rejected.reasons {
        *by_reason.entry(r.clone()).or_insert(0) += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(EmbedSummary {
        rows: range.len(),
        embedded,
        rejected: rejected.ids.len(),
        rejected_by_reason: by_reason,
        seconds: secs,
        clips_per_second: range.len() as f64 / secs.max(1e-9),
        peak_rss_mb: crate::util::peak_rss_mb(),
    })
}

/// Where utterances' languages are in the embeddings (multilingual checkpoints): the dataset's
/// language column (index into the extra columns), if any, and the column written.
#[derive(Debug, Clone, Copy)]
struct Languages {
    given: Option<usize>,
    out: usize,
}

/// The embeddings rows of a batch of prepared clips.
fn embed_batch(
    ck: &Checkpoint,
    ready: &mut [Prepared],
    layer: usize,
    pooling: Pooling,
    extra: &[String],
    lang: Option<Languages>,
    dim: usize,
) -> Result<Embeddings> {
    let feats: Vec<Vec<f32>> = ready.iter_mut().map(|r| std::mem::take(&mut r.features)).collect();
    let samples: Vec<usize> = ready.iter().map(|r| r.samples).collect();
    let (pooled, states) = embed_features(ck, &feats, &samples, layer, pooling);
    let mut language: Vec<Option<String>> = Vec::new();
    let mut numbers = Vec::new();
    if let Some(l) = lang {
        language = ready
            .iter()
            .map(|r| l.given.and_then(|i| r.utt.extra[i].clone()).filter(|v| !v.trim().is_empty()))
            .collect();
        let mut prob = vec![None; ready.len()];
        if language.iter().any(Option::is_none) {
            let enc = if layer >= ck.config.encoder_layers {
                states
            } else {
                ck.model.encoder.forward_from(states, layer, None)
            };
            for (r, d) in ck.detect_language(&ck.model, enc, None)?.into_iter().enumerate() {
                if language[r].is_none() {
                    language[r] = Some(d.code);
                    prob[r] = Some(d.probability);
                }
            }
        }
        numbers.push((DETECTED_COLUMNS[1].to_string(), prob));
    }
    let out = lang.map(|l| l.out);
    Ok(Embeddings {
        ids: ready.iter().map(|r| r.utt.id.clone()).collect(),
        audio_paths: ready.iter().map(|r| r.utt.audio_path.clone()).collect(),
        durations: ready.iter().map(|r| r.samples as f32 / crate::audio::SAMPLE_RATE as f32).collect(),
        transcriptions: ready.iter().map(|r| r.utt.text.clone().unwrap_or_default()).collect(),
        extra: extra
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let values = if Some(i) == out {
                    std::mem::take(&mut language)
                } else {
                    ready.iter().map(|r| r.utt.extra[i].clone()).collect()
                };
                (n.clone(), values)
            })
            .collect(),
        numbers,
        dim,
        values: pooled.into_data().try_into_vec_as()?,
    })
}

/// The rejected table: written even when every row was rejected, so the reasons are there.
fn write_rejected(ck: &Checkpoint, ds: &Dataset, rejected: &Rejected, paths: &EmbedPaths) -> Result<()> {
    let mut meta = standard_metadata("embed", Some(&ck.hash));
    meta.insert("dataset".into(), ds.path.display().to_string());
    let mut w = DatasetWriter::create(&paths.rejected, Rejected::schema(), &meta, paths.shard)?;
    w.write(&rejected.to_batch()?)?;
    w.finish()?;
    for (id, (reason, detail)) in rejected.ids.iter().zip(rejected.reasons.iter().zip(&rejected.details)).take(20) {
        eprintln!("rejected {id}: {reason}: {detail}");
    }
    if rejected.ids.len() > 20 {
        eprintln!("... and {} more (all in {})", rejected.ids.len() - 20, paths.rejected.display());
    }
    Ok(())
}

/// The embeddings a stage reads must come from the checkpoint it uses ("one Whisper source").
pub fn check_same_checkpoint(what: &Path, meta: &BTreeMap<String, String>, ck: &Checkpoint, model: &str) -> Result<()> {
    match meta.get(crate::artifacts::CHECKPOINT_HASH) {
        Some(h) if h != &ck.hash => bail!(
            "{} was made by another checkpoint (hash {h}) than {model} (hash {}): one Whisper source for embeddings and training; rerun embed with this model",
            what.display(),
            ck.hash
        ),
        _ => Ok(()),
    }
}
