"""Parquet encoding of the shards: the embedding column with and without dictionary encoding.

pyarrow dictionary-encodes every column by default. Embeddings never repeat, so for them the dictionary is
pure cost. This writes the same synthetic collection (benchmarks/index.py's CLIP-like vectors, float16,
``--shard-rows`` rows per shard) both ways, in the same run, and measures for each, median of ``--repeats``:
shard writes (``Store.append``, the manifest commit included), one full read pass over the shards as an
index build makes it (``iter_batches``), a whole ``build_index`` (``--factory``), and the bytes on disk.

    python benchmarks/shard_format.py [--rows 200000] [--shard-rows 12500] [--factory IVF1024,Flat]
                                      [--repeats 3] [--out PATH.json]

Prints a table and writes benchmarks/results/shard_format.json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "shard_format.json"


def _bench_index() -> Any:
    spec = importlib.util.spec_from_file_location("mms_bench_index", ROOT / "index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _dictionary_everywhere() -> Iterator[None]:
    """Shards written with pyarrow's defaults (every column dictionary-encoded), as before."""
    import pyarrow.parquet as pq

    import mmsearch.store.store as store_module

    saved = store_module.write_parquet
    store_module.write_parquet = lambda table, path: pq.write_table(table, path, compression="zstd")
    try:
        yield
    finally:
        store_module.write_parquet = saved


def measure(variant: str, root: Path, images: Any, tuning: Any, args: argparse.Namespace, bench: Any) -> dict[str, float]:
    from mmsearch.indexes import IndexOptions, build_index
    from mmsearch.indexes.source import iter_batches
    from mmsearch.store import Store

    shutil.rmtree(root, ignore_errors=True)
    with _dictionary_everywhere() if variant == "dictionary (pyarrow default)" else contextlib.nullcontext():
        started = time.perf_counter()
        bench.write_collection(root, images, tuning, args.shard_rows)
        write_s = time.perf_counter() - started
    store = Store.open(root)
    started = time.perf_counter()
    rows = sum(len(ids) for ids, _ in iter_batches(store, store.manifest.shards["images"], 65_536))
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    info = build_index(store, "images", IndexOptions(factory=args.factory))
    build_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in (root / "images").glob("*.parquet"))
    return {"write_s": write_s, "read_pass_s": read_s, "build_s": build_s, "shard_mib": size / 2**20, "rows": rows,
            "nprobe": info.params.get("nprobe")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--shard-rows", type=int, default=12_500)
    parser.add_argument("--factory", default="IVF1024,Flat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    bench = _bench_index()
    load_start = os.getloadavg()
    images, tuning, _ = bench.make_data(args.rows)
    tuning = tuning[:2000]
    variants = ["dictionary (pyarrow default)", "no dictionary on embedding (mmsearch)"]
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for variant in variants if r % 2 == 0 else variants[::-1]:
                runs[variant].append(measure(variant, Path(tmp) / "c.mms", images, tuning, args, bench))
                print(f"  round {r}: {variant}: {runs[variant][-1]}", flush=True)
    rows = []
    base = {k: statistics.median(x[k] for x in runs[variants[0]]) for k in ("write_s", "read_pass_s", "build_s")}
    for variant in variants:
        med = {k: statistics.median(x[k] for x in runs[variant]) for k in ("write_s", "read_pass_s", "build_s", "shard_mib")}
        rows.append({"variant": variant, **{k: round(v, 3) for k, v in med.items()},
                     **{f"{k}_x_default": round(base[k] / med[k], 2) for k in base}})
    print(f"\n{args.rows} x 512 float16 in shards of {args.shard_rows}, {args.factory}, median of {args.repeats}\n")
    print("| shards written with | write s | read pass s | build s | shards MiB | read speed-up | build speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['write_s']} | {r['read_pass_s']} | {r['build_s']} | {r['shard_mib']:.1f} | "
              f"{r['read_pass_s_x_default']}x | {r['build_s_x_default']}x |")
    out = {"benchmark": "shard_format", "rows": args.rows, "shard_rows": args.shard_rows, "factory": args.factory,
           "repeats": args.repeats, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average_at_start": load_start,
                       "load_average_at_end": os.getloadavg()},
           "rows_table": rows, "raw": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
