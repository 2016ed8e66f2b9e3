#!/usr/bin/env bash
# Prints the path of a Python virtual environment holding scripts/requirements-test.txt,
# creating it when missing. It lives outside the clone (reused by later runs and clones on the
# same machine) under a name that changes with the requirements, so a changed pin makes a new
# one. WHISPER_MOE_PYENV overrides the location. torch from PyPI brings its CUDA libraries
# (about 3 GB), which `import torch` needs even on a CPU machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
req="$here/requirements-test.txt"
key="$(sha256sum "$req" | cut -c1-12)"
venv="${WHISPER_MOE_PYENV:-${XDG_CACHE_HOME:-$HOME/.cache}/whisper-moe/pyenv-$key}"
if [ ! -f "$venv/.complete" ]; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
    echo "pyenv: installing python3-venv and python3-pip" >&2
    SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q python3-venv python3-pip >&2
  fi
  echo "pyenv: creating $venv from $req (first run on this machine: a few minutes)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r "$req" >&2
  touch "$venv/.complete"
fi
echo "$venv"
