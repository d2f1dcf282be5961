"""Sharded index against one merged index: what keeping the parts apart costs or gains, same data, same run.

Data (seeded, from benchmarks/index.py's ``make_data``): ``--rows`` unit-norm CLIP-like image vectors
(dim 512) written as ``--parquet-shards`` float16 Parquet shards of one collection, 2000 text-like
vectors in it (what the build tunes on), and 1000 held-out text-like queries. Every configuration is
built from its own copy of that collection with ``--factory`` (default ``IVF1024,Flat``):

  - ``local``: ``mmsearch.indexes.build_index`` with ``IndexOptions(index_shards=N)`` for each ``--shards``
    value (N=1, one index, is the baseline every ratio is against);
  - ``ray``: ``build_index_distributed`` on a local ``ray.init(num_cpus=--ray-cpus)``: merged (one index,
    ``parts=--ray-parts`` add tasks then a merge) and sharded (``index_shards=--ray-parts``, one task per
    part, kept apart). ``ray.init`` and a warm-up task per worker (importing faiss and mmsearch) are timed
    apart and not counted in the builds (``--no-ray`` leaves Ray out).

Measured per configuration:
  1. build seconds: the whole build call (train + add + tune + save + register), median of
     ``--build-repeats`` (default ``--repeats``), the configurations taking turns in each round;
  2. queries, all at the SAME search parameters, the tuned ones of the one-index build (``params=``):
     batch QPS (1000 queries, k=10, median of ``--repeats``), single-query latency (median and p90 ms of
     ``--single-queries`` one-query calls; each query goes to every configuration in turn, in a rotating
     order), recall@10 against exact search (IndexFlatIP over the stored vectors), and the share of
     top-10 rows whose ids equal the one index's (in order, and as sets);
  3. index file bytes (sum of the parts) and ``load_index`` seconds (median of ``--repeats``).
Each index is loaded twice (``--load-modes``), and its queries timed on both: ``default``, as the library
loads it (inverted lists memory-mapped for files of 16 MiB and more), and ``ram`` (``mmap=False``).
Ratios ("x one") are against the one-index local build measured in the same run. FAISS uses all cores
(OpenMP) on the driver; Ray's add tasks get one OpenMP thread each (Ray sets OMP_NUM_THREADS to the task's
CPUs). A sharded index searches its parts in one Python thread each, every one with its OpenMP threads.

    python benchmarks/index_sharded.py [--rows 200000] [--parquet-shards 16] [--factory IVF1024,Flat]
                                       [--shards 1 2 4] [--ray-parts 2] [--no-ray] [--repeats 3]
                                       [--build-repeats N] [--single-queries 200] [--load-modes default ram]
                                       [--out PATH.json]

Prints two markdown tables (build, size, load; queries) and writes benchmarks/results/index_sharded.json
(or ``--out``): the tables' rows, raw timings, tuned parameters, machine (CPUs, load average at start and
end, versions) and date.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
K = 10


def _bench_index() -> Any:
    """benchmarks/index.py (its synthetic data and recall helper), loaded under a name of its own."""
    spec = importlib.util.spec_from_file_location("mms_bench_index", ROOT / "index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _bench_index()


# -- data ------------------------------------------------------------------------------------------
def exact_truth(store: Any, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """Top-k collection ids of ``queries`` by exact inner product over the stored (float16) vectors, and its QPS."""
    import faiss

    from mmsearch.indexes.source import iter_batches

    flat = faiss.IndexFlatIP(queries.shape[1])
    ids = []
    for batch_ids, vectors in iter_batches(store, store.manifest.shards["images"], 65_536):
        flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
        ids.append(batch_ids)
    labels = np.concatenate(ids)
    started = time.perf_counter()
    _, pos = flat.search(queries, K)
    return np.where(pos >= 0, labels[np.clip(pos, 0, None)], -1), len(queries) / (time.perf_counter() - started)


# -- configurations --------------------------------------------------------------------------------
def configs(args: argparse.Namespace) -> list[dict[str, Any]]:
    out = [{"name": "one index" if n == 1 else f"sharded x{n}", "engine": "local", "index_shards": n}
           for n in sorted(set(args.shards) | {1})]
    if not args.no_ray:
        p = args.ray_parts
        out += [{"name": f"Ray merged (parts={p})", "engine": "ray", "index_shards": 1, "parts": p},
                {"name": f"Ray sharded x{p}", "engine": "ray", "index_shards": p, "parts": p}]
    return out


def build(cfg: dict[str, Any], store: Any, factory: str, ray: Any) -> tuple[float, Any]:
    """(wall seconds, IndexInfo or None) of one full build of the configuration."""
    from mmsearch.distributed.index_build import build_index_distributed
    from mmsearch.indexes import IndexOptions, build_index

    opts = IndexOptions(factory=factory, index_shards=cfg["index_shards"])
    started = time.perf_counter()
    if cfg["engine"] == "local":
        info = build_index(store, "images", opts)
    else:
        info = build_index_distributed(store, "images", opts, ray=ray, parts=cfg["parts"])
    return time.perf_counter() - started, info


def start_ray(cpus: int) -> tuple[Any, float, float]:
    """(ray, ray.init seconds, warm-up seconds: one task per CPU importing what the build tasks import)."""
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - started

    @ray.remote(num_cpus=1)
    def warm(i: int) -> int:
        import faiss  # noqa: F401

        import mmsearch.distributed.index_build  # noqa: F401

        time.sleep(0.2)  # keeps this worker busy so that the other tasks start their own
        return os.getpid()

    started = time.perf_counter()
    ray.get([warm.remote(i) for i in range(cpus)])
    return ray, init_s, time.perf_counter() - started


# -- measuring -------------------------------------------------------------------------------------
def same_rows(ids: np.ndarray, base: np.ndarray) -> tuple[float, float]:
    """Share of rows with the same ids in the same order, and as sets."""
    ordered = float(np.mean(np.all(ids == base, axis=1)))
    sets = float(np.mean([set(a.tolist()) == set(b.tolist()) for a, b in zip(ids, base)]))
    return ordered, sets


def measure_queries(indexes: dict[tuple[str, str], Any], queries: np.ndarray, params: dict,
                    args: argparse.Namespace) -> dict[str, Any]:
    """Batch seconds (per repeat) and single-query ms (per call) of every loaded index, taking turns; their ids."""
    keys = list(indexes)
    batch_s: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    single_ms: dict[tuple[str, str], list[float]] = {key: [] for key in keys}
    found = {}
    for key in keys:  # warm-up: pages of memory-mapped lists, thread pools
        found[key] = indexes[key].search(queries, K, params=params)[1]
    for _ in range(args.repeats):
        for key in keys:
            started = time.perf_counter()
            indexes[key].search(queries, K, params=params)
            batch_s[key].append(time.perf_counter() - started)
    for i in range(args.single_queries):
        q = queries[i % len(queries)][None, :]
        for j in range(len(keys)):
            key = keys[(i + j) % len(keys)]
            started = time.perf_counter()
            indexes[key].search(q, K, params=params)
            single_ms[key].append((time.perf_counter() - started) * 1e3)
    return {"batch_s": batch_s, "single_ms": single_ms, "ids": found}


def build_rows(cfgs: list[dict], builds: dict, infos: dict, loads: dict, mapped: dict) -> list[dict]:
    """Per configuration: build seconds, file size, load seconds (each load mode), against the one index."""
    base = cfgs[0]["name"]
    med = {n: statistics.median(v) for n, v in builds.items() if v}
    rows = []
    for cfg in cfgs:
        n, info = cfg["name"], infos.get(cfg["name"])
        if info is None:
            rows.append({"config": n, "engine": cfg["engine"], "note": "not built (index kind not mergeable by Ray)"})
            continue
        row = {"config": n, "engine": cfg["engine"], "parts": len(info.part_files) or 1,
               "build_s": round(med[n], 2), "build_x_one": round(med[n] / med[base], 2),
               "file_mb": round(info.file_bytes / 2**20, 1), "file_x_one": round(info.file_bytes / infos[base].file_bytes, 3),
               "tuned_params": info.params, "tuned_recall": round(info.recall, 4)}
        for mode in LOAD_MODES:
            if (n, mode) in loads:
                load, load_base = statistics.median(loads[(n, mode)]), statistics.median(loads[(base, mode)])
                row[f"load_{mode}_s"] = round(load, 4)
                row[f"load_{mode}_x_one"] = round(load / load_base, 2)
        row["mapped_parts_default"] = mapped[n]
        rows.append(row)
    return rows


def query_rows(cfgs: list[dict], modes: list[str], timing: dict, truth: np.ndarray, n_queries: int) -> list[dict]:
    """Per configuration and load mode: QPS, latency, recall, identity with the one index (same mode)."""
    base = cfgs[0]["name"]
    qps = {key: n_queries / statistics.median(v) for key, v in timing["batch_s"].items()}
    lat = {key: statistics.median(v) for key, v in timing["single_ms"].items()}
    rows = []
    for mode in modes:
        for cfg in cfgs:
            key = (cfg["name"], mode)
            if key not in qps:
                continue
            ordered, sets = same_rows(timing["ids"][key], timing["ids"][(base, mode)])
            rows.append({
                "config": cfg["name"], "lists": LOAD_MODES[mode],
                "qps": round(qps[key], 1), "qps_x_one": round(qps[key] / qps[(base, mode)], 2),
                "latency_ms": round(lat[key], 3), "latency_p90_ms": round(p90(timing["single_ms"][key]), 3),
                "latency_x_one": round(lat[key] / lat[(base, mode)], 2),
                "recall_at_10": round(bench.recall_at_k(timing["ids"][key], truth), 4),
                "same_ids_as_one": round(ordered, 4), "same_id_sets_as_one": round(sets, 4)})
    return rows


LOAD_MODES = {"default": "default (mmap >= 16 MiB)", "ram": "RAM (mmap=False)"}
BUILD_COLUMNS = [("config", "config"), ("parts", "parts"), ("build_s", "build s"), ("build_x_one", "build x one"),
                 ("file_mb", "file MB"), ("file_x_one", "file x one"), ("load_default_s", "load s (default)"),
                 ("load_default_x_one", "load x one (default)"), ("load_ram_s", "load s (RAM)"),
                 ("load_ram_x_one", "load x one (RAM)"), ("tuned_params", "tuned")]
QUERY_COLUMNS = [("config", "config"), ("lists", "inverted lists"), ("qps", "QPS"), ("qps_x_one", "QPS x one"),
                 ("latency_ms", "latency ms"), ("latency_p90_ms", "p90 ms"), ("latency_x_one", "latency x one"),
                 ("recall_at_10", "recall@10"), ("same_ids_as_one", "same ids"), ("same_id_sets_as_one", "same id sets")]


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        if "note" in r:
            lines.append(f"| {r['config']} | " + r["note"] + " |" * (len(columns) - 1))
            continue
        lines.append("| " + " | ".join(str(r.get(key, "")) for key, _ in columns) + " |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    import faiss

    info = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "faiss": faiss.__version__, "faiss_omp_threads": faiss.omp_get_max_threads(),
            "load_average_at_start": list(os.getloadavg())}
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        info["ray"] = None
    return info


# -- main ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from mmsearch.indexes import index_files, load_index
    from mmsearch.indexes.faiss_index import MMAP_MIN_BYTES
    from mmsearch.store import Store

    cfgs = configs(args)
    ray, ray_init_s, ray_warm_s = None, None, None
    with tempfile.TemporaryDirectory(prefix="mms-sharded-bench-", dir=args.tmp) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        images, tuning, queries = bench.make_data(args.rows, seed=args.seed)
        shard_rows = math.ceil(args.rows / args.parquet_shards)
        bench.write_collection(work / "base.mms", images, tuning, shard_rows)
        del images
        truth, exact_qps = exact_truth(Store.open(work / "base.mms"), queries)
        for cfg in cfgs:
            shutil.copytree(work / "base.mms", work / f"{cfg['name']}.mms")
        prepare_s = time.perf_counter() - started
        parquet = len(Store.open(work / "base.mms").manifest.shards["images"])
        print(f"{args.rows} vectors (dim {queries.shape[1]}) in {parquet} Parquet shards, {len(queries)} queries, "
              f"prepared in {prepare_s:.1f} s; exact search {exact_qps:.0f} QPS", flush=True)
        if not args.no_ray:
            ray, ray_init_s, ray_warm_s = start_ray(args.ray_cpus)
            print(f"ray.init {ray_init_s:.1f} s, worker warm-up {ray_warm_s:.1f} s (not counted in builds)", flush=True)
        try:
            builds: dict[str, list[float]] = {c["name"]: [] for c in cfgs}
            infos: dict[str, Any] = {}
            for rep in range(args.build_repeats or args.repeats):
                for cfg in cfgs:
                    seconds, info = build(cfg, Store.open(work / f"{cfg['name']}.mms"), args.factory, ray)
                    infos[cfg["name"]] = info
                    if info is not None:
                        builds[cfg["name"]].append(seconds)
                    print(f"  build round {rep}: {cfg['name']}: {seconds:.1f} s"
                          + (f", {info.factory}, tuned {info.params}" if info else ", skipped"), flush=True)
        finally:
            if ray is not None:
                ray.shutdown()
        built = [c for c in cfgs if infos.get(c["name"]) is not None]
        mapped = {c["name"]: sum((work / f"{c['name']}.mms" / f).stat().st_size >= MMAP_MIN_BYTES
                                 for f in index_files(infos[c["name"]])) for c in built}
        mapped = {n: f"{m}/{len(index_files(infos[n]))}" for n, m in mapped.items()}
        loads: dict[tuple[str, str], list[float]] = {(c["name"], m): [] for m in args.load_modes for c in built}
        indexes: dict[tuple[str, str], Any] = {}
        for _ in range(args.repeats):
            for key in loads:
                indexes.pop(key, None)
                started = time.perf_counter()
                indexes[key] = load_index(Store.open(work / f"{key[0]}.mms"), "images",
                                          mmap=None if key[1] == "default" else False)
                loads[key].append(time.perf_counter() - started)
        params = indexes[(cfgs[0]["name"], args.load_modes[0])].search_params
        print(f"timing queries at {params} (the one index's tuned parameters) ...", flush=True)
        timing = measure_queries(indexes, queries, params, args)
        del indexes
    return {"build_rows": build_rows(cfgs, builds, infos, loads, mapped),
            "query_rows": query_rows(cfgs, args.load_modes, timing, truth, len(queries)),
            "search_params": params, "parquet_shards": parquet, "prepare_s": round(prepare_s, 1),
            "exact_qps": round(exact_qps, 1), "ray_init_s": ray_init_s and round(ray_init_s, 2),
            "ray_warmup_s": ray_warm_s and round(ray_warm_s, 2),
            "raw": {"build_s": builds, "load_s": _keyed(loads), "batch_s": _keyed(timing["batch_s"]),
                    "single_ms": _keyed(timing["single_ms"])}}


def _keyed(values: dict[tuple[str, str], list[float]]) -> dict[str, list[float]]:
    """(config, load mode) keys as "config / mode", rounded, for JSON."""
    return {f"{n} / {m}": [round(v, 6) for v in vs] for (n, m), vs in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--parquet-shards", type=int, default=16, help="Parquet shards the collection is written as")
    parser.add_argument("--factory", default="IVF1024,Flat")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4], help="index_shards of the local builds")
    parser.add_argument("--ray-parts", type=int, default=2, help="Ray tasks of the merged build; parts of the sharded one")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="batch searches and loads (and builds) per configuration")
    parser.add_argument("--build-repeats", type=int, default=None, help="builds per configuration (default: --repeats)")
    parser.add_argument("--single-queries", type=int, default=200)
    parser.add_argument("--load-modes", nargs="+", choices=list(LOAD_MODES), default=list(LOAD_MODES),
                        help="default: load_index as the library loads (mmap for files >= 16 MiB); ram: mmap=False")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="folder for the temporary collections")
    parser.add_argument("--out", default=str(ROOT / "results" / "index_sharded.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    machine = machine_info()
    started = time.perf_counter()
    result = run(args)
    total_s = time.perf_counter() - started
    machine["load_average_at_end"] = list(os.getloadavg())
    text = table(result["build_rows"], BUILD_COLUMNS) + "\n\n" + table(result["query_rows"], QUERY_COLUMNS)
    print()
    print(text)
    if result["ray_init_s"] is not None:
        print(f"\nRay start-up (not in the builds): ray.init {result['ray_init_s']} s, worker warm-up {result['ray_warmup_s']} s")
    print(f"search parameters for all: {result['search_params']}; total {total_s:.0f} s; "
          f"load average {machine['load_average_at_start'][0]:.2f} -> {machine['load_average_at_end'][0]:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "index_sharded", "rows": args.rows, "dim": bench.DIM, "k": K, "factory": args.factory,
        "queries": bench.EVAL_QUERIES, "tuning_texts": bench.TUNING_TEXTS, "repeats": args.repeats,
        "build_repeats": args.build_repeats or args.repeats, "single_queries": args.single_queries,
        "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "total_s": round(total_s, 1),
        **{k: v for k, v in result.items() if k not in ("build_rows", "query_rows", "raw")}, "table": text,
        "build": result["build_rows"], "queries_by_load_mode": result["query_rows"], "raw": result["raw"]}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
