#!/usr/bin/env python3
"""Reference values for src/eval: jiwer's WER/CER and OpenAI Whisper's text normalisers.

Writes
  tests/data/jiwer_pairs.json       reference/hypothesis pairs with jiwer's counts and rates,
                                    on the raw strings and after Whisper's BasicTextNormalizer
  tests/data/normalizer_cases.json  texts with Whisper's Basic and English normaliser outputs

tests/jiwer_reference.rs checks our Rust code against both. Run from the repository root:
    python3 scripts/jiwer_reference.py
It pip-installs jiwer (Apache-2.0) and the normalisers' dependencies (regex, more-itertools) if
missing, and takes whisper/normalizers/*.py from the openai-whisper sdist (MIT) with
`pip download --no-deps` (importing the installed `whisper` package would pull in torch).

"raw" values are jiwer's defaults on the strings as given (words split on spaces after
collapsing whitespace runs, characters of the stripped string). "basic" values are jiwer's
defaults on BasicTextNormalizer(s).strip() of both strings: what `Normalizer::Basic` + our
scoring computes.
"""

import importlib
import json
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

JIWER = "jiwer==4.0.0"
WHISPER = "openai-whisper==20250625"
ROOT = Path(__file__).resolve().parent.parent


def ensure(module, requirement):
    try:
        return importlib.import_module(module)
    except ImportError:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", requirement])
        return importlib.import_module(module)


jiwer = ensure("jiwer", JIWER)
ensure("regex", "regex")
ensure("more_itertools", "more-itertools")


def whisper_normalizers():
    tmp = Path(tempfile.mkdtemp())
    subprocess.check_call(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", WHISPER, "-d", tmp]
    )
    sdist = next(tmp.glob("openai_whisper-*.tar.gz"))
    pkg = tmp / "whisper_normalizers_ref"
    pkg.mkdir()
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            if "/whisper/normalizers/" in m.name and m.isfile():
                (pkg / Path(m.name).name).write_bytes(tar.extractfile(m).read())
    sys.path.insert(0, str(tmp))
    mod = importlib.import_module("whisper_normalizers_ref")
    return mod.BasicTextNormalizer(), mod.EnglishTextNormalizer()


basic, english = whisper_normalizers()

PAIRS = [
    ("", ""),
    ("", "hello"),
    ("", "hello world again"),
    ("hello world", ""),
    ("hello", "hello"),
    ("Hello, World!", "hello world"),
    ("the cat sat on the mat", "the cat sit on mat now"),
    ("a b", "b c"),
    ("x a x", "x"),
    ("one two three", "one two three four"),
    ("one two three", "zero one two three"),
    ("one two three", "four five six"),
    ("the the the", "the"),
    ("the", "the the the"),
    ("a a b b", "b b a a"),
    ("I can't believe it's not butter.", "I cant believe its not butter"),
    ("Don't stop me now", "dont stop me now"),
    ("  multiple   spaces here ", "multiple spaces  here"),
    ("Café au lait", "cafe au lait"),
    ("naïve résumé", "naive resume"),
    ("東京 は 大きい", "東京 は 小さい"),
    ("Привет мир", "привет, мир!"),
    ("straße", "strasse"),
    ("He paid $20.50 for 3 books.", "he paid twenty dollars fifty for three books"),
    ("In 1999, there were 1,000 people.", "in nineteen ninety nine there were one thousand people"),
    ("[noise] hello (laughs) world", "hello world"),
    ("<unk> yes", "yes"),
    ("Mr. Smith went to Washington", "mister smith went to washington"),
    ("colour favourite organise", "color favorite organize"),
    ("the quick brown fox jumps over the lazy dog", "the quick brown dog jumps over the lazy fox"),
    ("a b c d e f g", "a c e g"),
    ("a c e g", "a b c d e f g"),
    ("to be or not to be", "to be or not to be that is the question"),
    ("that is the question", "to be or not to be that is the question"),
    ("abc", "abd"),
    ("hello.", "hello"),
    ("...", ""),
    ("?!", "what"),
    ("word", "  "),
    ("  ", "word"),
    ("e-mail address", "email address"),
    ("rock 'n' roll", "rock and roll"),
    ("O'Neil's car", "oneils car"),
    ("50% off", "fifty percent off"),
    ("C++ and C#", "c plus plus and c sharp"),
    ("ÉCOLE", "école"),
    ("I love 🍕 pizza", "i love pizza"),
    ("line one\n\nline two", "line one line two"),
    ("twenty one", "21"),
    ("2 + 2 = 4", "two plus two equals four"),
    ("ａｂｃ", "abc"),
    ("ﬁne", "fine"),
    ("repeated repeated repeated words", "repeated words"),
    ("the end", "the end the end"),
    ("start here", "start start here"),
    ("alpha beta gamma delta", "beta gamma delta epsilon"),
    ("z", "y"),
    ("same same", "same same"),
    ("hmm uh I think so", "I think so"),
    ("it's 5 o'clock", "its five oclock"),
    ("New York's 3rd avenue", "new yorks third avenue"),
    ("cafe\u0301", "café"),
    ("Ελληνικά κείμενο", "ελληνικα κειμενο"),
    (
        "speech recognition systems are usually evaluated with the word error rate on held out test sets",
        "speech recognition system is usually evaluated with word error rates on a held-out test set",
    ),
]

# Long pairs: more than 64 words and characters, where rapidfuzz leaves its single-word
# bit-parallel path.
rng = random.Random(8)
VOCAB = "the a of and to in is it that was he for on are with as his they be at one have this".split()
for n_words in (70, 130):
    ref = [rng.choice(VOCAB) for _ in range(n_words)]
    hyp = list(ref)
    for _ in range(n_words // 5):
        op = rng.randrange(3)
        if op == 0 and hyp:
            hyp[rng.randrange(len(hyp))] = rng.choice(VOCAB)
        elif op == 1:
            hyp.insert(rng.randrange(len(hyp) + 1), rng.choice(VOCAB))
        elif hyp:
            del hyp[rng.randrange(len(hyp))]
    PAIRS.append((" ".join(ref), " ".join(hyp)))

# Short random pairs over a tiny vocabulary: many equally short alignments, where the choice
# between substitutions and insertion+deletion shows.
for _ in range(12):
    ref = [rng.choice("abc") for _ in range(rng.randrange(1, 9))]
    hyp = [rng.choice("abc") for _ in range(rng.randrange(0, 9))]
    PAIRS.append((" ".join(ref), " ".join(hyp)))

ENGLISH_ONLY = [
    "I've got one hundred and five colours",
    "It's fifty per cent, um, OK?",
    "the nineteen sixties",
    "twenty-one dollars and fifty cents",
    "one oh one",
    "double seven triple zero",
    "three point one four",
    "two and a half million",
    "minus five degrees",
    "he's been there and she'd gone home",
    "I'd done it",
    "$3.50 and £2",
    "ten thousand dollars",
    "the twenty first century",
    "one million two hundred thousand",
    "first second third fourth fifth twelfth ninth nineth",
    "hundreds of thousands",
    "1,234,567 people",
    "Mrs. Jones and Dr. Who",
    "y'all gonna wanna",
    "version 2.0.1",
    "one nine two point one six eight point zero point one",
    "five dollars and twenty five cents",
    "$0.50",
    "it costs 5 dollars",
    "1s and 2s, 1 and 2",
    "plus or minus",
    "the analogue programme centre",
    "Ms. O'Brien's naïve façade",
    "he said: «bonjour»",
    "one",
    "ones",
    "o",
    "zero",
    "a hundred and a thousand",
    "nine hundred ninety nine thousand nine hundred ninety nine",
    "1960s, the 90s, 32nd street",
    "twenty twenty two",
    "nineteen oh five",
    "one two three four five",
    "point five",
    "eleven hundred",
    "two thousand and twenty",
    "forty second",
    "sixty percent",
    "per se",
    "three cents",
    "negative point five",
    "a 5k run",
    "7 eleven",
    "number 10 and eleven",
    "hmm, mhm, mm-hmm",
    "the u.s.a. and u.k.",
    "what's up, doc?",
    "Let's go! Ain't nobody",
    "I'ma gonna",
    "123456789012345678901234567890 million",
    "twenty decillion",
    "sixes and sevens",
    "the seventies and eighties",
    "two hundredths",
    "three millionth",
    "1.5 million",
    "point 5 million",
    "zero zero seven",
    "double o seven",
    "0 hundred",
    "$5 and 7¢",
    "twelve and a half",
    "rock and a half",
    "we'll they're you've I'm won't can't",
    "Dr. St. James, Jr.",
    "¿Dónde está? Ça va.",
    "Æsir Œuvre Ørsted Łódź þorn",
    "mr.smith",
    "3rd 4th",
    "the year 2000 was y2k",
]


def stats(out, rate):
    return {
        "rate": float(rate),
        "substitutions": out.substitutions,
        "deletions": out.deletions,
        "insertions": out.insertions,
        "hits": out.hits,
    }


def measure(refs, hyps):
    w = jiwer.process_words(refs, hyps)
    c = jiwer.process_characters(refs, hyps)
    return {"words": stats(w, w.wer), "chars": stats(c, c.cer)}


def norm(s):
    return basic(s).strip()


def main():
    pairs = []
    for i, (r, h) in enumerate(PAIRS):
        # our word splitting (any whitespace) must agree with jiwer's for the raw values to apply
        for s in (r, h):
            assert jiwer.wer_default(s) == [s.split()], f"jiwer splits {s!r} differently"
        nr, nh = norm(r), norm(h)
        pairs.append(
            {
                "reference": r,
                "hypothesis": h,
                "group": f"g{i % 3}",
                "raw": measure(r, h),
                "basic": {"reference": nr, "hypothesis": nh, **measure(nr, nh)},
            }
        )
    corpus = {
        "raw": measure([p[0] for p in PAIRS], [p[1] for p in PAIRS]),
        "basic": measure([norm(p[0]) for p in PAIRS], [norm(p[1]) for p in PAIRS]),
    }
    groups = {}
    for g in sorted({p["group"] for p in pairs}):
        sel = [p for p in pairs if p["group"] == g]
        groups[g] = measure([p["basic"]["reference"] for p in sel], [p["basic"]["hypothesis"] for p in sel])
    out = {
        "generator": f"scripts/jiwer_reference.py with {JIWER}, normaliser from {WHISPER}",
        "pairs": pairs,
        "corpus": corpus,
        "groups_basic": groups,
    }
    data = ROOT / "tests" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "jiwer_pairs.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")

    texts = list(dict.fromkeys([t for p in PAIRS for t in p] + ENGLISH_ONLY))
    cases = [{"text": t, "basic": basic(t).strip(), "english": english(t).strip()} for t in texts]
    (data / "normalizer_cases.json").write_text(
        json.dumps({"generator": f"scripts/jiwer_reference.py with {WHISPER}", "cases": cases}, ensure_ascii=False, indent=1)
        + "\n"
    )
    print(f"{len(pairs)} pairs, {len(cases)} normaliser cases written to {data}")


if __name__ == "__main__":
    main()
