"""End-to-end indexing throughput and query latency of mmsearch against the naive loop every user writes.

The baseline, measured in the same run with the same model and the same work: for each image, PIL open ->
transform -> encode one at a time, and its caption sidecar encoded too; then a numpy matmul per query.
mmsearch: `mmsearch.index` (decode workers, batched encoding, captions, Parquet shards, FAISS index) and
`Collection.search`. One untimed warm-up run of each first (imports, model load).

    python benchmarks/index_query.py [--images DIR] [--model SPEC] [--repeats 3]

Prints a table and writes benchmarks/results/index_query.json. Uses only the public API.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import mmsearch
from mmsearch.encoders import embed_pil_images, load_encoder
from mmsearch.ingest import iter_image_files

ROOT = Path(__file__).resolve().parent
QUERIES = ["a cat", "a red car", "a flag", "flowers", "a cup of coffee", "mountains", "an astronaut", "a bird"]


def naive_index(images: list[str], model: str) -> np.ndarray:
    from PIL import Image

    enc = load_encoder(model)
    vectors = []
    for p in images:
        vectors.append(embed_pil_images(enc, [Image.open(p)]))
        caption = Path(p).with_suffix(".txt")
        if caption.is_file():
            enc.encode_texts([caption.read_text().strip()])
    return np.concatenate(vectors)


def naive_query(matrix: np.ndarray, model: str, text: str, k: int) -> np.ndarray:
    q = load_encoder(model).encode_texts([text])[0]
    return np.argsort(-(matrix @ q))[:k]


def timed(fn, *args, **kwargs) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(ROOT.parent / "data" / "sample"))
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "results" / "index_query.json"))
    args = parser.parse_args()

    images = [f.uri for f in iter_image_files(Path(args.images))]
    load_encoder(args.model)  # model loading is not what is measured
    naive_index(images[:2], args.model)
    with tempfile.TemporaryDirectory() as tmp:
        mmsearch.index(args.images, out=Path(tmp) / "warm.mms", model=args.model)
    naive_s, mms_s, rerun_s = [], [], []
    for _ in range(args.repeats):
        naive_s.append(timed(naive_index, images, args.model))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.mms"
            mms_s.append(timed(mmsearch.index, args.images, out=out, model=args.model))
            rerun_s.append(timed(mmsearch.index, args.images, out=out, model=args.model))
            keep = Path(tempfile.mkdtemp()) / "bench.mms"
            shutil.copytree(out, keep)
    col = mmsearch.open(keep)
    matrix = naive_index(images, args.model)
    q_naive = [timed(naive_query, matrix, args.model, q, 10) * 1e3 for q in QUERIES * args.repeats]
    q_mms = [timed(col.search, q, k=10) * 1e3 for q in QUERIES * args.repeats]

    n = len(images)
    rows = [
        ("index: naive loop (img/s)", n / statistics.median(naive_s), None),
        ("index: mmsearch (img/s)", n / statistics.median(mms_s), statistics.median(naive_s) / statistics.median(mms_s)),
        ("re-index unchanged: mmsearch (s)", statistics.median(rerun_s), None),
        ("text query: naive (ms, median)", statistics.median(q_naive), None),
        ("text query: mmsearch (ms, median)", statistics.median(q_mms), statistics.median(q_naive) / statistics.median(q_mms)),
    ]
    print(f"{len(images)} images from {args.images}, model {args.model}, {args.repeats} repeats, {os.cpu_count()} CPUs")
    print(f"{'measure':<36}{'value':>12}{'x baseline':>12}")
    for name, value, ratio in rows:
        print(f"{name:<36}{value:>12.2f}{(f'{ratio:.2f}' if ratio else ''):>12}")
    result = {
        "benchmark": "index_query", "images": n, "model": args.model, "repeats": args.repeats,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
        "naive_index_s": naive_s, "mmsearch_index_s": mms_s, "mmsearch_reindex_unchanged_s": rerun_s,
        "naive_query_ms": q_naive, "mmsearch_query_ms": q_mms,
        "table": [{"measure": r[0], "value": round(r[1], 3), "ratio_vs_baseline": r[2] and round(r[2], 3)} for r in rows],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
