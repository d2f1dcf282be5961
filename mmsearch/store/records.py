"""The typed records a version holds for its indexes (written by the index layer, owned by the store)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

AUTO = "auto"


@dataclass(frozen=True)
class IndexRecord:
    """What an index holds, how it was built and tuned, and the files it is saved in (one per index of a version)."""

    modality: str
    factory: str
    rows: int
    dim: int
    metric: str
    model_spec: str
    file: str
    fingerprint: str  # of the shards + deletions it was built from
    built_at: float = field(default_factory=time.time)
    build_seconds: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)  # tuned search parameters, used by default
    requested: str = AUTO  # the factory asked for ("auto" or a factory string)
    max_index_memory_bytes: int = 0
    target_recall: float = 0.95
    recall_at_k: int = 10
    recall: float = 1.0  # measured at ``params`` on the tuning queries
    target_met: bool = True
    latency_ms: float = 0.0  # per query, tuning queries searched as one batch
    tuned_on: str = ""  # the queries: "texts" (cross-modal) or "<modality> (held out)"
    removes_ids: bool = True  # False: deletions are filtered at query time
    trained_rows: int = 0
    rows_since_training: int = 0
    masked_rows: int = 0  # deleted vectors still in the index, filtered at query time
    deletions_applied: int = 0  # how many of the manifest's deleted ids this index accounts for
    shards: list[str] = field(default_factory=list)  # shard_key of every shard added
    file_bytes: int = 0
    update: str = "built"  # "built", "updated: ...", or "rebuilt: <why>"
    index_shards: int = 1  # the parts asked for (1: one index file)
    part_files: list[str] = field(default_factory=list)  # a sharded index's part files; empty: ``file`` alone
    data_files: list[str] = field(default_factory=list)  # files the index refers to (on-disk inverted lists)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # each file's bytes, mtime_ns, sha256
    no_match_threshold: float | None = None  # text-query scores above it are good matches (None: not computed)
    moments_file: str | None = None  # the rows' score moments: hits' z-scores, the no-match signal (None: not kept)
    moments_in_index: bool = False  # no moments file: the moments are the (small, exact) index's own vectors'
    tuned_rows: int = 0  # live rows when ``params`` were tuned (0: unknown, an older record: tuned again)
    changed_since_tuning: int = 0  # rows added and deleted by the in-place updates that kept ``params``

    def index_files(self) -> list[str]:
        """The files (relative to the collection) the index is saved in: its parts, or its one file."""
        return list(self.part_files or [self.file])

    def needed_files(self) -> list[str]:
        """Every file the index needs: its own and the ones it refers to."""
        return self.index_files() + list(self.data_files) + ([self.moments_file] if self.moments_file else [])

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> IndexRecord:
        """Parse a manifest entry (fields this version does not know are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})
