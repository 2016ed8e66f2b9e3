#!/usr/bin/env bash
# Regenerates tests/data/multilingual/*.wav: short sentences (written for this project) spoken by
# espeak-ng 1.51 (Debian 12 package `espeak-ng`), converted by SoX 14.4.2 (`sox`) to 16 kHz mono
# 16-bit PCM WAV without dither (-D), so a rerun with the same package versions is byte-identical.
# Usage: scripts/multilingual_clips.sh [OUT_DIR]   (apt-get install espeak-ng sox)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-tests/data/multilingual}"
mkdir -p "$out"
command -v espeak-ng >/dev/null || { echo "espeak-ng is missing (apt-get install espeak-ng)" >&2; exit 1; }
command -v sox >/dev/null || { echo "sox is missing (apt-get install sox)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# name | espeak-ng voice | words per minute | text
while IFS='|' read -r name voice speed text; do
  [ -z "$name" ] && continue
  espeak-ng -v "$voice" -s "$speed" -w "$tmp/$name.wav" "$text"
  sox -D -V1 "$tmp/$name.wav" -r 16000 -c 1 -b 16 -e signed-integer "$out/$name.wav"
  printf '%s\t%s\t%ss\t%s\n' "$name" "$voice" "$(soxi -D "$out/$name.wav")" "$text"
done <<'LIST'
de_wetter|de|150|Guten Morgen. Heute ist das Wetter schön, und wir gehen in den Park.
de_zug|de|150|Der Zug nach Berlin fährt um acht Uhr ab.
fr_marche|fr-fr|150|Bonjour à tous. Nous allons au marché ce matin pour acheter du pain.
es_playa|es|150|Buenos días. Mañana vamos a la playa con nuestros amigos.
it_mercato|it|150|Buongiorno. Oggi andiamo al mercato a comprare la frutta fresca.
pt_praia|pt-br|150|Bom dia. Hoje nós vamos à praia com a nossa família.
nl_fiets|nl|150|Goedemorgen. Vandaag gaan we met de fiets naar het park.
pl_kino|pl|150|Dzień dobry. Dzisiaj idziemy do kina z przyjaciółmi.
en_fox|en-us|160|The quick brown fox jumps over the lazy dog near the river bank.
en_window|en-gb|160|Please remember to close the window before you leave the house.
LIST
