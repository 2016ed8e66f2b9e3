"""Shared code for the synthetic speech corpora under data/.

Used by data/demo/make_demo.sh, data/heldout/make_heldout.sh and data/demo8/make_demo8.sh
(each runs an embedded Python script that imports this module). Standard library only.

Everything here is deterministic: every per-clip choice comes from SHA-256 of
(seed, domain, index, parameter) through `Draws`, noise from `random.Random` seeded from
SHA-256 of a key, and sox runs with -R (repeatable) and -D (no dither). The demo corpus
must stay byte-identical when regenerated, so do not change what an existing code path
computes; add options with defaults instead.
"""
import array
import csv
import hashlib
import os
import random
import re
import subprocess
import sys
import wave

SR = 16000
SOX = ["sox", "-R", "-D", "-V1"]


# --- seeded draws, keyed by (domain, index, parameter) ---------------------------------------
class Draws:
    """Uniform draws from SHA-256 of `seed|key...`; the same key always gives the same value."""

    def __init__(self, seed):
        self.seed = seed

    def u01(self, *key):
        h = hashlib.sha256("|".join([self.seed] + [str(k) for k in key]).encode()).digest()
        return int.from_bytes(h[:8], "big") / 2.0 ** 64

    def uniform(self, lo, hi, *key):
        return lo + (hi - lo) * self.u01(*key)

    def randint(self, lo, hi, *key):  # inclusive
        return lo + min(int(self.u01(*key) * (hi - lo + 1)), hi - lo)

    def choice(self, seq, *key):
        return seq[min(int(self.u01(*key) * len(seq)), len(seq) - 1)]


# --- sentences ----------------------------------------------------------------------------------
ARCHAIC = set("""thee thou thy thine ye hath doth saith shalt wilt hast dost art
didst wast canst spake""".split())
OK_EST = set("""best rest west east least priest nest feast beast breast chest
guest honest forest harvest midst interest request test lest""".split())
ALLOWED_CAPS = {"I", "O", "God", "God's", "Lord", "Lord's"}


def sentence_key(s):
    """Lower case, letters and spaces only: two sentences with the same key are duplicates."""
    return " ".join(re.sub(r"[^a-z ]", "", s.lower()).split())


def keep_sentence(s, common, min_words, max_words):
    """The demo's filters: letters and basic punctuation, min-max words, no names, no archaisms."""
    if not re.fullmatch(r"[A-Z][A-Za-z ,.;:?!'-]*[.?!]", s):
        return False                       # odd characters, digits, brackets
    words = s.split()
    if not min_words <= len(words) <= max_words:
        return False
    bare = [re.sub(r"[^A-Za-z']", "", w).strip("'") for w in words]
    if any(sum(c.isupper() for c in b) > 1 for b in bare):
        return False                       # remaining all-caps words
    if any(b[:1].isupper() and b not in ALLOWED_CAPS for b in bare[1:]):
        return False                       # proper names, mid-sentence capitals
    if bare[0] not in ALLOWED_CAPS and bare[0].lower() not in common:
        return False                       # opens with a proper name
    low = [b.lower() for b in bare]
    if any(b in ARCHAIC for b in low):
        return False
    if any(b.endswith("eth") and b != "teeth" for b in low):
        return False                       # archaic verb forms (-eth)
    if any(b.endswith("est") and b not in OK_EST for b in low):
        return False                       # archaic verb forms (-est)
    return True


def pick_sentences(paragraphs, common, min_words, max_words, seed, rewrite=None, exclude=()):
    """Split each paragraph into sentences, filter, de-duplicate, order by SHA-256 of
    `seed|sentence|<text>`. `rewrite` is applied to each sentence before filtering;
    sentences whose key is in `exclude` are dropped."""
    out, seen = [], set(exclude)
    for para in paragraphs:
        text = re.sub(r"\s+", " ", para)
        for s in re.split(r"(?<=[.?!])\s+(?=[A-Z])", text):
            s = s.strip()
            if rewrite is not None:
                s = rewrite(s)
            if not keep_sentence(s, common, min_words, max_words):
                continue
            key = sentence_key(s)
            if key in seen:
                continue
            seen.add(key)
            out.append(s)
    out.sort(key=lambda s: hashlib.sha256((seed + "|sentence|" + s).encode()).hexdigest())
    return out


def _kjv_rewrite(s):
    s = re.sub(r"\bLORD\b", "Lord", s)
    return re.sub(r"\bGOD\b", "God", s)


def kjv_sentences(seed, min_words, max_words, exclude=()):
    """Candidate sentences from the King James Bible (Debian bible-kjv / bible-kjv-text),
    one paragraph per chapter."""
    txt = subprocess.run(["bible", "-f", "-l0", "Gen1:1-Rev22:21"], check=True,
                         capture_output=True, text=True).stdout
    chapters = {}
    order = []
    for line in txt.splitlines():
        if not line.strip():
            continue
        ref, verse = line.split(" ", 1)
        ch = ref.split(":")[0]
        if ch not in chapters:
            chapters[ch] = []
            order.append(ch)
        chapters[ch].append(verse.strip())
    # words that occur in lower case somewhere in the text: a capitalised first
    # word must be one of them, which keeps out sentences opening with a name
    common = set(re.findall(r"\b[a-z]+\b", txt))
    paragraphs = [" ".join(chapters[ch]) for ch in order]
    return pick_sentences(paragraphs, common, min_words, max_words, seed,
                          rewrite=_kjv_rewrite, exclude=exclude)


AUSTEN_BOOKS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma",
                "northangerabbey", "persuasion"]


def austen_text():
    """Jane Austen's six novels as shipped by Debian's r-cran-janeaustenr (R data vectors,
    one element per line of the Project Gutenberg text), read through Rscript."""
    expr = ("library(janeaustenr); for (b in c(%s)) { cat(get(b), sep='\\n'); cat('\\n\\n') }"
            % ", ".join("'%s'" % b for b in AUSTEN_BOOKS))
    return subprocess.run(["Rscript", "--vanilla", "-e", expr], check=True,
                          capture_output=True, text=True, encoding="utf-8").stdout


def austen_sentences(seed, min_words, max_words, exclude=()):
    """Candidate sentences from Jane Austen's novels, through the same filters as the KJV.
    Paragraphs are the blocks between blank lines. Double quotes and the `_` italics marks
    are removed first, so that dialogue is kept as plain sentences; sentences with a `--`
    dash are dropped."""
    txt = austen_text()
    common = set(re.findall(r"\b[a-z]+\b", txt))
    paragraphs = [b.replace('"', "").replace("_", "") for b in re.split(r"\n\s*\n", txt)]
    return pick_sentences(paragraphs, common, min_words, max_words, seed,
                          rewrite=lambda s: "" if "--" in s else s, exclude=exclude)


def metadata_keys(path, column="transcription"):
    """Sentence keys of a metadata.csv, for keeping corpora disjoint."""
    with open(path, newline="") as f:
        return {sentence_key(r[column]) for r in csv.DictReader(f)}


# --- audio helpers ------------------------------------------------------------------------------
def run(cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def read_wav(path):
    with wave.open(path, "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2, path
        rate = w.getframerate()
        a = array.array("h")
        a.frombytes(w.readframes(w.getnframes()))
    if sys.byteorder == "big":
        a.byteswap()
    return a, rate


def write_wav(path, a, rate):
    b = array.array("h", a)
    if sys.byteorder == "big":
        b.byteswap()
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b.tobytes())


def speech_rms(a, rate):
    """RMS over 20-ms frames within 30 dB of the loudest frame (active speech)."""
    n = rate // 50
    frames = []
    for i in range(0, len(a) - n + 1, n):
        seg = a[i:i + n]
        frames.append(sum(x * x for x in seg) / n)
    if not frames:
        return 0.0
    top = max(frames)
    act = [f for f in frames if f >= top * 1e-3]
    return (sum(act) / len(act)) ** 0.5


def coloured_noise(n, color, rng):
    """n samples of unit-RMS noise: "pink" (Paul Kellet's refined filter, -3 dB/octave) or
    "brown" (leaky integrator, -6 dB/octave above ~16 Hz), from Gaussian white noise."""
    g = rng.gauss
    out = [0.0] * n
    if color == "pink":
        b0 = b1 = b2 = b3 = b4 = b5 = b6 = 0.0
        for i in range(n):
            w = g(0.0, 1.0)
            b0 = 0.99886 * b0 + w * 0.0555179
            b1 = 0.99332 * b1 + w * 0.0750759
            b2 = 0.96900 * b2 + w * 0.1538520
            b3 = 0.86650 * b3 + w * 0.3104856
            b4 = 0.55000 * b4 + w * 0.5329522
            b5 = -0.7616 * b5 - w * 0.0168980
            out[i] = b0 + b1 + b2 + b3 + b4 + b5 + b6 + w * 0.5362
            b6 = w * 0.115926
    elif color == "brown":
        y = 0.0
        for i in range(n):
            y = 0.994 * y + g(0.0, 1.0)
            out[i] = y
    else:
        raise ValueError("unknown noise colour %r" % color)
    # drop the DC offset the filters leave over a short clip, then scale to unit RMS
    mean = sum(out) / n if n else 0.0
    out = [x - mean for x in out]
    rms = (sum(x * x for x in out) / n) ** 0.5 if n else 0.0
    return [x / rms for x in out] if rms > 0 else out


def add_noise(src, dst, snr_db, seed_key, color="white"):
    """Adds noise at `snr_db` below the active-speech RMS. White noise is drawn sample by
    sample exactly as the demo corpus was made; pink and brown noise come from
    `coloured_noise`."""
    a, rate = read_wav(src)
    sigma = speech_rms(a, rate) / (10.0 ** (snr_db / 20.0))
    rng = random.Random(int(hashlib.sha256(seed_key.encode()).hexdigest()[:16], 16))
    if color == "white":
        g = rng.gauss
        out = array.array("h", (max(-32768, min(32767, int(round(x + g(0.0, sigma))))) for x in a))
    else:
        noise = coloured_noise(len(a), color, rng)
        out = array.array("h", (max(-32768, min(32767, int(round(x + sigma * v))))
                                for x, v in zip(a, noise)))
    write_wav(dst, out, rate)


def duration(path):
    with wave.open(path, "rb") as w:
        return w.getnframes() / w.getframerate()


# --- rendering ----------------------------------------------------------------------------------
# A domain spec is a dict:
#   name        domain name; draws are keyed by (name, index, parameter)
#   engine      "espeak" (voices are espeak-ng voice+variant names, with rate (wpm) and
#               pitch (0-99) ranges) or "flite" / "festival" (voices are flite voice names or
#               festival voice names without the voice_ prefix, with sox tempo and pitch
#               (cents) ranges)
#   voices      list; one is drawn per clip
#   condition   "clean", "white_noise" (additive noise, any colour despite the name),
#               "telephone" or "reverb"
# Optional keys, with the demo's settings as defaults:
#   tempo/cents for espeak too (sox tempo and pitch after synthesis; not applied when absent)
#   snr         (lo, hi) dB, for white_noise and telephone
#   noise       "white" (default), "pink" or "brown"
#   band        telephone band-pass, default "300-3400"
#   codec       telephone 8-kHz encoding, "u-law" (default) or "a-law"; or "wideband": a
#               16-kHz (HD voice) call, band-pass and compand only
#   reverb      dict of (lo, hi) ranges: reverberance (35, 70), room (50, 100),
#               predelay (0, 30), and damping (50, 50), wet_gain (0, 0) dB
#   lead/tail   leading/trailing silence range, default (0.05, 0.20) s
#   level       final peak level range, default (-14.0, -6.0) dBFS
DEFAULT_REVERB = dict(reverberance=(35, 70), room=(50, 100), predelay=(0, 30),
                      damping=(50, 50), wet_gain=(0, 0))


def _synth(d, p, text, raw, tmp):
    if d["engine"] == "espeak":
        run(["espeak-ng", "-v", p["voice"], "-s", str(p["rate"]), "-p", str(p["pitch"]),
             "-w", raw, text])
    elif d["engine"] == "flite":
        run(["flite", "-voice", p["voice"], "-t", text, "-o", raw])
    elif d["engine"] == "festival":
        tf = os.path.join(tmp, "text.txt")
        with open(tf, "w") as f:
            f.write(text + "\n")
        run(["text2wave", "-eval", "(voice_%s)" % p["voice"], tf, "-o", raw])
    else:
        raise ValueError("unknown engine %r" % d["engine"])


def render(draws, d, idx, text, tmp):
    """Synthesises one clip into tmp/final.wav; returns (parameters used, path)."""
    name = d["name"]
    p = {"voice": draws.choice(d["voices"], name, idx, "voice")}
    raw = os.path.join(tmp, "raw.wav")
    if d["engine"] == "espeak":
        p["rate"] = draws.randint(*d["rate"], name, idx, "rate")
        p["pitch"] = draws.randint(*d["pitch"], name, idx, "pitch")
    _synth(d, p, text, raw, tmp)
    shape = []
    if d["engine"] != "espeak" or "tempo" in d:
        p["tempo"] = "%.3f" % draws.uniform(*d["tempo"], name, idx, "tempo")
        p["cents"] = "%d" % round(draws.uniform(*d["cents"], name, idx, "cents"))
        shape = ["tempo", "-s", p["tempo"], "pitch", p["cents"]]
    lead = "%.2f" % draws.uniform(*d.get("lead", (0.05, 0.20)), name, idx, "lead")
    tail = "%.2f" % draws.uniform(*d.get("tail", (0.05, 0.20)), name, idx, "tail")
    pre = os.path.join(tmp, "pre.wav")
    run(SOX + [raw, "-b", "16", "-c", "1", pre] + shape +
        ["rate", "-v", str(SR), "pad", lead, tail, "norm", "-3"])
    cur = pre
    cond = d["condition"]
    if cond in ("white_noise", "telephone"):
        p["snr"] = "%.1f" % draws.uniform(*d["snr"], name, idx, "snr")
        color = d.get("noise", "white")
        if color != "white":
            p["noise"] = color
        noisy = os.path.join(tmp, "noisy.wav")
        add_noise(cur, noisy, float(p["snr"]), "%s|%s|%d|noise" % (draws.seed, name, idx), color)
        cur = noisy
    if cond == "telephone":
        band = d.get("band", "300-3400")
        codec = d.get("codec", "u-law")
        if band != "300-3400" or codec != "u-law":
            p["band"], p["codec"] = band, codec
        comp = ["compand", "0.02,0.20", "6:-70,-70,-40,-25,0,-6", "-2", "-70", "0.02"]
        if codec == "wideband":
            # a wideband (HD voice) call: band-limited and companded, no 8-kHz step
            tel = os.path.join(tmp, "telwb.wav")
            run(SOX + [cur, "-b", "16", tel, "sinc", band] + comp)
            cur = tel
        else:
            tel = os.path.join(tmp, "tel8k.wav")
            run(SOX + [cur, "-r", "8000", "-e", codec, "-b", "8", tel, "sinc", band] + comp +
                ["rate", "-v", "8000"])
            up = os.path.join(tmp, "tel16k.wav")
            run(SOX + [tel, "-e", "signed-integer", "-b", "16", up, "rate", "-v", str(SR)])
            cur = up
    elif cond == "reverb":
        r = dict(DEFAULT_REVERB, **d.get("reverb", {}))
        p["reverberance"] = "%d" % draws.randint(*r["reverberance"], name, idx, "reverberance")
        p["room"] = "%d" % draws.randint(*r["room"], name, idx, "room")
        p["predelay"] = "%d" % draws.randint(*r["predelay"], name, idx, "predelay")
        damping, wet = "50", "0"
        if r["damping"] != (50, 50) or r["wet_gain"] != (0, 0):
            damping = p["damping"] = "%d" % draws.randint(*r["damping"], name, idx, "damping")
            wet = p["wet_gain"] = "%d" % draws.randint(*r["wet_gain"], name, idx, "wet_gain")
        rev = os.path.join(tmp, "rev.wav")
        run(SOX + [cur, rev, "pad", "0", "0.30", "reverb", p["reverberance"], damping,
                   p["room"], "100", p["predelay"], wet])
        cur = rev
    elif cond not in ("clean", "white_noise"):
        raise ValueError("unknown condition %r" % cond)
    p["level"] = "%.1f" % draws.uniform(*d.get("level", (-14.0, -6.0)), name, idx, "level")
    final = os.path.join(tmp, "final.wav")
    run(SOX + [cur, "-b", "16", "-c", "1", "-r", str(SR), final, "norm", p["level"]])
    return p, final


def render_fitting(draws, d, idx, pool, pos, tmp, min_s=1.0, max_s=6.0, tag="corpus"):
    """Renders pool[pos], pool[pos+1], ... until a clip lasts min_s-max_s seconds.
    Returns (text, params, wav path, duration, next pos)."""
    while True:
        if pos >= len(pool):
            sys.exit("%s: ran out of sentences for %s" % (tag, d["name"]))
        text = pool[pos]
        pos += 1
        p, final = render(draws, d, idx, text, tmp)
        dur = duration(final)
        if min_s <= dur <= max_s:
            return text, p, final, dur, pos


def write_flac(wav, path):
    """16-bit FLAC at compression level 8."""
    run(SOX + [wav, "-C", "8", path])


def write_metadata(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def describe(p):
    return " ".join("%s=%s" % kv for kv in sorted(p.items()))
