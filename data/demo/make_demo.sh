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
# See README.md beside this script.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=${1:-$HERE}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- Debian packages -------------------------------------------------------
PKGS=(espeak-ng flite festival festvox-kallpc16k sox libsox-fmt-base flac
      bible-kjv bible-kjv-text)
missing=()
for p in "${PKGS[@]}"; do
  status=$(dpkg-query -W -f '${Status}' "$p" 2>/dev/null || true)
  [[ $status == *"ok installed"* ]] || missing+=("$p")
done
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
  echo "make_demo: installing ${missing[*]}" >&2
  SUDO=
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

for p in espeak-ng flite festival festvox-kallpc16k sox libsox-fmt-base flac bible-kjv-text; do
  dpkg-query -W -f 'make_demo: using ${Package} ${Version}\n' "$p" >&2
done

export LC_ALL=C
export TZ=UTC

python3 - "$OUT" <<'PY'
import array
import csv
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import wave

OUT = sys.argv[1]
SEED = "whisper-moe-demo-v1"
CLIPS_PER_DOMAIN = int(os.environ.get("DEMO_CLIPS_PER_DOMAIN", "45"))  # override only for quick tests
TEST_FROM = 36          # indices >= TEST_FROM get split_hint "test" (36 train, 9 test)
MIN_S, MAX_S = 1.0, 6.0
MIN_WORDS, MAX_WORDS = 6, 10   # up to 14 would be allowed; 10 keeps the set under 14 MB
SR = 16000

# --- seeded draws, keyed by (domain, index, parameter) ---------------------
def u01(*key):
    h = hashlib.sha256("|".join([SEED] + [str(k) for k in key]).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64

def uniform(lo, hi, *key):
    return lo + (hi - lo) * u01(*key)

def randint(lo, hi, *key):          # inclusive
    return lo + min(int(u01(*key) * (hi - lo + 1)), hi - lo)

def choice(seq, *key):
    return seq[min(int(u01(*key) * len(seq)), len(seq) - 1)]

# --- sentences ---------------------------------------------------------------
ARCHAIC = set("""thee thou thy thine ye hath doth saith shalt wilt hast dost art
didst wast canst spake""".split())
OK_EST = set("""best rest west east least priest nest feast beast breast chest
guest honest forest harvest midst interest request test lest""".split())
ALLOWED_CAPS = {"I", "O", "God", "God's", "Lord", "Lord's"}

def sentences():
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
    out, seen = [], set()
    for ch in order:
        text = re.sub(r"\s+", " ", " ".join(chapters[ch]))
        for s in re.split(r"(?<=[.?!])\s+(?=[A-Z])", text):
            s = s.strip()
            s = re.sub(r"\bLORD\b", "Lord", s)
            s = re.sub(r"\bGOD\b", "God", s)
            if not re.fullmatch(r"[A-Z][A-Za-z ,.;:?!'-]*[.?!]", s):
                continue                       # odd characters, digits, brackets
            words = s.split()
            if not MIN_WORDS <= len(words) <= MAX_WORDS:
                continue
            bare = [re.sub(r"[^A-Za-z']", "", w).strip("'") for w in words]
            if any(sum(c.isupper() for c in b) > 1 for b in bare):
                continue                       # remaining all-caps words
            if any(b[:1].isupper() and b not in ALLOWED_CAPS for b in bare[1:]):
                continue                       # proper names, mid-sentence capitals
            if bare[0] not in ALLOWED_CAPS and bare[0].lower() not in common:
                continue                       # opens with a proper name
            low = [b.lower() for b in bare]
            if any(b in ARCHAIC for b in low):
                continue
            if any(b.endswith("eth") and b != "teeth" for b in low):
                continue                       # archaic verb forms (-eth)
            if any(b.endswith("est") and b not in OK_EST for b in low):
                continue                       # archaic verb forms (-est)
            key = " ".join(re.sub(r"[^a-z ]", "", s.lower()).split())
            if key in seen:
                continue
            seen.add(key)
            out.append(s)
    out.sort(key=lambda s: hashlib.sha256((SEED + "|sentence|" + s).encode()).hexdigest())
    return out

# --- audio helpers -------------------------------------------------------------
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

def add_white_noise(src, dst, snr_db, seed_key):
    a, rate = read_wav(src)
    sigma = speech_rms(a, rate) / (10.0 ** (snr_db / 20.0))
    rng = random.Random(int(hashlib.sha256(seed_key.encode()).hexdigest()[:16], 16))
    g = rng.gauss
    out = array.array("h", (max(-32768, min(32767, int(round(x + g(0.0, sigma))))) for x in a))
    write_wav(dst, out, rate)

def duration(path):
    with wave.open(path, "rb") as w:
        return w.getnframes() / w.getframerate()

SOX = ["sox", "-R", "-D", "-V1"]

# --- domains ---------------------------------------------------------------------
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

def render(d, idx, text, tmp):
    """Synthesises one clip into tmp/final.wav; returns the parameters used."""
    name = d["name"]
    p = {"voice": choice(d["voices"], name, idx, "voice")}
    raw = os.path.join(tmp, "raw.wav")
    if d["engine"] == "espeak":
        p["rate"] = randint(*d["rate"], name, idx, "rate")
        p["pitch"] = randint(*d["pitch"], name, idx, "pitch")
        run(["espeak-ng", "-v", p["voice"], "-s", str(p["rate"]), "-p", str(p["pitch"]),
             "-w", raw, text])
        shape = []
    else:
        if d["engine"] == "flite":
            run(["flite", "-voice", p["voice"], "-t", text, "-o", raw])
        else:
            tf = os.path.join(tmp, "text.txt")
            with open(tf, "w") as f:
                f.write(text + "\n")
            run(["text2wave", "-eval", "(voice_%s)" % p["voice"], tf, "-o", raw])
        p["tempo"] = "%.3f" % uniform(*d["tempo"], name, idx, "tempo")
        p["cents"] = "%d" % round(uniform(*d["cents"], name, idx, "cents"))
        shape = ["tempo", "-s", p["tempo"], "pitch", p["cents"]]
    lead = "%.2f" % uniform(0.05, 0.20, name, idx, "lead")
    tail = "%.2f" % uniform(0.05, 0.20, name, idx, "tail")
    pre = os.path.join(tmp, "pre.wav")
    run(SOX + [raw, "-b", "16", "-c", "1", pre] + shape +
        ["rate", "-v", str(SR), "pad", lead, tail, "norm", "-3"])
    cur = pre
    cond = d["condition"]
    if cond in ("white_noise", "telephone"):
        p["snr"] = "%.1f" % uniform(*d["snr"], name, idx, "snr")
        noisy = os.path.join(tmp, "noisy.wav")
        add_white_noise(cur, noisy, float(p["snr"]), "%s|%s|%d|noise" % (SEED, name, idx))
        cur = noisy
    if cond == "telephone":
        tel = os.path.join(tmp, "tel8k.wav")
        run(SOX + [cur, "-r", "8000", "-e", "u-law", "-b", "8", tel,
                   "sinc", "300-3400",
                   "compand", "0.02,0.20", "6:-70,-70,-40,-25,0,-6", "-2", "-70", "0.02",
                   "rate", "-v", "8000"])
        up = os.path.join(tmp, "tel16k.wav")
        run(SOX + [tel, "-e", "signed-integer", "-b", "16", up, "rate", "-v", str(SR)])
        cur = up
    elif cond == "reverb":
        p["reverberance"] = "%d" % randint(35, 70, name, idx, "reverberance")
        p["room"] = "%d" % randint(50, 100, name, idx, "room")
        p["predelay"] = "%d" % randint(0, 30, name, idx, "predelay")
        rev = os.path.join(tmp, "rev.wav")
        run(SOX + [cur, rev, "pad", "0", "0.30", "reverb", p["reverberance"], "50",
                   p["room"], "100", p["predelay"], "0"])
        cur = rev
    p["level"] = "%.1f" % uniform(-14.0, -6.0, name, idx, "level")
    final = os.path.join(tmp, "final.wav")
    run(SOX + [cur, "-b", "16", "-c", "1", "-r", str(SR), final, "norm", p["level"]])
    return p, final

def main():
    pool = sentences()
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
                while True:
                    if pos >= len(mine):
                        sys.exit("make_demo: ran out of sentences for %s" % name)
                    text = mine[pos]
                    pos += 1
                    p, final = render(d, idx, text, tmp)
                    dur = duration(final)
                    if MIN_S <= dur <= MAX_S:
                        break
                cid = "%s_%03d" % (name, idx)
                rel = "audio/%s/%s.flac" % (name, cid)
                run(SOX + [final, "-C", "8", os.path.join(OUT, rel)])
                split = "train" if idx < TEST_FROM else "test"
                rows.append((rel, text, name, split))
                print("make_demo: %s %.2fs %s" % (rel, dur,
                      " ".join("%s=%s" % kv for kv in sorted(p.items()))), file=sys.stderr)
    finally:
        shutil.rmtree(tmp)
    with open(os.path.join(OUT, "metadata.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file_name", "transcription", "domain", "split_hint"])
        w.writerows(rows)
    print("make_demo: wrote %d clips to %s" % (len(rows), OUT), file=sys.stderr)

main()
PY
