"""Recompute evaluate's paired bootstrap comparisons with numpy, independently of the Rust code.

usage: scripts/check_bootstrap.py EVALUATE_DIR   (e.g. artifacts/evaluate)
Python: the environment of scripts/pyenv.sh (pyarrow, numpy). Reads predictions/ (per-utterance
edit counts) and metrics.json; for every comparison over a whole set, draws the utterances with
replacement 20,000 times and prints numpy's 95% interval and share of draws A is better beside
the pipeline's. The two use different random draws: they agree to Monte-Carlo error (a few
hundredths of a point), and the script fails if an interval end is further off than 0.5 points.
"""
import json
import sys

import numpy as np
import pyarrow.parquet as pq

out = sys.argv[1]
rows = pq.read_table(f"{out}/predictions").to_pylist()
metrics = json.load(open(f"{out}/metrics.json"))
errors = {}
for r in rows:
    errors.setdefault((r["system"], r["split"]), {})[r["id"]] = (
        r["substitutions"] + r["insertions"] + r["deletions"],
        r["words"],
    )
rng = np.random.default_rng(1)
bad = 0
for c in metrics["comparisons"]:
    if c["group"] is not None:
        continue
    a, b = errors[(c["a"], c["split"])], errors[(c["b"], c["split"])]
    ids = sorted(a)
    ea = np.array([a[i][0] for i in ids])
    eb = np.array([b[i][0] for i in ids])
    w = np.array([a[i][1] for i in ids])
    d = []
    for _ in range(20):  # 20 x 1,000 draws: memory stays small on large sets
        draws = rng.integers(0, len(ids), (1000, len(ids)))
        words = np.maximum(w[draws].sum(1), 1)
        d.append(ea[draws].sum(1) / words - eb[draws].sum(1) / words)
    d = np.concatenate(d)
    tail = (1 - c["confidence"]) / 2
    lo, hi = np.quantile(d, [tail, 1 - tail])
    win = (d < 0).mean() + 0.5 * (d == 0).mean()
    off = max(abs(lo - c["low"]), abs(hi - c["high"]))
    bad += off > 0.005
    print(
        f"{c['a']} - {c['b']:<7} {c['split']:<8} numpy [{100 * lo:+.2f}, {100 * hi:+.2f}] A better {win:.3f}"
        f" | pipeline [{100 * c['low']:+.2f}, {100 * c['high']:+.2f}] {c['a_better']:.3f}"
    )
sys.exit(1 if bad else 0)
