"""Check that pyarrow, polars and duckdb read every artifact schema whisper-moe writes and see
the same values. Run through scripts/check_interop.sh, which writes the samples first."""
import json
import math
import sys
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow.dataset as pads
import pyarrow.parquet as pq

root = Path(sys.argv[1])
expected = json.loads((root / "expected.json").read_text())
meta = expected.pop("_metadata")
failures = []


def same(a, b):
    if isinstance(b, list):
        return isinstance(a, (list, tuple, np.ndarray)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if b is None:
        return a is None or (isinstance(a, float) and math.isnan(a))
    if isinstance(b, float):
        # Our floats are f32: compare after rounding the expectation to f32.
        return a is not None and float(np.float32(a)) == float(np.float32(b))
    return a == b


def check(tool, name, table):
    for col, want in expected[name].items():
        got = table.get(col)
        if got is None:
            failures.append(f"{tool}: {name}.{col} missing")
        elif not same(list(got), want):
            failures.append(f"{tool}: {name}.{col} = {list(got)!r}, expected {want!r}")


for name in expected:
    d = root / name
    glob = str(d / "*.parquet")
    t = pads.dataset(d, format="parquet").to_table()
    check("pyarrow", name, {c: t.column(c).to_pylist() for c in t.column_names})
    kv = pq.read_metadata(next(d.glob("*.parquet"))).metadata
    for k, v in meta.items():
        if kv.get(k.encode()) != v.encode():
            failures.append(f"pyarrow: {name} key-value metadata {k} = {kv.get(k.encode())!r}")
    df = pl.read_parquet(glob)
    check("polars", name, {c: [x.to_list() if isinstance(x, pl.Series) else x for x in df[c].to_list()] for c in df.columns})
    con = duckdb.connect()
    rel = con.sql(f"select * from '{glob}'")
    rows = rel.fetchall()
    check("duckdb", name, {c: [r[i] for r in rows] for i, c in enumerate(rel.columns)})
    kvs = dict(con.sql(f"select decode(key), decode(value) from parquet_kv_metadata('{glob}')").fetchall())
    if kvs.get("checkpoint_hash") != meta["checkpoint_hash"]:
        failures.append(f"duckdb: {name} parquet_kv_metadata lacks checkpoint_hash")
    vec = [c for c in ("embedding", "probs", "load") if c in expected[name]]
    col = vec[0] if vec else list(expected[name])[0]
    print(f"{name}: {len(rows)} rows; column {col}: pyarrow {t.schema.field(col).type}, polars {df.schema[col]}, "
          f"duckdb {rel.types[rel.columns.index(col)]}")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"OK: pyarrow {pq.__name__ and __import__('pyarrow').__version__}, polars {pl.__version__}, duckdb {duckdb.__version__} "
      f"read all {len(expected)} schemas with the same values")
