//! Evaluation building blocks: text normalisation, WER/CER with edit counts, plots and the HTML
//! report. The evaluate stage strings them together; nothing here needs a trained model.

pub mod normalize;
pub mod wer;

pub use normalize::Normalizer;
pub use wer::{Score, Stats};
