//! Stage embed: pooled Whisper encoder embeddings per utterance, streamed in batches, with
//! rejected inputs recorded instead of stopping the stage.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::artifacts::{DatasetWriter, Embeddings, Rejected, Shard, standard_metadata};
use crate::audio::mel::{N_SAMPLES, valid_encoder_frames};
use crate::dataset::{Columns, Dataset, Utterance};
use crate::stage::Progress;
use crate::whisper::Checkpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over all 1500 frames, padding included (what the source documents do).
    Mean,
    /// Mean over the frames that cover real audio.
    #[default]
    MeanValid,
    /// Mean and standard deviation over the real frames, concatenated.
    MeanStdValid,
}

impl Pooling {
    pub fn name(&self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::MeanValid => "mean_valid",
            Pooling::MeanStdValid => "mean_std_valid",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    #[default]
    Skip,
    Fail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbedParams {
    pub batch_size: usize,
    pub pooling: Pooling,
    /// Encoder hidden state to pool, numbered as HF's `hidden_states` (0 = input embeddings,
    /// n = the last layer after the final norm); negative counts from the end; None = last.
    pub layer: Option<i64>,
    pub on_error: OnError,
    pub device: String,
    /// Clips longer than this are rejected (Whisper sees 30 s).
    pub max_seconds: f32,
    /// Clips whose RMS level is below this (dBFS) are rejected as silent.
    pub silence_dbfs: f32,
    pub columns: Columns,
}

impl Default for EmbedParams {
    fn default() -> Self {
        EmbedParams {
            batch_size: 8,
            pooling: Pooling::MeanValid,
            layer: None,
            on_error: OnError::Skip,
            device: "cpu".into(),
            max_seconds: 30.0,
            silence_dbfs: -60.0,
            columns: Columns::default(),
        }
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
    if u.text.as_deref().is_none_or(|t| t.trim().is_empty()) {
        return Err(("no_transcript".into(), "the transcript is empty".into()));
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

/// Pool encoder states [b, 1500, d] over each row's valid frames -> [b, d] or [b, 2d].
pub fn pool(states: Tensor<3>, valid: &[usize], pooling: Pooling) -> Tensor<2> {
    let [b, t, d] = states.dims();
    if pooling == Pooling::Mean {
        return states.mean_dim(1).reshape([b, d]);
    }
    let device = states.device();
    let mask: Vec<f32> = valid.iter().flat_map(|&v| (0..t).map(move |i| if i < v { 1.0 } else { 0.0 })).collect();
    let mask = Tensor::<1>::from_data(TensorData::new(mask, [b * t]), &device).reshape([b, t, 1]);
    let counts: Vec<f32> = valid.iter().map(|&v| v as f32).collect();
    let counts = Tensor::<1>::from_data(TensorData::new(counts, [b]), &device).reshape([b, 1]);
    let mean = (states.clone() * mask.clone()).sum_dim(1).reshape([b, d]) / counts.clone();
    if pooling == Pooling::MeanValid {
        return mean;
    }
    let sq = (states.powf_scalar(2.0) * mask).sum_dim(1).reshape([b, d]) / counts;
    let std = (sq - mean.clone().powf_scalar(2.0)).clamp_min(0.0).sqrt();
    Tensor::cat(vec![mean, std], 1)
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

/// The process's peak resident set size in MB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Embed every row of `ds` (or a shard of it) into `out`; rejected rows go to `rejected_out`.
pub fn embed(
    ck: &Checkpoint,
    ds: &Dataset,
    p: &EmbedParams,
    out: &Path,
    rejected_out: &Path,
    shard: Option<Shard>,
    model_source: &str,
) -> Result<EmbedSummary> {
    let n_layers = ck.config.encoder_layers as i64;
    let layer = match p.layer {
        None => n_layers,
        Some(l) if l < 0 => n_layers + 1 + l,
        Some(l) => l,
    };
    if !(0..=n_layers).contains(&layer) {
        bail!("embed: layer {:?} is outside 0..={n_layers} (-1 is the last)", p.layer);
    }
    let dim = if p.pooling == Pooling::MeanStdValid { 2 * ck.config.d_model } else { ck.config.d_model };
    let range = shard.map(|s| s.range(ds.len())).unwrap_or(0..ds.len());
    let mut meta = standard_metadata("embed", Some(&ck.hash));
    meta.insert("pooling".into(), p.pooling.name().into());
    meta.insert("layer".into(), layer.to_string());
    meta.insert("model".into(), model_source.into());
    meta.insert("dataset".into(), ds.path.display().to_string());
    let extra = ds.extra_columns().to_vec();
    let mut writer = DatasetWriter::create(out, Embeddings::schema(dim, &extra), &meta, shard)?;
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
        if ready.is_empty() {
            progress.inc(chunk.len());
            continue;
        }
        let feats: Vec<Vec<f32>> = ready.iter_mut().map(|r| std::mem::take(&mut r.features)).collect();
        let states = ck.model.encoder.forward_upto(ck.mel_batch(&feats), layer as usize, None);
        let valid: Vec<usize> = ready.iter().map(|r| valid_encoder_frames(r.samples)).collect();
        let pooled: Vec<f32> = pool(states, &valid, p.pooling).into_data().try_into_vec_as()?;
        let batch = Embeddings {
            ids: ready.iter().map(|r| r.utt.id.clone()).collect(),
            audio_paths: ready.iter().map(|r| r.utt.audio_path.clone()).collect(),
            durations: ready.iter().map(|r| r.samples as f32 / crate::audio::SAMPLE_RATE as f32).collect(),
            transcriptions: ready.iter().map(|r| r.utt.text.clone().unwrap_or_default()).collect(),
            extra: extra
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), ready.iter().map(|r| r.utt.extra[i].clone()).collect()))
                .collect(),
            dim,
            values: pooled,
        };
        writer.write(&batch.to_batch()?)?;
        embedded += ready.len();
        progress.inc(chunk.len());
    }
    progress.finish();
    if embedded == 0 {
        bail!(
            "embed: no usable utterance in {} ({} rejected); see the reasons above",
            ds.path.display(),
            rejected.ids.len()
        );
    }
    let mut rmeta = standard_metadata("embed", Some(&ck.hash));
    rmeta.insert("dataset".into(), ds.path.display().to_string());
    let mut rw = DatasetWriter::create(rejected_out, Rejected::schema(), &rmeta, shard)?;
    rw.write(&rejected.to_batch()?)?;
    rw.finish()?;
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
        peak_rss_mb: peak_rss_mb(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_by_hand() {
        let dev = Device::flex();
        // Two rows, 3 frames, 2 dims.
        let x = Tensor::<1>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0, 2.0, 2.0, 4.0, 8.0], [12]),
            &dev,
        )
        .reshape([2, 3, 2]);
        let all: Vec<f32> = pool(x.clone(), &[2, 1], Pooling::Mean).into_data().try_into_vec_as().unwrap();
        assert_eq!(all, vec![3.0, 4.0, 2.0, 10.0 / 3.0]);
        let valid: Vec<f32> = pool(x.clone(), &[2, 1], Pooling::MeanValid).into_data().try_into_vec_as().unwrap();
        assert_eq!(valid, vec![2.0, 3.0, 0.0, 0.0]);
        let ms: Vec<f32> = pool(x, &[2, 3], Pooling::MeanStdValid).into_data().try_into_vec_as().unwrap();
        // Row 0 over frames 0..2: mean (2, 3), std (1, 1). Row 1 over 3 frames of (0,0),(2,2),(4,8).
        let m1 = [2.0f32, 10.0 / 3.0];
        let s1 = [(8.0f32 / 3.0).sqrt(), ((0.0 + 4.0 + 64.0) / 3.0 - m1[1] * m1[1]).sqrt()];
        let want = [2.0, 3.0, 1.0, 1.0, m1[0], m1[1], s1[0], s1[1]];
        for (g, w) in ms.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{ms:?} vs {want:?}");
        }
    }
}
