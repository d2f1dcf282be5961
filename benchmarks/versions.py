"""What versioned collections cost: commit time, open time and query latency, against the code before them.

For each row count (default 10k and 1M, dim 128, float16 shards of 65,536 rows) and each code version (this
tree, and ``--baseline`` — a commit checked out as a git worktree, default 4dcc114, the last one before
versions), one subprocess running that code:

- builds the collection (synthetic clustered unit vectors, images + 2,000 texts) and its image index
  (Flat at 10k, ``IVF1024,Flat`` tuned to recall 0.95 at 1M);
- ``commit``: appends a 1,000-row text shard and commits it (with versions: a version file + manifest.json;
  before: manifest.json), median of 7;
- ``open``: ``mmsearch.open(path)`` in the same process (manifest read, lease taken), median of 30;
- ``open+first query``: a fresh open and its first vector search (index load included), median of 5;
- ``query p50``: one-vector searches (k=10) on an open collection, median of 300.

Prints a table (medians and new/old ratios measured in the same run) and writes benchmarks/results/versions.json.
Run: ``python benchmarks/versions.py [--rows 10000 1000000] [--baseline COMMIT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JOB = r"""
import json, statistics, sys, time
import numpy as np
sys.path.insert(0, sys.argv[4])
from synthetic_vectors import add_rows, clustered, text_like
import mmsearch
from mmsearch.indexes import IndexOptions, build_index
from mmsearch.store import ModelInfo, Store

out, rows, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = Store.open_or_create(out, ModelInfo("bench:v1", "p", dim), embedding_dtype="float16")
for start in range(0, rows, 65536):
    add_rows(store, "images", clustered(min(65536, rows - start), dim, seed=start), 1)
add_rows(store, "texts", text_like(clustered(2000, dim, seed=99)), 1)
t = time.perf_counter()
build_index(store, "images", IndexOptions(factory="Flat" if rows <= 100_000 else "IVF1024,Flat"))
build_s = time.perf_counter() - t
commits = []
for i in range(7):
    vectors = text_like(clustered(1000, dim, seed=1000 + i))
    ids = store.reserve_ids(1000)
    cols = {"id": ids, "text": [f"t{j}" for j in ids], "source": ["s"] * 1000, "key": [str(j) for j in ids],
            "image_id": [None] * 1000}
    t = time.perf_counter()
    store.append("texts", cols, vectors)
    commits.append(time.perf_counter() - t)
close = getattr(store, "close", None)
if close:
    close()
opens = []
for _ in range(30):
    t = time.perf_counter()
    col = mmsearch.open(out)
    opens.append(time.perf_counter() - t)
queries = text_like(clustered(300, dim, seed=7), seed=8)
firsts = []
for i in range(5):
    t = time.perf_counter()
    col = mmsearch.open(out)
    col.search(vector=queries[i], k=10)
    firsts.append(time.perf_counter() - t)
col = mmsearch.open(out)
col.search(vector=queries[0], k=10)
lat = []
for q in queries:
    t = time.perf_counter()
    col.search(vector=q, k=10)
    lat.append(time.perf_counter() - t)
med = statistics.median
print(json.dumps({"build_s": build_s, "commit_ms": 1e3 * med(commits), "open_ms": 1e3 * med(opens),
                  "open_first_query_ms": 1e3 * med(firsts), "query_p50_ms": 1e3 * med(lat)}))
"""


def run_job(code: Path, work: Path, rows: int, dim: int) -> dict[str, float]:
    out = work / f"c-{rows}.mms"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", JOB, str(out), str(rows), str(dim), str(ROOT / "tests")],
                          env=env, capture_output=True, text=True, cwd=work)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--baseline", default="4dcc114", help="the commit to compare with (before versions)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "versions.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mms-versions-"))
    baseline = work / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline],
                   check=True, capture_output=True)
    results = []
    try:
        for rows in args.rows:
            for name, code in (("before", baseline), ("versions", ROOT)):
                started = time.perf_counter()
                r = run_job(code, work, rows, args.dim)
                results.append({"rows": rows, "code": name, **r, "job_s": time.perf_counter() - started})
                print(f"  {rows:>9,} rows  {name:<9} done in {results[-1]['job_s']:.0f} s", file=sys.stderr)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    metrics = ["commit_ms", "open_ms", "open_first_query_ms", "query_p50_ms"]
    print(f"{'rows':>9}  {'code':<9}" + "".join(f"{m:>21}" for m in metrics))
    for r in results:
        print(f"{r['rows']:>9,}  {r['code']:<9}" + "".join(f"{r[m]:>21.3f}" for m in metrics))
    for rows in args.rows:
        old = next(r for r in results if r["rows"] == rows and r["code"] == "before")
        new = next(r for r in results if r["rows"] == rows and r["code"] == "versions")
        print(f"{rows:>9,}  {'ratio':<9}" + "".join(f"{new[m] / old[m]:>20.2f}x" for m in metrics))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"dim": args.dim, "baseline": args.baseline, "python": sys.version.split()[0],
                                    "statistic": "median", "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
