#!/usr/bin/env bash
# Generates the 8-domain demo corpus (data/demo8/): the 270 clips of data/demo (referenced,
# not copied) plus two domains of 45 clips each that differ in voice and condition from
# the six, for testing an automatic choice of the number of clusters on 6 and 8 groups.
#
#   bash data/demo8/make_demo8.sh [OUT_DIR [DEMO_DIR]]
#
# OUT_DIR defaults to the directory holding this script, DEMO_DIR to ../demo beside it.
# The script writes OUT_DIR/metadata.csv and OUT_DIR/audio/<domain>/<id>.flac, replacing
# any previous metadata.csv and audio/ there; nothing else is touched. The demo rows'
# file_name is DEMO_DIR relative to OUT_DIR joined with the demo's own file_name
# (../demo/audio/... for the committed layout).
#
# Sentences: the demo's King James Bible candidates (same filters and order) that data/demo
# does not use. Draws, filters and audio steps are those of ../corpus.py, with another
# SEED, so two runs with the same package versions give identical bytes. See README.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE}
DEMO=${2:-$HERE/../demo}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DEMO=$(cd "$DEMO" && pwd)
[ -f "$DEMO/metadata.csv" ] || { echo "make_demo8: no $DEMO/metadata.csv" >&2; exit 1; }

source "$HERE/../corpus.sh"
PKGS=(flite sox libsox-fmt-base flac bible-kjv bible-kjv-text)
corpus_require make_demo8 "${PKGS[@]}"
corpus_versions make_demo8 "${PKGS[@]}"

python3 - "$OUT" "$CORPUS_PY" "$DEMO" <<'PY'
import csv
import os
import shutil
import sys
import tempfile

OUT, DEMO = sys.argv[1], sys.argv[3]
sys.path.insert(0, sys.argv[2])
import corpus  # noqa: E402

SEED = "whisper-moe-demo8-v1"
DEMO_SEED = "whisper-moe-demo-v1"   # the demo's sentence order
CLIPS_PER_DOMAIN = int(os.environ.get("DEMO_CLIPS_PER_DOMAIN", "45"))  # override only for quick tests
TEST_FROM = 36          # as data/demo: indices >= 36 get split_hint "test"
MIN_S, MAX_S = 1.0, 6.0
MIN_WORDS, MAX_WORDS = 6, 10

# Two domains unlike the six of data/demo (and unlike data/heldout's new voices):
# a clean US female voice, and a fast, low-pitched US male voice with brown (rumble) noise.
DOMAINS = [
    dict(name="us_female", engine="flite", voices=["slt"],
         tempo=(0.94, 1.06), cents=(-100, 100), condition="clean"),
    dict(name="us_male_fast_noisy", engine="flite", voices=["rms"],
         tempo=(1.30, 1.45), cents=(-300, -200), condition="white_noise", noise="brown",
         snr=(12.0, 18.0)),
]


def main():
    draws = corpus.Draws(SEED)
    with open(os.path.join(DEMO, "metadata.csv"), newline="") as f:
        demo_rows = list(csv.DictReader(f))
    used = {corpus.sentence_key(r["transcription"]) for r in demo_rows}
    pool = corpus.kjv_sentences(DEMO_SEED, MIN_WORDS, MAX_WORDS, exclude=used)
    print("make_demo8: %d candidate sentences not in data/demo" % len(pool), file=sys.stderr)
    prefix = os.path.relpath(DEMO, OUT)
    rows = [(prefix + "/" + r["file_name"], r["transcription"], r["domain"], r["split_hint"])
            for r in demo_rows]
    audio_root = os.path.join(OUT, "audio")
    if os.path.isdir(audio_root):
        shutil.rmtree(audio_root)
    tmp = tempfile.mkdtemp(prefix="make_demo8.")
    try:
        for k, d in enumerate(DOMAINS):
            name = d["name"]
            mine = pool[k::len(DOMAINS)]       # disjoint sentence pools per domain
            os.makedirs(os.path.join(audio_root, name))
            pos = 0
            for idx in range(CLIPS_PER_DOMAIN):
                text, p, final, dur, pos = corpus.render_fitting(
                    draws, d, idx, mine, pos, tmp, MIN_S, MAX_S, tag="make_demo8")
                rel = "audio/%s/%s_%03d.flac" % (name, name, idx)
                corpus.write_flac(final, os.path.join(OUT, rel))
                rows.append((rel, text, name, "train" if idx < TEST_FROM else "test"))
                print("make_demo8: %s %.2fs %s" % (rel, dur, corpus.describe(p)), file=sys.stderr)
    finally:
        shutil.rmtree(tmp)
    corpus.write_metadata(os.path.join(OUT, "metadata.csv"),
                          ["file_name", "transcription", "domain", "split_hint"], rows)
    print("make_demo8: wrote %d rows (%d new clips) to %s"
          % (len(rows), len(rows) - len(demo_rows), OUT), file=sys.stderr)


main()
PY
