"""The options, the report and the shared state of one ingest run."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..store import Store
from . import quarantine
from .options import IngestOptions
from .stage import EmbedStage

__all__ = ["IngestOptions", "IngestReport", "Job", "Progress"]

log = logging.getLogger(__name__)

#: progress callback: (stage, done, total); total 0 means not known yet
Progress = Callable[[str, int, int], None]


@dataclass
class IngestReport:
    """What one ingest run did."""

    images_embedded: int = 0  # image rows written (deduplicated ones included)
    texts_embedded: int = 0
    images_deduplicated: int = 0  # image rows whose embedding was reused from identical content
    skipped_unchanged: int = 0
    rejected: int = 0
    skipped_quarantined: int = 0  # rejected before and unchanged since
    deleted: int = 0  # inputs gone from disk (or from their corpus)
    replaced: int = 0  # inputs changed on disk and embedded again
    rejected_reasons: Counter[str] = field(default_factory=Counter)
    changed: set[str] = field(default_factory=set)  # modalities whose rows changed
    seconds: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """A JSON-able form (the CLI's machine-readable summary builds on it)."""
        return {
            "images_embedded": self.images_embedded, "texts_embedded": self.texts_embedded,
            "images_deduplicated": self.images_deduplicated, "skipped_unchanged": self.skipped_unchanged,
            "rejected": self.rejected, "rejected_reasons": dict(sorted(self.rejected_reasons.items())),
            "skipped_quarantined": self.skipped_quarantined, "replaced": self.replaced, "deleted": self.deleted,
            "ingest_seconds": round(self.seconds, 3),
        }


@dataclass
class Job:
    """What every stage of one run shares."""

    store: Store
    stage: EmbedStage  # where inputs become vectors (texts too)
    options: IngestOptions
    report: IngestReport
    progress: Progress | None
    captions: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def reject(self, uri: str, reason: str, error: str, *, size: int | None = None, mtime: float | None = None) -> None:
        """Quarantine one input and count it."""
        quarantine.record(Path(self.store.root), uri, reason, error, size=size, mtime=mtime)
        self.report.rejected += 1
        self.report.rejected_reasons[reason] += 1
        log.warning("rejected %s: %s (%s)", uri, reason, error)

    def tick(self, stage: str, done: int, total: int) -> None:
        """Report progress, if anyone listens."""
        if self.progress is not None:
            self.progress(stage, done, total)
