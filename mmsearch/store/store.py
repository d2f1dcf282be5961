"""The on-disk collection: shards, manifest, deletions, atomic commits.

A commit is: write the shard under a temporary name, rename it into place, then atomically rewrite
the manifest that lists it. A run killed at any point leaves either the old manifest (the new shard
is an orphan and is removed on the next open for writing) or the new one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CollectionNotFoundError, CorruptShardError, EncoderMismatchError, StoreError
from .atomic import file_sha256, remove_stale_temporaries, write_with_atomic
from .manifest import (
    DELETED_DIR,
    MANIFEST_NAME,
    MODALITIES,
    Manifest,
    ModelInfo,
    ShardInfo,
    read_manifest,
    remove_unlisted_deletion_files,
    write_manifest,
)
from .schema import embedding_array, embeddings_to_numpy, shard_schema, write_parquet

log = logging.getLogger(__name__)


class Store:
    """A collection directory opened for reading or appending."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = Path(root)
        self.manifest = manifest
        self._deleted_sets: dict[str, set[int]] = {}  # mark_deleted's lookups, kept beside the append-only lists

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open an existing collection (raises :class:`CollectionNotFoundError`)."""
        root = Path(path).expanduser()
        if not (root / MANIFEST_NAME).is_file():
            raise CollectionNotFoundError(str(root))
        return cls(root, read_manifest(root))

    @classmethod
    def open_or_create(cls, path: str | Path, model: ModelInfo, *, embedding_dtype: str = "float16") -> Store:
        """Open a collection for appending, creating it if absent; the model must match."""
        root = Path(path).expanduser()
        if (root / MANIFEST_NAME).is_file():
            store = cls.open(root)
            if store.manifest.model.spec != model.spec:
                raise EncoderMismatchError(store.manifest.model.spec, model.spec)
            if store.manifest.model.dim != model.dim or store.manifest.model.preprocess_id != model.preprocess_id:
                raise StoreError(
                    f"model {model.spec!r} now has a dim or preprocessing different from the collection's; "
                    "re-index into a new directory"
                )
        else:
            root.mkdir(parents=True, exist_ok=True)
            store = cls(root, Manifest(model=model, embedding_dtype=embedding_dtype))
            store.commit()
        store.remove_orphans()
        return store

    # -- writing ---------------------------------------------------------------------------
    def commit(self) -> None:
        """Atomically write the manifest."""
        write_manifest(self.root, self.manifest)

    def reserve_ids(self, n: int) -> np.ndarray:
        """Ids for ``n`` new rows; they become permanent when the shard holding them commits."""
        start = self.manifest.next_id
        self.manifest.next_id += n
        return np.arange(start, start + n, dtype=np.int64)

    def append(self, modality: str, columns: dict[str, Sequence | np.ndarray], embeddings: np.ndarray) -> ShardInfo:
        """Write one shard of ``modality`` and commit it into the manifest."""
        info = self.write_shard(modality, columns, embeddings)
        self.commit()
        return info

    def write_shard(self, modality: str, columns: dict[str, Sequence | np.ndarray], embeddings: np.ndarray) -> ShardInfo:
        """Write one shard file and list it in the in-memory manifest; :meth:`commit` makes it count."""
        _check_modality(modality)
        schema = shard_schema(modality, self.manifest.model, self.manifest.embedding_dtype)
        arrays = [pa.array(columns[f.name], type=f.type) for f in schema if f.name != "embedding"]
        arrays.append(embedding_array(embeddings, self.manifest.embedding_dtype))
        table = pa.Table.from_arrays(arrays, schema=schema)
        rel = f"{modality}/part-{self._next_shard_number(modality):05d}.parquet"
        write_with_atomic(self.root / rel, lambda tmp: write_parquet(table, tmp))
        info = ShardInfo(file=rel, rows=table.num_rows, sha256=file_sha256(self.root / rel), created_at=time.time())
        self.manifest.shards[modality].append(info)
        log.debug("committed %s (%d rows)", rel, info.rows)
        return info

    def mark_deleted(self, modality: str, ids: Sequence[int]) -> int:
        """Tombstone rows in the in-memory manifest (:meth:`commit` persists); returns how many were new."""
        _check_modality(modality)
        listed = self.manifest.deleted[modality]
        known = self._deleted_sets.get(modality)
        if known is None or len(known) != len(listed):
            known = self._deleted_sets[modality] = set(listed)
        new = []
        for i in map(int, ids):
            if i not in known:
                known.add(i)
                new.append(i)
        listed.extend(new)
        return len(new)

    def remove_orphans(self) -> None:
        """Remove temporaries and shard files that no committed manifest lists (a killed run's)."""
        for modality in MODALITIES:
            directory = self.root / modality
            remove_stale_temporaries(directory)
            listed = {s.file for s in self.manifest.shards[modality]}
            for p in directory.glob("part-*.parquet") if directory.is_dir() else []:
                if f"{modality}/{p.name}" not in listed:
                    log.info("removing uncommitted shard %s", p)
                    p.unlink()
        remove_stale_temporaries(self.root / DELETED_DIR)
        remove_unlisted_deletion_files(self.root, self.manifest)
        remove_stale_temporaries(self.root)

    def _next_shard_number(self, modality: str) -> int:
        numbers = [int(Path(s.file).stem.split("-")[1]) for s in self.manifest.shards[modality]]
        return max(numbers, default=-1) + 1

    # -- reading ---------------------------------------------------------------------------
    def scan(self, modality: str, columns: Sequence[str] | None = None, *, include_deleted: bool = False) -> pa.Table:
        """All rows of a modality as one Arrow table (live rows only unless asked)."""
        _check_modality(modality)
        schema = shard_schema(modality, self.manifest.model, self.manifest.embedding_dtype)
        cols = list(columns) if columns is not None else schema.names
        tables = [self._read_shard(s, cols) for s in self.manifest.shards[modality]]
        table = pa.concat_tables(tables) if tables else schema.empty_table().select(cols)
        return table if include_deleted else self._drop_deleted(modality, table)

    def iter_embeddings(self, modality: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids int64, embeddings float32) per shard, live rows only; memory is one shard."""
        dim = self.manifest.model.dim
        for shard in self.manifest.shards[modality]:
            table = self._drop_deleted(modality, self._read_shard(shard, ["id", "embedding"]))
            yield table.column("id").to_numpy(), embeddings_to_numpy(table.column("embedding"), dim)

    def write_extra(self, modality: str, table: pa.Table) -> None:
        """Replace the user metadata columns of ``modality`` (an ``id`` column plus any others) and commit.

        They live in ``extra/<modality>.parquet``, apart from the shards, so the shards stay one schema.
        """
        _check_modality(modality)
        rel = f"extra/{modality}.parquet"
        write_with_atomic(self.root / rel, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        self.manifest.extra[modality] = {"file": rel, "rows": table.num_rows, "sha256": file_sha256(self.root / rel),
                                         "columns": [c for c in table.column_names if c != "id"]}
        self.commit()

    def read_extra(self, modality: str) -> pa.Table | None:
        """The user metadata columns of ``modality`` (with ``id``), or None when there are none."""
        info = self.manifest.extra.get(modality)
        if not info:
            return None
        try:
            return pq.read_table(self.root / info["file"])
        except (OSError, pa.ArrowException) as exc:
            raise CorruptShardError(str(self.root / info["file"]), str(exc)) from exc

    def iter_tables(self, modality: str, columns: Sequence[str]) -> Iterator[pa.Table]:
        """Live rows of each shard in turn (only ``columns``, plus ``id``): memory is one shard."""
        for shard in self.manifest.shards[modality]:
            yield self._drop_deleted(modality, self._read_shard(shard, columns))

    def embeddings_by_id(self, modality: str, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored embeddings (float32) of ``ids``, deleted rows included; reads only the shards holding them."""
        wanted = {int(i) for i in ids}
        found: dict[int, np.ndarray] = {}
        for shard in self.manifest.shards[modality]:
            if len(found) == len(wanted):
                break
            shard_ids = self._read_shard(shard, ["id"]).column("id").to_numpy()
            if not wanted.intersection(shard_ids.tolist()):
                continue
            table = self._read_shard(shard, ["id", "embedding"])
            vectors = embeddings_to_numpy(table.column("embedding"), self.manifest.model.dim)
            found.update((int(i), v) for i, v in zip(shard_ids, vectors) if int(i) in wanted)
        return found

    def _drop_deleted(self, modality: str, table: pa.Table) -> pa.Table:
        deleted = self.manifest.deleted[modality]
        if not deleted or "id" not in table.column_names:
            return table
        import pyarrow.compute as pc

        mask = pc.invert(pc.is_in(table.column("id"), value_set=pa.array(deleted, pa.int64())))
        return table.filter(mask)

    def _read_shard(self, shard: ShardInfo, columns: Sequence[str]) -> pa.Table:
        path = self.root / shard.file
        cols = list(columns)
        if "id" not in cols:
            cols = ["id", *cols]
        try:
            table = pq.read_table(path, columns=cols)
        except (OSError, pa.ArrowException) as exc:
            raise CorruptShardError(str(path), str(exc)) from exc
        if table.num_rows != shard.rows:
            raise CorruptShardError(str(path), f"{table.num_rows} rows, manifest says {shard.rows}")
        return table  # "id" is always read: deletions filter on it

    def verify(self) -> None:
        """Check every shard's and deletion file's checksum against the manifest."""
        for modality in MODALITIES:
            files = [(s.file, s.sha256) for s in self.manifest.shards[modality]]
            files += [(f["file"], f["sha256"]) for f in self.manifest.deletion_files[modality]]
            for rel, sha in files:
                if file_sha256(self.root / rel) != sha:
                    raise CorruptShardError(str(self.root / rel), "checksum mismatch")


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise StoreError(f"unknown modality {modality!r}; expected one of {MODALITIES}")

