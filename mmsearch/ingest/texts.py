"""Ingest of one text corpus, streamed: rows are read, compared with what is stored, and embedded in
shards of exactly ``shard_rows`` texts (each its own commit, so a killed run resumes at the last one).

A row whose key is stored with the same text is skipped; one whose text changed is embedded again and
its old row tombstoned in the same commit; stored keys missing from the corpus become deletions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.compute as pc

from .corpora import TextRecord, iter_text_records
from .job import Job

log = logging.getLogger(__name__)

_PROGRESS_EVERY = 1024


def ingest_corpus(job: Job, path: Path) -> None:
    """Embed the new and changed texts of corpus ``path``; delete the ones it no longer has."""
    source = str(path)
    existing = _existing(job, source)
    seen: set[str] = set()
    chunk: list[TextRecord] = []
    replaced: list[int] = []
    options = job.options
    for n, rec in enumerate(iter_text_records(path, text_column=options.text_column, id_column=options.id_column), 1):
        seen.add(rec.key)
        old = existing.get(rec.key)
        if old is not None and old[1] == hash(rec.text):
            job.report.skipped_unchanged += 1
        else:
            chunk.append(rec)
            if old is not None:
                replaced.append(old[0])
        if len(chunk) == options.shard_rows:
            _commit(job, source, chunk, replaced)
            chunk, replaced = [], []
        if n % _PROGRESS_EVERY == 0:
            job.tick("texts", n, 0)
    _commit(job, source, chunk, replaced)
    gone = [i for key, (i, _) in existing.items() if key not in seen]
    if gone:
        job.report.deleted += job.store.mark_deleted("texts", gone)
        job.report.changed.add("texts")
        job.store.commit()


def _existing(job: Job, source: str) -> dict[str, tuple[int, int]]:
    """key -> (id, hash of the text) of the live rows stored for ``source``."""
    table = job.store.scan("texts", ["id", "source", "key", "text"])
    table = table.filter(pc.equal(table.column("source"), source)).to_pydict()
    return {k: (i, hash(t)) for i, k, t in zip(table["id"], table["key"], table["text"])}


def _commit(job: Job, source: str, chunk: list[TextRecord], replaced: list[int]) -> None:
    if not chunk:
        return
    store = job.store
    texts = [r.text for r in chunk]
    store.write_shard("texts", {
        "id": store.reserve_ids(len(chunk)), "text": texts, "source": [source] * len(chunk),
        "key": [r.key for r in chunk], "image_id": [None] * len(chunk),
    }, job.batcher.texts(texts))
    job.report.replaced += store.mark_deleted("texts", replaced)
    store.commit()
    job.report.texts_embedded += len(chunk)
    job.report.changed.add("texts")
