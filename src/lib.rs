//! whisper-moe: fine-tune Whisper as a mixture of LoRA experts.
//!
//! The library holds everything; `src/bin/pipeline.rs` (the orchestrator and tools) and the
//! binaries in `stages/` are thin. Each stage lives in one module of [`stage`]; below them:
//! [`whisper`] (the model, loading, decoding, adapters), [`lora`] (multi-expert LoRA),
//! [`train`] (the one training loop), [`routing`] (gate and curriculum), [`mixture`] (the one
//! inference path), [`cluster`], [`embedding`], [`eval`], [`artifacts`], [`dataset`],
//! [`audio`]; [`pipeline`] is the orchestrator and knows nothing about ML. [`gpu_check`] is
//! the device check behind the `gpu-check` binary.

pub mod artifacts;
pub mod audio;
pub mod cluster;
pub mod dataset;
pub mod embedding;
pub mod eval;
pub mod gpu_check;
pub mod lora;
pub mod mixture;
pub mod pipeline;
pub mod routing;
pub mod stage;
pub mod train;
pub mod util;
pub mod whisper;

/// Keep freed memory in the process instead of returning it to the kernel at once: CPU
/// training allocates and frees 50-200 MB temporaries every step, and purging them cost more
/// system time than the step's compute (../shared/docs/deps.md). MIMALLOC_PURGE_DELAY, when
/// set, still wins. Every binary calls this first.
pub fn tune_allocator() {
    // mi_option_purge_delay in mimalloc's `mi_option_e` (v2 header; libmimalloc-sys lacks the constant).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an allocator option is thread-safe and valid at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
