//! Stage experts: one LoRA expert per cluster, pretrained on its expert_pretrain utterances.
//! The stage is `whisper_moe::stage::experts::Experts`; this binary only runs it.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    whisper_moe::stage::main::<whisper_moe::stage::experts::Experts>()
}
