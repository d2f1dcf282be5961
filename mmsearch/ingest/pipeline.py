"""The ingest pipeline: for each input path, an image root or a text corpus, embed what is new or
changed into the store and record what is gone.

    discover (streamed, sorted) -> skip unchanged / known-bad -> decode in worker processes (ordered,
    bounded window, time limits) -> dedup by content hash -> encode in batches (pinned memory on CUDA,
    OOM back-off) -> shards of exactly ``shard_rows`` rows, each committed atomically with its captions
    and tombstones

Memory is bounded by the decode window and one shard buffer, whatever the corpus size; what grows
with the corpus is only the list of files to embed and the per-file bookkeeping (uri, size, mtime, hash).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Sequence

from ..encoders.base import Encoder
from ..errors import ConfigError
from ..store import Store
from .corpora import read_caption_manifest
from .discover import classify
from .images import ImageIngest
from .job import IngestOptions, IngestReport, Job, Progress
from .stage import EmbedStage, LocalStage
from .texts import ingest_corpus

log = logging.getLogger(__name__)

__all__ = ["IngestOptions", "IngestReport", "Progress", "caption_manifests", "ingest"]


def ingest(
    store: Store, encoder: Encoder | None, paths: Sequence[str | Path], *,
    options: IngestOptions = IngestOptions(), progress: Progress | None = None, stage: EmbedStage | None = None,
    report: IngestReport | None = None,
) -> IngestReport:
    """Embed every new or changed input under ``paths`` into ``store``; record removed ones as deletions.

    ``stage``: where inputs are embedded (default: :class:`~.stage.LocalStage` over ``encoder`` on this machine;
    ``encoder`` may then be None). ``report``: the report to fill (an engine's subclass), else a new one."""
    if stage is None:
        if encoder is None:
            raise ConfigError("ingest needs an encoder or an embed stage")
        stage = LocalStage(encoder, options)
    job = Job(store, stage, options, report if report is not None else IngestReport(), progress,
              captions=caption_manifests(options))
    for raw in paths:
        path = Path(os.path.normpath(Path(raw).expanduser().absolute()))
        if classify(path) == "images":
            ImageIngest(job, path).run()
        else:
            ingest_corpus(job, path)
    job.report.seconds = time.perf_counter() - job.started
    return job.report


def caption_manifests(options: IngestOptions) -> dict[str, str]:
    """Image path -> caption, from the caption manifests of ``options`` (later manifests win)."""
    captions: dict[str, str] = {}
    for manifest in options.captions:
        found = read_caption_manifest(Path(manifest), text_column=options.text_column, path_column=options.path_column)
        log.info("%d captions from %s", len(found), manifest)
        captions.update(found)
    return captions
