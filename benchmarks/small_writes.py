"""Many small writes: what a pipeline that adds a few items per run pays, for this code and (``--code NAME=DIR``)
other checkouts of it, in one run.

    python benchmarks/small_writes.py [--writes 200] [--images 5] [--code before=/tmp/mmsearch-before] \\
        [--out benchmarks/results/small_writes.json]

Two measurements per code:

- ``writes``: in one process, ``--writes`` runs of ``mmsearch.index`` on a text corpus (JSONL) that grows by one
  line before each run (the built-in model; default retention, as a pipeline would run it). Reported: the
  median seconds of a write around each checkpoint (the 5 writes up to it), the shard files the current version
  lists, and the collection's size on disk at the end (old versions are kept for an hour by default).
- ``add one image``: a cold ``mmsearch index FOLDER`` process after one image was copied into an indexed
  folder, ``--images`` times (median seconds and peak RSS, from ``/usr/bin/time``-like ``resource`` figures);
- ``first update`` (``--first-rows N``): the first cold ``mmsearch index`` of a one-line change after the index over
  ``N`` synthetic rows was built, each of 3 rounds on a fresh copy (median seconds and peak RSS);
- ``large``: one-row writes into a collection of ``--large-rows`` synthetic text rows (the built-in model's
  dimension, written once through the store; the index over them built by a first write), median of 3; then
  one-row deletions (a line removed from the corpus), median of 3.

Prints a table and writes JSON with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
RESULTS = HERE / "benchmarks" / "results" / "small_writes.json"
SAMPLE = HERE / "data" / "sample"
CHECKPOINTS = (10, 50, 100, 200, 300, 400)

WRITES_SCRIPT = """
import json, os, sys, time
import mmsearch
work, writes = sys.argv[1], int(sys.argv[2])
corpus, out = os.path.join(work, "corpus.jsonl"), os.path.join(work, "c.mms")
seconds = []
for i in range(writes):
    with open(corpus, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": i, "text": f"note {i}: a photo of item {i % 97} on a shelf"}) + "\\n")
    start = time.perf_counter()
    result = mmsearch.index(corpus, out=out)
    seconds.append(time.perf_counter() - start)
    assert result.report.texts_embedded == 1, result.report
from mmsearch.store import Store
with Store.open(out) as store:
    shards = len(store.manifest.shards["texts"])
size = sum(p.stat().st_size for p in __import__("pathlib").Path(out).rglob("*") if p.is_file())
print(json.dumps({"seconds": seconds, "shards": shards, "bytes": size,
                  "code": os.path.dirname(os.path.dirname(mmsearch.__file__))}))
"""

LARGE_SCRIPT = """
import json, os, sys, time
sys.path.insert(0, sys.argv[3])
import mmsearch
from mmsearch.encoders.registry import load_encoder
from mmsearch.store import ModelInfo, Store
from synthetic_vectors import clustered
work, rows = sys.argv[1], int(sys.argv[2])
corpus, out = os.path.join(work, "corpus.jsonl"), os.path.join(work, "large.mms")
def add(i):
    with open(corpus, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": i, "text": f"note {i}: a photo of item {i} on a shelf"}) + "\\n")
    start = time.perf_counter()
    result = mmsearch.index(corpus, out=out)
    return time.perf_counter() - start, result.indexes.get("texts")
add(0)
encoder = load_encoder("builtin")
info = ModelInfo(spec=encoder.spec, preprocess_id=encoder.preprocess_id, dim=encoder.dim)
with Store.open_or_create(out, info) as store, store.transaction("bulk"):  # synthetic rows, written once
    vectors = clustered(rows, encoder.dim)
    for start in range(0, rows, 8192):
        chunk = vectors[start:start + 8192]
        ids = store.reserve_ids(len(chunk))
        store.append("texts", {"id": ids, "text": [f"row {i}" for i in ids], "source": ["bulk"] * len(ids),
                               "key": [str(i) for i in ids], "image_id": [None] * len(ids)}, chunk)
_, built = add(1)  # the index over every row: built, not timed
seconds = [add(2 + i)[0] for i in range(3)]
deletes = []
for i in range(3):  # one corpus line removed: a one-row deletion
    with open(corpus, encoding="utf-8") as f:
        lines = f.readlines()
    with open(corpus, "w", encoding="utf-8") as f:
        f.writelines(lines[:1] + lines[2:])
    start = time.perf_counter()
    assert mmsearch.index(corpus, out=out).report.deleted == 1
    deletes.append(time.perf_counter() - start)
print(json.dumps({"seconds": seconds, "delete_seconds": deletes, "factory": built.factory,
                  "index_mib": built.file_bytes / 2**20}))
"""

BUILD_SCRIPT = LARGE_SCRIPT.split("seconds = [add(")[0] + """
print(json.dumps({"factory": built.factory}))
"""

ADD_SCRIPT = """
import resource, subprocess, sys, time, json
start = time.perf_counter()
done = subprocess.run([sys.executable, "-m", "mmsearch", "index", sys.argv[1], "-o", sys.argv[2]],
                      capture_output=True, text=True)
seconds = time.perf_counter() - start
assert done.returncode == 0, done.stderr[-2000:]
print(json.dumps({"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def run(code: Path, script: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())  # not this checkout: ``-c`` puts the working directory first
    if done.returncode:
        raise SystemExit(f"{code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def writes(code: Path, count: int, work: Path) -> dict:
    work.mkdir(parents=True)
    result = run(code, WRITES_SCRIPT, str(work), str(count))
    if Path(result["code"]).resolve() != code.resolve():
        raise SystemExit(f"the run imported mmsearch from {result['code']}, not {code}")
    seconds = result["seconds"]
    at = {n: round(statistics.median(seconds[n - 5:n]), 3) for n in CHECKPOINTS if n <= len(seconds)}
    return {"median_s_around": at, "total_s": round(sum(seconds), 1), "shards": result["shards"],
            "disk_mib": round(result["bytes"] / 2**20, 1)}


def add_one_image(code: Path, count: int, work: Path) -> dict:
    """A cold ``mmsearch index`` after each of ``count`` images is added to an indexed folder."""
    images = sorted(p for p in SAMPLE.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    folder, out = work / "images", work / "images.mms"
    folder.mkdir(parents=True)
    for p in images[:4]:
        shutil.copy(p, folder / p.name)
    run(code, ADD_SCRIPT, str(folder), str(out))  # the first index (and any model cache fill): not timed
    rows = []
    for p in images[4:4 + count]:
        shutil.copy(p, folder / p.name)
        rows.append(run(code, ADD_SCRIPT, str(folder), str(out)))
    return {"median_s": round(statistics.median(r["seconds"] for r in rows), 3),
            "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in rows), 1), "runs": len(rows)}


def large(code: Path, rows: int, work: Path) -> dict:
    """One-row writes into a collection of ``rows`` synthetic text rows (median of 3, after the index is built)."""
    work.mkdir(parents=True)
    result = run(code, LARGE_SCRIPT, str(work), str(rows), str(HERE / "tests"))
    return {"rows": rows, "median_s": round(statistics.median(result["seconds"]), 2),
            "delete_median_s": round(statistics.median(result["delete_seconds"]), 2), "factory": result["factory"],
            "index_file_mib": round(result["index_mib"], 1)}


def first_update(code: Path, rows: int, work: Path, rounds: int = 3) -> dict:
    """The first write after the index over ``rows`` synthetic rows was built: a cold ``mmsearch index`` of a
    one-line change, each round on a fresh copy of the built collection (median seconds and peak RSS)."""
    work.mkdir(parents=True)
    built = run(code, BUILD_SCRIPT, str(work), str(rows), str(HERE / "tests"))
    runs = []
    for r in range(rounds):
        copy = work / f"round{r}"
        shutil.copytree(work / "large.mms", copy / "large.mms")
        shutil.copy(work / "corpus.jsonl", copy / "corpus.jsonl")
        with open(copy / "corpus.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": 10**9, "text": "one more note"}) + "\n")
        runs.append(run(code, ADD_SCRIPT, str(copy / "corpus.jsonl"), str(copy / "large.mms")))
        shutil.rmtree(copy)
    return {"rows": rows, "factory": built["factory"], "median_s": round(statistics.median(r["seconds"] for r in runs), 2),
            "peak_rss_mib": round(statistics.median(r["peak_rss_mib"] for r in runs), 1), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--large-rows", type=int, default=200_000,
                        help="rows of the large collection one-row writes go into (0: skip)")
    parser.add_argument("--first-rows", type=int, default=0,
                        help="also time the first write after an index over this many rows was built (0: skip)")
    parser.add_argument("--code", action="append", default=[], metavar="NAME=DIR",
                        help="another checkout to measure beside this one")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    codes = {"this": HERE, **{n: Path(d).resolve() for n, d in (c.split("=", 1) for c in args.code)}}
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="mms-small-writes-") as tmp:
        for name, code in codes.items():  # the add-one-image runs interleaved would share nothing: one code at a time
            results[name] = {"add_one_image": add_one_image(code, args.images, Path(tmp) / name / "add"),
                             "writes": writes(code, args.writes, Path(tmp) / name / "writes")}
            if args.large_rows:
                results[name]["large"] = large(code, args.large_rows, Path(tmp) / name / "large")
            if args.first_rows:
                results[name]["first_update"] = first_update(code, args.first_rows, Path(tmp) / name / "first")
            print(f"done {name}", file=sys.stderr, flush=True)
    points = [n for n in CHECKPOINTS if n <= args.writes]
    print("| code | add one image: s / peak MiB | " + " | ".join(f"write {n}: s" for n in points)
          + " | shards listed | on disk MiB | one-row write into the large collection: s | one-row deletion: s |")
    print("|---|---|" + "---|" * len(points) + "---|---|---|---|")
    for name, r in results.items():
        w, a, big = r["writes"], r["add_one_image"], r.get("large")
        print(f"| {name} | {a['median_s']} / {a['peak_rss_mib']} | "
              + " | ".join(str(w["median_s_around"][n]) for n in points) + f" | {w['shards']} | {w['disk_mib']} | "
              + (f"{big['median_s']} ({big['rows']} rows, {big['factory']}, {big['index_file_mib']} MiB) | "
                 f"{big['delete_median_s']} |" if big else "– | – |"))
    for name, r in results.items():
        if "first_update" in r:
            f = r["first_update"]
            print(f"{name}: first write after the build over {f['rows']} rows ({f['factory']}): {f['median_s']} s, "
                  f"peak {f['peak_rss_mib']} MiB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"writes": args.writes, "results": results, "load_before": load_before,
                                    "load_after": os.getloadavg(), "cpus": os.cpu_count(),
                                    "python": platform.python_version()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
