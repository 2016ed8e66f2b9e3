//! Whisper's tokenizer (tokenizer.json through the `tokenizers` crate) and the prompt prefix
//! each checkpoint needs.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

pub struct WhisperTokenizer {
    inner: tokenizers::Tokenizer,
    pub sot: u32,
    pub eot: u32,
    pub no_timestamps: u32,
}

/// What the decoder is asked to do (multilingual checkpoints only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    #[default]
    Transcribe,
    Translate,
}

impl WhisperTokenizer {
    pub fn from_file(path: &Path) -> Result<WhisperTokenizer> {
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| anyhow!("cannot load {}: {e}", path.display()))?;
        let id = |t: &str| inner.token_to_id(t).with_context(|| format!("{}: no token {t}", path.display()));
        Ok(WhisperTokenizer {
            sot: id("<|startoftranscript|>")?,
            eot: id("<|endoftext|>")?,
            no_timestamps: id("<|notimestamps|>")?,
            inner,
        })
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of plain text, no special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("cannot tokenize {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of token ids, special tokens dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("cannot decode tokens: {e}"))
    }

    /// The decoder prompt: <|startoftranscript|>, then for multilingual checkpoints the
    /// language and task tokens, then <|notimestamps|>. A multilingual prompt needs its language
    /// (given, or detected with [`super::decode::detect_language`]); an English-only checkpoint
    /// refuses other languages and translation.
    pub fn prompt(&self, multilingual: bool, language: Option<&str>, task: Task) -> Result<Vec<u32>> {
        let mut p = vec![self.sot];
        let code = language.map(super::language::code).transpose()?;
        if multilingual {
            let Some(lang) = code else {
                bail!("a multilingual checkpoint needs a language for its prompt (give one, or detect it)")
            };
            let tok = format!("<|{lang}|>");
            let Some(l) = self.token_id(&tok) else { bail!("language `{lang}` has no token {tok} in this tokenizer") };
            p.push(l);
            let t = match task {
                Task::Transcribe => "<|transcribe|>",
                Task::Translate => "<|translate|>",
            };
            p.push(self.token_id(t).with_context(|| format!("no token {t}"))?);
        } else {
            if let Some(c) = code.filter(|c| c != "en") {
                bail!("this checkpoint is English-only; language `{c}` is not available");
            }
            if task == Task::Translate {
                bail!("this checkpoint is English-only; it cannot translate (use a multilingual checkpoint)");
            }
        }
        p.push(self.no_timestamps);
        Ok(p)
    }

    /// Length of every prompt [`Self::prompt`] builds.
    pub fn prompt_len(&self, multilingual: bool) -> usize {
        if multilingual { 4 } else { 2 }
    }
}
