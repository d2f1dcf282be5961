"""The one exception tree of mmsearch.

Every error the library raises on purpose is an :class:`MMSearchError`. Each carries the fields a
caller needs and a message that says what to do. Backend errors (open_clip, FAISS, Arrow) are
converted at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations


class MMSearchError(Exception):
    """Base class of every error mmsearch raises on purpose."""


class ConfigError(MMSearchError, ValueError):
    """A bad argument, option or environment setting."""


class EncoderError(MMSearchError):
    """A model could not be resolved, loaded or run."""


class ModelUnavailableError(EncoderError):
    """Model weights are not on this machine and cannot be fetched (no network / no cache)."""

    def __init__(self, spec: str, hint: str) -> None:
        self.spec = spec
        self.hint = hint
        super().__init__(f"model {spec!r} is not available offline: {hint}")


class EncoderMismatchError(MMSearchError):
    """A collection is used with a model other than the one it was built with."""

    def __init__(self, collection_spec: str, requested_spec: str) -> None:
        self.collection_spec = collection_spec
        self.requested_spec = requested_spec
        super().__init__(
            f"this collection was built with model {collection_spec!r}, not {requested_spec!r}; "
            f"query it with --model {collection_spec} (or omit --model), or re-index with the new model"
        )


class StoreError(MMSearchError):
    """The on-disk collection is missing, unreadable or inconsistent."""


class CollectionNotFoundError(StoreError, FileNotFoundError):
    """No collection (no manifest.json) at the given path."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"no mmsearch collection at {path!r} (manifest.json missing); "
            "create one with `mmsearch index PATH`"
        )


class CorruptShardError(StoreError):
    """A shard file does not match the checksum or schema recorded in the manifest."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"shard {path!r} is corrupt: {reason}; re-run `mmsearch index` to rebuild it")


class SchemaVersionError(StoreError):
    """The collection was written by an incompatible mmsearch format version."""

    def __init__(self, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            f"collection format version {found} is not supported (this mmsearch reads version "
            f"{supported}); upgrade mmsearch or re-index"
        )


class IngestError(MMSearchError):
    """Ingestion cannot go on (not a bad input: those are quarantined and the run goes on)."""


class IndexBuildError(MMSearchError):
    """A FAISS index could not be built."""


class IndexNotFoundError(MMSearchError):
    """The collection has no index for the requested modality."""

    def __init__(self, modality: str, path: str) -> None:
        self.modality = modality
        self.path = path
        super().__init__(
            f"collection {path!r} has no {modality} index (it holds no {modality}s); "
            f"index some {modality}s first or query another modality"
        )


class QueryError(MMSearchError, ValueError):
    """A query is malformed (no query given, two given, an unknown id, bad k...)."""


class MissingExtraError(MMSearchError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str) -> None:
        self.module = module
        self.extra = extra
        super().__init__(f"{module} is not installed; run: pip install 'mmsearch[{extra}]'")


class CollectionBusyError(StoreError):
    """Another process holds the collection's writer lock (and did not let go within the wait)."""

    def __init__(self, path: str, holder: str, waited_s: float) -> None:
        self.path = path
        self.holder = holder
        self.waited_s = waited_s
        waited = f" after waiting {waited_s:g} s" if waited_s > 0 else ""
        super().__init__(
            f"collection {path!r} is being written by {holder}{waited}; "
            "wait longer with --wait SECONDS, or try again when it is done"
        )


class CommitConflictError(StoreError):
    """Another writer published a version after this one opened the collection (nothing was lost)."""

    def __init__(self, path: str, version: int) -> None:
        self.path = path
        self.version = version
        super().__init__(
            f"collection {path!r} gained version {version} from another writer while this one was writing; "
            "nothing of either was lost: run the command again"
        )


class VersionGoneError(StoreError):
    """A file of the version a reader holds was removed (its retention ran out); refresh to the newest."""

    def __init__(self, path: str, version: int, file: str) -> None:
        self.path = path
        self.version = version
        super().__init__(
            f"version {version} of {path!r} was cleaned up ({file} is gone); "
            "call Collection.refresh() (or open the collection again) to read the newest version"
        )
