#!/usr/bin/env bash
# Writes tests/data/large_v3/reference.json (scripts/large_v3_reference.py): transformers'
# 128-bin front end and openai-whisper's 100-language tokenizer, the references of
# tests/large_v3.rs. Uses the test environment (scripts/pyenv.sh: transformers,
# numpy) plus tiktoken, soundfile and the openai-whisper sdist from PyPI, in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(scripts/pyenv.sh)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/python" -m pip install -q --target "$tmp/lib" tiktoken==0.14.0 soundfile==0.13.1
"$venv/bin/python" -m pip download -q --no-deps --no-binary :all: openai-whisper==20250625 -d "$tmp"
tar -xzf "$tmp"/openai_whisper-20250625.tar.gz -C "$tmp"
PYTHONPATH="$tmp/lib" OPENAI_WHISPER_SRC="$tmp/openai_whisper-20250625/whisper" \
  "$venv/bin/python" scripts/large_v3_reference.py
