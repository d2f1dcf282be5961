"""mmsearch: multimodal (image + text) retrieval with CLIP-family encoders, Parquet and FAISS.

    import mmsearch
    mmsearch.index("./photos")                 # -> ./photos.mms
    col = mmsearch.open("./photos.mms")
    col.search("red car", k=5)                 # text -> image
    col.search(image="q.jpg", modality="text")  # image -> text
    mmsearch.index("./photos", ingest=mmsearch.IngestOptions(batch_size=8), index=mmsearch.IndexRequest(parts=2))

Importing mmsearch is cheap: torch, open_clip and faiss load on first use.
"""

from __future__ import annotations

from typing import Any

from .errors import (
    CollectionBusyError,
    CollectionNotFoundError,
    CommitConflictError,
    ConfigError,
    CorruptShardError,
    EncoderError,
    EncoderMismatchError,
    IndexBuildError,
    IndexNotFoundError,
    IngestError,
    MissingExtraError,
    MMSearchError,
    ModelUnavailableError,
    QueryError,
    SchemaVersionError,
    StoreError,
    VersionGoneError,
)

__version__ = "0.1.0"

__all__ = [
    "Collection",
    "CollectionBusyError",
    "CollectionNotFoundError",
    "CommitConflictError",
    "ConfigError",
    "CorruptShardError",
    "EncoderError",
    "EncoderMismatchError",
    "EvalReport",
    "EvidenceBundle",
    "Filter",
    "Hit",
    "IndexBuildError",
    "IndexNotFoundError",
    "IndexRequest",
    "IndexResult",
    "IngestError",
    "IngestOptions",
    "MMSearchError",
    "MissingExtraError",
    "ModelUnavailableError",
    "Q",
    "QueryError",
    "SchemaVersionError",
    "StoreError",
    "VersionGoneError",
    "__version__",
    "evaluate",
    "index",
    "open",
    "vacuum",
    "verify",
    "versions",
]

_LAZY = {
    "Collection": "search", "Hit": "search", "IndexResult": "api", "index": "api", "open": "api",
    "vacuum": "api", "verify": "api", "versions": "api",
    "IngestOptions": "ingest", "IndexRequest": "indexes",
    "evaluate": "evaluation", "EvalReport": "evaluation",
    "Filter": "query.filters", "Q": "query.combine", "EvidenceBundle": "query.evidence",
}


def __getattr__(name: str) -> Any:
    """Load the heavy parts (numpy, torch, faiss) only when first used."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mmsearch' has no attribute {name!r}")
