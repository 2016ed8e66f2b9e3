#!/usr/bin/env bash
# PEFT interop both ways (needs ../shared): pip-installs torch, transformers and peft into
# .venv-hf if missing, builds the pipeline binary, runs scripts/check_peft_interop.py.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${WHISPER_MOE_SHARED:-../shared}"
venv=.venv-hf
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch transformers peft numpy
fi
cargo build --release --bin pipeline
target="${CARGO_TARGET_DIR:-target}"
"$venv/bin/python" scripts/check_peft_interop.py "$target/release/pipeline" "$shared"
