//! Evaluation building blocks: text normalisation, WER/CER with edit counts, plots and the HTML
//! report, and how transcripts are decoded and scored ([`EvalConfig`]). The evaluate stage
//! strings them together; nothing here needs a trained model.

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
    }
}
