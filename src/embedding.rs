//! Utterance embeddings: encoder hidden states of the frozen base model, pooled into one
//! vector per utterance. The embed stage, gate training and mixture routing at inference all
//! use this module, so the gate always sees the same kind of vector ("one Whisper source").

use anyhow::{Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::audio::mel::valid_encoder_frames;
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

    pub fn from_name(name: &str) -> Result<Pooling> {
        match name {
            "mean" => Ok(Pooling::Mean),
            "mean_valid" => Ok(Pooling::MeanValid),
            "mean_std_valid" => Ok(Pooling::MeanStdValid),
            other => bail!("unknown pooling `{other}` (mean, mean_valid, mean_std_valid)"),
        }
    }

    /// The embedding's width for a model of width `d_model`.
    pub fn dim(&self, d_model: usize) -> usize {
        if *self == Pooling::MeanStdValid { 2 * d_model } else { d_model }
    }
}

/// Which hidden state to pool, numbered as HF's `hidden_states` (0 = the input embeddings,
/// n = the last layer after the final norm); negative counts from the end; None = the last.
pub fn resolve_layer(layer: Option<i64>, encoder_layers: usize) -> Result<usize> {
    let n = encoder_layers as i64;
    let l = match layer {
        None => n,
        Some(l) if l < 0 => n + 1 + l,
        Some(l) => l,
    };
    if !(0..=n).contains(&l) {
        bail!("embedding layer {layer:?} is outside 0..={n} (-1 is the last)");
    }
    Ok(l as usize)
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

/// Embeddings of 16-kHz clips from their log-mel features: the base encoder up to `layer`,
/// pooled. Returns the states too, so a caller that also needs the encoder output (the base
/// model's transcription) does not run the encoder twice.
pub fn embed_features(
    ck: &Checkpoint,
    feats: &[Vec<f32>],
    samples: &[usize],
    layer: usize,
    pooling: Pooling,
) -> (Tensor<2>, Tensor<3>) {
    let states = ck.model.encoder.forward_upto(ck.mel_batch(feats), layer, None); // [b, 1500, d]
    let valid: Vec<usize> = samples.iter().map(|&n| valid_encoder_frames(n)).collect();
    (pool(states.clone(), &valid, pooling), states)
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

    #[test]
    fn layers_count_from_the_end_when_negative() {
        assert_eq!(resolve_layer(None, 4).unwrap(), 4);
        assert_eq!(resolve_layer(Some(-1), 4).unwrap(), 4);
        assert_eq!(resolve_layer(Some(-3), 4).unwrap(), 2);
        assert_eq!(resolve_layer(Some(2), 4).unwrap(), 2);
        assert!(resolve_layer(Some(5), 4).is_err() && resolve_layer(Some(-6), 4).is_err());
    }
}
