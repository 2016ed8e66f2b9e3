//! Audio in: decode (wav, flac, mp3, ogg/vorbis), down-mix to mono, resample to 16 kHz, and
//! the Whisper log-mel front-end.

pub mod mel;

use std::io::Cursor;
use std::path::Path;

use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::{MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;

/// Whisper's sample rate.
pub const SAMPLE_RATE: u32 = 16_000;

/// Why audio could not be used; `kind()` is the short reason recorded in the rejected table.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("file not found: {0}")]
    Missing(String),
    #[error("cannot decode {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("{0} holds no audio samples")]
    Empty(String),
}

impl AudioError {
    pub fn kind(&self) -> &'static str {
        match self {
            AudioError::Missing(_) => "missing",
            AudioError::Unreadable { .. } => "unreadable",
            AudioError::Empty(_) => "empty",
        }
    }
}

/// Decoded audio: mono samples at `sample_rate`, and the channel count of the source.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
    pub channels: usize,
}

/// Decode a file into mono samples at its own rate.
pub fn decode_file(path: &Path) -> Result<Decoded, AudioError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => AudioError::Missing(name.clone()),
        _ => AudioError::Unreadable { path: name.clone(), message: e.to_string() },
    })?;
    let ext = path.extension().and_then(|e| e.to_str());
    decode_bytes(bytes, ext, &name)
}

/// Decode in-memory audio (e.g. the `bytes` of an HF datasets audio column).
pub fn decode_bytes(bytes: Vec<u8>, extension: Option<&str>, name: &str) -> Result<Decoded, AudioError> {
    let unreadable = |m: String| AudioError::Unreadable { path: name.to_string(), message: m };
    if bytes.is_empty() {
        return Err(AudioError::Empty(name.to_string()));
    }
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), MediaSourceStreamOptions::default());
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    let mut format = symphonia::default::get_probe()
        .probe(&hint, mss, FormatOptions::default(), MetadataOptions::default())
        .map_err(|e| unreadable(e.to_string()))?;
    let track = format.default_track(TrackType::Audio).ok_or_else(|| unreadable("no audio track".into()))?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| unreadable("no audio codec parameters".into()))?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| unreadable(e.to_string()))?;

    let mut mono = Vec::new();
    let mut interleaved: Vec<f32> = Vec::new();
    let mut rate = params.sample_rate.unwrap_or(0);
    let mut channels = params.channels.as_ref().map(|c| c.count()).unwrap_or(0);
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(unreadable(e.to_string())),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(b) => b,
            // A corrupt packet in the middle: skip it, as players do.
            Err(SymError::DecodeError(_)) => continue,
            Err(e) => return Err(unreadable(e.to_string())),
        };
        let spec = buf.spec();
        rate = spec.rate();
        channels = spec.channels().count().max(1);
        interleaved.resize(buf.samples_interleaved(), 0.0);
        buf.copy_to_slice_interleaved(&mut interleaved);
        mono.extend(interleaved.chunks_exact(channels).map(|f| f.iter().sum::<f32>() / channels as f32));
    }
    if mono.is_empty() {
        return Err(AudioError::Empty(name.to_string()));
    }
    if rate == 0 {
        return Err(unreadable("unknown sample rate".into()));
    }
    Ok(Decoded { samples: mono, sample_rate: rate, channels })
}

/// Resample mono audio to `to` Hz with rubato's FFT resampler (band-limited, delay trimmed).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, String> {
    use rubato::audioadapter_buffers::direct::SequentialSlice;
    use rubato::{Fft, FixedSync, Resampler};
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let mut r = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Both).map_err(|e| e.to_string())?;
    let input = SequentialSlice::new(samples, 1, samples.len()).map_err(|e| e.to_string())?;
    let out = r.process_all(&input, samples.len(), None).map_err(|e| e.to_string())?;
    Ok(out.take_data())
}

/// Decode any supported file to 16 kHz mono.
pub fn load_16k(path: &Path) -> Result<Decoded, AudioError> {
    let d = decode_file(path)?;
    to_16k(d, &path.display().to_string())
}

pub fn to_16k(d: Decoded, name: &str) -> Result<Decoded, AudioError> {
    let samples = resample(&d.samples, d.sample_rate, SAMPLE_RATE)
        .map_err(|m| AudioError::Unreadable { path: name.to_string(), message: format!("resampling: {m}") })?;
    Ok(Decoded { samples, sample_rate: SAMPLE_RATE, channels: d.channels })
}

/// Write 16-bit PCM WAV (for tests and tools).
pub fn write_wav_i16(path: &Path, channels: &[Vec<f32>], rate: u32) -> std::io::Result<()> {
    let n = channels.first().map_or(0, |c| c.len());
    let ch = channels.len() as u16;
    let mut b = Vec::with_capacity(44 + n * ch as usize * 2);
    let data_len = (n * ch as usize * 2) as u32;
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&ch.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * ch as u32 * 2).to_le_bytes());
    b.extend_from_slice(&(ch * 2).to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..n {
        for c in channels {
            let v = (c[i].clamp(-1.0, 1.0) * 32767.0).round() as i16;
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f32, rate: u32, secs: f32, amp: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n).map(|i| amp * (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin()).collect()
    }

    /// Frequency of the strongest DFT bin (Goertzel scan at 1 Hz steps near `guess`).
    fn peak_frequency(x: &[f32], rate: u32, lo: f32, hi: f32) -> f32 {
        let mut best = (0.0, 0.0);
        let mut f = lo;
        while f <= hi {
            let w = 2.0 * std::f64::consts::PI * f as f64 / rate as f64;
            let (mut re, mut im) = (0.0f64, 0.0f64);
            for (i, &v) in x.iter().enumerate() {
                re += v as f64 * (w * i as f64).cos();
                im -= v as f64 * (w * i as f64).sin();
            }
            let p = re * re + im * im;
            if p > best.1 {
                best = (f, p);
            }
            f += 1.0;
        }
        best.0
    }

    #[test]
    fn resampling_keeps_the_tone_frequency() {
        let x = tone(1000.0, 44_100, 1.0, 0.5);
        let y = resample(&x, 44_100, 16_000).unwrap();
        assert!((y.len() as i64 - 16_000).abs() <= 2, "length {}", y.len());
        let f = peak_frequency(&y[2000..14000], 16_000, 900.0, 1100.0);
        assert_eq!(f, 1000.0);
        // Amplitude is kept away from the edges.
        let peak = y[4000..12000].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!((peak - 0.5).abs() < 0.01, "peak {peak}");
    }

    #[test]
    fn stereo_is_down_mixed_and_decoded() {
        let dir = std::env::temp_dir().join(format!("wm-audio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("stereo.wav");
        let left = tone(440.0, 8000, 0.5, 0.5);
        let right = vec![0.25f32; left.len()];
        write_wav_i16(&p, &[left.clone(), right], 8000).unwrap();
        let d = decode_file(&p).unwrap();
        assert_eq!((d.channels, d.sample_rate, d.samples.len()), (2, 8000, left.len()));
        for i in [0, 17, 1000, 3999] {
            let want = ((left[i] * 32767.0).round() / 32768.0 + (0.25f32 * 32767.0).round() / 32768.0) / 2.0;
            assert!((d.samples[i] - want).abs() < 1e-6, "sample {i}: {} vs {want}", d.samples[i]);
        }
        assert!(matches!(decode_file(&dir.join("nope.wav")), Err(AudioError::Missing(_))));
        std::fs::write(dir.join("junk.wav"), b"this is not audio at all, not even close").unwrap();
        assert_eq!(decode_file(&dir.join("junk.wav")).unwrap_err().kind(), "unreadable");
    }
}
