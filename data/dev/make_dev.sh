#!/usr/bin/env bash
# Generates the development speech corpus (data/dev/): the six domains of data/demo, for
# choosing hyperparameters (learning rate, epochs, adapter targets) on voices that training
# never hears, kept apart from the held-out test set (data/heldout/). Sentences are Jane
# Austen's (as data/heldout) but disjoint from data/heldout, data/demo and data/demo8; per
# domain a "seen" group (the demo's voices and condition) and a "new" group (voices used
# neither by data/demo, data/demo8 nor data/heldout, with data/heldout's shifted condition
# drawn under another seed).
#
#   bash data/dev/make_dev.sh [OUT_DIR]
#
# OUT_DIR defaults to the directory holding this script. The script writes
# OUT_DIR/metadata.csv and OUT_DIR/audio/<domain>/<id>.flac (16 kHz mono FLAC),
# replacing any previous metadata.csv and audio/ there; nothing else is touched.
# It reads ../demo/metadata.csv, ../demo8/metadata.csv and ../heldout/metadata.csv to keep
# the sentences disjoint (and fails if any sentence would overlap).
#
# Draws, sentence filters and audio steps are those of ../corpus.py (shared with data/demo
# and data/heldout), with another SEED, so two runs with the same package versions give
# identical bytes. See README.md beside this script.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

source "$HERE/../corpus.sh"
PKGS=(espeak-ng flite festival festvox-kallpc16k sox libsox-fmt-base flac r-cran-janeaustenr)
corpus_require make_dev "${PKGS[@]}"
corpus_versions make_dev "${PKGS[@]}" r-base-core

python3 - "$OUT" "$CORPUS_PY" "$HERE/../demo/metadata.csv" "$HERE/../demo8/metadata.csv" \
  "$HERE/../heldout/metadata.csv" <<'PY'
import os
import shutil
import sys
import tempfile

OUT = sys.argv[1]
sys.path.insert(0, sys.argv[2])
EXCLUDE_META = sys.argv[3:]        # demo, demo8, heldout
import corpus  # noqa: E402

SEED = "whisper-moe-dev-v1"        # demo: whisper-moe-demo-v1, heldout: whisper-moe-heldout-v1
PER_GROUP = int(os.environ.get("DEV_CLIPS_PER_GROUP", "6"))  # override only for quick tests
MIN_S, MAX_S = 1.0, 6.0
MIN_WORDS, MAX_WORDS = 6, 10       # the demo's range

# Per domain: "seen" = data/demo's voices, ranges and condition exactly (as data/heldout's
# seen group); "new" = espeak-ng variants used nowhere in data/demo (m1-m4, f2, f3),
# data/demo8 (adds flite slt, rms) or data/heldout (adds m5-m7, steph2, steph3, festival
# ked_diphone), with data/heldout's new-group condition ranges (drawn under this SEED).
# Debian 12 main has no other English festival or flite male voice than kal (= the demo's
# speaker), ked (held-out) and rms (demo8), so the reverb domain's new voices are espeak-ng
# en-us variants; the telephone domain's are espeak-ng en-gb-scotland variants (Debian's
# only Scottish male voices besides flite awb), on data/heldout's wideband call.
QUIET_ROOM = dict(condition="white_noise", noise="pink", snr=(30.0, 36.0))
DOMAINS = [
    ("us_male", {
        "seen": ("clean", dict(engine="espeak", voices=["en-us+m1", "en-us+m3"],
                               rate=(165, 185), pitch=(40, 60), condition="clean")),
        "new": ("pink_noise_30-36dB", dict(engine="espeak", voices=["en-us+rob", "en-us+klatt"],
                                          rate=(165, 185), pitch=(40, 60), **QUIET_ROOM)),
    }),
    ("scottish_female", {
        "seen": ("clean", dict(engine="espeak",
                               voices=["en-gb-scotland+f2", "en-gb-scotland+f3"],
                               rate=(125, 135), pitch=(45, 65), condition="clean")),
        "new": ("pink_noise_30-36dB", dict(engine="espeak",
                                          voices=["en-gb-scotland+f5", "en-gb-scotland+f1"],
                                          rate=(125, 135), pitch=(45, 65), **QUIET_ROOM)),
    }),
    ("caribbean_male", {
        "seen": ("clean", dict(engine="espeak", voices=["en-029+m2", "en-029+m4"],
                               rate=(145, 155), pitch=(40, 60), condition="clean")),
        "new": ("pink_noise_30-36dB", dict(engine="espeak", voices=["en-029+edward", "en-029+m8"],
                                          rate=(145, 155), pitch=(40, 60), **QUIET_ROOM)),
    }),
    ("rp_male_noisy", {
        "seen": ("white_noise_22-28dB", dict(engine="espeak",
                                             voices=["en-gb-x-rp+m2", "en-gb-x-rp+m4"],
                                             rate=(160, 170), pitch=(40, 60),
                                             condition="white_noise", snr=(22.0, 28.0))),
        "new": ("pink_noise_20-26dB", dict(engine="espeak",
                                           voices=["en-gb-x-rp+m8", "en-gb-x-rp+edward"],
                                           rate=(160, 170), pitch=(40, 60),
                                           condition="white_noise", noise="pink",
                                           snr=(20.0, 26.0))),
    }),
    ("scottish_male_telephone", {
        "seen": ("telephone_300-3400_ulaw", dict(engine="flite", voices=["awb"],
                                                tempo=(0.94, 1.06), cents=(-100, 100),
                                                condition="telephone", snr=(24.0, 30.0))),
        "new": ("telephone_wideband_100-7000", dict(engine="espeak",
                                                    voices=["en-gb-scotland+rob",
                                                            "en-gb-scotland+m8"],
                                                    rate=(130, 140), pitch=(40, 60),
                                                    condition="telephone", snr=(24.0, 30.0),
                                                    band="100-7000", codec="wideband")),
    }),
    ("us_male_reverb", {
        "seen": ("reverb", dict(engine="festival", voices=["kal_diphone"],
                                tempo=(0.94, 1.06), cents=(-100, 100), condition="reverb")),
        "new": ("reverb_larger_darker", dict(engine="espeak", voices=["en-us+m8", "en-us+paul"],
                                             rate=(165, 185), pitch=(40, 60),
                                             condition="reverb",
                                             reverb=dict(reverberance=(50, 80), room=(60, 100),
                                                         predelay=(10, 40), damping=(25, 40),
                                                         wet_gain=(0, 0)))),
    }),
]
GROUPS = ["seen", "new"]   # indices 0..PER_GROUP-1 are "seen", the next PER_GROUP "new"


def main():
    draws = corpus.Draws(SEED)
    excluded = set()
    for meta in EXCLUDE_META:
        excluded |= corpus.metadata_keys(meta)
    pool = corpus.austen_sentences(SEED, MIN_WORDS, MAX_WORDS, exclude=excluded)
    print("make_dev: %d candidate sentences (%d excluded keys)" % (len(pool), len(excluded)),
          file=sys.stderr)
    audio_root = os.path.join(OUT, "audio")
    if os.path.isdir(audio_root):
        shutil.rmtree(audio_root)
    rows = []
    tmp = tempfile.mkdtemp(prefix="make_dev.")
    try:
        for k, (name, groups) in enumerate(DOMAINS):
            mine = pool[k::len(DOMAINS)]       # disjoint sentence pools per domain
            os.makedirs(os.path.join(audio_root, name))
            pos = 0
            for g, group in enumerate(GROUPS):
                label, spec = groups[group]
                d = dict(spec, name=name)
                for idx in range(g * PER_GROUP, (g + 1) * PER_GROUP):
                    text, p, final, dur, pos = corpus.render_fitting(
                        draws, d, idx, mine, pos, tmp, MIN_S, MAX_S, tag="make_dev")
                    rel = "audio/%s/%s_%s_%02d.flac" % (name, name, group, idx)
                    corpus.write_flac(final, os.path.join(OUT, rel))
                    voice = "%s %s" % (d["engine"], p["voice"])
                    params = corpus.describe({k2: v for k2, v in p.items() if k2 != "voice"})
                    rows.append((rel, text, name, group, voice, label, params))
                    print("make_dev: %s %.2fs %s" % (rel, dur, corpus.describe(p)),
                          file=sys.stderr)
    finally:
        shutil.rmtree(tmp)
    # The pool already excludes them; check again on what is written.
    keys = [corpus.sentence_key(r[1]) for r in rows]
    overlap = sorted(set(keys) & excluded)
    if overlap or len(set(keys)) != len(keys):
        sys.exit("make_dev: sentence overlap with demo/demo8/heldout or duplicate: %r" % overlap)
    corpus.write_metadata(os.path.join(OUT, "metadata.csv"),
                          ["file_name", "transcription", "domain", "voice_group", "voice",
                           "condition", "params"], rows)
    print("make_dev: wrote %d clips to %s" % (len(rows), OUT), file=sys.stderr)


main()
PY
