#!/usr/bin/env bash
# Checks that pyarrow, polars and duckdb read every artifact schema and see the same values.
# Installs them into .venv-interop with pip if needed; builds the pipeline binary.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-interop
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q pyarrow polars duckdb numpy
fi
cargo build --release --bin pipeline
target="${CARGO_TARGET_DIR:-target}"
out=$(mktemp -d)
"$target/release/pipeline" interop-samples --out "$out"
"$venv/bin/python" scripts/check_interop.py "$out"
rm -rf "$out"
