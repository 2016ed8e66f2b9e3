//! Routing: the gate that maps an utterance's embedding to expert logits, and its pretraining
//! on the cluster labels.

pub mod gate;
pub mod pretrain;

pub use gate::{Gate, GateConfig};
