//! LoRA on Whisper's linear layers, with many experts per layer.

pub mod layer;

pub use layer::{MultiLora, Route};
