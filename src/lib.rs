//! whisper-moe: fine-tune Whisper as a mixture of LoRA experts.
//!
//! The library holds everything; `src/bin/pipeline.rs` and the binaries in `stages/` are thin
//! recipes of library calls.

pub mod artifacts;
pub mod audio;
pub mod cluster;
pub mod dataset;
pub mod embed;
pub mod lora;
pub mod pipeline;
pub mod routing;
pub mod stage;
pub mod whisper;
