//! Stage joint: train the gate and the experts together with the routing curriculum.
//! The stage is `whisper_moe::stage::joint::Joint`; this binary only runs it.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    whisper_moe::stage::main::<whisper_moe::stage::joint::Joint>()
}
