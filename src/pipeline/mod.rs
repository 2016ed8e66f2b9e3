//! The orchestrator: it knows files, hashes and processes, and nothing about ML.

pub mod chain;
pub mod check;
pub mod commit;
pub mod executor;
pub mod hash;
pub mod lock;
pub mod manifest;
pub mod run_cache;
pub mod runner;
pub mod status;
pub mod sweep;

pub use executor::Sharding;
pub use manifest::{Manifest, ManifestError};
pub use runner::{Outcome, RunOptions, run};
