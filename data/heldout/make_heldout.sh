#!/usr/bin/env bash
# Generates the held-out speech corpus (data/heldout/): the six domains of data/demo, with
# sentences from another text (Jane Austen's novels, not the KJV) and two voice groups per
# domain: "seen" (the demo's voices and condition) and "new" (voices data/demo never uses,
# with a modestly shifted recording condition).
#
#   bash data/heldout/make_heldout.sh [OUT_DIR]
#
# OUT_DIR defaults to the directory holding this script. The script writes
# OUT_DIR/metadata.csv and OUT_DIR/audio/<domain>/<id>.flac (16 kHz mono FLAC),
# replacing any previous metadata.csv and audio/ there; nothing else is touched.
#
# Sentences come from Debian's r-cran-janeaustenr (read through Rscript); speech from
# espeak-ng, flite and festival; effects and FLAC from sox. Draws, sentence filters and
# audio steps are those of ../corpus.py (shared with data/demo), with another SEED, so two
# runs with the same package versions give identical bytes. See README.md beside this script.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

source "$HERE/../corpus.sh"
PKGS=(espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k sox libsox-fmt-base flac
      r-cran-janeaustenr)
corpus_require make_heldout "${PKGS[@]}"
corpus_versions make_heldout "${PKGS[@]}" r-base-core

python3 - "$OUT" "$CORPUS_PY" "$HERE/../demo/metadata.csv" <<'PY'
import os
import shutil
import sys
import tempfile

OUT, DEMO_META = sys.argv[1], sys.argv[3]
sys.path.insert(0, sys.argv[2])
import corpus  # noqa: E402

SEED = "whisper-moe-heldout-v1"
PER_GROUP = int(os.environ.get("HELDOUT_CLIPS_PER_GROUP", "10"))  # override only for quick tests
MIN_S, MAX_S = 1.0, 6.0
MIN_WORDS, MAX_WORDS = 6, 10   # the demo's range

# Per domain: the "seen" group uses data/demo's voices, ranges and condition exactly; the
# "new" group uses voices that data/demo never uses (no base voice + variant pair, and no
# espeak-ng variant, of data/demo's: it uses m1-m4, f2 and f3) and a shifted condition.
# Each entry: (condition label, domain spec for corpus.render).
QUIET_ROOM = dict(condition="white_noise", noise="pink", snr=(30.0, 36.0))
DOMAINS = [
    ("us_male", {
        "seen": ("clean", dict(engine="espeak", voices=["en-us+m1", "en-us+m3"],
                               rate=(165, 185), pitch=(40, 60), condition="clean")),
        "new": ("pink_noise_30-36dB", dict(engine="espeak", voices=["en-us+m5", "en-us+m7"],
                                          rate=(165, 185), pitch=(40, 60), **QUIET_ROOM)),
    }),
    ("scottish_female", {
        "seen": ("clean", dict(engine="espeak",
                               voices=["en-gb-scotland+f2", "en-gb-scotland+f3"],
                               rate=(125, 135), pitch=(45, 65), condition="clean")),
        "new": ("pink_noise_30-36dB", dict(engine="espeak",
                                          voices=["en-gb-scotland+steph2", "en-gb-scotland+steph3"],
                                          rate=(125, 135), pitch=(45, 65), **QUIET_ROOM)),
    }),
    ("caribbean_male", {
        "seen": ("clean", dict(engine="espeak", voices=["en-029+m2", "en-029+m4"],
                               rate=(145, 155), pitch=(40, 60), condition="clean")),
        "new": ("pink_noise_30-36dB", dict(engine="espeak", voices=["en-029+m6", "en-029+m7"],
                                          rate=(145, 155), pitch=(40, 60), **QUIET_ROOM)),
    }),
    ("rp_male_noisy", {
        "seen": ("white_noise_22-28dB", dict(engine="espeak",
                                             voices=["en-gb-x-rp+m2", "en-gb-x-rp+m4"],
                                             rate=(160, 170), pitch=(40, 60),
                                             condition="white_noise", snr=(22.0, 28.0))),
        "new": ("pink_noise_20-26dB", dict(engine="espeak",
                                           voices=["en-gb-x-rp+m6", "en-gb-x-rp+m7"],
                                           rate=(160, 170), pitch=(40, 60),
                                           condition="white_noise", noise="pink",
                                           snr=(20.0, 26.0))),
    }),
    ("scottish_male_telephone", {
        "seen": ("telephone_300-3400_ulaw", dict(engine="flite", voices=["awb"],
                                                tempo=(0.94, 1.06), cents=(-100, 100),
                                                condition="telephone", snr=(24.0, 30.0))),
        # No other Scottish male voice in Debian but espeak-ng's; through the 8-kHz
        # telephone chain it gives 72-91% WER, so the new group's call is wideband (HD voice).
        "new": ("telephone_wideband_100-7000", dict(engine="espeak",
                                                    voices=["en-gb-scotland+m5",
                                                            "en-gb-scotland+m7"],
                                                    rate=(130, 140), pitch=(40, 60),
                                                    condition="telephone", snr=(24.0, 30.0),
                                                    band="100-7000", codec="wideband")),
    }),
    ("us_male_reverb", {
        "seen": ("reverb", dict(engine="festival", voices=["kal_diphone"],
                                tempo=(0.94, 1.06), cents=(-100, 100), condition="reverb")),
        "new": ("reverb_larger_darker", dict(engine="festival", voices=["ked_diphone"],
                                             tempo=(0.94, 1.06), cents=(-100, 100),
                                             condition="reverb",
                                             reverb=dict(reverberance=(50, 80), room=(60, 100),
                                                         predelay=(10, 40), damping=(25, 40),
                                                         wet_gain=(0, 0)))),
    }),
]
GROUPS = ["seen", "new"]   # indices 0..PER_GROUP-1 are "seen", the next PER_GROUP "new"


def main():
    draws = corpus.Draws(SEED)
    demo = corpus.metadata_keys(DEMO_META)
    pool = corpus.austen_sentences(SEED, MIN_WORDS, MAX_WORDS, exclude=demo)
    print("make_heldout: %d candidate sentences" % len(pool), file=sys.stderr)
    audio_root = os.path.join(OUT, "audio")
    if os.path.isdir(audio_root):
        shutil.rmtree(audio_root)
    rows = []
    tmp = tempfile.mkdtemp(prefix="make_heldout.")
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
                        draws, d, idx, mine, pos, tmp, MIN_S, MAX_S, tag="make_heldout")
                    rel = "audio/%s/%s_%s_%02d.flac" % (name, name, group, idx)
                    corpus.write_flac(final, os.path.join(OUT, rel))
                    voice = "%s %s" % (d["engine"], p["voice"])
                    params = corpus.describe({k2: v for k2, v in p.items() if k2 != "voice"})
                    rows.append((rel, text, name, group, voice, label, params))
                    print("make_heldout: %s %.2fs %s" % (rel, dur, corpus.describe(p)),
                          file=sys.stderr)
    finally:
        shutil.rmtree(tmp)
    corpus.write_metadata(os.path.join(OUT, "metadata.csv"),
                          ["file_name", "transcription", "domain", "voice_group", "voice",
                           "condition", "params"], rows)
    print("make_heldout: wrote %d clips to %s" % (len(rows), OUT), file=sys.stderr)


main()
PY
