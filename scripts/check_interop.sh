#!/usr/bin/env bash
# Checks that pyarrow, polars and duckdb read every artifact schema and see the same values.
# Uses the pinned Python environment of scripts/pyenv.sh; builds the pipeline binary.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(scripts/pyenv.sh)"
cargo build --release --bin pipeline
target="${CARGO_TARGET_DIR:-target}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$target/release/pipeline" interop-samples --out "$out"
"$venv/bin/python" scripts/check_interop.py "$out"
