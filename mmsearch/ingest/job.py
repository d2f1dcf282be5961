"""The options, the report and the shared state of one ingest run."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..encoders.base import Encoder
from ..store import Store
from . import quarantine
from .decode import DEFAULT_MAX_IMAGE_PIXELS
from .encode import BatchEncoder

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


@dataclass(frozen=True)
class IngestOptions:
    """Knobs of the pipeline."""

    batch_size: int = 32
    workers: int | None = 2  # decode processes; 0 decodes in the calling process; None: from a calibration
    shard_rows: int = 8192  # rows per committed shard: the most work a kill can lose
    decode_timeout_s: float | None = 30.0  # per image; None: no limit
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # larger (after reduced-size JPEG decode) -> too-large
    dedup: bool = True  # identical image content is embedded once
    captions: tuple[str, ...] = ()  # caption manifests (.jsonl/.csv/.parquet: image path -> caption)
    text_column: str | None = None  # corpora and caption manifests; default: text, caption or content
    id_column: str | None = None  # corpora; default: "id" when present
    path_column: str | None = None  # caption manifests; default: path, image, file...


@dataclass
class Job:
    """What every stage of one run shares."""

    store: Store
    encoder: Encoder
    options: IngestOptions
    report: IngestReport
    progress: Progress | None
    batcher: BatchEncoder
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
