//! Routing: the gate, the curriculum's schedules, balance losses and routing statistics.

pub mod balance;
pub mod curriculum;
pub mod lab;
pub mod schedule;
pub mod stats;
