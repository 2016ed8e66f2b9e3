//! Routing: the gate (embedding -> expert logits) and its pretraining on the cluster labels,
//! the curriculum's schedules, balance losses and routing statistics.

pub mod balance;
pub mod curriculum;
pub mod gate;
pub mod lab;
pub mod pretrain;
pub mod schedule;
pub mod stats;

pub use gate::{Gate, GateConfig};
