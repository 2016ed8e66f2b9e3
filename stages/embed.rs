//! Stage embed: dataset + audio -> pooled Whisper encoder embeddings, and the rejected inputs.
//! The stage is `whisper_moe::stage::embed::Embed`; this binary only runs it.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    whisper_moe::stage::main::<whisper_moe::stage::embed::Embed>()
}
