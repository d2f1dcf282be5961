"""The collection manifest: what the collection holds and the contract it was built under.

``manifest.json`` records the format version, the model (spec, preprocessing id, dim, metric,
normalisation), every committed shard with its row count and checksum, the deletions, and the
indexes with their build parameters. A shard that is not listed here does not count.

Deleted ids live in Parquet files beside it (``deleted/<modality>-NNNNN.parquet``, one ``id`` column),
listed in the manifest with their row counts and checksums, so a commit writes only the ids deleted
since the last one, never the whole list (which grows with the collection). Past ``MAX_DELETION_FILES``
files the next commit writes them as one. A manifest written before these files (ids inline, as a list)
is still read, and moves to files on its next commit.

Each committed manifest is one *version* (``version``, counted from 0; see :mod:`.versions`), and every
file it lists carries its size and modification time beside its checksum, so a writer notices a damaged
file from a ``stat`` and checks the checksum only then.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from ..errors import CorruptShardError, SchemaVersionError, StoreError
from ..modality import MODALITIES
from .atomic import file_sha256, write_bytes_atomic, write_with_atomic
from .records import IndexRecord

FORMAT_VERSION = 2  # 2: versions, file sizes and times, typed index records; mmsearch before it refuses these cleanly
READABLE_FORMATS = (1, 2)  # 1 is read as is and written as 2 by the next writer
MANIFEST_NAME = "manifest.json"
DELETED_DIR = "deleted"
DAMAGED_DIR = "_damaged"  # files a repair set aside, under their own relative paths (data readers skip "_" folders)
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
    bytes: int = -1  # -1: written before sizes were recorded
    mtime_ns: int = -1
    #: the smallest and largest id the shard holds (None: written before ranges were recorded, or by an mmsearch
    #: that dropped them): a read by id opens only the shards whose range holds one of the ids
    id_min: int | None = None
    id_max: int | None = None

    def may_hold(self, ids: Any) -> bool:
        """False when the recorded id range holds none of ``ids`` (a NumPy int array); True when unknown."""
        if self.id_min is None or self.id_max is None:
            return True
        return bool(((ids >= self.id_min) & (ids <= self.id_max)).any())

    @classmethod
    def from_dict(cls, raw: dict[str, Any], id_range: Any = None) -> ShardInfo:
        """Parse a manifest entry (fields this version does not know are ignored), with its id range if recorded."""
        info = cls(**{k: v for k, v in raw.items() if k in _SHARD_FIELDS})
        if isinstance(id_range, list) and len(id_range) == 2:
            info = replace(info, id_min=int(id_range[0]), id_max=int(id_range[1]))
        return info


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
    indexes: dict[str, IndexRecord] = field(default_factory=dict)  # per modality, written by the index layer
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # user metadata columns per modality
    #: per modality, the model's top concepts per row (``extra/labels-<modality>.vN.parquet``: file, rows, sha256,
    #: size, time, and how they were made: vocabulary, its sha256, k, temperature). Absent in older manifests.
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    version: int = 0  # which version of the collection this manifest is (0: the first, or written before versions)
    operation: str = ""  # what made this version ("index", "set_metadata", "repair"...)

    def files(self) -> list[str]:
        """Every file (relative to the root) this version needs: shards, deletion files, index files, metadata."""
        out = [s.file for m in MODALITIES for s in self.shards[m]]
        out += [f["file"] for m in MODALITIES for f in self.deletion_files[m]]
        for record in self.indexes.values():
            out += record.needed_files()
        out += [info["file"] for info in self.extra.values() if info]
        out += [info["file"] for info in self.labels.values() if info]
        return out

    @staticmethod
    def listed_files(data: dict[str, Any]) -> list[str]:
        """:meth:`files` of the manifest dict ``data`` (a version file's JSON), without parsing its entries:
        the clean-up lists the files of every kept version on each write, and a version lists every shard."""
        out = [s["file"] for m in MODALITIES for s in data["shards"].get(m, [])]
        deleted = data.get("deleted", {})
        out += [f["file"] for m in MODALITIES for f in _listed_deletion_files(deleted.get(m))]
        for raw in dict(data.get("indexes", {})).values():
            out += IndexRecord.from_dict(raw).needed_files()
        out += [info["file"] for info in dict(data.get("extra", {})).values() if info]
        out += [info["file"] for info in dict(data.get("labels", {})).values() if info]
        return out

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
        # id ranges beside the shard entries, not in them: an mmsearch that does not know them still reads the
        # entries (and drops the ranges when it writes: readers then open those shards' footers instead)
        ranges: dict[str, dict[str, list[int]]] = {m: {} for m in MODALITIES}
        for m in MODALITIES:
            for entry in data["shards"][m]:
                low, high = entry.pop("id_min"), entry.pop("id_max")
                if low is not None and high is not None:
                    ranges[m][entry["file"]] = [low, high]
        data["shard_id_ranges"] = ranges
        data["deleted"] = {m: {"count": len(self.deleted[m]), "files": files[m]} for m in MODALITIES}
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """Parse a manifest dict, checking the format version first."""
        version = int(data.get("format_version", -1))
        if version not in READABLE_FORMATS:
            raise SchemaVersionError(version, FORMAT_VERSION)
        try:
            return cls(
                model=ModelInfo(**data["model"]),
                embedding_dtype=data["embedding_dtype"],
                format_version=FORMAT_VERSION,  # what it is written as from now on
                next_id=int(data["next_id"]),
                shards={m: _shards(data, m) for m in MODALITIES},
                deleted={m: _inline_ids(data["deleted"].get(m)) for m in MODALITIES},
                deletion_files={m: _listed_deletion_files(data["deleted"].get(m)) for m in MODALITIES},
                indexes={m: IndexRecord.from_dict(r) for m, r in dict(data.get("indexes", {})).items()},
                extra=dict(data.get("extra", {})),
                labels=dict(data.get("labels", {})),
                created_at=float(data["created_at"]),
                updated_at=float(data["updated_at"]),
                version=int(data.get("version", 0)),
                operation=str(data.get("operation", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"manifest is malformed: {exc!r}") from exc


_SHARD_FIELDS = frozenset(f.name for f in fields(ShardInfo)) - {"id_min", "id_max"}


def _shards(data: dict[str, Any], modality: str) -> list[ShardInfo]:
    """The shard entries of ``modality`` in a manifest dict, with the id ranges recorded beside them."""
    ranges = dict(data.get("shard_id_ranges", {}).get(modality, {}))
    return [ShardInfo.from_dict(s, ranges.get(s.get("file"))) for s in data["shards"].get(modality, [])]


def _inline_ids(entry: Any) -> list[int]:
    return [int(i) for i in entry] if isinstance(entry, list) else []


def _listed_deletion_files(entry: Any) -> list[dict[str, Any]]:
    if entry is None or isinstance(entry, list):
        return []
    files = [dict(f) for f in entry["files"]]
    if sum(int(f["rows"]) for f in files) != int(entry["count"]):
        raise StoreError(f"manifest is malformed: {entry['count']} deleted ids, but their files hold a different number")
    return files


class UnreadableManifestError(StoreError):
    """A manifest (or version) file that is not a manifest at all: garbage, truncated, not JSON."""


def read_manifest(root: Path, path: Path | None = None, *,
                  on_damaged: Callable[[str, str], None] | None = None) -> Manifest:
    """Read ``root/manifest.json`` (or the version file ``path``) and the deleted ids it lists.

    A deletion file that cannot be read raises :class:`CorruptShardError`, or, with ``on_damaged``, is reported
    to it as (file, reason) and left out (a writer's repair decides what to do)."""
    path = path or Path(root) / MANIFEST_NAME
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableManifestError(f"{path} is not a manifest (not valid JSON: {str(exc)[:80]})") from exc
    if not isinstance(data, dict):
        raise UnreadableManifestError(f"{path} is not a manifest (JSON {type(data).__name__}, not an object)")
    try:
        manifest = Manifest.from_dict(data)
    except StoreError as exc:
        if isinstance(exc, SchemaVersionError):
            raise
        raise UnreadableManifestError(str(exc)) from exc
    for modality in MODALITIES:
        for entry in manifest.deletion_files[modality]:
            try:
                manifest.deleted[modality].extend(read_deleted_ids(Path(root), entry))
            except CorruptShardError as exc:
                if on_damaged is None:
                    raise
                on_damaged(entry["file"], exc.reason)
    return manifest


def read_deleted_ids(root: Path, entry: dict[str, Any]) -> list[int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / entry["file"]
    try:
        with pq.ParquetFile(path) as parquet:  # not pq.read_table: that imports pandas (via pyarrow.dataset)
            ids = parquet.read(columns=["id"]).column("id").to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise CorruptShardError(str(path), str(exc)) from exc
    if len(ids) != int(entry["rows"]):
        raise CorruptShardError(str(path), f"{len(ids)} deleted ids, manifest says {entry['rows']}")
    return ids


def save_deletions(root: Path, manifest: Manifest) -> None:
    """Write the ids deleted since the manifest was last saved as a new deletion file (listed in ``manifest``)."""
    for modality in MODALITIES:
        _save_new_deletions(Path(root), manifest, modality)


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Atomically replace ``root/manifest.json`` with ``manifest`` (its deletions saved first)."""
    save_deletions(root, manifest)
    manifest.updated_at = time.time()
    write_bytes_atomic(Path(root) / MANIFEST_NAME, manifest.to_json().encode("utf-8"))


def file_stamp(path: Path) -> dict[str, Any]:
    """``{"bytes", "mtime_ns"}`` of a file as it is now."""
    st = Path(path).stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _save_new_deletions(root: Path, manifest: Manifest, modality: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from . import arrow

    files, ids = manifest.deletion_files[modality], manifest.deleted[modality]
    saved = sum(int(f["rows"]) for f in files)
    if len(ids) == saved:
        return
    number = 1 + max((_number(Path(f["file"]).name) for f in files), default=-1)
    for on_disk in (root / DELETED_DIR, root / DAMAGED_DIR / DELETED_DIR):  # never reuse a name an older version
        if on_disk.is_dir():  # (or a damaged file set aside) may still have
            number = max([number, *(1 + _number(p.name) for p in on_disk.glob(f"{modality}-*"))])
    if len(ids) < saved or len(files) >= MAX_DELETION_FILES:  # rewritten, or in too many pieces: one file
        kept, new = [], ids
    else:
        kept, new = files, ids[saved:]
    rel = f"{DELETED_DIR}/{modality}-{number:05d}.parquet"
    table = pa.table({"id": arrow.array(new, pa.int64())})
    (root / DELETED_DIR).mkdir(exist_ok=True)
    write_with_atomic(root / rel, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    manifest.deletion_files[modality] = [*kept, {"file": rel, "rows": len(new), "sha256": file_sha256(root / rel),
                                                 **file_stamp(root / rel)}]


def _number(name: str) -> int:
    digits = name.split(".", 1)[0].rsplit("-", 1)[-1]
    return int(digits) if digits.isdigit() else -1
