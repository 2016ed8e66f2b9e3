#!/usr/bin/env python3
"""scikit-learn's KMeans on the data and configuration of benches/kmeans.rs.

Run the Rust bench first (it writes the data as float32 .npy):
    cargo bench --bench kmeans
    python3 scripts/bench_kmeans_sklearn.py [$TMPDIR/whisper-moe-kmeans-100000x384.npy]

Configuration, as in the Rust bench: k = 8, k-means++ seeding, n_init 3, max_iter 50,
tol 0 (stop only when the labels no longer change), algorithm "lloyd", float32 data.
Installs scikit-learn with pip when it is missing.
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
import time

if importlib.util.find_spec("sklearn") is None:
    print("installing scikit-learn with pip", file=sys.stderr)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", "scikit-learn"])

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from sklearn.cluster import KMeans  # noqa: E402

K, N_INIT, MAX_ITER = 8, 3, 50


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(), "whisper-moe-kmeans-100000x384.npy")
    if not os.path.exists(path):
        sys.exit(f"{path} does not exist: run `cargo bench --bench kmeans` first (it writes the data)")
    x = np.load(path)
    threads = os.environ.get("OMP_NUM_THREADS", str(os.cpu_count()))
    print(f"scikit-learn {sklearn.__version__}, numpy {np.__version__}: k-means on {x.shape[0]} x {x.shape[1]} "
          f"{x.dtype}, k = {K}, n_init {N_INIT}, max_iter {MAX_ITER}, {threads} threads")
    km = KMeans(n_clusters=K, init="k-means++", n_init=N_INIT, max_iter=MAX_ITER, tol=0.0,
                algorithm="lloyd", random_state=0)
    start = time.perf_counter()
    km.fit(x)
    secs = time.perf_counter() - start
    # inertia_ is the sum of squared distances; the Rust bench prints the mean.
    print(f"sklearn: {secs:8.2f} s   inertia (mean squared distance) {km.inertia_ / x.shape[0]:.4f}   "
          f"iterations of the best run {km.n_iter_}")
    # scikit-learn reports only the best run's iterations; single-init fits with three seeds
    # show how many a run typically takes (for a per-iteration comparison).
    iters, start = [], time.perf_counter()
    for seed in range(N_INIT):
        iters.append(KMeans(n_clusters=K, init="k-means++", n_init=1, max_iter=MAX_ITER, tol=0.0,
                            algorithm="lloyd", random_state=seed).fit(x).n_iter_)
    secs = time.perf_counter() - start
    print(f"sklearn, {N_INIT} single-init fits: {secs:.2f} s, iterations {iters} "
          f"({secs / sum(iters) * 1000:.0f} ms per iteration including seeding)")


if __name__ == "__main__":
    main()
