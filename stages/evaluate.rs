//! Stage evaluate: WER of base, mixture, oracle and dense; routing accuracy; plots; the report.
//! The stage is `whisper_moe::stage::evaluate::Evaluate`; this binary only runs it.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    whisper_moe::stage::main::<whisper_moe::stage::evaluate::Evaluate>()
}
