"""The distributed index build: train once on the driver, add shards in Ray tasks, merge the parts.

    driver: choose the factory, train on the same seeded sample as :func:`mmsearch.indexes.build_index`
            -> faiss.serialize_index(trained, empty index) -> ray.put (shipped once)
    tasks:  each deserialises it, reads a contiguous run of the collection's Parquet shards (live rows)
            and adds them with their collection ids -> returns its part (serialised, or a file)
    driver: merges the parts *in shard order* (``merge_from``; or ``faiss.contrib.ondisk.merge_ondisk``
            into on-disk inverted lists when the merged index would exceed ``merge_memory_bytes``),
            then tunes, saves and registers it with the single-machine code (same manifest entry).

Because training is the single-machine training and the parts are merged in shard order, every
inverted list holds the same ids in the same order as an index built on one machine: searches give
the same results. Only IVF indexes (optionally behind an OPQ/PCA pre-transform) merge this way;
Flat, HNSW and refine (``Refine(...)``) indexes are built on the driver as before.

An index kept in parts (``IndexOptions.index_shards`` > 1, any index kind) is not merged: the task parts are
the index's parts, saved apart and searched together, exactly the parts the single-machine build makes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..api import with_probe_queries
from ..encoders.base import Encoder
from ..errors import CorruptShardError
from ..indexes import IndexInfo, IndexOptions, IndexRequest, needs_update, resolve_options, update_index
from ..indexes.build import add_batches, new_index, train_on_sample
from ..indexes.choice import estimate_memory_bytes
from ..indexes.faiss_index import INDEX_DIR, finish_index, full_build_reason, with_ids
from ..indexes.source import plan_parts, sample
from ..indexes.structure import find_layer, layers
from ..ingest import IngestReport
from ..store import MODALITIES, ShardInfo, Store
from ..store.schema import embeddings_to_numpy
from .faults import ClusterEvents, loss_errors

log = logging.getLogger(__name__)

#: seconds each index part task waits before it starts (tests set it in the workers' environment to kill a node
#: while parts are running; unset in normal use)
PART_DELAY_ENV = "MMSEARCH_RAY_PART_DELAY_S"

__all__ = ["build_index_distributed", "build_indexes_distributed", "is_mergeable", "plan_parts"]


def build_indexes_distributed(store: Store, report: IngestReport, encoder: Encoder, request: IndexRequest | None = None,
                              *, ray: Any, parts: int, merge_memory_bytes: int | None = None,
                              shard_root: str | None = None, num_cpus_per_task: float = 1,
                              resources: dict[str, float] | None = None, events: ClusterEvents | None = None,
                              max_retries: int = 3) -> dict[str, IndexInfo]:
    """:func:`mmsearch.api.build_indexes` with full (re)builds of IVF indexes done by ``parts`` Ray tasks.

    Incremental updates (new shards added to a saved index, deletions applied) and non-IVF indexes run
    on the driver exactly as on one machine. ``request``: what is asked of the indexes (``request.parts`` > 1
    keeps the index as that many parts, one Ray task each, searched together instead of one merged index;
    default: the collection's, else 1). ``shard_root``: where the tasks read the shards (a path or
    fsspec URL they all see; default the store's own directory).
    ``resources``: Ray custom resources per task; a task lost with its worker or node is run again up to
    ``max_retries`` times, each loss recorded in ``events``.
    """
    tasks = _TaskOptions(num_cpus_per_task, resources, events if events is not None else ClusterEvents(), max_retries)
    built = {}
    for modality in MODALITIES:
        opts = resolve_options(store, modality, request)
        if modality not in report.changed and not needs_update(store, modality, opts):
            continue
        opts = with_probe_queries(opts, store, modality, encoder)
        result = None
        why = full_build_reason(store, modality, opts) if store.manifest.live_rows(modality) else None
        if why is not None:
            result = build_index_distributed(store, modality, opts, ray=ray, parts=parts, update=why,
                                             merge_memory_bytes=merge_memory_bytes, shard_root=shard_root,
                                             num_cpus_per_task=num_cpus_per_task, tasks=tasks)
            if result is not None and why != "built":
                log.warning("rebuilt the %s index: %s", modality, why.removeprefix("rebuilt: "))
        if result is None:
            result = update_index(store, modality, opts)
        if result:
            built[modality] = result
    return built


def is_mergeable(index: Any) -> bool:
    """True for an (empty, trained or not) index whose parts can be merged: IVF, no refine layer."""
    return find_layer(index, "IndexIVF") is not None and find_layer(index, "IndexRefine") is None


def build_index_distributed(store: Store, modality: str, options: IndexOptions, *, ray: Any, parts: int,
                            update: str = "built", merge_memory_bytes: int | None = None,
                            shard_root: str | None = None, num_cpus_per_task: float = 1,
                            tasks: _TaskOptions | None = None) -> IndexInfo | None:
    """Build, tune, save and register the index of ``modality`` with its vectors added by Ray tasks.

    Returns None (nothing done) when the index kind cannot be merged (Flat, HNSW, refine) and one index
    is asked for: build it on the driver then. An index kept in parts (``options.index_shards`` > 1) of any kind
    keeps the tasks' parts as its parts (``parts`` is then ``options.index_shards``).
    ``merge_memory_bytes``: when the merged index is estimated above it (and is a plain IVF, no
    pre-transform), the parts are written as files beside the index and merged into on-disk inverted
    lists (``index/<modality>.vN.ivfdata``, referred to by its absolute path).
    """
    import faiss

    started = time.perf_counter()
    opts = options
    tasks = tasks or _TaskOptions(num_cpus_per_task)
    rows, dim = store.manifest.live_rows(modality), store.manifest.model.dim
    if rows == 0:
        return None
    factory = opts.factory_for(rows, dim)
    index = new_index(factory, dim)
    in_parts = opts.index_shards > 1
    if not in_parts and not is_mergeable(index):
        return None
    trained = train_on_sample(index, lambda n: sample(store, modality, n, seed=opts.seed)[1], rows,
                              max_sample_bytes=opts.max_index_memory_bytes // 4)
    state = {"trained_rows": trained, "rows_since_training": 0, "masked_rows": 0}
    if in_parts:
        return _build_in_parts(store, modality, opts, with_ids(index), factory, ray=ray, started=started, state=state,
                              update=update, shard_root=shard_root, tasks=tasks)
    top_ivf = isinstance(faiss.downcast_index(index), faiss.IndexIVF)
    if not top_ivf:
        index = faiss.IndexIDMap2(index)  # as faiss_index.with_ids wraps a pre-transformed IVF
    ondisk = bool(merge_memory_bytes) and top_ivf and estimate_memory_bytes(factory, rows, dim) > merge_memory_bytes
    groups = plan_parts(store.manifest.shards[modality], parts)
    part_dir = store.root / INDEX_DIR / f".parts-{modality}" if ondisk else None
    if part_dir is not None:
        part_dir.mkdir(parents=True, exist_ok=True)
    refs = _fill_parts(ray, store, modality, index, groups, opts, shard_root=shard_root, tasks=tasks, part_dir=part_dir)
    log.info("adding the %d %s shards in %d Ray tasks (%s, trained on %d rows)", len(store.manifest.shards[modality]),
             modality, len(groups), factory, trained)
    data_files = []
    if ondisk:  # named for the version it is built for, like the index file: never rewritten under a reader
        data_files = [f"{INDEX_DIR}/{modality}.v{store.next_version():08d}.ivfdata"]
        index = _merge_ondisk(ray, index, refs, store.root / data_files[0])
    else:
        index = _merge_in_memory(ray, refs)
    if top_ivf:
        faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)  # ids removable, as with_ids
    if part_dir is not None:
        for p in part_dir.glob("part-*.faiss"):
            p.unlink()
        part_dir.rmdir()
    log.info("merged %d parts into the %s index %s over %d vectors", len(groups), modality, factory, index.ntotal)
    return finish_index(store, modality, [index], opts, factory, started, state, update, data_files=data_files)


def _build_in_parts(store: Store, modality: str, opts: IndexOptions, index: Any, factory: str, *, ray: Any,
                   started: float, state: dict[str, int], update: str, shard_root: str | None,
                   tasks: _TaskOptions) -> IndexInfo:
    """One Ray task per part of an index kept in parts (the single-machine build's parts), kept apart, not merged."""
    import faiss

    groups = plan_parts(store.manifest.shards[modality], opts.index_shards)
    refs = _fill_parts(ray, store, modality, index, groups, opts, shard_root=shard_root, tasks=tasks)
    log.info("filling the %d parts of the %s index %s in Ray tasks", len(groups), modality, factory)
    parts = [faiss.deserialize_index(refs.get(i)) for i in range(len(refs))]
    return finish_index(store, modality, parts, opts, factory, started, state, update)


@dataclasses.dataclass
class _TaskOptions:
    """How the index tasks run: CPUs and custom resources each, and how lost ones are retried and recorded."""

    num_cpus: float = 1
    resources: dict[str, float] | None = None
    events: ClusterEvents = dataclasses.field(default_factory=ClusterEvents)
    max_retries: int = 3


class _Parts:
    """The part tasks of one build, in group order; :meth:`get` runs a lost one again (its worker, its node, or
    the node holding its finished result went away), logged and counted in the run's events."""

    def __init__(self, ray: Any, tasks: _TaskOptions, modality: str, calls: list[tuple[Any, ...]]) -> None:
        self.ray, self.tasks, self.modality, self.calls = ray, tasks, modality, calls
        # Ray's own retries are off (max_retries=0): this class retries, so that each loss is seen and said
        self.remote = ray.remote(num_cpus=tasks.num_cpus, resources=tasks.resources or None, max_retries=0,
                                 scheduling_strategy="SPREAD")(add_part)
        self.refs = [self.remote.remote(*args) for args in calls]
        self.attempts = [0] * len(calls)
        self.lost = loss_errors(ray)
        self.done = 0
        self._tick()

    def __len__(self) -> int:
        return len(self.calls)

    def _tick(self) -> None:
        if self.tasks.events.progress is not None:
            self.tasks.events.progress("index", self.done, len(self.calls))

    def get(self, i: int) -> Any:
        while True:
            try:
                out = self.ray.get(self.refs[i])
            except self.lost as exc:
                self.tasks.events.lost(self.ray, f"{self.modality} index part {i} of {len(self.calls)}", exc, node=None,
                                       attempt=self.attempts[i], retries=self.tasks.max_retries)
                if self.attempts[i] >= self.tasks.max_retries:
                    raise
                self.attempts[i] += 1
                self.refs[i] = self.remote.remote(*self.calls[i])
                continue
            self.refs[i] = None  # let the object store free it
            self.done += 1
            self._tick()
            return out


def _fill_parts(ray: Any, store: Store, modality: str, index: Any, groups: list[list[ShardInfo]], opts: IndexOptions, *,
                shard_root: str | None, tasks: _TaskOptions, part_dir: Path | None = None) -> _Parts:
    """One :func:`add_part` Ray task per group of shards, each filling a copy of the trained empty ``index``
    (shipped once, with the deleted ids), in group order. With ``part_dir`` the parts are files there."""
    import faiss

    trained_ref = ray.put(faiss.serialize_index(index))
    deleted_ref = ray.put(np.asarray(store.manifest.deleted[modality], dtype=np.int64))
    root = shard_root or str(store.root)
    calls = [(trained_ref, root, [dataclasses.asdict(s) for s in group], deleted_ref, store.manifest.model.dim,
              opts.add_batch_rows, str(part_dir / f"part-{i:05d}.faiss") if part_dir is not None else None)
             for i, group in enumerate(groups)]
    return _Parts(ray, tasks, modality, calls)


def _merge_in_memory(ray: Any, refs: _Parts) -> Any:
    """Merge the serialised parts in order, holding one part besides the result at a time."""
    import faiss

    merged = None
    for i in range(len(refs)):
        part = faiss.deserialize_index(refs.get(i))
        if merged is None:
            merged = part
        else:
            merge_part(merged, part)
            del part
    return merged


def merge_part(merged: Any, part: Any) -> None:
    """Append ``part``'s vectors to ``merged`` (both IVF, or both IDMap2 around a pre-transformed IVF).

    An IDMap2's inner IVF holds positions, not ids: the part's are shifted past ``merged``'s and its id
    map appended (FAISS's own IndexIDMap2.merge_from does not shift them).
    """
    import faiss

    top = faiss.downcast_index(merged)
    if not isinstance(top, faiss.IndexIDMap2):
        merged.merge_from(part, 0)
        return
    other = faiss.downcast_index(part)
    offset = int(merged.ntotal)
    faiss.extract_index_ivf(merged).merge_from(faiss.extract_index_ivf(part), offset)
    ids = np.concatenate([faiss.vector_to_array(top.id_map), faiss.vector_to_array(other.id_map)]).astype(np.int64)
    faiss.copy_array_to_vector(ids, top.id_map)
    for layer in _layers_above_ivf(merged):
        layer.ntotal = len(ids)
    top.construct_rev_map()


def _layers_above_ivf(index: Any) -> list[Any]:
    import faiss

    return [layer for layer in layers(index) if not isinstance(layer, faiss.IndexIVF)]


def _merge_ondisk(ray: Any, trained: Any, refs: _Parts, ivfdata: Path) -> Any:
    """Merge part files into on-disk inverted lists at ``ivfdata`` (absolute path, beside the index file)."""
    from faiss.contrib.ondisk import merge_ondisk

    files = [refs.get(i) for i in range(len(refs))]
    ivfdata.unlink(missing_ok=True)
    merge_ondisk(trained, files, str(ivfdata.resolve()))
    return trained


def add_part(trained: Any, root: str, shards: list[dict[str, Any]], deleted: np.ndarray, dim: int, batch_rows: int,
             out_file: str | None) -> Any:
    """A Ray task: the trained empty index + the live rows of ``shards`` -> the serialised part (or its file)."""
    import faiss

    delay = float(os.environ.get(PART_DELAY_ENV, "0") or 0)
    if delay > 0:  # fault injection for the cluster tests: a part stays in flight long enough to lose its node
        time.sleep(delay)
    index = faiss.deserialize_index(trained)
    add_batches(index, _shard_batches(root, [ShardInfo(**s) for s in shards], deleted, dim, batch_rows))
    if out_file is None:
        return faiss.serialize_index(index)
    tmp = f"{out_file}.tmp"
    faiss.write_index(index, tmp)
    Path(tmp).replace(out_file)
    return out_file


def _shard_batches(root: str, shards: Sequence[ShardInfo], deleted: np.ndarray, dim: int, batch_rows: int):
    """(ids, vectors) of the live rows of ``shards`` under ``root`` (a path or an fsspec URL), one shard in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..store.remote import filesystem_for

    fs, base = filesystem_for(root)
    for shard in shards:
        path = f"{base.rstrip('/')}/{shard.file}"
        try:
            table = pq.read_table(path, columns=["id", "embedding"], filesystem=fs)
        except (OSError, pa.ArrowException) as exc:
            raise CorruptShardError(path, str(exc)) from exc
        if table.num_rows != shard.rows:
            raise CorruptShardError(path, f"{table.num_rows} rows, manifest says {shard.rows}")
        ids = table.column("id").to_numpy().astype(np.int64)
        vectors = embeddings_to_numpy(table.column("embedding"), dim)
        if len(deleted):
            keep = ~np.isin(ids, deleted)
            ids, vectors = ids[keep], vectors[keep]
        for start in range(0, len(ids), batch_rows):
            yield ids[start:start + batch_rows], vectors[start:start + batch_rows]
