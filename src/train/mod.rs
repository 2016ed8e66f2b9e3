//! Training: the one training loop ([`trainer`]) with its optimizer ([`optim`]) and
//! checkpoints ([`checkpoint`]); and what Whisper training needs: utterances as examples
//! ([`examples`]), the sequence loss through each row's expert ([`sequence`]) and the cache of
//! encoder states shared by all experts ([`encoder_cache`]).

pub mod checkpoint;
pub mod encoder_cache;
pub mod examples;
pub mod optim;
pub mod sequence;
pub mod trainer;

pub use checkpoint::{load_trainables, save_trainables};
pub use encoder_cache::EncoderCache;
pub use examples::{Example, Prompting, audio_of, examples_from_dataset, examples_without_audio, tokens_for};
pub use optim::{AdamW, AdamWConfig, GradMap, LossScaler, warmup_lr};
pub use sequence::{Row, sequence_losses, teacher_forcing, utterance_losses, weighted_loss};
pub use trainer::{EpochInfo, LoopConfig, StepInfo, TrainTask, Trained, train};

crate::params! {
    /// The `train:` parameters of the experts, dense and joint stages.
    pub struct TrainConfig {
        pub epochs: usize = 3,
        /// Utterances (or rows) per batch.
        pub batch_size: usize = 4,
        pub learning_rate: f64 = 1e-4,
        pub warmup_steps: u64 = 0,
        /// Global gradient-norm clip (0 = off).
        pub max_grad_norm: f32 = 1.0,
        pub gradient_accumulation_steps: usize = 1,
        /// AdamW's decoupled weight decay.
        pub weight_decay: f64 = 0.0,
        pub seed: u64 = 42,
        pub save_every_n_epochs: usize = 1,
        /// Tokenise transcripts with a leading space, as Whisper generates them.
        pub leading_space: bool = true,
        /// Utterances whose encoder states are kept in memory.
        pub encoder_cache: usize = 20_000,
        /// Megabytes for the decoder's base cross-attention keys/values (per utterance: 2 x
        /// layers x 1500 x d_model values, 18 MB for tiny in fp32, half in bf16/f16); 0 = recompute
        /// every pass.
        pub cross_kv_cache_mb: usize = 6144,
        /// Stop after this many optimizer steps (a budget; None = all epochs).
        pub max_steps: Option<u64> = None,
        /// When adapters touch the encoder, pack the utterances an expert trains on into
        /// shared 30-s windows (one encoder pass per window), with their transcripts joined;
        /// each utterance's loss is still the mean over its own tokens. About 2x faster on
        /// short clips but it trains on windows unlike the ones the model sees at inference:
        /// measured on the demo, one epoch reached val loss 0.707 packed vs 0.513 unpacked.
        pub pack: bool = false,
        /// Stop an expert after this many epochs without a lower val loss and keep its best
        /// epoch (None = train every epoch and keep the last).
        pub patience: Option<usize> = None,
    }
}

impl TrainConfig {
    /// The training loop's settings.
    pub fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            epochs: self.epochs,
            learning_rate: self.learning_rate,
            warmup_steps: self.warmup_steps,
            max_grad_norm: self.max_grad_norm,
            gradient_accumulation_steps: self.gradient_accumulation_steps,
            optimizer: AdamWConfig { weight_decay: self.weight_decay, ..AdamWConfig::default() },
            seed: self.seed,
            save_every_n_epochs: self.save_every_n_epochs,
            max_steps: self.max_steps,
        }
    }

    pub fn encoder_cache(&self) -> EncoderCache {
        EncoderCache::new(self.encoder_cache).with_cross_kv(self.cross_kv_cache_mb)
    }
}
