"""The on-disk collection: a sequence of immutable versions of shards, deletions, indexes and metadata.

Readers (:meth:`Store.open`) read the current version and hold a lease on it: they see it whole until they
open again, whatever writers do meanwhile. Writers (:meth:`Store.open_or_create`, or a reader's first write)
hold the writer lock (:mod:`.lock`) for as long as they write. Inside :meth:`Store.transaction` a writer's
commits are checkpoints (``_draft.json``: a killed run resumes from its last one) and the transaction
publishes one new version at its end; outside one, each :meth:`Store.commit` publishes a version.

A publish is: every new file written under a new name, then the version file (put-if-absent: a second
writer that raced us fails instead of overwriting), then ``manifest.json`` renamed into place. A run killed
at any point leaves the previous version current and intact.

The writer that opens a collection first repairs what it finds damaged (:mod:`.repair`) and removes files no
version lists (a killed writer's); old versions go in :meth:`Store.vacuum` (:mod:`.vacuum`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import (
    CollectionNotFoundError,
    CommitConflictError,
    CorruptShardError,
    EncoderMismatchError,
    StoreError,
    VersionGoneError,
)
from . import arrow
from .atomic import file_sha256, write_bytes_atomic, write_with_atomic
from .lock import DEFAULT_WAIT_S, WriterLock
from .manifest import (
    DAMAGED_DIR,
    MANIFEST_NAME,
    MODALITIES,
    Manifest,
    ModelInfo,
    ShardInfo,
    UnreadableManifestError,
    file_stamp,
    read_manifest,
    save_deletions,
)
from .schema import embedding_array, embeddings_to_numpy, shard_schema, write_parquet
from .versions import DRAFT_NAME, Lease, highest_number, list_versions, take_lease, version_path, write_version

log = logging.getLogger(__name__)

#: how long a superseded version stays for readers that hold no lease (see docs/sharing.md)
DEFAULT_RETENTION_S = 3600.0
_NORM_TOLERANCE = 0.02
#: rows per row group of a labels file (a hit's labels are read from the groups holding its id)
LABEL_ROW_GROUP = 16_384


class Store:
    """A collection directory opened at one version, for reading or (holding the writer lock) for writing."""

    def __init__(self, root: Path, manifest: Manifest, *, lease: Lease | None = None, lock: WriterLock | None = None,
                 wait_s: float | None = DEFAULT_WAIT_S) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self._lease = lease
        self._lock = lock
        self._wait_s = wait_s
        self._base = manifest.version  # the published version this store started from
        self._transactions = 0
        self._dirty = False  # changes not yet in a published version
        self._deleted_sets: dict[str, tuple[int, set[int]]] = {}  # mark_deleted's lookups: (id of the list, its ids)
        self._shard_numbers: dict[str, int] = {}

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, lenient: bool = False) -> Store:
        """Open the current version of an existing collection for reading (raises :class:`CollectionNotFoundError`).
        ``lenient`` (for checking it): a damaged deletion file is left out instead of raised."""
        root = Path(path).expanduser()
        for _ in range(20):
            manifest = read_current(root, lenient=lenient)
            lease = take_lease(root, manifest.version)
            if lease is None and _pointer_version(root) == manifest.version:
                lease = Lease(None, manifest.version)  # a copy without that version's file (pulled, or older)
            if lease is not None:
                return cls(root, manifest, lease=lease)
            time.sleep(0.01)  # the version went between reading and leasing it: read the newer one
        raise StoreError(f"could not open a stable version of {str(root)!r}; is something removing its versions?")

    @classmethod
    def lock(cls, path: str | Path, wait_s: float | None = DEFAULT_WAIT_S) -> WriterLock:
        """Take the writer lock of the collection at ``path`` (creating its directory), waiting up to ``wait_s``;
        hand it to :meth:`open_or_create` to write (a caller takes it first to learn it is busy before slow work)."""
        root = Path(path).expanduser()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create collection {str(root)!r}: {exc.strerror}") from exc
        return WriterLock(root).acquire(wait_s)

    @classmethod
    def open_or_create(cls, path: str | Path, model: ModelInfo, *, embedding_dtype: str = "float16",
                       wait_s: float | None = DEFAULT_WAIT_S, lock: WriterLock | None = None) -> Store:
        """Open a collection for writing (taking the writer lock, waiting up to ``wait_s`` for it, unless ``lock``
        from :meth:`lock` is given: the store then owns it), creating it if absent; the model must match.
        Resumes an interrupted write, repairs damage, removes a killed run's files."""
        root = Path(path).expanduser()
        lock = lock if lock is not None and lock.held else cls.lock(root, wait_s)
        try:
            if exists(root):
                store = cls(root, read_current(root, lenient=True), lock=lock, wait_s=wait_s)
                check_model(store.manifest.model, model)
                store._prepare_for_writing(outermost=not lock.nested)
            else:
                store = cls(root, Manifest(model=model, embedding_dtype=embedding_dtype, operation="create"),
                            lock=lock, wait_s=wait_s)
                store._base = -1
                store.publish("create")
        except BaseException:
            lock.release()
            raise
        return store

    @classmethod
    def open_for_writing(cls, path: str | Path, *, wait_s: float | None = DEFAULT_WAIT_S) -> Store:
        """Open an existing collection for writing (its own model)."""
        root = Path(path).expanduser()
        if not exists(root):
            raise CollectionNotFoundError(str(root))
        return cls.open_or_create(root, read_current(root, lenient=True).model, wait_s=wait_s)

    @property
    def version(self) -> int:
        """The published version this store reads (a writer's: the one it started from or last published)."""
        return self._base

    @property
    def in_transaction(self) -> bool:
        """Whether commits are checkpoints now (inside :meth:`transaction`)."""
        return self._transactions > 0

    @property
    def writing(self) -> bool:
        """Whether this store holds the writer lock."""
        return self._lock is not None and self._lock.held

    def writer(self) -> str | None:
        """Who is writing the collection right now (pid, host, since, command), or None."""
        from .lock import describe_holder, is_locked

        return describe_holder(self.root) if is_locked(self.root) else None

    def close(self) -> None:
        """Let go of the writer lock and the reader lease (a transaction still open keeps its draft)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- versions --------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, operation: str) -> Iterator[Store]:
        """Group writes into one version: commits inside are checkpoints, the end publishes (when anything
        changed). An exception leaves the checkpointed work in the draft, for the next writer to resume."""
        self._require_writer()
        self._transactions += 1
        try:
            yield self
        finally:
            self._transactions -= 1
        if self._transactions == 0:
            if self._dirty:
                self.publish(operation)
            else:
                (self.root / DRAFT_NAME).unlink(missing_ok=True)

    def commit(self) -> None:
        """Make the in-memory manifest durable: a checkpoint inside a transaction, else a new version."""
        self._require_writer()
        self._dirty = True
        if self._transactions:
            save_deletions(self.root, self.manifest)
            draft = json.loads(self.manifest.to_json())
            draft["base_version"] = self._base
            write_bytes_atomic(self.root / DRAFT_NAME, json.dumps(draft, indent=2, sort_keys=True).encode("utf-8"))
        else:
            self.publish()

    def publish(self, operation: str = "") -> int:
        """Publish the in-memory manifest as a new version; returns its number."""
        self._require_writer()
        save_deletions(self.root, self.manifest)
        current = _pointer_version(self.root)
        if current is not None and self._base >= 0 and current != self._base:
            raise CommitConflictError(str(self.root), current)
        number = max(highest_number(self.root), self._base) + 1
        self._record_id_ranges()
        self.manifest.version = number
        self.manifest.operation = operation or self.manifest.operation or "commit"
        self.manifest.updated_at = time.time()
        data = self.manifest.to_json().encode("utf-8")
        try:
            write_version(self.root, number, data)
        except FileExistsError as exc:
            self.manifest.version = self._base
            raise CommitConflictError(str(self.root), number) from exc
        write_bytes_atomic(self.root / MANIFEST_NAME, data)
        (self.root / DRAFT_NAME).unlink(missing_ok=True)
        self._base, self._dirty = number, False
        if self._lease is not None:  # a reader that wrote now reads what it wrote
            self._lease.release()
            self._lease = take_lease(self.root, number)
        log.debug("published version %d of %s", number, self.root)
        return number

    def _record_id_ranges(self) -> None:
        """Give shards listed without an id range (written by an mmsearch before the ranges, or one that dropped
        them) the range their Parquet footer states: once, by the next writer, so that reads by id open only the
        shards that can hold the ids. A shard whose footer cannot say is left as it is."""
        for modality, shards in self.manifest.shards.items():
            if all(s.id_min is not None or s.rows == 0 for s in shards):
                continue
            self.manifest.shards[modality] = [s if s.id_min is not None or s.rows == 0 else _with_footer_range(self.root, s)
                                              for s in shards]

    def next_version(self) -> int:
        """The number the next publish will take (index files built for it are named after it)."""
        return max(highest_number(self.root), self._base) + 1

    def vacuum(self, retention_s: float = DEFAULT_RETENTION_S) -> dict[str, int]:
        """Remove versions superseded more than ``retention_s`` ago that no reader holds, then every file no
        remaining version lists. Returns counts: ``versions`` and ``files`` removed, ``leased`` kept for readers."""
        from .vacuum import vacuum

        self._require_writer()
        return vacuum(self, retention_s)

    def _require_writer(self) -> None:
        """Writes need the writer lock: a store opened for reading takes it on its first write."""
        if self.writing:
            return
        self._lock = WriterLock(self.root).acquire(self._wait_s)
        current = _pointer_version(self.root)
        if current is not None and current != self._base:
            self._lock.release()
            self._lock = None
            raise CommitConflictError(str(self.root), current)

    def _prepare_for_writing(self, *, outermost: bool) -> None:
        from .repair import prepare_for_writing

        if prepare_for_writing(self, outermost=outermost):
            self._dirty = True

    # -- writing ---------------------------------------------------------------------------
    def reserve_ids(self, n: int) -> np.ndarray:
        """Ids for ``n`` new rows; they become permanent when the shard holding them commits."""
        self._require_writer()
        start = self.manifest.next_id
        self.manifest.next_id += n
        return np.arange(start, start + n, dtype=np.int64)

    def append(self, modality: str, columns: dict[str, Sequence | np.ndarray], embeddings: np.ndarray) -> ShardInfo:
        """Write one shard of ``modality`` and commit it."""
        info = self.write_shard(modality, columns, embeddings)
        self.commit()
        return info

    def write_shard(self, modality: str, columns: dict[str, Sequence | np.ndarray], embeddings: np.ndarray) -> ShardInfo:
        """Write one shard file and list it in the in-memory manifest; :meth:`commit` makes it count."""
        _check_modality(modality)
        self._require_writer()
        schema = shard_schema(modality, self.manifest.model, self.manifest.embedding_dtype)
        arrays = [arrow.array(columns[f.name], f.type) for f in schema if f.name != "embedding"]
        arrays.append(embedding_array(embeddings, self.manifest.embedding_dtype))
        info = self._write_table(modality, pa.Table.from_arrays(arrays, schema=schema))
        self.manifest.shards[modality].append(info)
        self._dirty = True
        return info

    def merge_shards(self, modality: str, run: Sequence[ShardInfo], max_rows: int) -> list[ShardInfo]:
        """Rewrite ``run`` (consecutive shards of ``modality``) as shards of at most ``max_rows`` rows holding the
        same rows in the same order, deleted ones included (deletions stay tombstones on ids), and list them in
        its place; :meth:`commit` makes it count. The old files stay for the versions that list them."""
        _check_modality(modality)
        self._require_writer()
        listed = self.manifest.shards[modality]
        start = next((i for i, s in enumerate(listed) if s.file == run[0].file), -1) if run else -1
        if start < 0 or [s.file for s in listed[start:start + len(run)]] != [s.file for s in run]:
            raise StoreError(f"merge_shards: not a run of consecutive {modality} shards of this version")
        schema = shard_schema(modality, self.manifest.model, self.manifest.embedding_dtype)
        parts = [self.read_shard(s, schema.names, include_deleted=True) for s in run]
        table = pa.concat_tables([pa.Table.from_arrays([t.column(n) for n in schema.names], schema=schema)
                                  for t in parts])
        merged = [self._write_table(modality, table.slice(i, max_rows)) for i in range(0, table.num_rows, max_rows)]
        listed[start:start + len(run)] = merged
        self._dirty = True
        log.debug("merged %d %s shards (%d rows) into %d", len(run), modality, table.num_rows, len(merged))
        return merged

    def _write_table(self, modality: str, table: pa.Table) -> ShardInfo:
        """Write ``table`` (the shard schema) as a new shard file of ``modality``: its entry, not yet listed."""
        rel = f"{modality}/part-{self._next_shard_number(modality):05d}.parquet"
        write_with_atomic(self.root / rel, lambda tmp: write_parquet(table, tmp))
        stamp = file_stamp(self.root / rel)
        ids = arrow.int64_values(table.column("id"))
        info = ShardInfo(file=rel, rows=table.num_rows, sha256=file_sha256(self.root / rel), created_at=time.time(),
                         bytes=stamp["bytes"], mtime_ns=stamp["mtime_ns"],
                         id_min=int(ids.min()) if len(ids) else None, id_max=int(ids.max()) if len(ids) else None)
        log.debug("wrote %s (%d rows)", rel, info.rows)
        return info

    def mark_deleted(self, modality: str, ids: Sequence[int]) -> int:
        """Tombstone rows in the in-memory manifest (:meth:`commit` persists); returns how many were new."""
        _check_modality(modality)
        listed = self.manifest.deleted[modality]
        cached = self._deleted_sets.get(modality)
        if cached is None or cached[0] != id(listed) or len(cached[1]) != len(listed):
            cached = self._deleted_sets[modality] = (id(listed), set(listed))
        known = cached[1]
        new = []
        for i in map(int, ids):
            if i not in known:
                known.add(i)
                new.append(i)
        if new:
            self._require_writer()
            self._dirty = True
        listed.extend(new)
        return len(new)

    def undelete(self, modality: str, ids: Sequence[int]) -> int:
        """Bring tombstoned rows back, ids unchanged, in the in-memory manifest (:meth:`commit` persists); returns
        how many were deleted. The deletion list is saved whole at the next commit (it no longer only grows). An
        index that had applied one of those deletions may not hold its vector any more, so its record leaves the
        version and the next index build (``mmsearch index`` runs it before publishing) builds it afresh."""
        _check_modality(modality)
        listed = self.manifest.deleted[modality]
        back = {int(i) for i in ids} & set(listed)
        if not back:
            return 0
        self._require_writer()
        index = self.manifest.indexes.get(modality)
        if index is not None and any(i in back for i in listed[: index.deletions_applied]):
            del self.manifest.indexes[modality]
        self.manifest.deleted[modality] = [i for i in listed if i not in back]
        self.manifest.deletion_files[modality] = []  # rewritten as one file at the next save
        self._deleted_sets.pop(modality, None)
        self._dirty = True
        return len(back)

    def remove_orphans(self) -> None:
        """Remove temporaries and files no version lists (a killed writer's); needs the writer lock."""
        from .vacuum import remove_unreferenced

        self._require_writer()
        remove_unreferenced(self)

    def _next_shard_number(self, modality: str) -> int:
        if modality not in self._shard_numbers:  # above every name listed or on disk: a name is never reused
            listed = [_part_number(s.file) for s in self.manifest.shards[modality]]
            on_disk = [_part_number(p.name) for d in (self.root / modality, self.root / DAMAGED_DIR / modality)
                       if d.is_dir() for p in d.glob("part-*")]
            self._shard_numbers[modality] = max([*listed, *on_disk], default=-1) + 1
        number = self._shard_numbers[modality]
        self._shard_numbers[modality] += 1
        return number

    def write_extra(self, modality: str, table: pa.Table) -> None:
        """Replace the user metadata columns of ``modality`` (an ``id`` column plus any others) and commit.

        They live in ``extra/<modality>.vN.parquet``, apart from the shards, so the shards stay one schema.
        """
        _check_modality(modality)
        self._require_writer()
        rel = f"extra/{modality}.v{self.next_version():08d}.parquet"
        write_with_atomic(self.root / rel, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        self.manifest.extra[modality] = {"file": rel, "rows": table.num_rows, "sha256": file_sha256(self.root / rel),
                                         "columns": [c for c in table.column_names if c != "id"],
                                         **file_stamp(self.root / rel)}
        self.commit()

    def write_labels(self, modality: str, table: pa.Table, about: dict | None = None) -> None:
        """Replace the labels of ``modality`` (``id``, ``labels`` list<string>, ``confidences`` list<float32>; one
        row per labelled item) and commit. ``about`` (JSON-able: vocabulary, k, temperature) is kept beside them.

        They live in ``extra/labels-<modality>.vN.parquet``, sorted by id in row groups of
        ``LABEL_ROW_GROUP`` rows, so a hit's labels are read by id from the groups that hold it."""
        _check_modality(modality)
        self._require_writer()
        table = table.sort_by("id")
        rel = f"extra/labels-{modality}.v{self.next_version():08d}.parquet"
        write_with_atomic(self.root / rel, lambda tmp: pq.write_table(table, tmp, compression="zstd",
                                                                       row_group_size=LABEL_ROW_GROUP))
        self.manifest.labels[modality] = {**(about or {}), "file": rel, "rows": table.num_rows,
                                          "sha256": file_sha256(self.root / rel), **file_stamp(self.root / rel)}
        self.commit()

    # -- reading ---------------------------------------------------------------------------
    def read_shard(self, shard: ShardInfo, columns: Sequence[str], *, ids: np.ndarray | None = None,
                   include_deleted: bool = False) -> pa.Table:
        """The one shard reader: ``columns`` (plus ``id``) of one shard's live rows (all rows with
        ``include_deleted``), optionally only ``ids``. Checks the row count against the manifest."""
        path = self.root / shard.file
        cols = list(columns)
        if "id" not in cols:
            cols = ["id", *cols]
        wanted = None if ids is None else np.asarray(ids, dtype=np.int64).reshape(-1)
        if wanted is not None and not shard.may_hold(wanted):  # its recorded id range holds none: no file opened
            schema = shard_schema(_modality_of(shard), self.manifest.model, self.manifest.embedding_dtype)
            return pa.Table.from_batches([], schema=schema).select(cols)  # (Schema.empty_table imports pandas)
        try:
            # ParquetFile, not pq.read_table: that goes through pyarrow.dataset, which imports pandas (a cold
            # query paid ~0.3 s for it). With ``ids``, only the row groups whose id statistics can hold them.
            with pq.ParquetFile(path) as parquet:
                rows = parquet.metadata.num_rows
                if wanted is None:
                    table = parquet.read(columns=cols)
                    rows = table.num_rows
                else:
                    table = parquet.read_row_groups(_row_groups_holding(parquet, wanted), columns=cols)
        except FileNotFoundError as exc:
            raise self._gone_or_corrupt(shard.file, exc) from exc
        except (OSError, pa.ArrowException) as exc:
            raise CorruptShardError(str(path), str(exc)) from exc
        if rows != shard.rows:
            raise CorruptShardError(str(path), f"{rows} rows, manifest says {shard.rows}")
        if wanted is None:
            return table if include_deleted else self._drop_deleted(_modality_of(shard), table)
        have = arrow.int64_values(table.column("id"))
        keep = np.isin(have, wanted)
        deleted = self.manifest.deleted[_modality_of(shard)]
        if not include_deleted and deleted and keep.any():
            keep &= ~np.isin(have, np.asarray(deleted, dtype=np.int64))
        return _rows_where(table, keep)

    def scan(self, modality: str, columns: Sequence[str] | None = None, *, include_deleted: bool = False) -> pa.Table:
        """All rows of a modality as one Arrow table (live rows only unless asked)."""
        _check_modality(modality)
        schema = shard_schema(modality, self.manifest.model, self.manifest.embedding_dtype)
        cols = list(columns) if columns is not None else schema.names
        tables = [self.read_shard(s, cols, include_deleted=include_deleted) for s in self.manifest.shards[modality]]
        return pa.concat_tables(tables) if tables else pa.Table.from_batches([], schema=schema).select(cols)

    def iter_embeddings(self, modality: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids int64, embeddings float32) per shard, live rows only; memory is one shard."""
        dim = self.manifest.model.dim
        for shard in self.manifest.shards[modality]:
            table = self.read_shard(shard, ["id", "embedding"])
            yield arrow.int64_values(table.column("id")), embeddings_to_numpy(table.column("embedding"), dim)

    def read_extra(self, modality: str, *, ids: np.ndarray | Sequence[int] | None = None) -> pa.Table | None:
        """The user metadata columns of ``modality`` (with ``id``), or None when there are none; with ``ids``,
        only their rows (read from the row groups whose id statistics can hold them)."""
        return self._read_side_file(self.manifest.extra.get(modality), ids)

    def read_labels(self, modality: str, *, ids: np.ndarray | Sequence[int] | None = None) -> pa.Table | None:
        """The stored labels of ``modality`` (``id``, ``labels``, ``confidences``), or None when there are none
        (a collection indexed before labels, or by a run that did not label); with ``ids``, only their rows."""
        return self._read_side_file(self.manifest.labels.get(modality), ids)

    def _read_side_file(self, info: dict | None, ids: np.ndarray | Sequence[int] | None) -> pa.Table | None:
        """A file beside the shards (user metadata, labels): all of it, or only the rows of ``ids``."""
        if not info:
            return None
        try:
            # ParquetFile, not pq.read_table: that goes through pyarrow.dataset, which imports pandas
            with pq.ParquetFile(self.root / info["file"]) as parquet:
                if ids is None:
                    return parquet.read()
                wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
                table = parquet.read_row_groups(_row_groups_holding(parquet, wanted))
        except FileNotFoundError as exc:
            raise self._gone_or_corrupt(info["file"], exc) from exc
        except (OSError, pa.ArrowException) as exc:
            raise CorruptShardError(str(self.root / info["file"]), str(exc)) from exc
        return rows_with_ids(table, wanted)

    def iter_tables(self, modality: str, columns: Sequence[str]) -> Iterator[pa.Table]:
        """Live rows of each shard in turn (only ``columns``, plus ``id``): memory is one shard."""
        for shard in self.manifest.shards[modality]:
            yield self.read_shard(shard, columns)

    def embeddings_by_id(self, modality: str, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored embeddings (float32) of ``ids``, deleted rows included; reads only the shards holding them.

        Vectors of a normalised model that are not unit length mean a damaged shard: that raises
        :class:`CorruptShardError` rather than returning scores that are not cosines."""
        wanted = {int(i) for i in ids}
        found: dict[int, np.ndarray] = {}
        for shard in self.manifest.shards[modality]:
            missing = np.fromiter(wanted.difference(found), dtype=np.int64)
            if not len(missing):
                break
            # only the row groups whose id statistics can hold the ids still missing
            table = self.read_shard(shard, ["embedding"], ids=missing, include_deleted=True)
            if not table.num_rows:
                continue
            vectors = embeddings_to_numpy(table.column("embedding"), self.manifest.model.dim)
            self._check_norms(shard, vectors)
            found.update(zip(arrow.int64_values(table.column("id")).tolist(), vectors))
        return found

    def _check_norms(self, shard: ShardInfo, vectors: np.ndarray) -> None:
        if not self.manifest.model.normalized or not len(vectors):
            return
        norms = np.linalg.norm(vectors, axis=1)
        bad = ~np.isfinite(norms) | (np.abs(norms - 1.0) > _NORM_TOLERANCE)
        if bad.any():
            raise CorruptShardError(str(self.root / shard.file), f"{int(bad.sum())} embeddings are not unit length "
                                    "(damaged bytes; `mmsearch verify` lists the damage")

    def _drop_deleted(self, modality: str, table: pa.Table) -> pa.Table:
        deleted = self.manifest.deleted[modality]
        if not deleted or "id" not in table.column_names:
            return table
        import pyarrow.compute as pc

        mask = pc.invert(pc.is_in(table.column("id"), value_set=arrow.array(deleted, pa.int64())))
        return table.filter(mask)

    def _gone_or_corrupt(self, rel: str, exc: OSError) -> StoreError:
        """A listed file is missing: cleaned up after this reader's version was superseded, or damage."""
        if _pointer_version(self.root) not in (None, self._base):
            return VersionGoneError(str(self.root), self._base, rel)
        return CorruptShardError(str(self.root / rel), "the file is missing")

    # -- checking --------------------------------------------------------------------------
    def check(self, *, deep: bool = False) -> list[str]:
        """Every problem found in this version's files (presence, size, checksum; ``deep``: also each shard's
        rows, ids and embedding norms), one line each; empty when the collection is sound."""
        from .verify import check

        return check(self, deep=deep)

    def verify(self, *, deep: bool = False) -> None:
        """Raise :class:`CorruptShardError` naming the first problem :meth:`check` finds."""
        problems = self.check(deep=deep)
        if problems:
            raise CorruptShardError(problems[0].split(":", 1)[0], problems[0].split(": ", 1)[-1])


def _with_footer_range(root: Path, shard: ShardInfo) -> ShardInfo:
    """``shard`` with the id range of its file's ``id`` statistics (unchanged when a footer lacks them)."""
    try:
        meta = pq.ParquetFile(root / shard.file).metadata
        column = meta.schema.to_arrow_schema().get_field_index("id")
        stats = [meta.row_group(n).column(column).statistics for n in range(meta.num_row_groups)] if column >= 0 else []
    except (OSError, pa.ArrowException):  # missing or damaged: the repair deals with it, not this
        return shard
    if not stats or any(st is None or not st.has_min_max for st in stats):
        return shard
    return dataclasses.replace(shard, id_min=min(int(st.min) for st in stats), id_max=max(int(st.max) for st in stats))


def _row_groups_holding(parquet: pq.ParquetFile, ids: np.ndarray) -> list[int]:
    """The row groups of ``parquet`` whose ``id`` statistics (min, max) admit one of ``ids`` (all of them
    where statistics are missing)."""
    meta = parquet.metadata
    column = parquet.schema_arrow.get_field_index("id")
    if not len(ids) or column < 0:
        return list(range(meta.num_row_groups)) if len(ids) else []
    ordered = np.sort(ids)
    groups = []
    for n in range(meta.num_row_groups):
        stats = meta.row_group(n).column(column).statistics
        if stats is None or not stats.has_min_max:
            groups.append(n)
            continue
        first = int(np.searchsorted(ordered, int(stats.min)))
        if first < len(ordered) and ordered[first] <= int(stats.max):
            groups.append(n)
    return groups


def rows_with_ids(table: pa.Table, ids: np.ndarray | Sequence[int]) -> pa.Table:
    """The rows of ``table`` whose ``id`` is one of ``ids``, in table order (imports neither pandas nor
    pyarrow.compute: a cold query pays for neither)."""
    return _rows_where(table, np.isin(arrow.int64_values(table.column("id")), np.asarray(ids, dtype=np.int64)))


def _rows_where(table: pa.Table, keep: np.ndarray) -> pa.Table:
    """The rows of ``table`` where ``keep`` is true. A few runs of rows are sliced out (no pyarrow.compute
    import, ~50 ms of a cold query); many go through a filter."""
    if keep.all():
        return table
    edges = np.flatnonzero(np.diff(np.concatenate(([False], keep, [False])).astype(np.int8)))
    runs = list(zip(edges[::2].tolist(), edges[1::2].tolist()))
    if len(runs) > 64:
        return table.filter(arrow.array(keep, pa.bool_()))
    if not runs:
        return table.slice(0, 0)
    return pa.concat_tables([table.slice(start, stop - start) for start, stop in runs])


def exists(root: Path) -> bool:
    """Whether ``root`` holds a collection (a manifest, or at least one version file)."""
    return (Path(root) / MANIFEST_NAME).is_file() or bool(list_versions(root))


def read_current(root: Path, *, lenient: bool = False) -> Manifest:
    """The current version of the collection at ``root``: ``manifest.json``, or, when that is missing or is not a
    manifest (damage), the newest version file that is one (saying so). ``lenient`` (writers): damaged deletion
    files are reported and skipped rather than raised, for the repair to handle."""
    root = Path(root)
    on_damaged = _DamagedFiles() if lenient else None
    failure: Exception | None = None
    try:
        manifest = read_manifest(root, on_damaged=on_damaged)
        if not lenient:
            return manifest
        newest = _newest_readable(root, above=manifest.version, on_damaged=on_damaged)
        return newest or manifest  # a writer rolls a version that was written but never pointed to forward
    except FileNotFoundError as exc:
        failure = exc
    except UnreadableManifestError as exc:
        failure = exc
    fallback = _newest_readable(root, above=-1, on_damaged=on_damaged)
    if fallback is None:
        if isinstance(failure, FileNotFoundError):
            raise CollectionNotFoundError(str(root))
        raise failure  # type: ignore[misc]
    log.warning("%s; using version %d, the newest one that is readable", failure, fallback.version)
    return fallback


class _DamagedFiles(list):
    """Collects (file, reason) of deletion files that could not be read."""

    def __call__(self, rel: str, reason: str) -> None:
        self.append((rel, reason))


def read_version(root: Path, number: int) -> Manifest | None:
    """The manifest of version ``number`` (None when its file is gone or unreadable)."""
    try:
        return read_manifest(Path(root), version_path(root, number), on_damaged=lambda rel, why: None)
    except (OSError, StoreError):
        return None


def _newest_readable(root: Path, *, above: int, on_damaged: object) -> Manifest | None:
    for number in reversed(list_versions(root)):
        if number <= above:
            return None
        try:
            return read_manifest(root, version_path(root, number), on_damaged=on_damaged)  # type: ignore[arg-type]
        except UnreadableManifestError as exc:
            log.warning("%s", exc)
    return None


def _pointer_version(root: Path) -> int | None:
    """The version ``manifest.json`` names now (None: none readable)."""
    try:
        return int(json.loads((Path(root) / MANIFEST_NAME).read_bytes()).get("version", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def check_model(have: ModelInfo, want: ModelInfo) -> None:
    """``want`` (a loaded model) must be the collection's model ``have``: the same spec, dim and preprocessing."""
    if have.spec != want.spec:
        raise EncoderMismatchError(have.spec, want.spec)
    if have.dim != want.dim or have.preprocess_id != want.preprocess_id:
        raise StoreError(
            f"model {want.spec!r} now has a dim or preprocessing different from the collection's; "
            "re-index into a new directory"
        )


def _part_number(name: str) -> int:
    digits = Path(name).name.split(".", 1)[0].rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else -1


def _modality_of(shard: ShardInfo) -> str:
    return shard.file.split("/", 1)[0]


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise StoreError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
