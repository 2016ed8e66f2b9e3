#!/usr/bin/env bash
# Generates the multilingual example corpus: English (two accents), German, French and Spanish,
# spoken by espeak-ng voices, with a per-utterance `language` column (data/multilingual/train/);
# and a held-out set of sentences and voices the training set never has
# (data/multilingual/heldout/).
#
#   bash data/multilingual/make_multilingual.sh [OUT_DIR]
#
# OUT_DIR defaults to the directory holding this script. Writes OUT_DIR/{train,heldout}/metadata.csv
# and OUT_DIR/{train,heldout}/audio/<domain>/*.flac (16 kHz mono FLAC), replacing what was there.
#
# Sentences are built from templates written for this project, the same meaning in every
# language (subject, verb, object, when). The training set uses the first six fillers of each
# slot; every held-out sentence uses at least one seventh filler (a word the training set never
# has) and is spoken either by the training voices ("seen") or by other espeak-ng variants
# ("new"). Draws are keyed by SEED through ../corpus.py, so two runs with the same package
# versions give identical bytes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

source "$HERE/../corpus.sh"
PKGS=(espeak-ng sox libsox-fmt-base flac)
corpus_require make_multilingual "${PKGS[@]}"
corpus_versions make_multilingual "${PKGS[@]}"

python3 - "$OUT" "$CORPUS_PY" <<'PY'
import itertools
import os
import shutil
import sys
import tempfile

OUT = sys.argv[1]
sys.path.insert(0, sys.argv[2])
import corpus  # noqa: E402

SEED = "whisper-moe-multilingual-v1"
PER_DOMAIN = int(os.environ.get("ML_CLIPS_PER_DOMAIN", "36"))
HELDOUT_PER_GROUP = int(os.environ.get("ML_HELDOUT_PER_GROUP", "6"))
MIN_S, MAX_S = 1.0, 6.0

# (subject, verb, when, object) fillers; the 7th of each slot appears only in held-out sentences.
TEMPLATES = {
    "en": dict(order="s v o w",
               s=["My sister", "The old teacher", "Our neighbour", "The little child", "The young doctor",
                  "My brother", "The friendly baker"],
               v=["buys", "reads", "carries", "visits", "writes", "finds", "repairs"],
               o=["fresh bread", "an exciting book", "a heavy bag", "the big market", "a long letter",
                  "the lost key", "the old bicycle"],
               w=["in the morning.", "after work.", "every Sunday.", "in the summer.", "late in the evening.",
                  "with a friend.", "at the weekend."]),
    "de": dict(order="s v w o",
               s=["Meine Schwester", "Der alte Lehrer", "Unser Nachbar", "Das kleine Kind", "Die junge Ärztin",
                  "Mein Bruder", "Die freundliche Bäckerin"],
               v=["kauft", "liest", "trägt", "besucht", "schreibt", "findet", "repariert"],
               w=["am Morgen", "nach der Arbeit", "jeden Sonntag", "im Sommer", "am späten Abend",
                  "mit einem Freund", "am Wochenende"],
               o=["frisches Brot.", "ein spannendes Buch.", "eine schwere Tasche.", "den großen Markt.",
                  "einen langen Brief.", "den verlorenen Schlüssel.", "das alte Fahrrad."]),
    "fr": dict(order="s v o w",
               s=["Ma sœur", "Le vieux professeur", "Notre voisin", "Le petit enfant", "La jeune médecin",
                  "Mon frère", "La boulangère aimable"],
               v=["achète", "lit", "porte", "visite", "écrit", "trouve", "répare"],
               o=["du pain frais", "un livre passionnant", "un sac lourd", "le grand marché", "une longue lettre",
                  "la clé perdue", "le vieux vélo"],
               w=["le matin.", "après le travail.", "chaque dimanche.", "en été.", "tard le soir.",
                  "avec un ami.", "le week-end."]),
    "es": dict(order="s v o w",
               s=["Mi hermana", "El viejo profesor", "Nuestro vecino", "El niño pequeño", "La joven médica",
                  "Mi hermano", "La panadera amable"],
               v=["compra", "lee", "lleva", "visita", "escribe", "encuentra", "repara"],
               o=["pan fresco", "un libro emocionante", "una bolsa pesada", "el mercado grande", "una carta larga",
                  "la llave perdida", "la bicicleta vieja"],
               w=["por la mañana.", "después del trabajo.", "cada domingo.", "en verano.", "tarde por la noche.",
                  "con un amigo.", "el fin de semana."]),
}

# domain: (language, training voices, held-out "new" voices); espeak-ng voice+variant names.
DOMAINS = [
    ("en_us", "en", ["en-us+m3", "en-us+f2"], ["en-us+m7", "en-us+f4"]),
    ("en_scotland", "en", ["en-gb-scotland+m2", "en-gb-scotland+f3"], ["en-gb-scotland+m6", "en-gb-scotland+f1"]),
    ("de", "de", ["de+m3", "de+f2"], ["de+m7", "de+f4"]),
    ("fr", "fr", ["fr-fr+m3", "fr-fr+f2"], ["fr-fr+m7", "fr-fr+f4"]),
    ("es", "es", ["es+m3", "es+f2"], ["es+m7", "es+f4"]),
]


def sentences(lang, heldout):
    t = TEMPLATES[lang]
    out = []
    for idx in itertools.product(range(7), repeat=4):
        if (6 in idx) != heldout:
            continue
        words = {slot: t[slot][i] for slot, i in zip("svow", idx)}
        out.append(" ".join(words[slot] for slot in t["order"].split()))
    # a seeded order, so each domain takes other sentences
    return out


def ordered(pool, draws, name):
    return sorted(pool, key=lambda s: draws.u01(name, "order", s))


def render_set(draws, root, name, lang, voices_by_group, count, tag, pool):
    rows = []
    os.makedirs(os.path.join(root, "audio", name))
    tmp = tempfile.mkdtemp(prefix="make_multilingual.")
    pos = 0
    try:
        for g, (group, voices) in enumerate(voices_by_group):
            d = dict(name="%s/%s" % (name, tag), engine="espeak", voices=voices, rate=(150, 170),
                     pitch=(40, 60), condition="clean")
            for idx in range(g * count, (g + 1) * count):
                text, p, final, dur, pos = corpus.render_fitting(draws, d, idx, pool, pos, tmp, MIN_S, MAX_S,
                                                                 tag="make_multilingual")
                rel = "audio/%s/%s_%s_%02d.flac" % (name, name, group, idx)
                corpus.write_flac(final, os.path.join(root, rel))
                rows.append((rel, text, lang, name, group, "espeak " + p["voice"],
                             corpus.describe({k: v for k, v in p.items() if k != "voice"})))
                print("make_multilingual: %s %s %.2fs %s" % (tag, rel, dur, corpus.describe(p)), file=sys.stderr)
    finally:
        shutil.rmtree(tmp)
    return rows


def main():
    draws = corpus.Draws(SEED)
    header = ["file_name", "transcription", "language", "domain", "voice_group", "voice", "params"]
    train_root, heldout_root = os.path.join(OUT, "train"), os.path.join(OUT, "heldout")
    for root in (train_root, heldout_root):
        if os.path.isdir(os.path.join(root, "audio")):
            shutil.rmtree(os.path.join(root, "audio"))
        os.makedirs(root, exist_ok=True)
    train_rows, heldout_rows = [], []
    for name, lang, seen, new in DOMAINS:
        # Domains of one language share its sentences out, so none repeats across them.
        same = [n for n, l, _, _ in DOMAINS if l == lang]
        k = same.index(name)

        def mine(pool):
            share = [s for s in pool if int(draws.u01(lang, "share", s) * len(same)) == k]
            return ordered(share, draws, name)

        train_rows += render_set(draws, train_root, name, lang, [("seen", seen)], PER_DOMAIN, "train",
                                 mine(sentences(lang, False)))
        heldout_rows += render_set(draws, heldout_root, name, lang, [("seen", seen), ("new", new)],
                                   HELDOUT_PER_GROUP, "heldout", mine(sentences(lang, True)))
    a = {r[1] for r in train_rows}
    b = {r[1] for r in heldout_rows}
    if a & b or len(a) != len(train_rows):
        sys.exit("make_multilingual: a sentence repeats within the training set or across the sets")
    corpus.write_metadata(os.path.join(train_root, "metadata.csv"), header, train_rows)
    corpus.write_metadata(os.path.join(heldout_root, "metadata.csv"), header, heldout_rows)
    print("make_multilingual: %d training clips in %s, %d held-out clips in %s"
          % (len(train_rows), train_root, len(heldout_rows), heldout_root), file=sys.stderr)


main()
PY
