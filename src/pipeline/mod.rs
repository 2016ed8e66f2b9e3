//! The orchestrator: it knows files, hashes and processes, and nothing about ML.

pub mod hash;
pub mod lock;
pub mod manifest;
pub mod runner;
pub mod status;

pub use manifest::{Manifest, ManifestError};
pub use runner::{Outcome, RunOptions, run};
