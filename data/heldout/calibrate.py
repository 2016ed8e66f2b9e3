#!/usr/bin/env python3
"""Base word error rate of a Whisper checkpoint on one or more audiofolder corpora.

    python data/heldout/calibrate.py CHECKPOINT METADATA.csv [METADATA.csv ...]
        [--by domain,voice_group] [--domains a,b] [--batch 16] [--hyps out.tsv]

An independent reference (transformers, not the project's Rust code) for how hard each
group of a synthetic corpus is. CHECKPOINT is a Hugging Face Whisper directory (for example
shared/models/whisper-tiny.en). Decoding is greedy (`num_beams=1, do_sample=False`), without
timestamps, at most 64 new tokens, with the suppress and begin-suppress tokens of the
checkpoint's generation_config.json; the model runs in float32 on the CPU. References and
hypotheses are lower-cased, hyphens become spaces, apostrophes are dropped and all other
punctuation is stripped before scoring; numbers are not normalised.

The table groups rows by the --by columns (default: domain, plus voice_group where the
metadata has it) and prints WER, clips, reference words, and the number of hypotheses that
hit the token cap (a sign of Whisper looping). Needs torch, transformers, jiwer and numpy
(e.g. a venv with `pip install torch transformers jiwer`) and sox to decode the audio.
"""
import argparse
import collections
import csv
import os
import re
import subprocess
import sys
import time


def normalise(s):
    s = s.lower().replace("-", " ").replace("'", "").replace("\u2019", "")
    s = re.sub(r"[^a-z0-9 ]", " ", s)
    return " ".join(s.split())


def load_audio(path, sr=16000):
    import numpy as np
    raw = subprocess.run(["sox", "-D", "-V1", path, "-t", "raw", "-r", str(sr), "-c", "1",
                          "-e", "signed-integer", "-b", "16", "-"],
                         check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("metadata", nargs="+")
    ap.add_argument("--by", default=None, help="comma-separated grouping columns")
    ap.add_argument("--domains", default=None, help="only these domains (comma-separated)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--hyps", default=None, help="write file, group, reference, hypothesis here")
    args = ap.parse_args()

    import jiwer
    import transformers
    transformers.logging.set_verbosity_error()
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    if args.threads:
        torch.set_num_threads(args.threads)
    proc = WhisperProcessor.from_pretrained(args.checkpoint)
    model = WhisperForConditionalGeneration.from_pretrained(args.checkpoint, torch_dtype=torch.float32)
    model.eval()
    gen = model.generation_config

    rows = []
    for meta in args.metadata:
        base = os.path.dirname(os.path.abspath(meta))
        with open(meta, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames
            by = args.by.split(",") if args.by else (
                ["domain", "voice_group"] if "voice_group" in cols else ["domain"])
            for r in reader:
                if args.domains and r["domain"] not in args.domains.split(","):
                    continue
                r["_path"] = os.path.normpath(os.path.join(base, r["file_name"]))
                r["_group"] = tuple(r.get(c, "") for c in by)
                rows.append(r)
    if not rows:
        sys.exit("calibrate: no rows")

    t0 = time.time()
    hyps, capped = [], []
    for i in range(0, len(rows), args.batch):
        chunk = rows[i:i + args.batch]
        audio = [load_audio(r["_path"]) for r in chunk]
        feats = proc.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            out = model.generate(feats, num_beams=1, do_sample=False,
                                 max_new_tokens=args.max_new_tokens, return_timestamps=False,
                                 suppress_tokens=gen.suppress_tokens,
                                 begin_suppress_tokens=gen.begin_suppress_tokens)
        seqs = out.sequences if hasattr(out, "sequences") else out
        for s in seqs:
            special = set(proc.tokenizer.all_special_ids)
            n_new = sum(1 for t in s.tolist() if t not in special)
            capped.append(n_new >= args.max_new_tokens)
        hyps += proc.tokenizer.batch_decode(seqs, skip_special_tokens=True)
    dt = time.time() - t0

    groups = collections.OrderedDict()
    for r, h, c in zip(rows, hyps, capped):
        g = groups.setdefault(r["_group"], dict(refs=[], hyps=[], capped=0))
        g["refs"].append(normalise(r["transcription"]))
        g["hyps"].append(normalise(h))
        g["capped"] += c
    width = max(len(" / ".join(k)) for k in groups) + 2
    print("%-*s %7s %6s %6s %7s" % (width, "group", "WER", "clips", "words", "capped"))
    all_r, all_h = [], []
    for k, g in groups.items():
        w = jiwer.wer(g["refs"], g["hyps"])
        nw = sum(len(x.split()) for x in g["refs"])
        print("%-*s %6.1f%% %6d %6d %7d" % (width, " / ".join(k), 100 * w, len(g["refs"]), nw,
                                            g["capped"]))
        all_r += g["refs"]
        all_h += g["hyps"]
    print("%-*s %6.1f%% %6d %6d %7d" % (width, "all", 100 * jiwer.wer(all_r, all_h), len(all_r),
                                        sum(len(x.split()) for x in all_r), sum(capped)))
    print("calibrate: %d clips in %.1f s (%s)" % (len(rows), dt, args.checkpoint), file=sys.stderr)
    if args.hyps:
        with open(args.hyps, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["file", "group", "reference", "hypothesis"])
            for r, h in zip(rows, hyps):
                w.writerow([r["_path"], " / ".join(r["_group"]), r["transcription"], h])


if __name__ == "__main__":
    main()
