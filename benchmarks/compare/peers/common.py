"""Shared by the peer scripts (standard library + numpy only: every peer venv has numpy).

Every ``*_query.py`` script writes the same JSON: per query the top-10 paths the system returns and the exact
top-10 over that system's own stored embeddings (same query vector), the latency of each query, and an ``.npz``
with the system's stored image embeddings keyed by path (to check that all systems used the same weights).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

K = 10


def exact_topk(matrix: np.ndarray, paths: Sequence[str], q: np.ndarray, k: int = K) -> list[str]:
    scores = matrix @ np.asarray(q, dtype=np.float32).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:k]
    return [paths[i] for i in order]


def normalise(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    return m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)


def run_queries(queries: Sequence[str], search: Callable[[str], list[str]],
                warmup: int = 2) -> tuple[list[list[str]], list[float]]:
    """Call ``search`` once per query (after ``warmup`` untimed calls); return results and per-query ms."""
    for q in queries[:warmup]:
        search(q)
    results, ms = [], []
    for q in queries:
        t = time.perf_counter()
        results.append(search(q))
        ms.append((time.perf_counter() - t) * 1e3)
    return results, ms


def write(out: str, *, system: str, queries: Sequence[str], returned: list[list[str]], exact: list[list[str]],
          latency_ms: list[float], paths: Sequence[str], matrix: np.ndarray, extra: dict | None = None) -> None:
    recall = [len(set(r) & set(e)) / max(1, len(e)) for r, e in zip(returned, exact)]
    np.savez(Path(out).with_suffix(".npz"), paths=np.array([str(Path(p).resolve()) for p in paths]),
             vectors=normalise(matrix))
    Path(out).write_text(json.dumps({
        "system": system, "queries": list(queries), "returned": returned, "exact": exact,
        "latency_ms": latency_ms, "latency_p50_ms": statistics.median(latency_ms),
        "recall_at_10": statistics.mean(recall), "rows": len(paths), **(extra or {}),
    }, indent=1))
