"""Reading a collection's vectors for indexing: shard by shard, in bounded batches, or a seeded sample.

Reads the Parquet shards the manifest lists through the store's one shard reader, never all at once.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from ..store import ShardInfo, Store, arrow
from ..store.schema import embeddings_to_numpy

Batch = tuple[np.ndarray, np.ndarray]  # (ids int64 (n,), vectors float32 (n, dim))


def shard_key(shard: ShardInfo) -> str:
    """Identity of a shard's content: its file and checksum."""
    return f"{shard.file}:{shard.sha256}"


def read_shard(store: Store, shard: ShardInfo, *, ids: np.ndarray | None = None) -> Batch:
    """Live rows of one shard (optionally only ``ids``) as (ids, float32 vectors)."""
    return _as_batch(store.read_shard(shard, ["id", "embedding"], ids=ids), store.manifest.model.dim)


def _as_batch(table: pa.Table, dim: int) -> Batch:
    return arrow.int64_values(table.column("id")), embeddings_to_numpy(table.column("embedding"), dim)


def iter_batches(store: Store, shards: Sequence[ShardInfo], batch_rows: int) -> Iterator[Batch]:
    """Live rows of ``shards`` in batches of at most ``batch_rows``; memory is one shard."""
    for shard in shards:
        ids, vectors = read_shard(store, shard)
        for start in range(0, len(ids), batch_rows):
            yield ids[start:start + batch_rows], vectors[start:start + batch_rows]


def plan_parts(shards: Sequence[ShardInfo], parts: int) -> list[list[ShardInfo]]:
    """Split ``shards`` into at most ``parts`` contiguous runs of about equal row counts (order kept)."""
    total = sum(s.rows for s in shards)
    parts = max(1, min(parts, len(shards)))
    out: list[list[ShardInfo]] = [[]]
    done = 0
    for shard in shards:
        if out[-1] and len(out) < parts and done >= total * len(out) / parts:
            out.append([])
        out[-1].append(shard)
        done += shard.rows
    return [group for group in out if group]


def read_vectors(store: Store, modality: str, wanted: np.ndarray) -> Batch:
    """The stored vectors of the live ``wanted`` ids of ``modality`` (ids not found are left out)."""
    wanted = np.asarray(wanted, dtype=np.int64)
    parts = [read_shard(store, s, ids=wanted) for s in store.manifest.shards[modality]]
    return _concat(parts, store.manifest.model.dim)


def sample(store: Store, modality: str, rows: int, *, seed: int) -> Batch:
    """A seeded uniform sample of about ``rows`` live rows (all of them when fewer), read shard by shard."""
    shards = store.manifest.shards[modality]
    total = sum(s.rows for s in shards)
    if total == 0:
        return _concat([], store.manifest.model.dim)
    share = min(1.0, rows / max(store.manifest.live_rows(modality), 1))
    rng = np.random.default_rng(seed)
    parts = []
    for shard in shards:
        table = store.read_shard(shard, ["id", "embedding"])
        keep = rng.random(table.num_rows) < share
        kept = table.filter(arrow.array(keep, pa.bool_()))
        parts.append(_as_batch(kept, store.manifest.model.dim))  # converts the kept rows only
    ids, vectors = _concat(parts, store.manifest.model.dim)
    return ids[:rows], vectors[:rows]


def _concat(parts: Sequence[Batch], dim: int) -> Batch:
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
