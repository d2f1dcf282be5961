"""Ingest of one text corpus, streamed: rows are read, compared with what is stored, and embedded in
shards of exactly ``shard_rows`` texts (each its own commit, so a killed run resumes at the last one).

A row whose key is stored with the same text is skipped; one whose text changed is embedded again and
its old row tombstoned in the same commit; stored keys missing from the corpus become deletions. A row
whose key and text match a deleted row of the same corpus (a line removed, then put back) gets that row
back, id included (:meth:`Store.undelete`), instead of a new one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..store import arrow
from .corpora import TextRecord, iter_text_records
from .job import Job

log = logging.getLogger(__name__)

_PROGRESS_EVERY = 1024


def ingest_corpus(job: Job, path: Path) -> None:
    """Embed the new and changed texts of corpus ``path``; delete the ones it no longer has."""
    source = str(path)
    existing, tombstoned = _existing(job, source)
    seen: set[str] = set()
    chunk: list[TextRecord] = []
    replaced: list[int] = []
    restored: list[int] = []
    options = job.options
    for n, rec in enumerate(iter_text_records(path, text_column=options.text_column, id_column=options.id_column), 1):
        seen.add(rec.key)
        old = existing.get(rec.key)
        back = tombstoned.get((rec.key, hash(rec.text)))
        if old is not None and old[1] == hash(rec.text):
            job.report.skipped_unchanged += 1
        elif back is not None:
            job.report.skipped_unchanged += 1  # its embedding is in the collection: nothing to embed
            restored.append(back)
            if old is not None:
                replaced.append(old[0])
        else:
            chunk.append(rec)
            if old is not None:
                replaced.append(old[0])
        if len(chunk) == options.shard_rows:
            _commit(job, source, chunk, replaced, restored)
            chunk, replaced, restored = [], [], []
        if n % _PROGRESS_EVERY == 0:
            job.tick("texts", n, 0)
    _commit(job, source, chunk, replaced, restored)
    gone = [i for key, (i, _) in existing.items() if key not in seen]
    if gone:
        job.report.deleted += job.store.mark_deleted("texts", gone)
        job.report.changed.add("texts")
        job.store.commit()


def _existing(job: Job, source: str) -> tuple[dict[str, tuple[int, int]], dict[tuple[str, int], int]]:
    """key -> (id, hash of the text) of the live rows stored for ``source``, and (key, hash of the text) -> id
    of its deleted rows (the latest one of each)."""
    store = job.store
    table = store.scan("texts", ["id", "source", "key", "text"], include_deleted=True)
    table = table.filter(pc.equal(table.column("source"), arrow.scalar(source, pa.string()))).to_pydict()
    deleted = set(store.manifest.deleted["texts"])
    live, gone = {}, {}
    for i, k, t in zip(table["id"], table["key"], table["text"]):
        if i in deleted:
            gone[(k, hash(t))] = max(i, gone.get((k, hash(t)), i))
        else:
            live[k] = (i, hash(t))
    return live, gone


def _commit(job: Job, source: str, chunk: list[TextRecord], replaced: list[int], restored: list[int]) -> None:
    if not chunk and not restored:
        return
    store = job.store
    if chunk:
        texts = [r.text for r in chunk]
        store.write_shard("texts", {
            "id": store.reserve_ids(len(chunk)), "text": texts, "source": [source] * len(chunk),
            "key": [r.key for r in chunk], "image_id": [None] * len(chunk),
        }, job.stage.encode_texts(texts))
    if restored:
        log.info("restored %d deleted row(s) of %s that came back unchanged (same ids)",
                 store.undelete("texts", restored), source)
    job.report.replaced += store.mark_deleted("texts", replaced)
    store.commit()
    job.report.texts_embedded += len(chunk)
    job.report.changed.add("texts")
