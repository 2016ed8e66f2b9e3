#!/usr/bin/env bash
# PEFT interop both ways (needs ../shared): uses the pinned Python environment of
# scripts/pyenv.sh (torch, transformers, peft), builds the pipeline binary, runs
# scripts/check_peft_interop.py.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${WHISPER_MOE_SHARED:-../shared}"
venv="$(scripts/pyenv.sh)"
cargo build --release --bin pipeline
target="${CARGO_TARGET_DIR:-target}"
"$venv/bin/python" scripts/check_peft_interop.py "$target/release/pipeline" "$shared"
