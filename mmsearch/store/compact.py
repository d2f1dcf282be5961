"""Merging small shards, so that a collection written a few rows at a time stays a few files.

Every write that embeds something commits at least one shard. A pipeline that adds one image per run would
otherwise leave one file per run: after 400 one-row writes each write took 3.4 s instead of 0.06 s, because
the index update, the no-match moments and the incremental checks read every shard, and every version lists
every shard (`benchmarks/README.md`, many small writes). LanceDB (``optimize``/``compact_files``) and Delta Lake
(``OPTIMIZE``) leave this to the user; here a write does it at its end, so nobody has to remember.

Policy: a shard is *small* under half the run's ``shard_rows``; a run of at least :data:`MIN_RUN` consecutive
small shards is rewritten as shards of at most ``shard_rows`` rows (:meth:`Store.merge_shards`: same rows, same
order, deleted rows kept as rows, so tombstones and index positions stay valid). Large shards are never read
again. The merged shard is small until it holds ``shard_rows / 2`` rows, so a one-row-per-write pipeline rewrites
at most ``shard_rows / 2`` rows every :data:`MIN_RUN` writes. Old files stay for the versions that list them
and go with those versions (:mod:`.vacuum`).
"""

from __future__ import annotations

import logging
from typing import Sequence

import pyarrow as pa

from ..errors import MMSearchError
from .manifest import MODALITIES, ShardInfo

log = logging.getLogger(__name__)

#: consecutive small shards before they are merged
MIN_RUN = 8


def small_runs(shards: Sequence[ShardInfo], shard_rows: int, min_run: int = MIN_RUN) -> list[list[ShardInfo]]:
    """The runs of at least ``min_run`` consecutive shards with fewer than ``shard_rows / 2`` rows each."""
    limit = max(1, shard_rows // 2)
    runs: list[list[ShardInfo]] = [[]]
    for shard in shards:
        if shard.rows < limit:
            runs[-1].append(shard)
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if len(run) >= min_run]


def compact(store, shard_rows: int, min_run: int = MIN_RUN) -> dict[str, int]:  # noqa: ANN001 - a writing Store
    """Merge the small-shard runs of every modality; returns per modality how many shards went (0: untouched).
    The caller commits (inside its transaction: one version with the rest of its write)."""
    removed = {}
    for modality in MODALITIES:
        before = len(store.manifest.shards[modality])
        for run in small_runs(store.manifest.shards[modality], shard_rows, min_run):
            try:
                store.merge_shards(modality, run, shard_rows)
            except (MMSearchError, OSError, pa.ArrowException) as exc:  # the write itself is done: never lose it
                log.warning("left %d small %s shards unmerged (%s); the next write tries again", len(run),
                            modality, str(exc)[:160])
        removed[modality] = before - len(store.manifest.shards[modality])
        if removed[modality]:
            log.info("merged small %s shards: %d -> %d files", modality, before, len(store.manifest.shards[modality]))
    return removed
