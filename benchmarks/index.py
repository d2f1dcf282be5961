"""Index engine benchmark: mmsearch's automatic index (and a few explicit kinds) against hnswlib and
autofaiss on the same synthetic CLIP-like vectors, at recall@10 >= 0.95 on cross-modal (text) queries.

Data (seeded): unit-norm image vectors around many cluster centres plus a shared "CLIP mean" direction,
and text queries = normalise(image-like vector + a constant offset (the modality gap) + noise). The
collection holds the image vectors (float16 Parquet shards) and some text vectors, which mmsearch
tunes on; recall is measured on other, held-out text queries against exact search (IndexFlatIP).

Each index is built in its own process (build time and peak RSS of that process); QPS is a batch of
queries on all cores; "QPS @0.95" is the fastest swept setting with recall@10 >= 0.95, and "1-query ms" the
median latency of single-query calls at that setting (mmsearch and the exact baseline). The baseline is
exact search (Flat) measured in the same run.

    python benchmarks/index.py [--sizes 100000 1000000] [--autofaiss-python PATH] [--hnswlib M EF_CONSTRUCTION]
                               [--engines mmsearch hnswlib autofaiss] [--timeout-s 900] [--out PATH.json]

Prints a table, writes benchmarks/results/index.json and benchmarks/results/index.png (or --out and its
.png); after each engine, what is measured so far goes to <out>.partial.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
DIM = 512
K = 10
TARGET = 0.95
EVAL_QUERIES = 1000
SINGLE_QUERIES = 200
TUNING_TEXTS = 2000
SHARD_ROWS = 65_536
SWEEPS = {"nprobe": [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512],
          "efSearch": [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048]}


# -- data ------------------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (n, DIM), tuning texts, eval text queries): clustered, with a shared mean and a modality gap."""
    rng = np.random.default_rng(seed)
    clusters = max(100, n // 1000)
    mean = _unit(rng.normal(size=(1, DIM)))[0]
    centres = _unit(rng.normal(size=(clusters, DIM)) + 1.5 * mean)
    gap = _unit(rng.normal(size=(1, DIM)))[0]

    def images(count: int) -> np.ndarray:
        out = np.empty((count, DIM), np.float32)
        for s in range(0, count, 100_000):
            m = min(100_000, count - s)
            noise = rng.normal(size=(m, DIM)).astype(np.float32) / np.sqrt(DIM) * 2
            out[s:s + m] = _unit(centres[rng.integers(0, clusters, m)] + 0.9 * noise)
        return out

    def texts(count: int) -> np.ndarray:
        return _unit(images(count) + 0.8 * gap + 0.8 * rng.normal(size=(count, DIM)).astype(np.float32) / np.sqrt(DIM) * 2)

    return images(n), texts(TUNING_TEXTS), texts(EVAL_QUERIES)


def write_collection(root: Path, images: np.ndarray, tuning_texts: np.ndarray, shard_rows: int = SHARD_ROWS) -> None:
    """The vectors as an mmsearch collection (float16 shards), as `mmsearch index` would leave them."""
    from mmsearch.store import ModelInfo, Store

    store = Store.open_or_create(root, ModelInfo("bench:synthetic", "none", images.shape[1]))
    for s in range(0, len(images), shard_rows):
        chunk = images[s:s + shard_rows]
        ids = store.reserve_ids(len(chunk))
        n = len(ids)
        store.append("images", {"id": ids, "uri": [f"/img/{i}.jpg" for i in ids], "sha256": [None] * n, "bytes": [0] * n,
                                "width": [0] * n, "height": [0] * n, "mtime": [0.0] * n, "caption": [None] * n}, chunk)
    ids = store.reserve_ids(len(tuning_texts))
    n = len(ids)
    store.append("texts", {"id": ids, "text": [f"t{i}" for i in ids], "source": ["s"] * n, "key": [str(i) for i in ids],
                           "image_id": [None] * n}, tuning_texts)


# -- measuring -------------------------------------------------------------------------------------
def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth)]))


def qps(search, queries: np.ndarray, repeats: int = 3) -> tuple[float, np.ndarray]:
    """Median queries/second of one batch search, and its ids."""
    times, ids = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        ids = search(queries)
        times.append(time.perf_counter() - started)
    return len(queries) / statistics.median(times), ids


def latency_ms(search, queries: np.ndarray, n: int = SINGLE_QUERIES) -> float:
    """Median milliseconds of one-query searches (the first ``n`` queries, one call each, after one warm-up)."""
    search(queries[:1])
    times = []
    for q in queries[:n]:
        started = time.perf_counter()
        search(q[None, :])
        times.append(time.perf_counter() - started)
    return round(1000 * statistics.median(times), 3)


def sweep(search_with, name: str, queries: np.ndarray, truth: np.ndarray, limit: int) -> list[dict]:
    """Recall and QPS over a parameter's values (stops once recall stops improving at ~1)."""
    points = []
    for value in [v for v in SWEEPS[name] if v <= limit]:
        speed, ids = qps(lambda q, v=value: search_with(q, v), queries)
        points.append({name: value, "recall": round(recall_at_k(ids, truth), 4), "qps": round(speed, 1)})
        if points[-1]["recall"] >= 0.999:
            break
    return points


def best_at_target(points: list[dict]) -> dict | None:
    ok = [p for p in points if p["recall"] >= TARGET]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- workers (each in its own process) -------------------------------------------------------------
def worker_mmsearch(data: Path, factory: str) -> dict:
    from mmsearch.indexes import IndexOptions, build_index, load_index
    from mmsearch.store import Store

    queries, truth = np.load(data / "eval.npy"), np.load(data / "truth.npy")
    store = Store.open(data / "c.mms")
    started = time.perf_counter()
    info = build_index(store, "images", IndexOptions(factory=factory, max_index_memory_bytes=8 * 1024**3))
    build_s = time.perf_counter() - started
    rss = peak_rss_mb()
    index = load_index(Store.open(data / "c.mms"), "images", mmap=True)
    tuned_qps, ids = qps(lambda q: index.search(q, K)[1], queries)
    knob = next((n for n in ("nprobe", "efSearch") if n in info.params), None)
    limit = 10_000 if knob != "nprobe" else int(info.factory.split("IVF")[1].split(",")[0].split("_")[0])
    if knob:
        points = sweep(lambda q, v: index.search(q, K, params={knob: v})[1], knob, queries, truth, limit)
    else:
        points = [{"recall": round(recall_at_k(ids, truth), 4), "qps": round(tuned_qps, 1)}]
    best = best_at_target(points)
    single = None
    if best is not None:
        params = {knob: best[knob]} if knob else None
        single = latency_ms(lambda q: index.search(q, K, params=params), queries)
    return {"engine": "mmsearch", "latency_ms_at_0.95": single, "factory": info.factory, "requested": factory,
            "build_s": round(build_s, 1),
            "peak_rss_mb": round(rss), "tuned_params": info.params, "tuned_recall_on_tuning_texts": info.recall,
            "tuning_latency_ms": info.latency_ms, "eval_recall_at_tuned": round(recall_at_k(ids, truth), 4),
            "qps_at_tuned": round(tuned_qps, 1), "file_mb": round(info.file_bytes / 2**20, 1), "sweep": points}


def worker_hnswlib(data: Path, m: int, ef_construction: int) -> dict:
    import hnswlib

    images = np.load(data / "images.npy", mmap_mode="r")
    queries, truth = np.load(data / "eval.npy"), np.load(data / "truth.npy")
    started = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=DIM)
    index.init_index(max_elements=len(images), M=m, ef_construction=ef_construction, random_seed=0)
    for s in range(0, len(images), SHARD_ROWS):
        index.add_items(np.asarray(images[s:s + SHARD_ROWS]), np.arange(s, min(s + SHARD_ROWS, len(images))))
    build_s = time.perf_counter() - started

    def search(q: np.ndarray, ef: int) -> np.ndarray:
        index.set_ef(max(ef, K))
        return index.knn_query(q, k=K)[0].astype(np.int64)

    return {"engine": "hnswlib", "factory": f"hnswlib M={m} efC={ef_construction}", "build_s": round(build_s, 1),
            "peak_rss_mb": round(peak_rss_mb()), "sweep": sweep(search, "efSearch", queries, truth, 10_000)}


def worker_autofaiss(data: Path) -> dict:
    """Run in autofaiss's own environment (it pins numpy<2): its choice, then the same sweep."""
    import faiss
    from autofaiss import build_index

    queries, truth = np.load(data / "eval.npy"), np.load(data / "truth.npy")
    emb = data / "autofaiss_in"
    emb.mkdir(exist_ok=True)
    if not (emb / "images.npy").exists():
        os.link(data / "images.npy", emb / "images.npy")
    started = time.perf_counter()
    index, infos = build_index(embeddings=str(emb), index_path=str(data / "autofaiss.index"),
                               index_infos_path=str(data / "autofaiss_infos.json"), metric_type="ip",
                               max_index_memory_usage="8G", current_memory_available="16G", verbose=30)
    build_s = time.perf_counter() - started
    rss = peak_rss_mb()
    key = json.loads((data / "autofaiss_infos.json").read_text()).get("index_key", "?")
    ivf = faiss.try_extract_index_ivf(index)
    params = faiss.ParameterSpace()
    knob, limit = ("nprobe", ivf.nlist) if ivf is not None else ("efSearch", 10_000)

    def search(q: np.ndarray, v: int) -> np.ndarray:
        params.set_index_parameter(index, knob, v)
        return index.search(q, K)[1]

    return {"engine": "autofaiss", "factory": key, "build_s": round(build_s, 1), "peak_rss_mb": round(rss),
            "autofaiss_params": infos.get("index_param") if isinstance(infos, dict) else None,
            "sweep": sweep(search, knob, queries, truth, limit)}


def run_worker(python: str, data: Path, *args: str, timeout_s: int) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--worker", *args, "--data", str(data)]
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"engine": args[0], "factory": " ".join(args[1:]), "error": f"timed out after {timeout_s}s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [f"exit status {out.returncode} (killed?), no message"])[-1]
        return {"engine": args[0], "factory": " ".join(args[1:]), "error": last[:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- driver ----------------------------------------------------------------------------------------
def prepare(n: int, data: Path) -> dict:
    import faiss

    images, tuning, evalq = make_data(n)
    np.save(data / "images.npy", images)
    np.save(data / "eval.npy", evalq)
    write_collection(data / "c.mms", images, tuning)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(images)
    speed, truth = qps(lambda q: flat.search(q, K)[1], evalq)
    single = latency_ms(lambda q: flat.search(q, K), evalq)
    np.save(data / "truth.npy", truth)
    cross = float((evalq @ images[:5000].T).max(1).mean())
    same = float(np.sort(images[:1000] @ images[:5000].T, 1)[:, -2].mean())
    return {"engine": "faiss", "factory": "Flat (exact baseline)", "build_s": 0.0,
            "sweep": [{"recall": 1.0, "qps": round(speed, 1)}], "latency_ms_at_0.95": single,
            "mean_top1_cosine_text_to_image": round(cross, 3), "mean_top1_cosine_image_to_image": round(same, 3)}


def checkpoint(args: argparse.Namespace, n: int, results: list[dict]) -> None:
    """What is measured so far, in ``<out>.partial.json``: a run killed for time still leaves its numbers."""
    flat_qps = results[0]["sweep"][0]["qps"]
    partial = Path(args.out).with_suffix(".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps({"rows": n, "results": [summarise(dict(r), flat_qps) for r in results]}, indent=2))


def summarise(result: dict, baseline_qps: float) -> dict:
    best = best_at_target(result.get("sweep", []))
    result["qps_at_0.95"] = best["qps"] if best else None
    result["setting_at_0.95"] = {k: v for k, v in best.items() if k not in ("recall", "qps")} if best else None
    result["speedup_vs_flat"] = round(best["qps"] / baseline_qps, 1) if best else None
    return result


def configs(n: int, hnswlib: list[int] | None) -> list[tuple[str, ...]]:
    runs = [("mmsearch", "auto")]
    if n <= 300_000:
        runs += [("mmsearch", "HNSW32"), ("mmsearch", "IVF1024,SQ8")]
    m, ef_construction = hnswlib or ((32, 100) if n <= 300_000 else (16, 40))
    runs += [("hnswlib", str(m), str(ef_construction))]
    return runs


def bench_size(n: int, args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        data = Path(tmp)
        started = time.perf_counter()
        baseline = prepare(n, data)
        baseline["prepare_s"] = round(time.perf_counter() - started, 1)
        results = [baseline]
        checkpoint(args, n, results)
        for run in [r for r in configs(n, args.hnswlib) if r[0] in args.engines]:
            results.append(run_worker(sys.executable, data, *run, timeout_s=args.timeout_s))
            done = summarise(dict(results[-1]), baseline["sweep"][0]["qps"])
            print(f"  {n}: {done.get('factory')} done: {json.dumps(done)}", file=sys.stderr)
            checkpoint(args, n, results)
        if "autofaiss" not in args.engines:
            pass
        elif args.autofaiss_python:
            results.append(run_worker(args.autofaiss_python, data, "autofaiss", timeout_s=args.timeout_s))
        else:
            results.append({"engine": "autofaiss", "factory": "-", "error": args.autofaiss_error})
        flat_qps = baseline["sweep"][0]["qps"]
        return [{"rows": n, **summarise(r, flat_qps)} for r in results]


def table(rows: list[dict]) -> str:
    head = (f"{'rows':>8}  {'engine':<9} {'index':<34} {'build s':>8} {'peak RSS MB':>11} {'QPS@0.95':>9} {'x Flat':>7}"
            f" {'1-query ms':>10}  setting / note")
    lines = [head, "-" * len(head)]
    for r in rows:
        note = r.get("error") or json.dumps(r.get("setting_at_0.95")) + (
            f"  tuned {r['tuned_params']} -> eval recall {r['eval_recall_at_tuned']}" if "tuned_params" in r else "")
        lines.append(f"{r['rows']:>8}  {r['engine']:<9} {str(r.get('factory'))[:34]:<34} {r.get('build_s', '-')!s:>8} "
                     f"{r.get('peak_rss_mb', '-')!s:>11} {r.get('qps_at_0.95') or '-'!s:>9} "
                     f"{r.get('speedup_vs_flat') or '-'!s:>7} {r.get('latency_ms_at_0.95') or '-'!s:>10}  {note}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print(f"matplotlib is not installed: no plot at {path} (the table and JSON are written)")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["rows"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(7 * len(sizes), 5), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for r in (r for r in rows if r["rows"] == n and r.get("sweep")):
            pts = r["sweep"]
            ax.plot([p["recall"] for p in pts], [p["qps"] for p in pts], "o-", label=f"{r['engine']}: {r['factory']}")
        ax.axvline(TARGET, color="grey", ls="--", lw=1)
        ax.set(xscale="linear", yscale="log", xlabel="recall@10 (text queries vs exact)", ylabel="queries / s",
               title=f"{n:,} vectors, dim {DIM}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--autofaiss-python", default=os.environ.get("AUTOFAISS_PYTHON"),
                        help="a Python with autofaiss installed (it pins numpy<2, so it lives in its own venv)")
    parser.add_argument("--autofaiss-error", default="autofaiss not run (no --autofaiss-python)")
    parser.add_argument("--timeout-s", type=int, default=900, help="per index build + sweep")
    parser.add_argument("--engines", nargs="+", default=["mmsearch", "hnswlib", "autofaiss"])
    parser.add_argument("--hnswlib", type=int, nargs=2, metavar=("M", "EF_CONSTRUCTION"),
                        help="hnswlib build parameters (default: 32 100 up to 300k rows, 16 40 above)")
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--out", default=str(ROOT / "results" / "index.json"))
    parser.add_argument("--worker", nargs="+")
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        fn = {"mmsearch": worker_mmsearch, "hnswlib": lambda d, m, e: worker_hnswlib(d, int(m), int(e)),
              "autofaiss": worker_autofaiss}[kind]
        print(json.dumps(fn(Path(args.data), *rest)))
        return
    started = time.perf_counter()
    rows = [r for n in args.sizes for r in bench_size(n, args)]
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
            "dim": DIM, "k": K, "target_recall": TARGET, "eval_queries": EVAL_QUERIES,
            "total_s": round(time.perf_counter() - started)}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    plot(rows, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
