#!/usr/bin/env bash
# Runs the whole test suite in release mode (one build profile for tests and the pipeline).
# Tests that need ../shared (the Hugging Face fixtures and checkpoint) read WHISPER_MOE_SHARED;
# without it they print that they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi
exec cargo nextest run --release --no-fail-fast "$@"
