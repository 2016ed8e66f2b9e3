#!/usr/bin/env bash
# Check that an evaluation report renders offline in headless Chromium and that every image on it
# loads.
#
#   scripts/check_report.sh REPORT_DIR [SCREENSHOT.png]
#
# REPORT_DIR holds index.html (and plots/). The script
#   1. installs Chromium with apt-get when it is missing (Debian package `chromium`; needs root),
#   2. takes a full-width screenshot of file://REPORT_DIR/index.html (default: a new temp file;
#      the path is printed; look at it),
#   3. dumps the DOM after load: the report's inline script sets <body data-images="loaded/total">
#      once the page has loaded, counting images that are complete with a non-zero natural width;
#      the check passes when loaded == total.
# Chromium runs with a fresh empty profile and without network side-traffic, so it also shows
# that the page needs nothing from outside.
#
# To check the synthetic report the unit tests build:
#   WHISPER_MOE_KEEP_REPORT=$PWD/synthetic-report cargo nextest run --release -E 'test(synthetic_report)'
#   scripts/check_report.sh synthetic-report
set -euo pipefail

dir=${1:?usage: $0 REPORT_DIR [SCREENSHOT.png]}
index="$(cd "$dir" && pwd)/index.html"
[[ -f $index ]] || { echo "no index.html in $dir" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
shot=${2:-$(mktemp --suffix=.png)}

browser=$(command -v chromium || command -v chromium-browser || true)
if [[ -z $browser ]]; then
  echo "installing chromium (apt-get)" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  browser=$(command -v chromium)
fi

flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --hide-scrollbars --virtual-time-budget=5000)

"$browser" "${flags[@]}" --user-data-dir="$work/profile-shot" --window-size=1280,4200 \
  --screenshot="$shot" "file://$index" >"$work/shot.log" 2>&1 || { cat "$work/shot.log" >&2; exit 1; }
[[ -s $shot ]] || { echo "no screenshot written" >&2; cat "$work/shot.log" >&2; exit 1; }

"$browser" "${flags[@]}" --user-data-dir="$work/profile-dom" --dump-dom "file://$index" \
  >"$work/dom.html" 2>"$work/dom.log" || { cat "$work/dom.log" >&2; exit 1; }
status=$(grep -o 'data-images="[^"]*"' "$work/dom.html" | head -1 | sed 's/data-images="\(.*\)"/\1/')

echo "screenshot: $shot"
if [[ $status =~ ^([0-9]+)/([0-9]+)$ ]] && [[ ${BASH_REMATCH[1]} == "${BASH_REMATCH[2]}" ]]; then
  echo "images: $status loaded"
else
  echo "images: not all loaded (data-images=\"${status:-missing}\")" >&2
  exit 1
fi
