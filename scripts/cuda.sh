#!/usr/bin/env bash
# Builds whisper-moe with the CUDA backend (`--features cuda`) without any GitHub download.
#
#   scripts/cuda.sh check [CARGO_ARGS...]   cargo check --all-targets --features cuda
#   scripts/cuda.sh build [CARGO_ARGS...]   cargo build --release --features cuda --bins, prints the pipeline path
#   scripts/cuda.sh sdk                     only install and link the LLVM SDK
#
# Why: burn's `cuda` feature pulls cubecl-cuda -> cubecl-llvm -> tracel-llvm-bundler, whose build
# script downloads an LLVM bundle from GitHub unless a sentinel file says one is installed. This
# script installs the same LLVM (a static 23.1.1 SDK with NVPTX, from PyPI: about 92 MB of wheels,
# about 400 MB on disk, once) into a cache directory, links it where the bundler looks and creates
# the sentinel. A machine that can reach GitHub does not need this script (see README).
#
# Environment:
#   CARGO_TARGET_DIR        target directory (default: target-cuda next to Cargo.toml, kept apart
#                           from the CPU build in target/)
#   WHISPER_MOE_LLVM_SDK    where the SDK is installed
#                           (default: ${XDG_CACHE_HOME:-$HOME/.cache}/whisper-moe/llvm-sdk-23.1.1)
#   WHISPER_MOE_LLVM_WHEELS a directory holding the two wheels, for a machine without PyPI
#                           (pip install --no-index --find-links DIR)
#   PYTHON                  the Python used for pip and llvm-config (default: python3)
# Needs: cargo (Rust 1.95+), a C++ compiler (g++), python3 with pip.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The bundler version burn 0.22.1 resolves to, and the SDK that stands in for its download.
BUNDLER_VERSION="23.1.0-4"
SDK_VERSION="23.1.1.post0"
SDK_PACKAGES=("mlc-llvm-static==$SDK_VERSION" "mlc-llvm-static-extra-targets==$SDK_VERSION")
PYTHON="${PYTHON:-python3}"

SDK_DIR="${WHISPER_MOE_LLVM_SDK:-${XDG_CACHE_HOME:-$HOME/.cache}/whisper-moe/llvm-sdk-23.1.1}"
SDK_STATIC="$SDK_DIR/mlc_llvm_static/static"
# `dirs::data_local_dir()` on Linux: $XDG_DATA_HOME, else ~/.local/share.
BUNDLER_DIR="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-$BUNDLER_VERSION"
SENTINEL="$BUNDLER_DIR/.tracel-llvm-installed"

say() { echo "cuda.sh: $*" >&2; }
die() { echo "cuda.sh: error: $*" >&2; exit 1; }

usage() {
  sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit "${1:-2}"
}

check_tools() {
  command -v cargo >/dev/null || die "cargo not found (install Rust 1.95+ with rustup)"
  command -v "${CXX:-c++}" >/dev/null || die "no C++ compiler (\`${CXX:-c++}\`): cubecl-llvm compiles C++ shims against LLVM; on Debian: apt-get install g++"
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found: the SDK's llvm-config is a Python script (on Debian: apt-get install python3 python3-pip)"
}

# The bundler version in Cargo.lock must be the one this script stands in for.
check_lock() {
  local lock="$REPO/Cargo.lock" found
  [[ -f "$lock" ]] || return 0
  found="$(awk '/^name = "tracel-llvm-bundler"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$lock")"
  if [[ -n "$found" && "$found" != "$BUNDLER_VERSION" ]]; then
    die "Cargo.lock has tracel-llvm-bundler $found but this script provides LLVM for $BUNDLER_VERSION; update BUNDLER_VERSION and the SDK pins in $0"
  fi
}

install_sdk() {
  if [[ -x "$SDK_STATIC/bin/llvm-config" && -f "$SDK_STATIC/share/mlc-llvm-static/extra.json" ]]; then
    return 0
  fi
  "$PYTHON" -m pip --version >/dev/null 2>&1 \
    || die "pip for $PYTHON not found (on Debian: apt-get install python3-pip)"
  local tmp="$SDK_DIR.partial.$$"
  local source=()
  if [[ -n "${WHISPER_MOE_LLVM_WHEELS:-}" ]]; then
    source=(--no-index --find-links "$WHISPER_MOE_LLVM_WHEELS")
    say "installing LLVM SDK $SDK_VERSION from $WHISPER_MOE_LLVM_WHEELS into $SDK_DIR"
  else
    say "downloading LLVM SDK $SDK_VERSION from PyPI (about 92 MB, about 400 MB installed) into $SDK_DIR"
  fi
  rm -rf "$tmp"
  mkdir -p "$(dirname "$SDK_DIR")"
  trap "rm -rf '$tmp'" EXIT
  # --target installs outside any Python environment (no PEP 668 complaint on Debian 12).
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile \
    --only-binary=:all: --target "$tmp" "${source[@]}" "${SDK_PACKAGES[@]}" \
    || die "pip could not install ${SDK_PACKAGES[*]}"
  [[ -f "$tmp/mlc_llvm_static/static/bin/llvm-config" ]] \
    || die "unexpected SDK layout: no mlc_llvm_static/static/bin/llvm-config in $tmp"
  chmod +x "$tmp/mlc_llvm_static/static/bin/llvm-config"
  rm -rf "$SDK_DIR"
  mv "$tmp" "$SDK_DIR"
  trap - EXIT
}

link_sdk() {
  if [[ -L "$BUNDLER_DIR" ]]; then
    # Ours (or another SDK link): point it at this SDK.
    if [[ "$(readlink -f "$BUNDLER_DIR")" != "$(readlink -f "$SDK_STATIC")" ]]; then
      ln -sfn "$SDK_STATIC" "$BUNDLER_DIR"
    fi
  elif [[ -d "$BUNDLER_DIR" ]]; then
    [[ -f "$SENTINEL" ]] \
      || die "$BUNDLER_DIR exists without $(basename "$SENTINEL") (an interrupted bundler download?); remove it and rerun"
    say "using the LLVM bundle already installed by tracel-llvm-bundler in $BUNDLER_DIR"
    return 0
  else
    mkdir -p "$(dirname "$BUNDLER_DIR")"
    ln -s "$SDK_STATIC" "$BUNDLER_DIR"
  fi
  # Only create the sentinel when missing: the bundler's build script reruns when its mtime
  # changes, which would rebuild cubecl-llvm and everything above it.
  [[ -f "$SENTINEL" ]] || touch "$SENTINEL"
}

verify_llvm() {
  local config="$BUNDLER_DIR/bin/llvm-config" version targets
  [[ -x "$config" ]] || die "$config missing or not executable"
  version="$("$config" --version)" || die "\`$config --version\` failed (it needs python3 on PATH)"
  targets="$("$config" --targets-built)" || die "\`$config --targets-built\` failed"
  [[ " $targets " == *" NVPTX "* ]] || die "LLVM in $BUNDLER_DIR has no NVPTX target (targets: $targets)"
  say "LLVM $version (targets: $targets) at $BUNDLER_DIR"
}

prepare() {
  check_tools
  check_lock
  if [[ -L "$BUNDLER_DIR" || ! -e "$BUNDLER_DIR" ]]; then
    install_sdk
  fi
  link_sdk
  verify_llvm
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target-cuda}"
  say "target directory: $CARGO_TARGET_DIR"
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
cd "$REPO"
case "$cmd" in
  sdk)
    prepare
    ;;
  check)
    prepare
    say "cargo check --all-targets --features cuda $*"
    cargo check --all-targets --features cuda "$@"
    ;;
  build)
    prepare
    say "cargo build --release --features cuda --bins $*"
    cargo build --release --features cuda --bins "$@"
    bin="$CARGO_TARGET_DIR/release/pipeline"
    [[ -x "$bin" ]] || die "build finished but $bin is missing"
    echo "$bin"
    ;;
  -h|--help|help) usage 0 ;;
  *) usage ;;
esac
