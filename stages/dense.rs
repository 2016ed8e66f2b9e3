//! Stage dense: the single-adapter baseline with the mixture's budget of optimizer steps.
//! The stage is `whisper_moe::stage::dense::Dense`; this binary only runs it.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    whisper_moe::stage::main::<whisper_moe::stage::dense::Dense>()
}
