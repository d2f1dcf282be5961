"""The collection manifest: what the collection holds and the contract it was built under.

``manifest.json`` records the format version, the model (spec, preprocessing id, dim, metric,
normalisation), every committed shard with its row count and checksum, deleted ids, and the
indexes with their build parameters. A shard that is not listed here does not count.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SchemaVersionError, StoreError
from .atomic import write_bytes_atomic

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MODALITIES = ("images", "texts")


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
        """The JSON text written to disk."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

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
                deleted={m: [int(i) for i in data["deleted"].get(m, [])] for m in MODALITIES},
                indexes=dict(data.get("indexes", {})),
                extra=dict(data.get("extra", {})),
                created_at=float(data["created_at"]),
                updated_at=float(data["updated_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"manifest is malformed: {exc!r}") from exc


def read_manifest(root: Path) -> Manifest:
    """Read ``root/manifest.json``."""
    path = Path(root) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path} is not valid JSON: {exc}") from exc
    return Manifest.from_dict(data)


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Atomically write ``root/manifest.json``."""
    manifest.updated_at = time.time()
    write_bytes_atomic(Path(root) / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
