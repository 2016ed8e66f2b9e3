//! Stage gate: pretrain the routing MLP on the cluster labels.
//! The stage is `whisper_moe::stage::gate::GateStage`; this binary only runs it.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    whisper_moe::stage::main::<whisper_moe::stage::gate::GateStage>()
}
