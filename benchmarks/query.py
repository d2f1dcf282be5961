"""Query-layer latency and throughput on a 100k-image collection: encoder time, search time and end to end.

The collection is built without encoding 100k images: image rows with plausible synthetic metadata, and
embeddings drawn as noisy mixtures of the real built-in-model embeddings of the bundled sample images
(encoded once), renormalised. It is written with the public store API (float16 Parquet shards of 8192
rows) and indexed twice, in the same run: with the automatic choice (IVF at 100k, tuned at build) and
with exact search (``Flat``), the baseline of the "x Flat" columns.

Queries: 64 short texts, and the sample images (cycled to 64 for batches). For each kind the stages are
timed on their own, on the same queries:

- decode (images only): ``load_image`` of the query file, as ``Collection.search`` does it;
- encode: ``encoder.encode_texts`` / ``embed_pil_images`` on the decoded images;
- index only: ``SearchIndex.search`` (FAISS, ids and scores, no hits);
- search: ``Collection.search(vector=...)`` with the precomputed query vectors (FAISS + building the hits);
- end to end: ``Collection.search("a cat")`` / ``Collection.search(image=path)``.

Single-query latency: every query, ``--rounds`` times (p50, p99 over all calls), after one untimed warm-up
round; each round times every stage and index in turn, so slow spells of a shared machine fall on all of
them alike. Batch throughput: ``search_batch`` (or one encoder call) of ``--batch`` queries, median of
``--batch-repeats`` calls, alternating likewise. k = 10 throughout. Recall@10 of the automatic index
against Flat is measured on the same query vectors (with a sweep of nprobe / efSearch); when the tuned
setting misses recall 0.95 on them, search and end to end are also timed at the smallest swept setting
that reaches it (the "nprobe=N" rows: the speed-up at matched recall). Cold figures (open + first query, first text query,
which calibrates the collection's no-match threshold) are reported apart.

    python benchmarks/query.py [--rows 100000] [--rounds 5] [--batch 64] [--batch-repeats 7]

Prints a table and writes benchmarks/results/query.json (raw timings, medians, p99, machine, date).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import mmsearch
from mmsearch import Q
from mmsearch.encoders import embed_pil_images, load_encoder
from mmsearch.indexes import IndexOptions, build_index, load_index
from mmsearch.query.terms import load_image
from mmsearch.store import ModelInfo, Store

ROOT = Path(__file__).resolve().parent
SAMPLE = ROOT.parent / "data" / "sample"
SHARD_ROWS = 8192
K = 10
TARGET_RECALL = 0.95  # the index tuning's default target: the "matched" rows reach it on the benchmark's own queries
TEXT_QUERIES = [
    "a cat", "a red car", "a cup of coffee", "a lighthouse", "a red bus", "two dogs", "a bicycle", "a blue car",
    "a bridge at night", "a man with a camera", "slices of citrus fruit", "a flower", "dandelion seeds",
    "a smiling emoji", "a red heart", "a soccer ball", "figs in a bowl", "the flag of Brazil", "the flag of Canada",
    "the flag of Japan", "the union jack", "a stream in a forest", "a bowl of fruit", "galaxies in deep space",
    "a portrait of a woman", "old coins", "a bee on a flower", "a horse", "a mountain trail", "autumn mountains",
    "a pagoda", "an astronaut", "a raccoon", "a rocket launch", "a sailing boat", "a city street at night",
    "a sunset over the sea", "a snowy forest", "a child playing with a ball", "a plate of pasta", "a birthday cake",
    "a train station", "a bird on a branch", "a sandy beach", "a kitchen", "a laptop on a desk", "a wooden house",
    "a river with a bridge", "a field of sunflowers", "a black and white photo", "a crowd at a concert",
    "a dog running on grass", "a green parrot", "a glass of red wine", "a library with books", "a snowy mountain peak",
    "a yellow taxi", "a lake with mountains", "a close-up of a leaf", "a tiger", "an old castle", "a lamp",
    "a bowl of soup", "fireworks in the sky",
]


# -- the synthetic collection ---------------------------------------------------------------------
def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def synthetic_embeddings(base: np.ndarray, n: int, rng: np.random.Generator, *, mix: int, noise: float
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit vectors: Dirichlet mixtures of ``mix`` real embeddings plus Gaussian noise; and each row's
    dominant base (for its caption)."""
    picks = rng.integers(0, len(base), size=(n, mix))
    weights = rng.dirichlet(np.full(mix, 0.5), size=n).astype(np.float32)
    vectors = np.einsum("nm,nmd->nd", weights, base[picks])
    vectors += rng.normal(scale=noise / np.sqrt(base.shape[1]), size=vectors.shape).astype(np.float32)
    return unit(vectors), picks[np.arange(n), weights.argmax(axis=1)]


def write_collection(path: Path, enc: Any, base: np.ndarray, captions: list[str], rows: int, seed: int,
                     *, mix: int, noise: float) -> dict[str, float]:
    """Image rows with synthetic metadata and embeddings, in shards of SHARD_ROWS, through the public store API."""
    started = time.perf_counter()
    store = Store.open_or_create(path, ModelInfo(spec=enc.spec, preprocess_id=enc.preprocess_id, dim=enc.dim))
    rng = np.random.default_rng(seed)
    sizes = np.array([(4032, 3024), (3024, 4032), (1920, 1080), (1080, 1920), (1600, 1200), (1024, 1024), (640, 480)])
    for start in range(0, rows, SHARD_ROWS):
        n = min(SHARD_ROWS, rows - start)
        ids = store.reserve_ids(n)
        vectors, dominant = synthetic_embeddings(base, n, rng, mix=mix, noise=noise)
        uris = [f"/data/photos/{2015 + int(i) % 10}/{int(i) // 1000:03d}/IMG_{int(i):06d}.jpg" for i in ids]
        wh = sizes[rng.integers(0, len(sizes), size=n)]
        columns = {
            "id": ids, "uri": uris,
            "sha256": [hashlib.sha256(u.encode()).hexdigest() for u in uris],
            "bytes": (wh[:, 0] * wh[:, 1] * rng.uniform(0.15, 0.6, size=n)).astype(np.int64),
            "width": wh[:, 0].astype(np.int32), "height": wh[:, 1].astype(np.int32),
            "mtime": 1.42e9 + rng.uniform(0, 3e8, size=n),
            "caption": [captions[d] if r < 0.5 else None for d, r in zip(dominant, rng.random(n))],
        }
        store.write_shard("images", columns, vectors)
    store.commit()
    return {"write_s": time.perf_counter() - started}


def index_collection(path: Path, factory: str) -> dict[str, Any]:
    store = Store.open(path)
    started = time.perf_counter()
    info = build_index(store, "images", IndexOptions(factory=factory))
    assert info is not None
    return {"requested": factory, "factory": info.factory, "params": info.params, "tuned_recall": info.recall,
            "tuned_on": info.tuned_on, "target_met": info.target_met, "file_mb": round(info.file_bytes / 2**20, 1),
            "build_s": round(time.perf_counter() - started, 2)}


# -- timing ---------------------------------------------------------------------------------------
def call_ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def run_cases(cases: list[dict[str, Any]], n: int, args: argparse.Namespace) -> None:
    """Time every case: single calls ``fn(i)`` for i < n, a pass over all cases per round (one untimed
    warm-up round first), so slow spells of a shared machine fall on every case alike; then the batch
    calls, alternating between cases on each repeat (one untimed warm-up call each)."""
    for case in cases:
        case["single_ms"], case["batch_ms"] = [], []
    for round_no in range(args.rounds + 1):
        for case in cases:
            times = [call_ms(lambda i=i, fn=case["one"]: fn(i)) for i in range(n)]
            if round_no:
                case["single_ms"].extend(times)
    for repeat in range(args.batch_repeats + 1):
        for case in cases:
            elapsed = call_ms(case["batch"])
            if repeat:
                case["batch_ms"].append(elapsed)


def stats(single: list[float], batch: list[float], batch_size: int) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(single, 50)), "p99_ms": float(np.percentile(single, 99)),
            "mean_ms": float(np.mean(single)), "calls": len(single),
            "batch_ms_median": statistics.median(batch), "batch_qps": batch_size / (statistics.median(batch) / 1e3)}


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def measure(kind: str, queries: list[Any], vectors: np.ndarray, encode_one: Callable[[Any], object],
            encode_batch: Callable[[list[Any]], object], cols: dict[str, Any], indexes: dict[str, Any],
            e2e_one: Callable[[Any, Any], object], e2e_terms: list[Any], args: argparse.Namespace,
            decode: Callable[[Any], object] | None = None,
            matched: tuple[str, dict[str, float]] | None = None) -> list[dict[str, Any]]:
    """All stages of one query kind on the same n queries (queries[i], vectors[i], e2e_terms[i]).

    ``matched`` (index name, search params): also time that index's search and end to end at those params
    (a setting that reaches the target recall on these very queries, when the tuned one does not)."""
    b, n = args.batch, len(queries)
    cycle = [i % n for i in range(b)]
    batch_queries, batch_vectors, batch_terms = [queries[i] for i in cycle], vectors[cycle], [e2e_terms[i] for i in cycle]
    vector_terms = [Q(vector=v) for v in batch_vectors]
    cases: list[dict[str, Any]] = []
    if decode is not None:
        cases.append({"stage": "decode", "index": "-", "one": lambda i: decode(e2e_terms[i]),
                      "batch": lambda: [decode(t) for t in batch_terms]})
    cases.append({"stage": "encode", "index": "-", "one": lambda i: encode_one(queries[i]),
                  "batch": lambda: encode_batch(batch_queries)})
    for name, col in cols.items():
        idx = indexes[name]
        cases.append({"stage": "index only (FAISS)", "index": name, "one": lambda i, idx=idx: idx.search(vectors[i:i + 1], K),
                      "batch": lambda idx=idx: idx.search(batch_vectors, K)})
        cases.append({"stage": "search (vector=)", "index": name, "one": lambda i, col=col: col.search(vector=vectors[i], k=K),
                      "batch": lambda col=col: col.search_batch(vector_terms, k=K)})
        cases.append({"stage": "end to end", "index": name, "one": lambda i, col=col: e2e_one(col, e2e_terms[i]),
                      "batch": lambda col=col: col.search_batch(batch_terms, k=K)})
    if matched is not None:
        name, params = matched
        col, label = cols[name], ", ".join(f"{k}={v:g}" for k, v in params.items())
        cases.append({"stage": f"search (vector=) {label}", "compare": "search (vector=)", "index": name,
                      "one": lambda i: col.search(vector=vectors[i], k=K, search_params=params),
                      "batch": lambda: col.search_batch(vector_terms, k=K, search_params=params)})
        cases.append({"stage": f"end to end {label}", "compare": "end to end", "index": name,
                      "one": lambda i: col.search(**{"query" if kind == "text" else "image": e2e_terms[i]}, k=K,
                                                  search_params=params),
                      "batch": lambda: col.search_batch(batch_terms, k=K, search_params=params)})
    started = time.perf_counter()
    run_cases(cases, n, args)
    out = []
    for case in cases:
        row = {"query": kind, "stage": case["stage"], "compare": case.get("compare", case["stage"]),
               "index": case["index"], "single_ms": case["single_ms"],
               "batch_ms": case["batch_ms"], **stats(case["single_ms"], case["batch_ms"], b)}
        out.append(row)
    print(f"  {kind} queries timed in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def machine_info(enc: Any) -> dict[str, Any]:
    import faiss
    import torch

    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "processor": platform.processor(), "numpy": np.__version__, "faiss": faiss.__version__,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "faiss_omp_threads": faiss.omp_get_max_threads(), "image_backend": getattr(enc, "backend", None),
            "load_average_at_start": list(os.getloadavg())}


# -- main -----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the queries for single-query latency")
    parser.add_argument("--batch", type=int, default=64, help="queries per search_batch call")
    parser.add_argument("--batch-repeats", type=int, default=7)
    parser.add_argument("--mix", type=int, default=3, help="real embeddings mixed into each synthetic one")
    parser.add_argument("--noise", type=float, default=0.5, help="norm of the Gaussian noise added before renormalising")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "query.json"))
    args = parser.parse_args()
    run_started = time.perf_counter()

    started = time.perf_counter()
    enc = load_encoder(args.model)
    machine = machine_info(enc)
    paths = sorted(p for p in SAMPLE.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    pil = [load_image(p) for p in paths]
    captions = [p.with_suffix(".txt").read_text().strip() if p.with_suffix(".txt").is_file() else p.stem for p in paths]
    base = embed_pil_images(enc, pil)
    enc.encode_texts(TEXT_QUERIES[:8])  # warm the text tower
    setup_s = time.perf_counter() - started
    print(f"{args.model} ({machine['image_backend']} image tower) loaded and {len(base)} sample images encoded "
          f"in {setup_s:.1f} s; {machine['cpus']} CPUs", flush=True)

    with tempfile.TemporaryDirectory(prefix="mms-query-bench-") as tmp:
        auto_path, flat_path = Path(tmp) / "auto.mms", Path(tmp) / "flat.mms"
        build: dict[str, Any] = write_collection(auto_path, enc, base, captions, args.rows, args.seed,
                                                 mix=args.mix, noise=args.noise)
        shutil.copytree(auto_path, flat_path)
        print(f"wrote {args.rows} rows in {build['write_s']:.1f} s", flush=True)
        built = {"auto": index_collection(auto_path, "auto"), "Flat": index_collection(flat_path, "Flat")}
        for b in built.values():
            print(f"built {b['factory']} in {b['build_s']:.1f} s, params {b['params']}, "
                  f"tuned recall@{K} {b['tuned_recall']:.3f} on {b['tuned_on']}", flush=True)
        auto_name = built["auto"]["factory"]
        names = {auto_name: auto_path, "Flat": flat_path}

        cold = {}
        cols = {}
        for name, path in names.items():
            started = time.perf_counter()
            col = mmsearch.open(path)
            col.search(vector=base[0], k=K)
            cold[f"{name}: open + first vector query_ms"] = (time.perf_counter() - started) * 1e3
            cold[f"{name}: first text query (calibrates the no-match threshold)_ms"] = call_ms(lambda c=col: c.search("a cat"))
            cols[name] = col
        indexes = {name: load_index(Store.open(path), "images") for name, path in names.items()}

        text_vectors = enc.encode_texts(TEXT_QUERIES)
        image_vectors = base
        sample_stats = synthetic_stats(auto_path, text_vectors, image_vectors)

        recall: dict[str, Any] = {}
        matched: dict[str, tuple[str, dict[str, float]] | None] = {"text": None, "image": None}
        for kind, vecs in (("text", text_vectors), ("image", image_vectors)):
            truth = indexes["Flat"].search(vecs, K)[1]
            recall[kind] = recall_at_k(indexes[auto_name].search(vecs, K)[1], truth)
            knob = next(iter(indexes[auto_name].search_params), None)
            if knob is not None:  # recall of these queries at other settings of the tuned knob (nprobe, efSearch)
                tuned = indexes[auto_name].search_params[knob]
                settings = sorted({int(tuned), *(2 ** e for e in range(0, 9))})
                recall[f"{kind}_sweep_{knob}"] = {v: round(recall_at_k(
                    indexes[auto_name].search(vecs, K, params={knob: v})[1], truth), 4) for v in settings}
                enough = [v for v, r in recall[f"{kind}_sweep_{knob}"].items() if r >= TARGET_RECALL]
                if recall[kind] < TARGET_RECALL and enough:
                    matched[kind] = (auto_name, {knob: float(enough[0])})
        print(f"recall@{K} of {auto_name} at its tuned {indexes[auto_name].search_params} vs Flat, on the queries: "
              f"text {recall['text']:.3f}, image {recall['image']:.3f}", flush=True)
        for key, sweep in recall.items():
            if isinstance(sweep, dict):
                print(f"  {key}: " + ", ".join(f"{v}: {r:.3f}" for v, r in sweep.items()), flush=True)

        print("timing ...", flush=True)
        rows = measure("text", TEXT_QUERIES, text_vectors, lambda q: enc.encode_texts([q]), enc.encode_texts,
                       cols, indexes, lambda col, q: col.search(q, k=K), list(TEXT_QUERIES), args, matched=matched["text"])
        rows += measure("image", pil, image_vectors, lambda im: embed_pil_images(enc, [im]),
                        lambda ims: embed_pil_images(enc, ims), cols, indexes,
                        lambda col, p: col.search(image=p, k=K), list(paths), args, decode=load_image,
                        matched=matched["image"])

    table = report(rows, auto_name)
    result = {
        "benchmark": "query", "rows": args.rows, "model": args.model, "k": K, "batch": args.batch,
        "rounds": args.rounds, "batch_repeats": args.batch_repeats, "text_queries": len(TEXT_QUERIES),
        "image_queries": len(paths), "synthetic": {"mix": args.mix, "noise": args.noise, "seed": args.seed,
                                                     "base_images": len(base), **sample_stats},
        "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "setup_s": round(setup_s, 2), "build": {**build, "indexes": built},
        "recall_at_k_vs_flat": recall, "matched_recall_params": {k: v and v[1] for k, v in matched.items()},
        "cold_ms": cold, "table": table, "raw": rows,
        "total_s": round(time.perf_counter() - run_started, 1), "load_average_at_end": list(os.getloadavg()),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"total {result['total_s']:.0f} s; wrote {args.out}")


def synthetic_stats(path: Path, text_vectors: np.ndarray, image_vectors: np.ndarray) -> dict[str, float]:
    """How the synthetic vectors compare with real ones: pairwise and best-match cosines."""
    store = Store.open(path)
    _, first = next(store.iter_embeddings("images"))
    sub = first[:2000]
    pair = sub @ sub.T
    real = image_vectors @ image_vectors.T
    off = ~np.eye(len(sub), dtype=bool)
    return {
        "mean_pairwise_cosine_synthetic": round(float(pair[off].mean()), 4),
        "mean_pairwise_cosine_real_sample": round(float(real[~np.eye(len(real), dtype=bool)].mean()), 4),
        "mean_top1_cosine_text_query_vs_first_shard": round(float((text_vectors @ first.T).max(axis=1).mean()), 4),
        "mean_top1_cosine_image_query_vs_first_shard": round(float((image_vectors @ first.T).max(axis=1).mean()), 4),
    }


def report(rows: list[dict[str, Any]], auto_name: str) -> list[dict[str, Any]]:
    """Print the table; ratios compare the automatic index with Flat on the same stage (higher: faster)."""
    flat = {(r["query"], r["stage"]): r for r in rows if r["index"] == "Flat"}
    table = []
    print(f"\n{'query':<7}{'stage':<28}{'index':<14}{'p50 ms':>9}{'p99 ms':>9}{'batch q/s':>11}"
          f"{'x Flat p50':>12}{'x Flat q/s':>12}")
    for r in rows:
        base = flat.get((r["query"], r["compare"])) if r["index"] == auto_name else None
        p50_ratio = base["p50_ms"] / r["p50_ms"] if base else None
        qps_ratio = r["batch_qps"] / base["batch_qps"] if base else None
        print(f"{r['query']:<7}{r['stage']:<28}{r['index']:<14}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['batch_qps']:>11.1f}{(f'{p50_ratio:.2f}' if p50_ratio else ''):>12}"
              f"{(f'{qps_ratio:.2f}' if qps_ratio else ''):>12}")
        table.append({"query": r["query"], "stage": r["stage"], "index": r["index"],
                      "p50_ms": round(r["p50_ms"], 3), "p99_ms": round(r["p99_ms"], 3),
                      "batch_qps": round(r["batch_qps"], 1),
                      "p50_speedup_vs_flat": p50_ratio and round(p50_ratio, 3),
                      "batch_qps_ratio_vs_flat": qps_ratio and round(qps_ratio, 3)})
    return table


if __name__ == "__main__":
    main()
