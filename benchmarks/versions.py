"""What versioned collections cost: commit time, open time and query latency, against the code before them.

For each row count (default 10k and 1M, dim 128, float16 shards of 65,536 rows) and each code version (this
tree, and ``--baseline`` — a commit checked out as a git worktree, default 4dcc114, the last one before
versions), one subprocess running that code:

- builds the collection (synthetic clustered unit vectors, images + 2,000 texts) and its image index
  (Flat at 10k, ``IVF1024,Flat`` tuned to recall 0.95 at 1M);
- ``commit``: appends a 1,000-row text shard and commits it (with versions: a version file + manifest.json;
  before: manifest.json), median of 7 (measured last, after the reads);
- ``open``: ``mmsearch.open(path)`` in the same process (manifest read, lease taken), median of 30;
- ``open+first query``: a fresh open and its first vector search (index load included), median of 5;
- ``query p50``: one-vector searches (k=10) on an open collection, median of 300.

Each collection is built once per code version, then measured in alternating turns (``--repeats``, default 3)
so that both see the same machine load; each number is the median over the turns.
Prints a table (medians and new/old ratios measured in the same run) and writes benchmarks/results/versions.json.
Run: ``python benchmarks/versions.py [--rows 10000 1000000] [--baseline COMMIT]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUILD = r"""
import sys, time
sys.path.insert(0, sys.argv[4])
from synthetic_vectors import add_rows, clustered, text_like
from mmsearch.indexes import IndexOptions, build_index
from mmsearch.store import ModelInfo, Store

out, rows, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = Store.open_or_create(out, ModelInfo("bench:v1", "p", dim), embedding_dtype="float16")
for start in range(0, rows, 65536):
    add_rows(store, "images", clustered(min(65536, rows - start), dim, seed=start), 1)
add_rows(store, "texts", text_like(clustered(2000, dim, seed=99)), 1)
t = time.perf_counter()
build_index(store, "images", IndexOptions(factory="Flat" if rows <= 100_000 else "IVF1024,Flat"))
print(time.perf_counter() - t)
"""

MEASURE = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[4])
from synthetic_vectors import clustered, text_like
import mmsearch
from mmsearch.store import Store

out, rows, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
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
col.search(vector=queries[0], k=10)
lat = []
for q in queries:
    t = time.perf_counter()
    col.search(vector=q, k=10)
    lat.append(time.perf_counter() - t)
del col
store = Store.open(out)
commits = []
for i in range(7):
    vectors = text_like(clustered(1000, dim, seed=1000 + i))
    ids = store.reserve_ids(1000)
    cols = {"id": ids, "text": [f"t{j}" for j in ids], "source": ["s"] * 1000, "key": [str(j) for j in ids],
            "image_id": [None] * 1000}
    t = time.perf_counter()
    store.append("texts", cols, vectors)
    commits.append(time.perf_counter() - t)
med = statistics.median
print(json.dumps({"commit_ms": 1e3 * med(commits), "open_ms": 1e3 * med(opens),
                  "open_first_query_ms": 1e3 * med(firsts), "query_p50_ms": 1e3 * med(lat)}))
"""


def _python(code: Path, script: str, *args: object) -> str:
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script, *map(str, args), str(ROOT / "tests")], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return done.stdout.strip().splitlines()[-1]


def measure(codes: dict[str, Path], work: Path, rows: int, dim: int, repeats: int) -> list[dict[str, float]]:
    """Build one collection per code version, then measure them in turns (before, versions, before, ...), so
    both see the same machine load; the medians over the turns."""
    built = {}
    for name, code in codes.items():
        out = work / f"{name}-{rows}.mms"
        built[name] = float(_python(code, BUILD, out, rows, dim))
        print(f"  {rows:>9,} rows  {name:<9} built", file=sys.stderr)
    turns: dict[str, list[dict[str, float]]] = {name: [] for name in codes}
    for turn in range(repeats):
        for name, code in codes.items():
            turns[name].append(json.loads(_python(code, MEASURE, work / f"{name}-{rows}.mms", rows, dim)))
        print(f"  {rows:>9,} rows  turn {turn + 1}/{repeats}", file=sys.stderr)
    for name in codes:
        shutil.rmtree(work / f"{name}-{rows}.mms", ignore_errors=True)
    return [{"rows": rows, "code": name, "build_s": built[name], "turns": repeats,
             **{m: statistics.median(t[m] for t in turns[name]) for m in turns[name][0]}} for name in codes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--baseline", default="4dcc114", help="the commit to compare with (before versions)")
    parser.add_argument("--repeats", type=int, default=3, help="measuring turns per code version, alternating")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "versions.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mms-versions-"))
    baseline = work / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline],
                   check=True, capture_output=True)
    results = []
    try:
        for rows in args.rows:
            results += measure({"before": baseline, "versions": ROOT}, work, rows, args.dim, args.repeats)
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
