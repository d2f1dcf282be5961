"""Creating, training and filling FAISS indexes: a sample for training, batches for adding.

When the installed faiss has GPUs (faiss-gpu) and ``$MMSEARCH_FAISS_GPU`` is not ``0``, IVF indexes use
them for the k-means of training and for the coarse assignment while adding; the CPU otherwise. The
index itself stays a CPU index (saved, memory-mapped and searched like any other).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..errors import IndexBuildError
from .structure import find_layer

log = logging.getLogger(__name__)

TRAIN_POINTS_PER_LIST = 30
TRAIN_MIN_ROWS = 10_000  # enough for 256-centroid PQ sub-quantizers
KMEANS_ITERATIONS = 10
OPQ_ITERATIONS = 10


def new_index(factory: str, dim: int) -> Any:
    """An empty inner-product index from a FAISS factory string (IndexBuildError when FAISS refuses it)."""
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexBuildError(f"FAISS cannot build index {factory!r} (dim {dim}): {_first_line(exc)}") from exc


def train_rows(index: Any, rows: int) -> int:
    """How many rows to train ``index`` on: a few dozen per inverted list, enough for PQ, at most all."""
    if index.is_trained:
        return 0
    ivf = find_layer(index, "IndexIVF")
    wanted = max(TRAIN_MIN_ROWS, TRAIN_POINTS_PER_LIST * (ivf.nlist if ivf is not None else 0))
    return min(rows, wanted)


def train_on_sample(index: Any, read_sample: Callable[[int], np.ndarray], rows: int, *, max_sample_bytes: int) -> int:
    """Train ``index`` on ``read_sample(n)`` rows (n bounded by the memory share); returns n (0: no training)."""
    n = train_rows(index, rows)
    if n == 0:
        return 0
    n = max(1, min(n, max_sample_bytes // (4 * index.d)))
    vectors = np.ascontiguousarray(read_sample(n), dtype=np.float32)
    _quiet_clustering(index)
    _shorter_opq_training(index)
    _no_polysemous_training(index)
    try:
        with _gpu_kmeans(index):
            index.train(vectors)
    except RuntimeError as exc:
        raise IndexBuildError(f"training the index on {len(vectors)} vectors failed: {_first_line(exc)}") from exc
    return len(vectors)


def add_batches(index: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> int:
    """Add every (ids, vectors) batch to ``index``; returns how many vectors were added."""
    added = 0
    with _gpu_coarse_quantizer(index):
        for ids, vectors in batches:
            if len(ids):
                try:
                    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids))
                except RuntimeError as exc:
                    raise IndexBuildError(f"adding vectors to the index failed: {_first_line(exc)}") from exc
                added += len(ids)
    return added


def faiss_gpus() -> int:
    """GPUs the installed faiss can use for building (0 with faiss-cpu or ``MMSEARCH_FAISS_GPU=0``)."""
    import faiss

    from ..config import faiss_gpu_allowed

    if not faiss_gpu_allowed() or not hasattr(faiss, "index_cpu_to_all_gpus"):
        return 0
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


@contextlib.contextmanager
def _gpu_coarse_quantizer(index: Any) -> Iterator[None]:
    """While adding to an IVF index, assign vectors to lists with a GPU copy of its coarse quantizer.

    The assignment (a search of every vector against nlist centroids) is most of the cost of adding
    to an IVF index; the encoding into the inverted lists stays on the CPU. The CPU quantizer is put
    back afterwards, so what is saved is an ordinary CPU index.
    """
    ivf = find_layer(index, "IndexIVF")
    if ivf is None or not ivf.is_trained or faiss_gpus() == 0:
        yield
        return
    import faiss

    cpu_quantizer = ivf.quantizer
    try:
        gpu_quantizer = faiss.index_cpu_to_all_gpus(cpu_quantizer)
    except RuntimeError as exc:  # e.g. an HNSW quantizer, which faiss cannot copy to a GPU
        log.info("adding on the CPU: cannot copy the coarse quantizer to the GPU (%s)", _first_line(exc))
        yield
        return
    log.info("assigning vectors to inverted lists on %d GPU(s)", faiss_gpus())
    ivf.quantizer = gpu_quantizer
    try:
        yield
    finally:
        ivf.quantizer = cpu_quantizer


def _quiet_clustering(index: Any) -> None:
    """Fewer k-means iterations, and no FAISS stderr warnings about small samples (we size them)."""
    ivf = find_layer(index, "IndexIVF")
    if ivf is not None:
        ivf.cp.niter = KMEANS_ITERATIONS
        ivf.cp.min_points_per_centroid = 1
        ivf.cp.max_points_per_centroid = 1 << 20
        pq = getattr(ivf, "pq", None)
        if pq is not None:
            pq.cp.min_points_per_centroid = 1


def _shorter_opq_training(index: Any) -> None:
    """OPQ's default 50 outer x 40 inner iterations dominate a build on a CPU; 10 x 10 lose little."""
    import faiss

    top = faiss.downcast_index(index)
    if isinstance(top, faiss.IndexPreTransform):
        for i in range(top.chain.size()):
            transform = faiss.downcast_VectorTransform(top.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter, transform.niter_pq_0 = OPQ_ITERATIONS, OPQ_ITERATIONS


def _no_polysemous_training(index: Any) -> None:
    """Skip FAISS's polysemous training of 8-bit PQ codes (on by default): mmsearch never searches with
    polysemous Hamming thresholds, and the training was ~15x the rest of an ``OPQ16_64,IVF32,PQ16x8`` build."""
    for kind in ("IndexIVFPQ", "IndexPQ"):
        layer = find_layer(index, kind)
        if layer is not None:
            layer.do_polysemous_training = False


@contextlib.contextmanager
def _gpu_kmeans(index: Any) -> Iterator[None]:
    """While training an IVF index, run its k-means assignment on the GPUs (the clustering index is
    held here, not only by the SWIG pointer, so it lives until training ends, and is detached after)."""
    ivf = find_layer(index, "IndexIVF")
    gpus = faiss_gpus()
    if ivf is None or gpus == 0:
        yield
        return
    import faiss

    log.info("training the IVF coarse quantizer on %d GPU(s)", gpus)
    clustering = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
    ivf.clustering_index = clustering
    try:
        yield
    finally:
        ivf.clustering_index = None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
