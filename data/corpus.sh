# Shared shell set-up for the corpus generators under data/ (sourced, not run):
#
#   source "$DATA/corpus.sh"
#   corpus_require TAG pkg...     apt-get installs the missing Debian packages (sudo if not root)
#   corpus_versions TAG pkg...    prints "TAG: using <package> <version>" on stderr
#
# It also exports LC_ALL=C, TZ=UTC and PYTHONDONTWRITEBYTECODE=1, and sets CORPUS_PY to the
# directory holding corpus.py (the Python module the generators import).

CORPUS_PY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export LC_ALL=C TZ=UTC PYTHONDONTWRITEBYTECODE=1

corpus_require() {
  local tag=$1 p status
  shift
  local missing=()
  for p in "$@"; do
    status=$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null || true)
    [[ $status == *"ok installed"* ]] || missing+=("$p")
  done
  command -v python3 >/dev/null || missing+=(python3)
  if ((${#missing[@]})); then
    echo "$tag: installing ${missing[*]}" >&2
    local SUDO=
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

corpus_versions() {
  local tag=$1 p
  shift
  for p in "$@"; do
    dpkg-query -W -f "$tag: using \${Package} \${Version}\n" "$p" >&2
  done
}
