//! Routing: the gate (embedding -> expert logits) and its pretraining on the cluster labels,
//! the curriculum's schedules, routing decisions, balance losses and routing statistics, and
//! joint training's model and loss. (The routing lab, every routing method on synthetic
//! data, is a benchmark: benches/routing_lab.)

pub mod balance;
pub mod centroid;
pub mod curriculum;
pub mod gate;
pub mod joint;
pub mod pretrain;
pub mod schedule;
pub mod stats;

pub use gate::{Gate, GateConfig};
