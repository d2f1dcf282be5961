"""Decode workers vs torch threads on a CPU machine: which split of the cores ingests fastest.

While decode worker processes run, ``mmsearch.index`` gives a CPU encoder only the cores the workers leave
(``share_cpus_with_workers``: on 2 cores with 2 workers, torch gets 1 thread). This measures that default
against the alternatives on the same files, in the same run, arms interleaved in every round:

- ``workers=W, torch shares``: the default (torch threads = CPUs - W, at least 1);
- ``workers=W, torch all cores``: the same with the sharing turned off (torch keeps all its threads);
- ``workers=1, torch shares`` and ``workers=0`` (decode in the main process, torch on all cores).

    python benchmarks/ingest_threads.py /work/shared/data/art4apps_words/images [--images 400] [--model builtin]
                                        [--copies 1] [--workers 2] [--repeats 3] [--out PATH.json]

Images/s is ``report.images_embedded / report.seconds`` (ingest only: model loading and the index build are
not counted), dedup off, a fresh collection per run; median of ``--repeats``. Prints a table and writes
``benchmarks/results/ingest_threads.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

RESULTS = Path(__file__).resolve().parent / "results" / "ingest_threads.json"
SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


@contextlib.contextmanager
def _no_sharing() -> Iterator[None]:
    """Turn ``share_cpus_with_workers`` off for the duration (torch keeps every thread)."""
    import mmsearch.ingest.stage as stage

    @contextlib.contextmanager
    def keep_threads(encoder: Any, workers: int) -> Iterator[None]:
        yield

    saved = stage.share_cpus_with_workers
    stage.share_cpus_with_workers = keep_threads
    try:
        yield
    finally:
        stage.share_cpus_with_workers = saved


def arms(workers: int) -> list[dict[str, Any]]:
    out = [{"name": f"workers={workers}, torch shares (default)", "workers": workers, "share": True},
           {"name": f"workers={workers}, torch all cores", "workers": workers, "share": False}]
    if workers != 1:
        out.append({"name": "workers=1, torch shares (default)", "workers": 1, "share": True})
    out.append({"name": "workers=0 (decode in-process)", "workers": 0, "share": True})
    return out


def run_once(src: Path, out: Path, model: str, arm: dict[str, Any], batch_size: int) -> dict[str, Any]:
    import torch

    import mmsearch

    shutil.rmtree(out, ignore_errors=True)
    threads = torch.get_num_threads()
    with contextlib.nullcontext() if arm["share"] else _no_sharing():
        result = mmsearch.index(src, out=out, model=model, workers=arm["workers"], batch_size=batch_size,
                                dedup=False, index_factory="Flat")
    assert torch.get_num_threads() == threads  # the sharing restores the thread count
    report = result.report
    return {"images": report.images_embedded, "seconds": report.seconds,
            "images_per_s": report.images_embedded / report.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a folder of images (searched recursively)")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--copies", type=int, default=1, help="copy each image this many times (a small corpus)")
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from mmsearch.encoders import load_encoder

    files = sorted(p for p in args.source.rglob("*") if p.suffix.lower() in SUFFIXES)[:args.images]
    if not files:
        raise SystemExit(f"no images under {args.source}")
    load_start = os.getloadavg()
    started = time.perf_counter()
    load_encoder(args.model)  # loaded once; every run reuses the registry's instance
    runs: dict[str, list[dict[str, Any]]] = {a["name"]: [] for a in arms(args.workers)}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "images"
        src.mkdir()
        for c in range(args.copies):
            for i, f in enumerate(files):
                shutil.copy(f, src / f"{c:03d}-{i:05d}{f.suffix.lower()}")
        run_once(src, Path(tmp) / "warm.mms", args.model, arms(args.workers)[0], args.batch_size)  # warm-up
        for r in range(args.repeats):
            order = arms(args.workers)
            order = order[r % len(order):] + order[:r % len(order)]  # rotate who goes first
            for arm in order:
                res = run_once(src, Path(tmp) / "c.mms", args.model, arm, args.batch_size)
                runs[arm["name"]].append(res)
                print(f"  round {r}: {arm['name']}: {res['images_per_s']:.1f} img/s", flush=True)
    base = statistics.median(x["images_per_s"] for x in runs[arms(args.workers)[0]["name"]])
    rows = []
    for name, results in runs.items():
        ips = statistics.median(x["images_per_s"] for x in results)
        rows.append({"arm": name, "images_per_s": round(ips, 1), "x_default": round(ips / base, 2),
                     "runs": [round(x["images_per_s"], 1) for x in results]})
    print(f"\n{len(files) * args.copies} images, model {args.model}, {os.cpu_count()} CPUs, "
          f"torch {torch.get_num_threads()} threads\n")
    print("| arm | images/s (median) | × default | runs |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['arm']} | {row['images_per_s']} | {row['x_default']} | {row['runs']} |")
    out = {"benchmark": "ingest_threads", "source": str(args.source), "model": args.model,
           "images": len(files) * args.copies, "repeats": args.repeats,
           "batch_size": args.batch_size, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                       "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()},
           "total_s": round(time.perf_counter() - started, 1), "rows": rows, "raw": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
