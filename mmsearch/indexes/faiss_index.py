"""FAISS indexes built from a collection's shards, kept up to date, saved beside them, loaded for queries.

A build chooses the factory (:mod:`.choice`), trains on a seeded sample, adds the shards in bounded
batches, tunes the search parameters to the target recall (:mod:`.tuning`), and records all of it in
the manifest and ``index/<modality>.json``. An update adds new shards and applies new deletions to the
saved index, or rebuilds it (and says why) when the index would drift: too many vectors added after
training, too many deleted vectors only filtered at query time, or a collection that outgrew its kind.

A sharded index (``IndexOptions.index_shards`` > 1) is trained once and filled as that many parts, each
over a contiguous run of Parquet shards, saved as ``index/<modality>.shards/part-NNNNN.faiss`` and
searched together (:class:`~.searching.ShardedSearchIndex`). Updates add new rows to the last part and
apply deletions to every part; the manifest entry lists the part files (``part_files``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import IndexBuildError, IndexNotFoundError, StoreError
from ..modality import other as other_modality
from ..modality import singular
from ..store import Store
from ..store.atomic import file_sha256, write_bytes_atomic, write_with_atomic
from ..store.records import IndexRecord
from .build import add_batches, new_index, train_on_sample
from .calibration import collection_moments, threshold_from_null_scores, write_moments
from .choice import AUTO
from .options import IndexOptions
from .searching import SearchIndex, ShardedSearchIndex
from .source import iter_batches, plan_parts, read_vectors, sample, shard_key
from .structure import find_layer, knob_limits, removes_ids, unwrap_ids
from .tuning import ExactNeighbours, Tuning, drop_self, tune

log = logging.getLogger(__name__)

INDEX_DIR = "index"
DEFAULT_FACTORY = AUTO
MIN_CROSS_MODAL_QUERIES = 20
MMAP_MIN_BYTES = 16 * 1024**2
#: an in-place update keeps the tuned search parameters and the score moments (the no-match signal) while the
#: rows it and the updates before it added and deleted stay within this share of the rows they were tuned on;
#: beyond it, or on a rebuild, both are computed again. Tuning reads every shard for exact neighbours, the
#: moments every row: 5 of the 6.3 s of a one-row write into 200k rows.
RETUNE_SHARE = 0.05
#: an update whose last part already holds this many vectors starts a new part for its rows: a version then
#: writes that small part, not the whole index again (FAISS saves whole indexes), and shares the other parts'
#: files with the versions before it (a one-row write into 200k rows wrote a 315 MB file per version)
PART_ROWS = 32_768
#: parts an update may leave before the index is rebuilt as the layout asked for
MAX_PARTS = 16
#: an exact (Flat) index of at most this many rows keeps no score-moments file: a query computes the moments
#: from the index's own vectors (~5 ms at 384-d). The file is dim x dim (0.6 MB at 384-d, 1 MB at 512-d) whatever
#: the rows, so for a collection of a few hundred items it was most of what each small write wrote.
MOMENTS_IN_INDEX_ROWS = 1024


IndexInfo = IndexRecord  # the index layer's name for the record the store keeps


def index_files(info: IndexInfo) -> list[str]:
    """The files (relative to the collection) an index is saved in: its parts, or its one file."""
    return info.index_files()


def _saved(store: Store, modality: str) -> IndexInfo | None:
    """The record of ``modality``'s index when every file of it is there."""
    info = store.manifest.indexes.get(modality)
    if info is None or not all((store.root / f).is_file() for f in info.needed_files()):
        return None
    return info


def fingerprint(store: Store, modality: str) -> str:
    """Changes whenever the live rows of ``modality`` change."""
    m = store.manifest
    h = hashlib.sha256()
    for s in m.shards[modality]:
        h.update(f"{s.file}:{s.sha256};".encode())
    h.update(",".join(map(str, sorted(m.deleted[modality]))).encode())
    return h.hexdigest()[:32]


def is_current(store: Store, modality: str) -> bool:
    """True when the saved index of ``modality`` matches the collection's current rows."""
    info = _saved(store, modality)
    return info is not None and info.fingerprint == fingerprint(store, modality)


def follow_merged_shards(store: Store, modality: str) -> None:
    """After :func:`mmsearch.store.compact.compact` rewrote shards of ``modality`` (same rows, new files): an index
    that was current before (the caller checked, with :func:`is_current`) holds every row still, so its record
    now names the new shards instead of being rebuilt for them."""
    info = store.manifest.indexes.get(modality)
    if info is None:
        return
    info = dataclasses.replace(info, shards=[shard_key(s) for s in store.manifest.shards[modality]],
                               fingerprint=fingerprint(store, modality))
    write_bytes_atomic(store.root / INDEX_DIR / f"{modality}.json", json.dumps(asdict(info), indent=2).encode())
    store.manifest.indexes[modality] = info


def needs_update(store: Store, modality: str, options: IndexOptions) -> bool:
    """True when the saved index is stale or was built with other options."""
    saved = store.manifest.indexes.get(modality)
    if not saved or not is_current(store, modality):
        return store.manifest.live_rows(modality) > 0 or bool(saved)
    return _option_key(saved) != _option_key(options)


def _option_key(options: IndexOptions | IndexInfo | dict[str, Any]) -> tuple[Any, ...]:
    """What a saved index must have been built with to be updated in place rather than rebuilt."""
    get = options.get if isinstance(options, dict) else lambda name: getattr(options, name)
    factory = get("factory") if isinstance(options, IndexOptions) else get("requested")
    return factory, get("max_index_memory_bytes"), get("target_recall"), get("index_shards") or 1


def build_index(store: Store, modality: str, options: IndexOptions | None = None, *,
                factory: str | None = None) -> IndexInfo | None:
    """Build, tune, save and register the index of ``modality`` from scratch; None when it has no rows.

    ``factory`` overrides ``options.factory`` (``"auto"`` or a FAISS factory string).
    """
    opts = options or IndexOptions()
    if factory is not None:
        opts = dataclasses.replace(opts, factory=factory)
    if store.manifest.live_rows(modality) == 0:
        _forget(store, modality)
        return None
    return _build(store, modality, opts, "built")


def update_index(store: Store, modality: str, options: IndexOptions | None = None) -> IndexInfo | None:
    """Bring the index of ``modality`` up to date: add new shards, apply deletions, or rebuild.

    Rebuilds (logging why, and recording it in ``IndexInfo.update``) when the options or model
    changed, a shard was rewritten, or the index would drift past the options' limits.
    """
    opts = options or IndexOptions()
    if store.manifest.live_rows(modality) == 0:
        _forget(store, modality)
        return None
    why = full_build_reason(store, modality, opts)
    if why is None:
        try:
            return _apply_changes(store, modality, store.manifest.indexes[modality], opts)
        except RuntimeError as exc:  # FAISS cannot read the saved file: damage its record had no checksum to show
            why = f"rebuilt: the saved index cannot be read ({str(exc).strip().splitlines()[-1][:80]})"
    if why != "built":
        log.warning("rebuilding the %s index: %s", modality, why.removeprefix("rebuilt: "))
    return _build(store, modality, opts, why)


def full_build_reason(store: Store, modality: str, options: IndexOptions) -> str | None:
    """``"built"`` (no saved index) or ``"rebuilt: <why>"`` when :func:`update_index` would build ``modality``'s
    index from scratch; None when it would update the saved one in place."""
    saved = _saved(store, modality)
    if saved is None:
        return "built"
    reason = _rebuild_reason(store, modality, saved, options)
    return f"rebuilt: {reason}" if reason else None


def load_index(store: Store, modality: str, *, mmap: bool | None = None) -> SearchIndex:
    """Load the saved index of ``modality``; checks it was built under the collection's model.

    ``mmap`` memory-maps the inverted lists of IVF indexes (read-only, fast start, little RAM); by
    default it is on for indexes (all parts together) of at least ``MMAP_MIN_BYTES``.
    """
    import faiss

    info = _saved(store, modality)
    if info is None:
        raise IndexNotFoundError(singular(modality), str(store.root))
    if info.model_spec != store.manifest.model.spec or info.dim != store.manifest.model.dim:
        raise StoreError(f"index {info.file} was built for model {info.model_spec!r}; rebuild it with `mmsearch index`")
    files = index_files(info)
    use_mmap = mmap if mmap is not None else sum((store.root / f).stat().st_size for f in files) >= MMAP_MIN_BYTES
    indexes = []
    for rel in files:
        try:
            indexes.append(_no_prefetch(faiss.read_index(str(store.root / rel), faiss.IO_FLAG_MMAP if use_mmap else 0)))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1][:120] if str(exc).strip() else "unreadable"
            raise StoreError(f"index file {rel} is damaged ({reason}); `mmsearch index` rebuilds it") from exc
    masked = masked_ids(store, modality, info)
    return searcher(indexes, info, masked_ids=masked, vector_reader=lambda ids: read_vectors(store, modality, ids),
                    sharded=bool(info.part_files))


def _no_prefetch(index: Any) -> Any:
    """Memory-mapped (and on-disk) inverted lists start 32 prefetch threads on every search by default. For
    pages already cached that is pure overhead: one query took 2.7x, a batch 1.85x as long (100k x 512,
    IVF256, nprobe 16). Reading is left to the page cache."""
    import faiss

    ivf = find_layer(index, "IndexIVF")
    if ivf is not None:
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        if isinstance(lists, faiss.OnDiskInvertedLists):
            lists.prefetch_nthread = 0
    return index


def searcher(indexes: list[Any], info: IndexInfo, *, sharded: bool, masked_ids: np.ndarray | None = None,
             vector_reader: Any = None) -> SearchIndex | ShardedSearchIndex:
    """One index, or the parts of a sharded one searched together."""
    if not sharded:
        return SearchIndex(indexes[0], info, masked_ids=masked_ids, vector_reader=vector_reader)
    parts = [SearchIndex(index, info, masked_ids=masked_ids) for index in indexes]
    return ShardedSearchIndex(parts, info, masked_ids=masked_ids, vector_reader=vector_reader)


# -- building --------------------------------------------------------------------------------------
def _build(store: Store, modality: str, opts: IndexOptions, update: str) -> IndexInfo:
    started = time.perf_counter()
    rows, dim = store.manifest.live_rows(modality), store.manifest.model.dim
    factory = opts.factory_for(rows, dim)
    index = new_index(factory, dim)
    trained = train_on_sample(index, lambda n: sample(store, modality, n, seed=opts.seed)[1], rows,
                              max_sample_bytes=opts.max_index_memory_bytes // 4)
    index = with_ids(index)
    shards = store.manifest.shards[modality]
    truth = _TruthOnTheWay(store, modality, opts)  # the tuning's exact neighbours, from the same read as the add
    if opts.index_shards == 1:
        parts = [index]
        add_batches(index, truth.seen(iter_batches(store, shards, opts.add_batch_rows)))
    else:  # every part starts as a copy of the trained, empty index
        import faiss

        empty = faiss.serialize_index(index)
        parts = []
        for group in plan_parts(shards, opts.index_shards):
            parts.append(faiss.deserialize_index(empty))
            add_batches(parts[-1], truth.seen(iter_batches(store, group, opts.add_batch_rows)))
    log.info("built the %s index %s over %d vectors%s", modality, factory, sum(p.ntotal for p in parts),
             f" in {len(parts)} parts" if opts.index_shards > 1 else "")
    state = {"trained_rows": trained, "rows_since_training": 0, "masked_rows": 0}
    return finish_index(store, modality, parts, opts, factory, started, state, update, tuning_set=truth.result())


@dataclass(frozen=True)
class TuningSet:
    """The queries an index is tuned on, their exact top-k ids among the collection's live rows, and where
    they come from (``exclude``: each held-out query's own id, dropped from its neighbours)."""

    queries: np.ndarray
    exclude: np.ndarray | None
    tuned_on: str
    truth: np.ndarray


class _TruthOnTheWay:
    """The tuning set's exact neighbours: from the batches a build adds as they pass (``seen``), or a read of their own."""

    def __init__(self, store: Store, modality: str, opts: IndexOptions) -> None:
        self.queries, self.exclude, self.tuned_on = _tuning_queries(store, modality, opts)
        self.k = opts.recall_at_k
        self._exact = ExactNeighbours(self.queries, self.k + (self.exclude is not None))

    def seen(self, batches: Any) -> Any:
        """``batches``, passed on unchanged once counted in."""
        for ids, vectors in batches:
            self._exact.add(ids, vectors)
            yield ids, vectors

    def over(self, batches: Any) -> TuningSet:
        """The tuning set over ``batches`` read for this alone."""
        for ids, vectors in batches:
            self._exact.add(ids, vectors)
        return self.result()

    def result(self) -> TuningSet:
        truth = drop_self(self._exact.result(), self.exclude, self.k)
        return TuningSet(self.queries, self.exclude, self.tuned_on, truth)


def with_ids(index: Any) -> Any:
    """IVF indexes keep collection ids themselves (hash direct map: removal + reconstruction); others get an IDMap2."""
    import faiss

    if isinstance(faiss.downcast_index(index), faiss.IndexIVF):
        faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)
        return index  # not the downcast proxy: that one does not own the index
    return faiss.IndexIDMap2(index)


def _apply_changes(store: Store, modality: str, info: IndexInfo, opts: IndexOptions) -> IndexInfo:

    started = time.perf_counter()
    parts = _read_parts(store, info)  # checked readable by the caller
    indexed = set(info.shards)
    new_shards = [s for s in store.manifest.shards[modality] if shard_key(s) not in indexed]
    deleted = np.asarray(store.manifest.deleted[modality][info.deletions_applied:], dtype=np.int64)
    changed = info.changed_since_tuning + sum(s.rows for s in new_shards) + len(deleted)
    keep = info if info.tuned_rows and changed <= RETUNE_SHARE * info.tuned_rows else None
    batches = iter_batches(store, new_shards, opts.add_batch_rows)
    grown = len(parts)
    if new_shards and not info.data_files and parts[-1].ntotal >= PART_ROWS:
        parts.append(_empty_like(parts[-1]))  # the new rows start a part of their own
    added = add_batches(parts[-1], batches)  # new rows: the last part
    if len(parts) > grown and not added:
        parts.pop()
    masked = info.masked_rows
    touched = {len(parts) - 1} if added else set()
    for i, index in enumerate(parts if len(deleted) else []):
        # a large part that is not written anyway keeps its deleted rows, filtered at query time: a deletion
        # then writes no big file again (PART_ROWS); past max_deleted_share the index is rebuilt
        if info.removes_ids and (index.ntotal < PART_ROWS or i in touched):
            if index.remove_ids(deleted):  # ids a part does not hold are skipped
                touched.add(i)
            continue
        masked += int(_held(index, deleted).sum())
    state = {"trained_rows": info.trained_rows, "masked_rows": masked,
             "rows_since_training": info.rows_since_training + (added if info.trained_rows else 0)}
    update = f"updated: +{added} vectors, {len(deleted)} deletions" + ("" if keep else ", tuned again")
    log.info("%s index %s", modality, update)
    return finish_index(store, modality, parts, opts, info.factory, started, state, update,
                        unchanged=set(range(len(parts))) - touched, previous=info, data_files=info.data_files,
                        keep_tuning=keep, changed_since_tuning=changed if keep else 0)


def _read_parts(store: Store, info: IndexInfo) -> list[Any]:
    """The saved parts of ``info``'s index, for an update. A part with PART_ROWS vectors or more is never changed by
    one (new rows go to the last part or, past PART_ROWS, to a new one; its deletions are filtered): it is
    memory-mapped, not read, so a one-row write into a large collection does not load the whole index."""
    import faiss

    parts = []
    for rel in index_files(info):
        path = str(store.root / rel)
        if not info.data_files:  # a large last part is not changed either: new rows start a part of their own
            mapped = faiss.read_index(path, faiss.IO_FLAG_MMAP)
            if mapped.ntotal >= PART_ROWS:
                parts.append(mapped)
                continue
        parts.append(faiss.read_index(path))
    return parts


def _held(index: Any, ids: np.ndarray) -> np.ndarray:
    """Per id, whether ``index`` holds it (True where that cannot be told: counted as masked)."""
    _, labels = unwrap_ids(index)
    if labels is not None:
        return np.isin(ids, labels)
    if find_layer(index, "IndexIVF") is None:
        return np.ones(len(ids), dtype=bool)
    held = np.zeros(len(ids), dtype=bool)
    for n, i in enumerate(ids.tolist()):  # IVF keeps ids in its direct map (a hash table): a lookup per id
        try:
            index.reconstruct(int(i))
            held[n] = True
        except RuntimeError:
            pass
    return held


def masked_ids(store: Store, modality: str, info: IndexInfo) -> np.ndarray | None:
    """The deleted ids a search of ``info``'s index must filter out (None: the index holds none of them)."""
    if info.removes_ids and not info.masked_rows:
        return None
    return np.asarray(store.manifest.deleted[modality], dtype=np.int64)


def _empty_like(index: Any) -> Any:
    """An empty index of the same kind, training and id mapping as ``index`` (its vectors left out).

    An IVF index is cloned with empty inverted lists swapped in for the clone: FAISS has no call for an empty
    copy, and cloning the lists only to drop them cost the first update after a build at 200k rows 3.2 s and
    850 MB, and is impossible for memory-mapped lists (which an update may then hold: :func:`_read_parts`)."""
    import faiss

    ivf = find_layer(index, "IndexIVF")
    if ivf is None:
        empty = faiss.clone_index(index)
        empty.reset()
        return empty
    ivf = faiss.extract_index_ivf(index)
    lists, owned = ivf.invlists, ivf.own_invlists
    blank = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.own_invlists = False  # swapping must not free the index's own lists
    ivf.replace_invlists(blank, False)
    try:
        empty = faiss.clone_index(index)
    finally:
        ivf.replace_invlists(lists, owned)
    empty.reset()
    return empty


def _rebuild_reason(store: Store, modality: str, info: IndexInfo, opts: IndexOptions) -> str:
    """Why the saved index cannot simply be updated ("" when it can)."""
    m = store.manifest
    if _option_key(info) != _option_key(opts):
        return "the index options changed"
    if info.model_spec != m.model.spec or info.dim != m.model.dim:
        return "the model changed"
    current = {shard_key(s): s.rows for s in m.shards[modality]}
    if not set(info.shards) <= set(current) or len(m.deleted[modality]) < info.deletions_applied:
        return "shards were rewritten or removed"
    return _drift_reason(store, modality, info, opts, sum(r for k, r in current.items() if k not in set(info.shards)))


def _drift_reason(store: Store, modality: str, info: IndexInfo, opts: IndexOptions, new_rows: int) -> str:
    live = store.manifest.live_rows(modality)
    if opts.factory == AUTO:
        choice = opts.factory_for(live, info.dim)
        if _family(choice) != _family(info.factory):
            return f"the collection now has {live} vectors, for which the automatic choice is {choice} (was {info.factory})"
    if len(info.part_files) > max(MAX_PARTS, info.index_shards):
        return f"the index is in {len(info.part_files)} parts after updates (limit {MAX_PARTS}): one again"
    untrained = info.rows_since_training + new_rows
    if info.trained_rows and untrained > opts.max_untrained_share * live:
        return (f"{untrained} of {live} vectors were added after training (limit {opts.max_untrained_share:.0%}): "
                "retraining keeps recall up")
    masked = info.masked_rows + len(store.manifest.deleted[modality]) - info.deletions_applied
    if (not info.removes_ids or info.rows >= PART_ROWS) and masked > opts.max_deleted_share * (info.rows + new_rows):
        return f"{masked} deleted vectors are only filtered out (limit {opts.max_deleted_share:.0%} of the index)"
    return ""


def _family(factory: str) -> str:
    """A factory without its sizes: ``IVF1024,Flat`` and ``IVF4096,Flat`` are one family."""
    return re.sub(r"\d+", "", factory)


# -- tuning, saving, registering --------------------------------------------------------------------
def finish_index(store: Store, modality: str, parts: list[Any], opts: IndexOptions, factory: str, started: float,
                 state: dict[str, int], update: str, unchanged: set[int] = frozenset(),
                 tuning_set: TuningSet | None = None, previous: IndexInfo | None = None,
                 data_files: list[str] | None = None, keep_tuning: IndexInfo | None = None,
                 changed_since_tuning: int = 0) -> IndexInfo:
    """Tune the filled index (its parts, when ``opts.index_shards`` > 1; else ``parts == [index]``), save it,
    and register it in the manifest and ``index/<modality>.json`` (then drop files of an earlier layout).

    ``state``: ``trained_rows``, ``rows_since_training`` and ``masked_rows`` of the index. ``unchanged``: parts
    (by position) that are still as saved, in the same layout: their files are not written again.
    ``tuning_set``: the tuning queries with their exact neighbours, when the caller computed them on its way
    (else they are computed here, reading the shards once more). ``previous``: the saved index an update
    started from (its unchanged parts keep their files). ``data_files``: files the index refers to.
    ``keep_tuning``: an earlier record whose tuned parameters and score moments still hold (an update that changed few rows:
    :data:`RETUNE_SHARE`), kept instead of tuning again (its moments file too), with ``changed_since_tuning`` rows
    changed since.
    """
    model = store.manifest.model
    sharded = opts.index_shards > 1 or len(parts) > 1  # asked for, or parts an update started (PART_ROWS)
    # files get the name of the version they are built for: a published index file is never rewritten in place
    stem = f"{INDEX_DIR}/{modality}.v{store.next_version():08d}"
    rel = f"{stem}.shards" if sharded else f"{stem}.faiss"
    part_files = [f"{rel}/part-{i:05d}.faiss" for i in range(len(parts))] if sharded else []
    kept_files = index_files(previous) if previous is not None else []
    if sharded and kept_files:  # parts kept as saved keep their names (a single file becomes the first part)
        part_files = [kept_files[i] if i in unchanged and i < len(kept_files) else f for i, f in enumerate(part_files)]
    elif not sharded and previous is not None and not previous.part_files and 0 in unchanged:
        rel = previous.file  # one file, as saved (deletions only filtered): the versions share it
    info = IndexInfo(
        modality=modality, factory=factory, rows=sum(int(p.ntotal) for p in parts) - state["masked_rows"], dim=model.dim,
        metric=model.metric, model_spec=model.spec, file=rel, fingerprint=fingerprint(store, modality),
        requested=opts.factory, max_index_memory_bytes=opts.max_index_memory_bytes, target_recall=opts.target_recall,
        recall_at_k=opts.recall_at_k, removes_ids=removes_ids(parts[0]), deletions_applied=len(store.manifest.deleted[modality]),
        shards=[shard_key(s) for s in store.manifest.shards[modality]], update=update, index_shards=opts.index_shards,
        part_files=part_files, data_files=list(data_files or []), **state,
    )
    if keep_tuning is not None:
        tuning = Tuning(params=dict(keep_tuning.params), recall=keep_tuning.recall, target_met=keep_tuning.target_met,
                        latency_ms=keep_tuning.latency_ms)
        tuned_on, tuned_rows = keep_tuning.tuned_on, keep_tuning.tuned_rows
    else:
        tuning, tuned_on = _tune(store, modality, parts, info, opts, tuning_set)
        tuned_rows, changed_since_tuning = store.manifest.live_rows(modality), 0
    for _i, (index, file) in enumerate(zip(parts, index_files(info))):
        if file not in kept_files:  # a published file is never written again
            _save(store, index, file)
    if 0 < info.rows <= MOMENTS_IN_INDEX_ROWS and not sharded and not state["masked_rows"] and _is_flat(parts[0]):
        info = dataclasses.replace(info, moments_in_index=True)
    elif info.rows > 0 and keep_tuning is not None and keep_tuning.moments_file:  # kept with the tuning (same file)
        info = dataclasses.replace(info, moments_file=keep_tuning.moments_file)
    elif info.rows > 0:  # the no-match signal's moments: versioned with the index, listed in needed_files
        info = dataclasses.replace(info, moments_file=f"{stem}.moments.npy")
        write_moments(store.root / info.moments_file, collection_moments(store, modality))
    files = {f: _stamp(store, f, previous) for f in info.needed_files()}
    info = dataclasses.replace(
        info, params=tuning.params, recall=tuning.recall, target_met=tuning.target_met, latency_ms=tuning.latency_ms,
        tuned_on=tuned_on, tuned_rows=tuned_rows, changed_since_tuning=changed_since_tuning,
        files=files,  # file_bytes: the index itself (what a query maps), not the moments beside it
        file_bytes=sum(files[f]["bytes"] for f in [*info.index_files(), *info.data_files]),
        build_seconds=round(time.perf_counter() - started, 4))
    if opts.null_queries is not None and len(opts.null_queries):
        masked = masked_ids(store, modality, info)
        best = searcher(parts, info, masked_ids=masked, sharded=sharded).search(
            np.ascontiguousarray(opts.null_queries, dtype=np.float32), 1, params=tuning.params)[0][:, 0]
        info = dataclasses.replace(info, no_match_threshold=threshold_from_null_scores(best))
    if not tuning.target_met:
        log.warning("the %s index %s reaches recall@%d %.3f at most, below the target %.3f", modality, factory,
                    opts.recall_at_k, tuning.recall, opts.target_recall)
    write_bytes_atomic(store.root / INDEX_DIR / f"{modality}.json", json.dumps(asdict(info), indent=2).encode())
    store.manifest.indexes[modality] = info
    store.commit()  # files of an earlier layout or version go when no version lists them (Store.vacuum)
    return info


def _is_flat(index: Any) -> bool:
    """Whether ``index`` keeps its vectors exactly (a Flat index, with or without an id map)."""
    import faiss

    return isinstance(unwrap_ids(index)[0], faiss.IndexFlat)


def _stamp(store: Store, rel: str, previous: IndexInfo | None) -> dict[str, Any]:
    """Size, time and checksum of an index file (a kept part's from the saved record)."""
    if previous is not None and rel in previous.files:
        return previous.files[rel]
    st = (store.root / rel).stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(store.root / rel)}


def _tune(store: Store, modality: str, parts: list[Any], info: IndexInfo, opts: IndexOptions,
          tuning_set: TuningSet | None) -> tuple[Tuning, str]:
    """Tune on held-out queries of the other modality when there are enough, else of this one."""
    if tuning_set is None:
        batches = iter_batches(store, store.manifest.shards[modality], opts.add_batch_rows)
        tuning_set = _TruthOnTheWay(store, modality, opts).over(batches)
    queries, exclude, tuned_on, truth = tuning_set.queries, tuning_set.exclude, tuning_set.tuned_on, tuning_set.truth
    k = opts.recall_at_k
    masked = masked_ids(store, modality, info)
    index = searcher(parts, info, masked_ids=masked, sharded=bool(info.part_files))

    def search(q: np.ndarray, n: int, params: dict) -> np.ndarray:
        return index.search(q, n, params=params)[1]

    limits = knob_limits(parts[0])
    return tune(search, queries, truth, k=k, target_recall=opts.target_recall, limits=limits, exclude=exclude), tuned_on


def _tuning_queries(store: Store, modality: str, opts: IndexOptions) -> tuple[np.ndarray, np.ndarray | None, str]:
    other = other_modality(modality)
    if store.manifest.live_rows(other) >= MIN_CROSS_MODAL_QUERIES:
        return sample(store, other, opts.tuning_queries, seed=opts.seed + 1)[1], None, other
    if opts.probe_queries is not None and len(opts.probe_queries) >= MIN_CROSS_MODAL_QUERIES:
        return np.ascontiguousarray(opts.probe_queries, dtype=np.float32), None, f"{other} (generic probes)"
    ids, vectors = sample(store, modality, opts.tuning_queries, seed=opts.seed + 1)
    return vectors, ids, f"{modality} (held out)"


def _save(store: Store, index: Any, rel: str) -> None:
    import faiss

    try:
        write_with_atomic(store.root / rel, lambda tmp: faiss.write_index(index, str(tmp)))
    except RuntimeError as exc:
        raise IndexBuildError(f"FAISS cannot save the index to {rel}: {exc}") from exc


def _forget(store: Store, modality: str) -> None:
    """No rows left: the index is dropped from the manifest (its files go with the versions that list them)."""
    (store.root / INDEX_DIR / f"{modality}.json").unlink(missing_ok=True)
    if store.manifest.indexes.pop(modality, None) is not None:
        store.commit()
