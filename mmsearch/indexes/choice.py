"""Which FAISS index to build: a factory string chosen from the row count, the dim and a memory budget.

The rules follow autofaiss's approach (factory strings, a memory estimate per candidate, the first
candidate that fits wins), tuned for CLIP-like unit vectors and for the operations mmsearch needs
(incremental add, deletions):

- up to ``FLAT_MAX_ROWS`` rows: ``Flat`` (exact; a query costs at most a few ms)
- more: ``IVF{nlist},Flat`` (deletions are removed; lists memory-mapped at query time). HNSW is not
  chosen automatically: on cross-modal (text -> image) queries it needs efSearch ~250 for recall@10
  0.95 and was 4x slower than IVF-Flat at the same recall in benchmarks/index.py (the big-ann
  text2image effect); ask for it with a factory string (``HNSW32``) when queries are same-modality.
- when raw vectors do not fit the budget: ``OPQ{m}_{4m},IVF{nlist},PQ{m}x8`` with a ``Refine(SQ8)``
  re-ranking step when the 1-byte-per-dim copy also fits, else the largest ``m`` that fits.
"""

from __future__ import annotations

import math
import re

from ..errors import ConfigError, IndexBuildError

AUTO = "auto"
FLAT_MAX_ROWS = 20_000
HNSW_M = 32
PQ_M_CHOICES = (64, 32, 16, 8)
IVF_HNSW_QUANTIZER_MIN_LISTS = 16_384
DEFAULT_MAX_INDEX_MEMORY_BYTES = 4 * 1024**3

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2, "MIB": 1024**2,
          "G": 1024**3, "GB": 1024**3, "GIB": 1024**3, "T": 1024**4, "TB": 1024**4, "TIB": 1024**4}


def parse_bytes(text: str | int) -> int:
    """``"4GB"``, ``"512MiB"``, ``"1.5G"`` or a plain integer -> bytes (binary units: 1 GB = 2**30)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        if not match or match.group(2).upper() not in _UNITS:
            raise ConfigError(f"cannot read {text!r} as a size; write e.g. 4GB, 512MB or 1073741824")
        value, unit = float(match.group(1)), match.group(2).upper()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise ConfigError(f"a memory size must be positive, not {text!r}")
    return size


def ivf_lists(rows: int) -> int:
    """Inverted lists for ``rows`` vectors: the power of two nearest 4·sqrt(rows), at least 1."""
    if rows < 64:
        return 1
    return 2 ** round(math.log2(4 * math.sqrt(rows)))


def estimate_memory_bytes(factory: str, rows: int, dim: int) -> int:
    """Approximate RAM of ``factory`` over ``rows`` vectors of ``dim`` (codes, ids, graph, centroids)."""
    ids = 16 * rows  # id map / hash direct map
    nlist = _int_after("IVF", factory)
    centroids = nlist * dim * 4 if nlist else 0
    if "HNSW" in factory and not nlist:
        m = _int_after("HNSW", factory) or HNSW_M
        return rows * (_code_bytes(factory, dim) + 2 * m * 4 + 8) + ids
    code = _code_bytes(factory, dim)
    opq = dim * dim * 4 if factory.startswith("OPQ") else 0
    return rows * code + ids + centroids + opq


def _code_bytes(factory: str, dim: int) -> int:
    """Bytes per vector of the stored codes (refinement copy included)."""
    refine = dim if "Refine(SQ8)" in factory else (4 * dim if "RFlat" in factory or "Refine(Flat)" in factory else 0)
    body = factory.split(",Refine")[0].split(",RFlat")[0]
    pq = re.search(r"PQ(\d+)(?:x(\d+))?", body.split(",")[-1])
    if pq:
        return math.ceil(int(pq.group(1)) * int(pq.group(2) or 8) / 8) + refine
    if "SQ8" in body:
        return dim + refine
    if "SQfp16" in body:
        return 2 * dim + refine
    return 4 * dim + refine


def _int_after(prefix: str, factory: str) -> int:
    match = re.search(prefix + r"(\d+)", factory)
    return int(match.group(1)) if match else 0


def candidates(rows: int, dim: int) -> list[str]:
    """Factory strings suited to ``rows`` vectors, most preferred first."""
    nlist = ivf_lists(rows)
    ivf = f"IVF{nlist}_HNSW32" if nlist >= IVF_HNSW_QUANTIZER_MIN_LISTS else f"IVF{nlist}"
    compressed = [f"{_opq(m, dim)},{ivf},PQ{m}x8,Refine(SQ8)" for m in PQ_M_CHOICES[:1]]
    compressed += [f"{ivf},SQ8"] + [f"{_opq(m, dim)},{ivf},PQ{m}x8" for m in PQ_M_CHOICES]
    if rows <= FLAT_MAX_ROWS:
        return ["Flat", *compressed]
    return [f"{ivf},Flat", *compressed]


def _opq(m: int, dim: int) -> str:
    """OPQ rotation to ``min(4m, dim)`` dims (a multiple of m), as autofaiss does."""
    out = min(4 * m, dim - dim % m) if dim >= m else dim
    return f"OPQ{m}_{out}"


def choose_factory(rows: int, dim: int, max_index_memory_bytes: int = DEFAULT_MAX_INDEX_MEMORY_BYTES) -> str:
    """The first candidate for ``rows`` x ``dim`` whose estimated memory fits the budget."""
    if rows < 0 or dim < 1:
        raise ConfigError(f"rows must be >= 0 and dim >= 1 (got {rows}, {dim})")
    options = candidates(rows, dim)
    for factory in options:
        if _usable(factory, rows, dim) and estimate_memory_bytes(factory, rows, dim) <= max_index_memory_bytes:
            return factory
    smallest = min(estimate_memory_bytes(f, rows, dim) for f in options if _usable(f, rows, dim))
    raise IndexBuildError(
        f"no index of {rows} vectors (dim {dim}) fits in {max_index_memory_bytes} bytes; the smallest needs "
        f"about {smallest} bytes: raise --max-index-memory"
    )


def _usable(factory: str, rows: int, dim: int) -> bool:
    """PQ needs enough rows to train 256 centroids per sub-quantizer, and m dividing the rotated dim."""
    if "PQ" not in factory:
        return True
    match = re.search(r",PQ(\d+)", factory)
    return rows >= 10_000 and dim >= int(match.group(1) if match else 1)
