//! Whisper's log-mel spectrogram, exactly as Hugging Face's `WhisperFeatureExtractor` computes
//! it (torch path): 30-s window, STFT with n_fft 400, hop 160, periodic Hann, center=True with
//! reflect padding, last frame dropped; power spectrum; Slaney mel filters; log10 clamped at
//! 1e-10; floor at max - 8; (x + 4) / 4.
//! Reference: transformers/models/whisper/feature_extraction_whisper.py (`_torch_extract_fbank_features`)
//! and transformers/audio_utils.py (`mel_filter_bank`).

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
pub const N_SAMPLES: usize = 480_000; // 30 s at 16 kHz
pub const N_FRAMES: usize = N_SAMPLES / HOP; // 3000
pub const N_FREQS: usize = N_FFT / 2 + 1; // 201

/// Encoder frames (after the stride-2 conv) that cover `n_samples` of real audio.
pub fn valid_encoder_frames(n_samples: usize) -> usize {
    n_samples.min(N_SAMPLES).div_ceil(2 * HOP).clamp(1, N_FRAMES / 2)
}

fn hz_to_mel(f: f64) -> f64 {
    let (min_log_hz, min_log_mel, logstep) = (1000.0, 15.0, 27.0 / 6.4f64.ln());
    if f >= min_log_hz { min_log_mel + (f / min_log_hz).ln() * logstep } else { 3.0 * f / 200.0 }
}

fn mel_to_hz(m: f64) -> f64 {
    let (min_log_hz, min_log_mel, logstep) = (1000.0, 15.0, 6.4f64.ln() / 27.0);
    if m >= min_log_mel { min_log_hz * (logstep * (m - min_log_mel)).exp() } else { 200.0 * m / 3.0 }
}

/// Slaney-scale, area-normalised triangular filters, [n_freqs][n_mels] (HF's layout), in f64.
pub fn mel_filters(n_mels: usize, sample_rate: f64) -> Vec<Vec<f64>> {
    let fft_freqs: Vec<f64> = (0..N_FREQS).map(|i| i as f64 * (sample_rate / 2.0) / (N_FREQS - 1) as f64).collect();
    let (mmin, mmax) = (hz_to_mel(0.0), hz_to_mel(sample_rate / 2.0));
    let filter_freqs: Vec<f64> =
        (0..n_mels + 2).map(|i| mel_to_hz(mmin + (mmax - mmin) * i as f64 / (n_mels + 1) as f64)).collect();
    let diff: Vec<f64> = filter_freqs.windows(2).map(|w| w[1] - w[0]).collect();
    let mut out = vec![vec![0.0; n_mels]; N_FREQS];
    for (f, row) in out.iter_mut().enumerate() {
        for (m, v) in row.iter_mut().enumerate() {
            let down = -(filter_freqs[m] - fft_freqs[f]) / diff[m];
            let up = (filter_freqs[m + 2] - fft_freqs[f]) / diff[m + 1];
            let enorm = 2.0 / (filter_freqs[m + 2] - filter_freqs[m]);
            *v = down.min(up).max(0.0) * enorm;
        }
    }
    out
}

/// The log-mel front-end for one checkpoint (80 or 128 bins), reusable across clips.
pub struct LogMel {
    n_mels: usize,
    window: Vec<f32>,
    /// Per mel bin: first frequency index and the non-zero weights from there.
    filters: Vec<(usize, Vec<f32>)>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl LogMel {
    pub fn new(n_mels: usize) -> LogMel {
        let dense = mel_filters(n_mels, 16_000.0);
        let filters = (0..n_mels)
            .map(|m| {
                let nz: Vec<usize> = (0..N_FREQS).filter(|&f| dense[f][m] != 0.0).collect();
                match (nz.first(), nz.last()) {
                    (Some(&a), Some(&b)) => (a, (a..=b).map(|f| dense[f][m] as f32).collect()),
                    _ => (0, Vec::new()),
                }
            })
            .collect();
        let window = (0..N_FFT)
            .map(|n| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32)
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        LogMel { n_mels, window, filters, fft }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// |STFT|^2 of frame `t` of the padded 30-s signal, into `power` (N_FREQS values).
    fn frame_power(&self, x: &[f32], t: usize, scratch: &mut FrameScratch, power: &mut [f32]) {
        // Reflect padding of n_fft/2 on both sides of the 480000-sample signal.
        let pad = (N_FFT / 2) as isize;
        let n = N_SAMPLES as isize;
        for (k, v) in scratch.input.iter_mut().enumerate() {
            let mut i = (t * HOP) as isize + k as isize - pad;
            if i < 0 {
                i = -i;
            } else if i >= n {
                i = 2 * (n - 1) - i;
            }
            let s = x.get(i as usize).copied().unwrap_or(0.0);
            *v = s * self.window[k];
        }
        self.fft.process_with_scratch(&mut scratch.input, &mut scratch.output, &mut scratch.fft).expect("fft sizes");
        for (p, c) in power.iter_mut().zip(&scratch.output) {
            *p = c.re * c.re + c.im * c.im;
        }
    }

    /// Log-mel features [n_mels, 3000] (row-major) of 16-kHz mono audio, padded or trimmed to
    /// 30 s.
    pub fn compute(&self, audio: &[f32]) -> Vec<f32> {
        let x = &audio[..audio.len().min(N_SAMPLES)];
        let mut mel = vec![0.0f32; self.n_mels * N_FRAMES];
        // Frames whose whole window lies in the zero padding have zero power.
        let last_nonzero = (x.len() + N_FFT / 2).div_ceil(HOP).min(N_FRAMES);
        let mut scratch = FrameScratch::new(&*self.fft);
        let mut power = vec![0.0f32; N_FREQS];
        for t in 0..last_nonzero {
            self.frame_power(x, t, &mut scratch, &mut power);
            for (m, (start, w)) in self.filters.iter().enumerate() {
                let s: f32 = w.iter().zip(&power[*start..]).map(|(a, b)| a * b).sum();
                mel[m * N_FRAMES + t] = s;
            }
        }
        let mut max = f32::NEG_INFINITY;
        for v in mel.iter_mut() {
            *v = v.max(1e-10).log10();
            max = max.max(*v);
        }
        let floor = max - 8.0;
        for v in mel.iter_mut() {
            *v = (v.max(floor) + 4.0) / 4.0;
        }
        mel
    }

    /// The power spectrum [N_FREQS, frames] of the first `frames` frames (for parity tests).
    pub fn power_spectrum(&self, audio: &[f32], frames: usize) -> Vec<f32> {
        let x = &audio[..audio.len().min(N_SAMPLES)];
        let mut scratch = FrameScratch::new(&*self.fft);
        let mut power = vec![0.0f32; N_FREQS];
        let mut out = vec![0.0f32; N_FREQS * frames];
        for t in 0..frames {
            self.frame_power(x, t, &mut scratch, &mut power);
            for f in 0..N_FREQS {
                out[f * frames + t] = power[f];
            }
        }
        out
    }
}

struct FrameScratch {
    input: Vec<f32>,
    output: Vec<realfft::num_complex::Complex<f32>>,
    fft: Vec<realfft::num_complex::Complex<f32>>,
}

impl FrameScratch {
    fn new(fft: &dyn RealToComplex<f32>) -> FrameScratch {
        FrameScratch { input: fft.make_input_vec(), output: fft.make_output_vec(), fft: fft.make_scratch_vec() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_frames() {
        assert_eq!(valid_encoder_frames(0), 1);
        assert_eq!(valid_encoder_frames(320), 1);
        assert_eq!(valid_encoder_frames(321), 2);
        assert_eq!(valid_encoder_frames(16_000), 50);
        assert_eq!(valid_encoder_frames(10 * N_SAMPLES), 1500);
    }

    #[test]
    fn filters_are_slaney_triangles() {
        // Each Slaney filter has area 2/(f_hi - f_lo) * (f_hi - f_lo)/2 = 1 in Hz (continuous);
        // sampled on the 40-Hz grid, the sum times 40 Hz is close to 1.
        let f = mel_filters(80, 16_000.0);
        for m in 10..70 {
            let area: f64 = (0..N_FREQS).map(|i| f[i][m]).sum::<f64>() * 40.0;
            assert!((area - 1.0).abs() < 0.1, "filter {m} area {area}");
        }
        // Below 1 kHz the Slaney scale is linear: 3 mels per 200 Hz.
        assert!((hz_to_mel(600.0) - 9.0).abs() < 1e-12);
        assert!((mel_to_hz(hz_to_mel(3000.0)) - 3000.0).abs() < 1e-9);
    }

    #[test]
    fn silence_is_the_floor() {
        let lm = LogMel::new(80);
        let m = lm.compute(&[0.0; 1000]);
        assert!(m.iter().all(|&v| (v - (-10.0f32 + 4.0) / 4.0).abs() < 1e-6));
    }
}
