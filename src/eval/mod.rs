//! Evaluation building blocks: text normalisation, WER/CER with edit counts, plots and the HTML
//! report, and how transcripts are decoded and scored ([`EvalConfig`]). The evaluate stage
//! strings them together; nothing here needs a trained model.

pub mod bootstrap;
pub mod normalize;
pub mod plots;
pub mod report;
pub mod wer;

pub use normalize::Normalizer;
pub use wer::{Score, Stats};

crate::params! {
    /// How a stage decodes and scores transcripts (the `eval:` parameters).
    pub struct EvalConfig {
        /// Utterances per decoding batch.
        pub batch_size: usize = 8,
        /// At most this many tokens after the prompt.
        pub max_new_tokens: usize = 96,
        pub normalizer: Normalizer = Normalizer::Basic,
        pub safeguards: Safeguards = Safeguards::default(),
    }
}

crate::params! {
    /// openai-whisper's safeguards against loops and made-up text (whisper/transcribe.py,
    /// `decode_with_fallback`): decode greedily; when the text repeats itself (its gzip
    /// compression ratio is above the threshold) or the model is unsure of it (average
    /// log-probability below the threshold), decode that clip again by sampling at the next
    /// temperature. And the number of new tokens is limited by the clip's duration.
    pub struct Safeguards {
        /// Off: plain greedy decoding up to max_new_tokens, exactly transformers' `generate`.
        pub enabled: bool = true,
        /// The first is the greedy pass (0.0); the others are tried in turn on failing clips.
        pub temperatures: Vec<f64> = vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        pub compression_ratio_threshold: Option<f64> = Some(2.4),
        pub logprob_threshold: Option<f64> = Some(-1.0),
        /// New tokens allowed per second of audio, beyond `min_tokens` (None: no limit from
        /// the duration). Fast English speech is about 4 tokens/s.
        pub tokens_per_second: Option<f64> = Some(12.0),
        pub min_tokens: usize = 16,
    }
}

impl Safeguards {
    /// The new-token limit of a clip of `samples` 16-kHz samples.
    pub fn token_limit(&self, samples: usize, max_new_tokens: usize) -> usize {
        match (self.enabled, self.tokens_per_second) {
            (true, Some(tps)) => {
                let secs = samples as f64 / crate::audio::SAMPLE_RATE as f64;
                (self.min_tokens + (secs * tps).ceil() as usize).min(max_new_tokens)
            }
            _ => max_new_tokens,
        }
    }

    /// Does a decoded text with this average log-probability need another try?
    pub fn needs_fallback(&self, text: &str, avg_logprob: f64) -> bool {
        self.compression_ratio_threshold.is_some_and(|t| compression_ratio(text) > t)
            || self.logprob_threshold.is_some_and(|t| avg_logprob < t)
    }
}

/// openai-whisper's `compression_ratio`: UTF-8 bytes over zlib-compressed bytes (level 6).
/// Repetitive text compresses well: "Aye, aye, aye, ..." scores far above 2.4.
pub fn compression_ratio(text: &str) -> f64 {
    use std::io::Write;
    let bytes = text.as_bytes();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    z.write_all(bytes).expect("compressing in memory");
    let compressed = z.finish().expect("compressing in memory");
    bytes.len() as f64 / compressed.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_compresses_and_falls_back() {
        let loop_text = "Aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye, aye.";
        let normal = "The quick brown fox jumps over the lazy dog near the riverbank.";
        assert!(compression_ratio(loop_text) > 2.4, "{}", compression_ratio(loop_text));
        assert!(compression_ratio(normal) < 2.4 && compression_ratio(normal) > 0.5);
        let s = Safeguards::default();
        assert!(s.needs_fallback(loop_text, -0.2));
        assert!(s.needs_fallback(normal, -1.5));
        assert!(!s.needs_fallback(normal, -0.5));
        // 2 s of audio: 16 + 24 tokens, capped by max_new_tokens.
        assert_eq!(s.token_limit(32_000, 64), 40);
        assert_eq!(s.token_limit(32_000, 30), 30);
        assert_eq!(Safeguards { enabled: false, ..s }.token_limit(32_000, 64), 64);
    }
}
