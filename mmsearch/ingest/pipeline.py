"""The ingest pipeline: discover -> skip unchanged -> decode (workers) -> encode (batches) -> shards.

Each shard commit carries its images, their caption texts and the tombstones of the rows they
replace in one manifest write, so a run killed at any point can simply be run again.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..encoders.base import Encoder
from ..store import Store
from . import quarantine
from .decode import Decoded, decode_batches
from .discover import ImageFile, TextRecord, classify, iter_image_files, iter_text_records

log = logging.getLogger(__name__)

#: progress callback: (stage, done, total)
Progress = Callable[[str, int, int], None]


@dataclass
class IngestReport:
    """What one ingest run did."""

    images_embedded: int = 0
    texts_embedded: int = 0
    skipped_unchanged: int = 0
    rejected: int = 0
    skipped_quarantined: int = 0
    deleted: int = 0  # inputs gone from disk
    replaced: int = 0  # inputs changed on disk and embedded again
    changed: set[str] = field(default_factory=set)  # modalities whose rows changed


@dataclass(frozen=True)
class IngestOptions:
    """Knobs of the pipeline."""

    batch_size: int = 32
    workers: int = 2
    shard_rows: int = 8192


def ingest(
    store: Store, encoder: Encoder, paths: Sequence[str | Path], *,
    options: IngestOptions = IngestOptions(), progress: Progress | None = None,
) -> IngestReport:
    """Embed every new or changed input under ``paths`` into ``store``; record removed ones as deletions."""
    report = IngestReport()
    for raw in paths:
        path = Path(raw).expanduser().absolute()
        if classify(path) == "images":
            _ImageIngest(store, encoder, path, options, report, progress).run()
        else:
            _ingest_texts(store, encoder, path, options, report, progress)
    return report


class _ImageIngest:
    """Ingest of one image root (a folder or a single file)."""

    def __init__(self, store: Store, encoder: Encoder, root: Path, options: IngestOptions,
                 report: IngestReport, progress: Progress | None) -> None:
        self.store, self.encoder, self.root, self.options = store, encoder, root, options
        self.report, self.progress = report, progress
        self.buffer: list[tuple[ImageFile, Decoded, np.ndarray]] = []

    def run(self) -> None:
        todo, replaced, removed = self._plan()
        self.replaced = replaced
        if removed:
            self._delete_images(removed)
        done = 0
        for batch in decode_batches(todo, self.encoder.image_transform,
                                    batch_size=self.options.batch_size, workers=self._workers(len(todo))):
            self._encode(todo, batch)
            done += len(batch)
            if self.progress:
                self.progress("images", done, len(todo))
            if len(self.buffer) >= self.options.shard_rows:
                self._flush()
        self._flush()

    def _workers(self, n: int) -> int:
        return 0 if n < 2 * self.options.batch_size else self.options.workers

    def _plan(self) -> tuple[list[ImageFile], dict[str, list[int]], list[int]]:
        """(files to embed, uri -> ids they replace, ids of removed files)."""
        table = self.store.scan("images", ["id", "uri", "bytes", "mtime", "caption"])
        existing: dict[str, list[tuple[int, int, float, str | None]]] = defaultdict(list)
        for row in table.to_pylist():
            existing[row["uri"]].append((row["id"], row["bytes"], row["mtime"], row["caption"]))
        todo, replaced, seen = [], {}, set()
        rejected_before = quarantine.known(self.store.root)
        for f in iter_image_files(self.root):
            seen.add(f.uri)
            olds = existing.get(f.uri, [])
            if any(b == f.bytes and m == f.mtime and c == f.caption for _, b, m, c in olds):
                self.report.skipped_unchanged += 1
                continue
            if (f.uri, f.bytes, f.mtime) in rejected_before:
                self.report.skipped_quarantined += 1
                continue
            todo.append(f)
            if olds:
                replaced[f.uri] = [i for i, *_ in olds]
        removed = [i for uri, rows in existing.items() if _under(uri, self.root) and uri not in seen
                   for i, *_ in rows]
        return todo, replaced, removed

    def _encode(self, files: Sequence[ImageFile], batch: list[Decoded]) -> None:
        good = [d for d in batch if d.tensor is not None]
        for d in batch:
            if d.error is not None:
                self.report.rejected += 1
                f = files[d.index]
                quarantine.record(self.store.root, f.uri, "decode", d.error, size=f.bytes, mtime=f.mtime)
                log.warning("rejected %s: %s", files[d.index].uri, d.error)
        if not good:
            return
        import torch

        vectors = self.encoder.encode_images(torch.stack([d.tensor for d in good if d.tensor is not None]))
        self.buffer.extend((files[d.index], d, v) for d, v in zip(good, vectors))

    def _flush(self) -> None:
        if not self.buffer:
            return
        store, items = self.store, self.buffer
        self.buffer = []
        image_ids = store.reserve_ids(len(items))
        store.write_shard("images", {
            "id": image_ids, "uri": [f.uri for f, _, _ in items], "sha256": [d.sha256 for _, d, _ in items],
            "bytes": [f.bytes for f, _, _ in items], "mtime": [f.mtime for f, _, _ in items],
            "width": [d.width for _, d, _ in items], "height": [d.height for _, d, _ in items],
            "caption": [f.caption for f, _, _ in items],
        }, np.stack([v for _, _, v in items]))
        self._write_captions(items, image_ids)
        old = [i for f, _, _ in items for i in self.replaced.get(f.uri, [])]
        self._delete_images(old, commit=False, replaced=True)
        store.commit()
        self.report.images_embedded += len(items)
        self.report.changed.add("images")

    def _write_captions(self, items: list[tuple[ImageFile, Decoded, np.ndarray]], image_ids: np.ndarray) -> None:
        pairs = [(f, int(i)) for (f, _, _), i in zip(items, image_ids) if f.caption]
        if not pairs:
            return
        texts = [f.caption or "" for f, _ in pairs]
        vectors = _encode_texts(self.encoder, texts, self.options.batch_size)
        self.store.write_shard("texts", {
            "id": self.store.reserve_ids(len(pairs)), "text": texts, "source": [f.uri for f, _ in pairs],
            "key": ["caption"] * len(pairs), "image_id": [i for _, i in pairs],
        }, vectors)
        self.report.texts_embedded += len(pairs)
        self.report.changed.add("texts")

    def _delete_images(self, ids: list[int], *, commit: bool = True, replaced: bool = False) -> None:
        if not ids:
            return
        captions = self.store.scan("texts", ["id", "image_id"]).to_pydict()
        wanted = set(ids)
        caption_ids = [t for t, img in zip(captions["id"], captions["image_id"]) if img in wanted]
        n = self.store.mark_deleted("images", ids)
        if self.store.mark_deleted("texts", caption_ids):
            self.report.changed.add("texts")
        if n:
            if replaced:
                self.report.replaced += n
            else:
                self.report.deleted += n
            self.report.changed.add("images")
        if commit:
            self.store.commit()


def _ingest_texts(store: Store, encoder: Encoder, path: Path, options: IngestOptions,
                  report: IngestReport, progress: Progress | None) -> None:
    source = str(path)
    table = store.scan("texts", ["id", "source", "key"]).to_pydict()
    existing = {k: i for i, s, k in zip(table["id"], table["source"], table["key"]) if s == source}
    records = list(iter_text_records(path))
    keys = {r.key for r in records}
    gone = [i for k, i in existing.items() if k not in keys]
    if gone:
        report.deleted += store.mark_deleted("texts", gone)
        report.changed.add("texts")
        store.commit()
    todo = [r for r in records if r.key not in existing]
    report.skipped_unchanged += len(records) - len(todo)
    for start in range(0, len(todo), options.shard_rows):
        chunk = todo[start:start + options.shard_rows]
        _write_text_shard(store, encoder, source, chunk, options.batch_size)
        report.texts_embedded += len(chunk)
        report.changed.add("texts")
        if progress:
            progress("texts", start + len(chunk), len(todo))


def _write_text_shard(store: Store, encoder: Encoder, source: str, chunk: list[TextRecord], batch_size: int) -> None:
    texts = [r.text for r in chunk]
    vectors = _encode_texts(encoder, texts, batch_size)
    store.write_shard("texts", {
        "id": store.reserve_ids(len(chunk)), "text": texts, "source": [source] * len(chunk),
        "key": [r.key for r in chunk], "image_id": [None] * len(chunk),
    }, vectors)
    store.commit()


def _encode_texts(encoder: Encoder, texts: Iterable[str], batch_size: int) -> np.ndarray:
    texts = list(texts)
    parts = [encoder.encode_texts(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)


def _under(uri: str, root: Path) -> bool:
    r = str(root)
    return uri == r or uri.startswith(r.rstrip(os.sep) + os.sep)
