"""The collection manifest: what the collection holds and the contract it was built under.

``manifest.json`` records the format version, the model (spec, preprocessing id, dim, metric,
normalisation), every committed shard with its row count and checksum, the deletions, and the
indexes with their build parameters. A shard that is not listed here does not count.

Deleted ids live in Parquet files beside it (``deleted/<modality>-NNNNN.parquet``, one ``id`` column),
listed in the manifest with their row counts and checksums, so a commit writes only the ids deleted
since the last one, never the whole list (which grows with the collection). Past ``MAX_DELETION_FILES``
files the next commit writes them as one. A manifest written before these files (ids inline, as a list)
is still read, and moves to files on its next commit.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CorruptShardError, SchemaVersionError, StoreError
from .atomic import file_sha256, write_bytes_atomic, write_with_atomic

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODALITIES = ("images", "texts")
DELETED_DIR = "deleted"
MAX_DELETION_FILES = 16


@dataclass(frozen=True)
class ModelInfo:
    """The embedding contract every shard and index of a collection shares."""

    spec: str
    preprocess_id: str
    dim: int
    metric: str = "inner_product"
    normalized: bool = True


@dataclass(frozen=True)
class ShardInfo:
    """One committed Parquet shard."""

    file: str  # path relative to the collection root
    rows: int
    sha256: str
    created_at: float


@dataclass
class Manifest:
    """The mutable in-memory form of ``manifest.json``."""

    model: ModelInfo
    embedding_dtype: str = "float16"
    format_version: int = FORMAT_VERSION
    next_id: int = 0
    shards: dict[str, list[ShardInfo]] = field(default_factory=lambda: {m: [] for m in MODALITIES})
    deleted: dict[str, list[int]] = field(default_factory=lambda: {m: [] for m in MODALITIES})
    #: the files ``deleted`` is saved in, per modality: {"file", "rows", "sha256"} (see the module docstring)
    deletion_files: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {m: [] for m in MODALITIES})
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # user metadata columns per modality
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def rows(self, modality: str) -> int:
        """Rows in committed shards of a modality, deleted ones included."""
        return sum(s.rows for s in self.shards[modality])

    def live_rows(self, modality: str) -> int:
        """Rows of a modality that are not deleted."""
        return self.rows(modality) - len(self.deleted[modality])

    def to_json(self) -> str:
        """The JSON text written to disk (deleted ids as their files: :func:`write_manifest` writes those first)."""
        data = asdict(self)
        files = data.pop("deletion_files")
        data["deleted"] = {m: {"count": len(self.deleted[m]), "files": files[m]} for m in MODALITIES}
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Parse a manifest dict, checking the format version first."""
        version = int(data.get("format_version", -1))
        if version != FORMAT_VERSION:
            raise SchemaVersionError(version, FORMAT_VERSION)
        try:
            return cls(
                model=ModelInfo(**data["model"]),
                embedding_dtype=data["embedding_dtype"],
                format_version=version,
                next_id=int(data["next_id"]),
                shards={m: [ShardInfo(**s) for s in data["shards"].get(m, [])] for m in MODALITIES},
                deleted={m: _inline_ids(data["deleted"].get(m)) for m in MODALITIES},
                deletion_files={m: _listed_deletion_files(data["deleted"].get(m)) for m in MODALITIES},
                indexes=dict(data.get("indexes", {})),
                extra=dict(data.get("extra", {})),
                created_at=float(data["created_at"]),
                updated_at=float(data["updated_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"manifest is malformed: {exc!r}") from exc


def _inline_ids(entry: Any) -> list[int]:
    return [int(i) for i in entry] if isinstance(entry, list) else []


def _listed_deletion_files(entry: Any) -> list[dict[str, Any]]:
    if entry is None or isinstance(entry, list):
        return []
    files = [dict(f) for f in entry["files"]]
    if sum(int(f["rows"]) for f in files) != int(entry["count"]):
        raise StoreError(f"manifest is malformed: {entry['count']} deleted ids, but their files hold a different number")
    return files


def read_manifest(root: Path) -> Manifest:
    """Read ``root/manifest.json`` and the deleted ids it lists."""
    path = Path(root) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path} is not valid JSON: {exc}") from exc
    manifest = Manifest.from_dict(data)
    for modality in MODALITIES:
        for entry in manifest.deletion_files[modality]:
            manifest.deleted[modality].extend(_read_ids(Path(root), entry))
    return manifest


def _read_ids(root: Path, entry: dict[str, Any]) -> list[int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / entry["file"]
    try:
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise CorruptShardError(str(path), str(exc)) from exc
    if len(ids) != int(entry["rows"]):
        raise CorruptShardError(str(path), f"{len(ids)} deleted ids, manifest says {entry['rows']}")
    return ids


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Atomically write ``root/manifest.json``: first the ids deleted since the last write (a new file of
    them), then the manifest listing it; then remove deletion files it no longer lists."""
    for modality in MODALITIES:
        _save_new_deletions(Path(root), manifest, modality)
    manifest.updated_at = time.time()
    write_bytes_atomic(Path(root) / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
    remove_unlisted_deletion_files(Path(root), manifest)


def _save_new_deletions(root: Path, manifest: Manifest, modality: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files, ids = manifest.deletion_files[modality], manifest.deleted[modality]
    saved = sum(int(f["rows"]) for f in files)
    if len(ids) == saved:
        return
    number = 1 + max((int(Path(f["file"]).stem.rsplit("-", 1)[1]) for f in files), default=-1)
    if len(ids) < saved or len(files) >= MAX_DELETION_FILES:  # rewritten, or in too many pieces: one file
        kept, new = [], ids
    else:
        kept, new = files, ids[saved:]
    rel = f"{DELETED_DIR}/{modality}-{number:05d}.parquet"
    table = pa.table({"id": pa.array(new, pa.int64())})
    (root / DELETED_DIR).mkdir(exist_ok=True)
    write_with_atomic(root / rel, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    manifest.deletion_files[modality] = [*kept, {"file": rel, "rows": len(new), "sha256": file_sha256(root / rel)}]


def remove_unlisted_deletion_files(root: Path, manifest: Manifest) -> None:
    """Remove deletion files the manifest does not list (merged into one, or a killed run's)."""
    directory = Path(root) / DELETED_DIR
    if not directory.is_dir():
        return
    listed = {f["file"] for m in MODALITIES for f in manifest.deletion_files[m]}
    for path in directory.glob("*.parquet"):
        if f"{DELETED_DIR}/{path.name}" not in listed:
            path.unlink(missing_ok=True)
