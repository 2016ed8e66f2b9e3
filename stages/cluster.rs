//! Stage cluster: embeddings -> expert groups, stratified splits and a quality summary.
//! The stage is `whisper_moe::stage::cluster::Cluster`; this binary only runs it.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    whisper_moe::stage::main::<whisper_moe::stage::cluster::Cluster>()
}
