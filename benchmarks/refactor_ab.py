"""Before and after the issue-17 refactor: the same CLI work timed on two source trees, in one run, alternating.

``--before-dir`` is a checkout of the code before the refactor (b3e3fdb: the CLI is the top-level ``cli``
package, run as ``python -m cli.main``); ``--after-dir`` is the current code (``python -m mmsearch``). Both run
with this venv's Python, each tree first on PYTHONPATH and as the working directory; the script prints and
records ``mmsearch.__file__`` as each side imports it, so a side that picked up the other's code shows.

Images: ``--images`` distinct JPEGs (crops / flips / sizes of data/sample's photos, made as
benchmarks/cold_query.py makes them) in a temporary folder. One ``MMSEARCH_CACHE_DIR`` is shared by both
sides and warmed by an untimed index + query per side first, so no timed run pays an ONNX export.

Each turn runs A (before) then B (after), each as new processes, on a fresh collection directory:

- ``index``: ``index FOLDER --out NEW_DIR`` with the built-in model (wall time and peak RSS via ``os.wait4``,
  what ``/usr/bin/time -v`` reports as "Maximum resident set size");
- ``reindex``: the same command again (nothing to do);
- ``query``: a cold ``query "a cat" --json`` on that collection.

Then ``in-process query``: one process per side opens its last collection, warms up with 5 queries and times
``--queries`` text queries ("a photo of a <ImageNet class>") one by one: p50 and p90 (turns alternate A, B).

The after code also labels each new image at index time (issue 19) and keeps score moments beside each index;
``--attribute`` (default on) runs the after side's ``mmsearch.index`` in-process once per turn (untimed in the
table above) with timers around ``update_labels`` and ``collection_moments`` + ``write_moments``, so their share
of an index run is reported apart.

    python benchmarks/refactor_ab.py --before-dir /tmp/before --after-dir . [--turns 5] [--images 210]

Prints a table and writes benchmarks/results/refactor_ab.json (raw runs, medians, ratios B/A, load, commits).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
RESULTS = ROOT / "benchmarks" / "results"
CLASSES = Path("/work/shared/data/text_prompts/opencv_dnn_classes/classification_classes_ILSVRC2012.txt")
FALLBACK_QUERIES = ["a cat", "a dog", "a red car", "a bridge at night", "a lighthouse", "a bicycle", "an astronaut",
                    "a bowl of fruit", "a mountain lake", "a city street"]

WHERE = "import mmsearch, sys; print(mmsearch.__file__)"

LATENCY = """
import json, statistics, sys, time
import mmsearch
coll = mmsearch.open(sys.argv[1])
queries = json.loads(sys.argv[2])
for q in queries[:5]:
    coll.search(q, k=10)
times = []
for q in queries:
    t = time.perf_counter(); coll.search(q, k=10); times.append(time.perf_counter() - t)
times.sort()
print(json.dumps({"p50_ms": 1000 * statistics.median(times), "p90_ms": 1000 * times[int(0.9 * (len(times) - 1))],
                  "n": len(times)}))
"""

ATTRIBUTE = """
import json, sys, time
import mmsearch, mmsearch.api as api
import mmsearch.indexes.faiss_index as fi
spent = {"update_labels": 0.0, "score_moments": 0.0}
def timed(name, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[name] += time.perf_counter() - t
    return wrapper
api.update_labels = timed("update_labels", api.update_labels)
fi.collection_moments = timed("score_moments", fi.collection_moments)
fi.write_moments = timed("score_moments", fi.write_moments)
t = time.perf_counter()
mmsearch.index(sys.argv[1], out=sys.argv[2])
spent["index_call"] = time.perf_counter() - t
print(json.dumps(spent))
"""


def load_make_images():
    """benchmarks/cold_query.py's ``make_images`` (distinct crops / flips / sizes of the sample photos)."""
    spec = importlib.util.spec_from_file_location("_cold_query", ROOT / "benchmarks" / "cold_query.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.make_images


def side_env(tree: Path, cache: Path, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", MMSEARCH_CACHE_DIR=str(cache), MMSEARCH_HOME=str(home), PYTHONPATH=str(tree),
               TOKENIZERS_PARALLELISM="false")
    env.pop("MMSEARCH_COLLECTION", None)
    env.pop("MMSEARCH_MODEL", None)
    return env


def run_timed(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({code}):\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, stdout  # Linux: ru_maxrss in KiB


def git_state(tree: Path) -> dict[str, Any]:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree, capture_output=True,
                           text=True).stdout.strip()
    return {"path": str(tree), "head": head or None, "uncommitted_changes": bool(dirty)}


def text_queries(n: int) -> list[str]:
    if CLASSES.exists():
        names = [line.split(",")[0].strip() for line in CLASSES.read_text().splitlines() if line.strip()]
        return [f"a photo of a {name}" for name in names[:n]]
    return [FALLBACK_QUERIES[i % len(FALLBACK_QUERIES)] for i in range(n)]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-dir", type=Path, required=True, help="source tree before the refactor (b3e3fdb)")
    parser.add_argument("--after-dir", type=Path, default=ROOT, help="source tree after it [default: this checkout]")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--images", type=int, default=210)
    parser.add_argument("--queries", type=int, default=300, help="in-process text queries per side (0: skip)")
    parser.add_argument("--no-attribute", dest="attribute", action="store_false")
    parser.add_argument("--out", type=Path, default=RESULTS / "refactor_ab.json")
    args = parser.parse_args()
    before, after = args.before_dir.resolve(), args.after_dir.resolve()
    py = sys.executable
    sides = {
        "A": {"tree": before, "cmd": [py, "-m", "cli.main"]},
        "B": {"tree": after, "cmd": [py, "-m", "mmsearch"]},
    }
    work = Path(tempfile.mkdtemp(prefix="refactor_ab_"))
    cache, images = work / "cache", work / "images"
    load_make_images()(images, args.images, SAMPLE)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {s: {"index": [], "reindex": [], "query": []} for s in sides}
    started = time.time()
    load_start = load()
    try:
        for name, side in sides.items():
            side["env"] = side_env(side["tree"], cache, work / f"home_{name}")
            imported = run_timed([py, "-c", WHERE], side["env"], side["tree"])[2].strip()
            side["imports"] = imported
            print(f"{name}: {side['tree']} imports {imported}", flush=True)
            if not imported.startswith(str(side["tree"])):
                raise SystemExit(f"side {name} imports {imported}, not its own tree {side['tree']}")
        for name, side in sides.items():  # warm-up: ONNX exports into the shared cache, file cache
            coll = work / f"warm_{name}"
            run_timed([*side["cmd"], "index", str(images), "--out", str(coll)], side["env"], side["tree"])
            run_timed([*side["cmd"], "query", "a cat", "--collection", str(coll), "--json"], side["env"], side["tree"])
            shutil.rmtree(coll)
        attribution: list[dict[str, float]] = []
        top: dict[str, list] = {}
        for turn in range(args.turns):
            for name, side in sides.items():
                coll = work / f"coll_{name}_{turn}"
                for kind, argv in (("index", ["index", str(images), "--out", str(coll)]),
                                   ("reindex", ["index", str(images), "--out", str(coll)]),
                                   ("query", ["query", "a cat", "--collection", str(coll), "-k", "5", "--json"])):
                    wall, rss, stdout = run_timed([*side["cmd"], *argv], side["env"], side["tree"])
                    runs[name][kind].append({"wall_s": wall, "peak_rss_mib": rss, "load1": load()[0]})
                    if kind == "query":
                        top[name] = [h.get("path") for h in json.loads(stdout)]
                print(f"turn {turn + 1} {name}: " + ", ".join(
                    f"{k} {runs[name][k][-1]['wall_s']:.2f}s/{runs[name][k][-1]['peak_rss_mib']:.0f}MiB"
                    for k in runs[name]) + f" (load {load()[0]})", flush=True)
                if turn < args.turns - 1:
                    shutil.rmtree(coll)
                else:
                    side["last"] = coll
            if args.attribute:
                coll = work / f"attr_{turn}"
                spent = json.loads(run_timed([py, "-c", ATTRIBUTE, str(images), str(coll)], sides["B"]["env"],
                                             after)[2].strip().splitlines()[-1])
                attribution.append(spent)
                print(f"turn {turn + 1} B in-process index: " + ", ".join(f"{k} {v:.2f}s" for k, v in spent.items()),
                      flush=True)
                shutil.rmtree(coll)
        latency: dict[str, list[dict[str, float]]] = {s: [] for s in sides}
        if args.queries:
            queries = json.dumps(text_queries(args.queries))
            for _ in range(2):
                for name, side in sides.items():
                    out = run_timed([py, "-c", LATENCY, str(side["last"]), queries], side["env"], side["tree"])[2]
                    latency[name].append(json.loads(out.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    rows = []
    for kind in ("index", "reindex", "query"):
        for metric, unit in (("wall_s", "s"), ("peak_rss_mib", "MiB")):
            a = med([r[metric] for r in runs["A"][kind]])
            b = med([r[metric] for r in runs["B"][kind]])
            rows.append({"what": f"{kind} {metric}", "A": a, "B": b, "B/A": b / a, "unit": unit})
    if args.queries:
        for metric in ("p50_ms", "p90_ms"):
            a = med([r[metric] for r in latency["A"]])
            b = med([r[metric] for r in latency["B"]])
            rows.append({"what": f"in-process query {metric}", "A": a, "B": b, "B/A": b / a, "unit": "ms"})
    parts = {k: med([s[k] for s in attribution]) for k in (attribution[0] if attribution else {})}
    load_end = load()
    print(f"\n{args.images} images, {args.turns} alternating turns, {os.cpu_count()} CPUs, "
          f"load average {load_start} at start, {load_end} at end")
    print(f"{'what':32} {'A before':>10} {'B after':>10} {'B/A':>6}")
    for r in rows:
        print(f"{r['what']:32} {r['A']:>10.3f} {r['B']:>10.3f} {r['B/A']:>6.2f}")
    if parts:
        print("B's index, in-process medians: " + ", ".join(f"{k} {v:.2f}s" for k, v in parts.items()))
    print(f"top-5 paths for 'a cat' equal on both sides: {top.get('A') == top.get('B')}")
    result = {
        "benchmark": "refactor_ab", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_start": load_start, "load_average_end": load_end},
        "images": args.images, "turns": args.turns, "queries": args.queries,
        "sides": {n: {"tree": git_state(s["tree"]), "imports": s["imports"], "command": s["cmd"][1:]}
                  for n, s in sides.items()},
        "medians": rows, "after_index_parts_median_s": parts, "after_index_parts_runs": attribution,
        "latency_runs": latency, "runs": runs, "top5_a_cat": top,
        "wall_s_total": time.time() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
