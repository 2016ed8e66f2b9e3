#!/usr/bin/env bash
# Regenerates the bundled demo speech corpus (data/demo/).
#
#   bash data/demo/make_demo.sh [OUT_DIR]
#
# OUT_DIR defaults to the directory holding this script. The script writes
# OUT_DIR/metadata.csv and OUT_DIR/audio/<domain>/<id>.flac (16 kHz mono FLAC),
# replacing any previous metadata.csv and audio/ there; nothing else is touched.
#
# Sentences come from the King James Version of the Bible (public domain) as
# shipped by Debian's bible-kjv-text package; speech from Debian's espeak-ng,
# flite and festival; effects and FLAC from sox. Every per-clip choice (voice
# variant, rate, pitch, tempo, SNR, level, effect settings) is drawn from a
# hash of (SEED, domain, index, parameter), sentence order from a hash of
# (SEED, sentence), noise from a Python RNG seeded the same way, and sox runs
# with -R, so two runs with the same package versions give identical bytes.
# The sentence filters, draws and audio steps live in ../corpus.py, shared with
# data/heldout and data/demo8. See README.md beside this script.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

source "$HERE/../corpus.sh"
corpus_require make_demo espeak-ng flite festival festvox-kallpc16k sox libsox-fmt-base flac \
  bible-kjv bible-kjv-text
corpus_versions make_demo espeak-ng flite festival festvox-kallpc16k sox libsox-fmt-base flac \
  bible-kjv-text

python3 - "$OUT" "$CORPUS_PY" <<'PY'
import os
import shutil
import sys
import tempfile

OUT = sys.argv[1]
sys.path.insert(0, sys.argv[2])
import corpus  # noqa: E402

SEED = "whisper-moe-demo-v1"
CLIPS_PER_DOMAIN = int(os.environ.get("DEMO_CLIPS_PER_DOMAIN", "45"))  # override only for quick tests
TEST_FROM = 36          # indices >= TEST_FROM get split_hint "test" (36 train, 9 test)
MIN_S, MAX_S = 1.0, 6.0
MIN_WORDS, MAX_WORDS = 6, 10   # up to 14 would be allowed; 10 keeps the set under 14 MB

# engine: espeak-ng voice variants with rate (wpm) and pitch (0-99) ranges, or
# flite/festival with sox tempo / pitch (cents) ranges. condition: extra effects.
DOMAINS = [
    dict(name="us_male", engine="espeak", voices=["en-us+m1", "en-us+m3"],
         rate=(165, 185), pitch=(40, 60), condition="clean"),
    dict(name="scottish_female", engine="espeak",
         voices=["en-gb-scotland+f2", "en-gb-scotland+f3"],
         rate=(125, 135), pitch=(45, 65), condition="clean"),
    dict(name="caribbean_male", engine="espeak", voices=["en-029+m2", "en-029+m4"],
         rate=(145, 155), pitch=(40, 60), condition="clean"),
    dict(name="rp_male_noisy", engine="espeak", voices=["en-gb-x-rp+m2", "en-gb-x-rp+m4"],
         rate=(160, 170), pitch=(40, 60), condition="white_noise", snr=(22.0, 28.0)),
    dict(name="scottish_male_telephone", engine="flite", voices=["awb"],
         tempo=(0.94, 1.06), cents=(-100, 100), condition="telephone", snr=(24.0, 30.0)),
    dict(name="us_male_reverb", engine="festival", voices=["kal_diphone"],
         tempo=(0.94, 1.06), cents=(-100, 100), condition="reverb"),
]


def main():
    draws = corpus.Draws(SEED)
    pool = corpus.kjv_sentences(SEED, MIN_WORDS, MAX_WORDS)
    print("make_demo: %d candidate sentences" % len(pool), file=sys.stderr)
    audio_root = os.path.join(OUT, "audio")
    if os.path.isdir(audio_root):
        shutil.rmtree(audio_root)
    rows = []
    tmp = tempfile.mkdtemp(prefix="make_demo.")
    try:
        for k, d in enumerate(DOMAINS):
            name = d["name"]
            mine = pool[k::len(DOMAINS)]       # disjoint sentence pools per domain
            os.makedirs(os.path.join(audio_root, name))
            pos = 0
            for idx in range(CLIPS_PER_DOMAIN):
                text, p, final, dur, pos = corpus.render_fitting(
                    draws, d, idx, mine, pos, tmp, MIN_S, MAX_S, tag="make_demo")
                cid = "%s_%03d" % (name, idx)
                rel = "audio/%s/%s.flac" % (name, cid)
                corpus.write_flac(final, os.path.join(OUT, rel))
                split = "train" if idx < TEST_FROM else "test"
                rows.append((rel, text, name, split))
                print("make_demo: %s %.2fs %s" % (rel, dur, corpus.describe(p)), file=sys.stderr)
    finally:
        shutil.rmtree(tmp)
    corpus.write_metadata(os.path.join(OUT, "metadata.csv"),
                          ["file_name", "transcription", "domain", "split_hint"], rows)
    print("make_demo: wrote %d clips to %s" % (len(rows), OUT), file=sys.stderr)


main()
PY
