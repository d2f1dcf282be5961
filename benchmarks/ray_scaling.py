"""Ray engine scaling: images/s with 1 and 2 local Ray workers vs the single-machine path, and an estimate.

    python benchmarks/ray_scaling.py [--images 600] [--model openclip:mms-tiny/random] [--repeats 3]
    python benchmarks/ray_scaling.py --nodes 1 2 3 [--images 600] [--repeats 2]     # a multi-node cluster

``--nodes``: a Ray cluster of N nodes on this machine (``tests/ray_cluster.py``: ``ray.cluster_utils.Cluster``,
one raylet and object store per node, 1 CPU each), one actor per node (SPREAD), an ``IVF16,Flat`` index whose
parts are N Ray tasks. Reports the cluster start-up per node, the wall time of each run and its part outside
ingest, the overhead each extra node adds, and whether every run's collection is identical to the 1-node one
(ids, uris, hashes, embeddings, the top-10 of the index for 50 queries). Results:
benchmarks/results/ray_nodes.json.

Default mode (CPU, this machine): copies ``--images`` real images (OpenMoji 256 px PNGs from
../shared/data/emoji, or ``--source``) to a temporary folder and indexes them, each run into a fresh
collection, with
  - ``mmsearch.index`` (the single-machine path) with 0 decode processes (decode + encode in one process,
    the same work one Ray worker does) and with 2 decode processes (its default here);
  - ``index_with_ray`` with 1 and 2 workers on a local ``ray.init(num_cpus=2)`` started once beforehand
    (its start-up time is reported apart); each call starts its actors, which load the model: that is
    part of the measured Ray overhead. Engine "ray": the default actor pipeline (decode + encode in each
    actor); "data": ``pipeline="data"`` (Ray Data decode tasks feeding 1 or 2 encoder actors).
Medians of ``--repeats``; images/s count wall time of the whole call (ingest + index build, a Flat index).

The estimate for 100M and 1B images uses the per-worker rates measured here and, when present,
benchmarks/results/gpu.json (benchmarks/gpu.py on one GPU machine: the ViT-B-32 encoder alone and the
single-machine pipeline with its decode processes); it assumes throughput adds up linearly over workers
(the driver and the storage keep up), which this 2-core machine cannot check.

Results: benchmarks/results/ray_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "emoji" / "openmoji_256"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"}


def _images(source: Path, n: int) -> list[Path]:
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        sys.exit(f"no images under {source}")
    return files[:n] if n else files


def _copy_corpus(source: Path, n: int, dest: Path) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    files = _images(source, n)
    for i, path in enumerate(files):
        shutil.copyfile(path, dest / f"{i:06d}{path.suffix.lower()}")
    return len(files)


# -- CPU mode: the Ray engine against the single-machine path ------------------------------------------
def run_scaling(args: argparse.Namespace) -> dict:
    import ray

    import mmsearch
    from mmsearch.distributed import index_with_ray

    work = Path(tempfile.mkdtemp(prefix="mms-ray-bench-"))
    src = work / "src"
    count = _copy_corpus(Path(args.source or DEFAULT_SOURCE), args.images, src)
    print(f"{count} images from {args.source or DEFAULT_SOURCE}, model {args.model}, {args.repeats} repeats", flush=True)
    started = time.perf_counter()
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    ray_start_s = time.perf_counter() - started
    configs = [("local", 0), ("local", 2), ("ray", 1), ("ray", 2), ("data", 1), ("data", 2)]
    runs: dict[str, list[dict]] = {f"{e}:{w}": [] for e, w in configs}
    try:
        for rep in range(args.repeats):
            for engine, workers in configs:
                out = work / f"{engine}-{workers}-{rep}.mms"
                common = dict(out=out, model=args.model, batch_size=args.batch_size, index_factory="Flat")
                t0 = time.perf_counter()
                if engine == "local":
                    result = mmsearch.index(src, workers=workers, **common)
                elif engine == "ray":
                    result = index_with_ray(src, workers=workers, **common)
                else:  # Ray Data: decode tasks (1 CPU each) feeding encoder actors (half a CPU each)
                    result = index_with_ray(src, workers=workers, pipeline="data", num_cpus_per_worker=0.5, **common)
                wall = time.perf_counter() - t0
                runs[f"{engine}:{workers}"].append({"wall_s": wall, "ingest_s": result.report.seconds,
                                                    "images": result.report.images_embedded})
                print(f"  rep {rep} {engine:5s} workers={workers}: {result.report.images_embedded} images, "
                      f"{wall:.2f} s wall, {result.report.seconds:.2f} s ingest", flush=True)
                shutil.rmtree(out)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    rows = summarise(runs, count)
    return {"images": count, "model": args.model, "batch_size": args.batch_size, "repeats": args.repeats,
            "ray_init_s": round(ray_start_s, 2), "cpus": os.cpu_count(), "rows": rows, "raw": runs}


def summarise(runs: dict[str, list[dict]], count: int) -> list[dict]:
    """Medians per configuration; ``fixed_s`` is wall minus ingest (actor start-up, index build, tear-down)."""
    rows = []
    base = statistics.median(r["wall_s"] for r in runs["local:0"])
    for key, rs in runs.items():
        engine, workers = key.split(":")
        wall = statistics.median(r["wall_s"] for r in rs)
        ingest = statistics.median(r["ingest_s"] for r in rs)
        fixed = statistics.median(r["wall_s"] - r["ingest_s"] for r in rs)
        rows.append({"engine": engine, "workers": int(workers), "images": rs[0]["images"], "wall_s": round(wall, 2),
                     "fixed_s": round(fixed, 2), "images_per_s": round(count / wall, 1),
                     "ingest_images_per_s": round(count / ingest, 1), "time_vs_local_0": round(wall / base, 2)})
    return rows


# -- nodes mode: a multi-node cluster on this machine --------------------------------------------------
def run_nodes(args: argparse.Namespace) -> dict:
    import ray

    from mmsearch.distributed import index_with_ray

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from ray_cluster import LocalCluster

    work = Path(tempfile.mkdtemp(prefix="mms-ray-nodes-"))
    src = work / "src"
    count = _copy_corpus(Path(args.source or DEFAULT_SOURCE), args.images, src)
    print(f"{count} images, model {args.model}, nodes {args.nodes}, {args.repeats} repeats", flush=True)
    reference: Path | None = None
    rows = []
    try:
        for n in args.nodes:
            t0 = time.perf_counter()
            cluster = LocalCluster(workers=n - 1, head_cpus=1)
            start_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            cluster.connect(ray)
            connect_s = time.perf_counter() - t0
            runs = []
            try:
                for rep in range(args.repeats):
                    out = work / f"nodes{n}-{rep}.mms"
                    marks: dict[str, float] = {"t0": time.perf_counter()}
                    progress = _phase_marks(marks)
                    t0 = marks["t0"]
                    result = index_with_ray(src, out=out, model=args.model, batch_size=args.batch_size, workers=n,
                                            num_cpus_per_worker=1, index_factory="IVF16,Flat", index_parts=n,
                                            progress=progress)
                    wall = time.perf_counter() - t0
                    phases = {"to_first_row_s": marks.get("first_images"),
                              "index_parts_s": (marks["index_parts_done"] - marks["first_index"])
                              if "index_parts_done" in marks and "first_index" in marks else None}
                    same = "reference" if reference is None else _identical(reference, out)
                    reference = reference or out
                    runs.append({"wall_s": wall, "ingest_s": result.report.seconds, **phases,
                                 "images": result.report.images_embedded, "identical": same,
                                 "tasks_lost": result.report.cluster.tasks_lost})
                    print(f"  {n} node(s) rep {rep}: {wall:.2f} s wall, {result.report.seconds:.2f} s ingest, "
                          f"first row at {phases['to_first_row_s'] or 0:.2f} s, "
                          f"index parts {phases['index_parts_s'] or 0:.2f} s, "
                          f"identical to 1 node: {same}", flush=True)
                    if out != reference:
                        shutil.rmtree(out)
            finally:
                ray.shutdown()
                cluster.shutdown()
            wall = statistics.median(r["wall_s"] for r in runs)
            ingest = statistics.median(r["ingest_s"] for r in runs)
            first = statistics.median(r["to_first_row_s"] or 0 for r in runs)
            parts = statistics.median(r["index_parts_s"] or 0 for r in runs)
            rows.append({"nodes": n, "cluster_start_s": round(start_s, 2), "head_start_s": round(cluster.head_s, 2),
                         "worker_node_start_s": [round(x, 2) for x in cluster.worker_s], "connect_s": round(connect_s, 2),
                         "wall_s": round(wall, 2), "ingest_s": round(ingest, 2), "fixed_s": round(wall - ingest, 2),
                         "to_first_row_s": round(first, 2), "index_parts_s": round(parts, 2),
                         "images_per_s": round(count / wall, 1),
                         "identical": all(r["identical"] in (True, "reference") for r in runs), "raw": runs})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one = next((r for r in rows if r["nodes"] == 1), rows[0])
    for r in rows:
        extra = r["nodes"] - one["nodes"]
        r["wall_overhead_per_extra_node_s"] = round((r["wall_s"] - one["wall_s"]) / extra, 2) if extra else 0.0
        r["fixed_overhead_per_extra_node_s"] = round((r["fixed_s"] - one["fixed_s"]) / extra, 2) if extra else 0.0
    return {"images": count, "model": args.model, "batch_size": args.batch_size, "repeats": args.repeats,
            "cpus": os.cpu_count(), "load_average": os.getloadavg(), "rows": rows}


def _phase_marks(marks: dict[str, float]):
    """A progress callback noting when the first image row came back (the actors were up) and the index parts ran."""
    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter() - marks["t0"]
        marks.setdefault(f"first_{stage}", now)
        if stage == "index" and total and done == total:
            marks["index_parts_done"] = now

    return progress


def _identical(a: Path, b: Path) -> bool:
    """Same ids, uris and hashes, embeddings equal (float16 noise aside), same top-10 from the index."""
    import numpy as np

    from mmsearch.indexes import load_index
    from mmsearch.store import Store

    sa, sb = Store.open(a), Store.open(b)
    ta, tb = sa.scan("images", ["id", "uri", "sha256", "embedding"]), sb.scan("images", ["id", "uri", "sha256", "embedding"])
    if ta.select(["id", "uri", "sha256"]).to_pylist() != tb.select(["id", "uri", "sha256"]).to_pylist():
        return False
    ea = np.asarray(ta.column("embedding").to_pylist(), np.float32)
    eb = np.asarray(tb.column("embedding").to_pylist(), np.float32)
    if ea.shape != eb.shape or float(np.abs(ea - eb).max(initial=0)) > 1e-3:
        return False
    queries = ea[:: max(1, len(ea) // 50)][:50]
    ia, ib = load_index(sa, "images"), load_index(sb, "images")
    return bool(np.array_equal(ia.search(queries, 10)[1], ib.search(queries, 10)[1]))


# -- the estimate --------------------------------------------------------------------------------------
def estimate(gpu: dict | None, cpu: dict | None) -> list[dict]:
    """Hours for 100M / 1B images with N workers, from measured per-worker rates.

    ``gpu``: benchmarks/results/gpu.json (benchmarks/gpu.py on one H200 + 16 cores): the ViT-B-32 encoder
    alone, and the single-machine ingest pipeline (decode processes feeding that GPU) end to end. The
    per-core decode rate is the pipeline rate / its decode processes (the pipeline is decode-bound).
    """
    rows = []
    if gpu and "encoder_ViT-B-32" in gpu and "ingest" in gpu:
        encoder = gpu["encoder_ViT-B-32"]["images_per_s"]
        pipe, decoders = gpu["ingest"]["images_per_s"], gpu["ingest"]["workers"]
        per_core = pipe / decoders
        device = gpu.get("environment", {}).get("gpu", "GPU")
        rows.append(_hours(f"measured: 1 {device} + {decoders} decode processes, ViT-B-32 pipeline", pipe))
        rows.append(_hours(f"measured: 1 {device}, ViT-B-32 encoder alone (pre-decoded input)", encoder))
        cores = math.ceil(encoder / per_core)
        rows.append(_hours(f"derived: 1 GPU fed by {cores} decode cores ({per_core:.0f} img/s each)", encoder))
        rows.append(_hours(f"derived: 1 decode core ({per_core:.0f} img/s)", per_core))
    if cpu:
        ray1 = next(r for r in cpu["rows"] if r["engine"] == "ray" and r["workers"] == 1)
        what = f"measured here: 1 Ray worker on 1 shared CPU core, {cpu['model']} (steady-state ingest rate)"
        rows.append(_hours(what, ray1["ingest_images_per_s"]))
    return rows


def _hours(what: str, per_worker: float) -> dict:
    out = {"worker": what, "images_per_s_per_worker": round(per_worker, 1)}
    for n, label in ((100e6, "100M"), (1e9, "1B")):
        worker_hours = n / per_worker / 3600
        out[f"{label}_worker_hours"] = round(worker_hours, 1)
        for workers in (8, 32, 128):
            out[f"{label}_hours_{workers}_workers"] = round(worker_hours / workers, 2)
    return out


def _table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--model", default="openclip:mms-tiny/random")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--source", help="image folder (default: ../shared/data/emoji/openmoji_256)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--from-json", type=Path, help="re-print (and re-estimate) a saved run instead of measuring")
    parser.add_argument("--nodes", type=int, nargs="+", help="run on a local multi-node cluster of each size instead")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.nodes:
        result = run_nodes(args)
        (args.out / "ray_nodes.json").write_text(json.dumps(result, indent=2))
        print(_table(result["rows"], ["nodes", "cluster_start_s", "worker_node_start_s", "wall_s", "to_first_row_s",
                                      "ingest_s", "index_parts_s", "fixed_s",
                                      "images_per_s", "wall_overhead_per_extra_node_s", "fixed_overhead_per_extra_node_s",
                                      "identical"]))
        return
    if args.from_json:
        result = json.loads(args.from_json.read_text())
        result["rows"] = summarise(result["raw"], result["images"])
    else:
        result = run_scaling(args)
    gpu_file = args.out / "gpu.json"
    gpu = json.loads(gpu_file.read_text()) if gpu_file.is_file() else None
    result["estimate"] = estimate(gpu, result)
    result["estimate_inputs"] = {"gpu": str(gpu_file) if gpu else None}
    tag = result["model"].split(":")[0]
    name = "ray_scaling.json" if result["model"] == "openclip:mms-tiny/random" else f"ray_scaling-{tag}.json"
    (args.out / name).write_text(json.dumps(result, indent=2))
    print(f"\nRay start-up (ray.init, local): {result['ray_init_s']} s")
    print(_table(result["rows"], ["engine", "workers", "images", "wall_s", "fixed_s", "images_per_s",
                                  "ingest_images_per_s", "time_vs_local_0"]))
    print()
    print(_table(result["estimate"], ["worker", "images_per_s_per_worker", "100M_worker_hours", "100M_hours_8_workers",
                                      "100M_hours_32_workers", "1B_worker_hours", "1B_hours_32_workers",
                                      "1B_hours_128_workers"]))


if __name__ == "__main__":
    main()
