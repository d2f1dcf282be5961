"""Ingest of one image root: plan (skip unchanged) -> the embed stage (:mod:`.stage`) -> exact-size shards.

Every shard commit carries its image rows, their caption texts and the tombstones of the rows they
replace in one manifest write, so a run killed at any point can simply be run again. Shards hold
exactly ``shard_rows`` images (the last one fewer) and inputs are taken in a fixed order, so a resumed
run assigns the same ids as an uninterrupted one.

Stable ids: a file that comes back at the path of a deleted row with the same size, modification time and
caption (restored from a trash or a backup, moved away and back) gets that row back, id and caption
included (:meth:`Store.undelete`), instead of a new row under a new id.

Deduplication: an image whose content (sha256) is already in the collection, or earlier in this run,
is not encoded again: it gets its own row (its own path, caption, mtime) carrying a copy of the
existing embedding. Search therefore returns every path of a duplicated picture, with equal scores
and equal ``sha256`` metadata.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IngestError, StoreError
from . import quarantine
from .decode import Decoded
from .discover import ImageFile, iter_image_files
from .job import Job
from .stage import EmbeddedImage, ImageWork, model_input_px

__all__ = ["ImageIngest", "model_input_px"]

log = logging.getLogger(__name__)

_DISCOVERY_TICK = 512


@dataclass
class _Row:
    """An image row waiting in the shard buffer."""

    file: ImageFile
    sha256: str
    width: int
    height: int
    vector: np.ndarray | None  # None: copy the stored embedding of ``source_id``
    source_id: int | None = None
    caption_vector: np.ndarray | None = None  # embedded by the stage, else at commit


@dataclass(frozen=True)
class _Old:
    id: int
    bytes: int
    mtime: float
    caption: str | None


class ImageIngest:
    """Ingest of one image root (a folder or a single file)."""

    def __init__(self, job: Job, root: Path) -> None:
        self.job, self.root = job, root
        self.by_uri: dict[str, list[_Old]] = defaultdict(list)
        self.tombstoned: dict[str, list[_Old]] = defaultdict(list)  # deleted rows, by path: candidates to restore
        self.tombstoned_hash: dict[int, tuple[str, int, int]] = {}  # id -> (sha256, width, height) of those
        self.restore: dict[int, str] = {}  # id -> path of the deleted rows whose file is back unchanged
        self._caption_rows: dict[int, list[int]] | None = None  # image id -> ids of its caption rows (all rows)
        self.by_hash: dict[str, tuple[int, int, int]] = {}  # sha256 -> (id, width, height) of a stored row
        self.pending: dict[str, np.ndarray] = {}  # dedup key -> vector, for rows not yet committed
        self.replaced: dict[str, list[int]] = {}
        self.seen: set[str] = set()
        self.rejected_now: set[str] = set()
        self.buffer: list[_Row] = []
        self.known = quarantine.known(job.store.root)

    def run(self) -> None:
        """Plan, restore the rows of files that came back, embed, commit, then record removed files and tidy
        the quarantine."""
        self._load_existing()
        todo = self._plan()
        self._restore()
        self._embed(todo)
        self._finish(todo)

    # -- planning --------------------------------------------------------------------------------
    def _load_existing(self) -> None:
        store = self.job.store
        table = store.scan("images", ["id", "uri", "bytes", "mtime", "caption", "sha256", "width", "height"],
                           include_deleted=True)
        deleted = set(store.manifest.deleted["images"])
        for row in table.to_pylist():
            old = _Old(row["id"], row["bytes"], row["mtime"], row["caption"])
            if row["id"] in deleted:
                if _under(row["uri"], self.root):
                    self.tombstoned[row["uri"]].append(old)
                    self.tombstoned_hash[row["id"]] = (row["sha256"], row["width"], row["height"])
                continue
            self.by_uri[row["uri"]].append(old)
            if row["sha256"] and self.job.options.dedup:
                self.by_hash.setdefault(row["sha256"], (row["id"], row["width"], row["height"]))

    def _plan(self) -> list[ImageFile]:
        """The files to embed; counts the unchanged and the known-bad ones."""
        report, known = self.job.report, self.known
        todo: list[ImageFile] = []
        for n, f in enumerate(iter_image_files(self.root, captions=self.job.captions, on_reject=self._rejected_early)):
            self.seen.add(f.uri)
            if n % _DISCOVERY_TICK == 0:
                self.job.tick("discover", n, 0)
            olds = self.by_uri.get(f.uri, [])
            if any(o.bytes == f.bytes and o.mtime == f.mtime and o.caption == f.caption for o in olds):
                report.skipped_unchanged += 1
            elif (back := self._restorable(f)) is not None:
                report.skipped_unchanged += 1  # its embedding is in the collection: nothing to embed
                self.restore[back] = f.uri
                if olds:
                    self.replaced[f.uri] = [o.id for o in olds]
            elif (f.uri, f.bytes, f.mtime) in known:
                report.skipped_quarantined += 1
            else:
                todo.append(f)
                if olds:
                    self.replaced[f.uri] = [o.id for o in olds]
        return todo

    def _restorable(self, f: ImageFile) -> int | None:
        """The deleted row ``f`` is, unchanged (same size, modification time and caption, and the caption's own
        row still stored: a repair that dropped it deleted the image to embed it again): the latest one."""
        same = [o.id for o in self.tombstoned.get(f.uri, ())
                if o.bytes == f.bytes and o.mtime == f.mtime and o.caption == f.caption
                and (not o.caption or o.id in self._captions())]
        return max(same) if same else None

    def _captions(self) -> dict[int, list[int]]:
        """Image id -> the ids of its caption rows, deleted ones included (read once, when first needed)."""
        if self._caption_rows is None:
            table = self.job.store.scan("texts", ["id", "image_id"], include_deleted=True).to_pydict()
            self._caption_rows = defaultdict(list)
            for t, img in zip(table["id"], table["image_id"]):
                if img is not None:
                    self._caption_rows[img].append(t)
        return self._caption_rows

    def _restore(self) -> None:
        """Un-delete the rows (and their captions) of files that came back unchanged; tombstone the rows that
        replaced them meanwhile. One commit."""
        if not self.restore:
            return
        store = self.job.store
        if store.undelete("texts", [t for i in self.restore for t in self._captions().get(i, [])]):
            self.job.report.changed.add("texts")
        restored = store.undelete("images", list(self.restore))
        self._delete([i for uri in self.restore.values() for i in self.replaced.pop(uri, [])], replaced=True)
        store.commit()
        for i in self.restore:
            sha, width, height = self.tombstoned_hash[i]
            if sha and self.job.options.dedup:
                self.by_hash.setdefault(sha, (i, width, height))
        self.job.report.changed.add("images")
        log.info("restored %d deleted image row(s) whose files came back unchanged (same ids)", restored)

    def _rejected_early(self, uri: str, reason: str, error: str) -> None:
        """A discovery-time reject (cannot stat, not a regular file): quarantined once."""
        self.seen.add(uri)
        self.rejected_now.add(uri)
        if reason not in quarantine.RETRIED_REASONS and (uri, None, None) in self.known:
            self.job.report.skipped_quarantined += 1
        else:
            self.job.reject(uri, reason, error)

    # -- embedding -------------------------------------------------------------------------------
    def _embed(self, todo: list[ImageFile]) -> None:
        """Hand the planned files to the job's embed stage; take its batches back (in input order), committing
        exact ``shard_rows`` shards."""
        options, done = self.job.options, 0
        for batch in self.job.stage.embed_images(ImageWork(todo, frozenset(self.by_hash))):
            self._take(batch)
            done += len(batch)
            self.job.tick("images", done, len(todo))
            while len(self.buffer) >= options.shard_rows:
                self._flush(self.buffer[: options.shard_rows])
                self.buffer = self.buffer[options.shard_rows:]
        self._flush(self.buffer)
        self.buffer = []

    def _take(self, batch: list[EmbeddedImage]) -> None:
        """Quarantine the failures of a batch; keep the vector of content new to the collection; buffer the rows."""
        good = []
        for e in batch:
            f, d = e.file, e.decoded
            if not d.ok:
                self.rejected_now.add(f.uri)
                self.job.reject(f.uri, d.reason or quarantine.CORRUPT, d.error or "", size=f.bytes, mtime=f.mtime)
                continue
            key = self._key(d)
            if key in self.pending or key in self.by_hash:
                self.job.report.images_deduplicated += 1  # the first copy's vector, whatever the stage gave
            elif e.vector is None:
                raise IngestError(f"the embed stage returned no vector for {f.uri}, whose content is new")
            else:
                self.pending[key] = e.vector
            good.append(e)
        for e in good:
            self.buffer.append(self._row(e))

    def _key(self, d: Decoded) -> str:
        return d.sha256 if self.job.options.dedup and d.sha256 else f"seq:{d.seq}"

    def _row(self, e: EmbeddedImage) -> _Row:
        d = e.decoded
        key, sha = self._key(d), d.sha256 or ""
        if key in self.pending:
            return _Row(e.file, sha, d.width, d.height, self.pending[key], caption_vector=e.caption_vector)
        source_id, width, height = self.by_hash[key]
        return _Row(e.file, sha, d.width or width, d.height or height, None, source_id, e.caption_vector)

    # -- committing ------------------------------------------------------------------------------
    def _flush(self, rows: list[_Row]) -> None:
        if not rows:
            return
        store = self.job.store
        ids = store.reserve_ids(len(rows))
        store.write_shard("images", {
            "id": ids, "uri": [r.file.uri for r in rows], "sha256": [r.sha256 for r in rows],
            "bytes": [r.file.bytes for r in rows], "mtime": [r.file.mtime for r in rows],
            "width": [r.width for r in rows], "height": [r.height for r in rows],
            "caption": [r.file.caption for r in rows],
        }, self._vectors(rows))
        self._write_captions(rows, ids)
        self._delete([i for r in rows for i in self.replaced.get(r.file.uri, [])], replaced=True)
        store.commit()
        self._committed(rows, ids)

    def _vectors(self, rows: list[_Row]) -> np.ndarray:
        wanted = [r.source_id for r in rows if r.vector is None and r.source_id is not None]
        stored = self.job.store.embeddings_by_id("images", wanted) if wanted else {}
        if len(stored) != len(set(wanted)):
            raise StoreError("an embedding to reuse for a duplicate image is missing from the shards")
        return np.stack([r.vector if r.vector is not None else stored[r.source_id] for r in rows])  # type: ignore[index]

    def _committed(self, rows: list[_Row], ids: np.ndarray) -> None:
        for r, i in zip(rows, ids):
            if self.job.options.dedup and r.sha256:
                self.by_hash.setdefault(r.sha256, (int(i), r.width, r.height))
                self.pending.pop(r.sha256, None)
        if not self.job.options.dedup:
            self.pending.clear()
        self.job.report.images_embedded += len(rows)
        self.job.report.changed.add("images")

    def _write_captions(self, rows: list[_Row], image_ids: np.ndarray) -> None:
        pairs = [(r.file, int(i)) for r, i in zip(rows, image_ids) if r.file.caption]
        if not pairs:
            return
        texts = [f.caption or "" for f, _ in pairs]
        store = self.job.store
        store.write_shard("texts", {
            "id": store.reserve_ids(len(pairs)), "text": texts, "source": [f.uri for f, _ in pairs],
            "key": ["caption"] * len(pairs), "image_id": [i for _, i in pairs],
        }, self._caption_vectors([r for r in rows if r.file.caption]))
        self.job.report.texts_embedded += len(pairs)
        self.job.report.changed.add("texts")

    def _caption_vectors(self, rows: list[_Row]) -> np.ndarray:
        """The captions' vectors: those the stage embedded, the others embedded now (in one call)."""
        missing = [r.file.caption or "" for r in rows if r.caption_vector is None]
        encoded = iter(self.job.stage.encode_texts(missing) if missing else ())
        return np.stack([r.caption_vector if r.caption_vector is not None else next(encoded) for r in rows])

    def _delete(self, ids: list[int], *, replaced: bool) -> None:
        """Tombstone image rows and their captions (in memory; the caller commits)."""
        if not ids:
            return
        store, wanted = self.job.store, set(ids)
        captions = store.scan("texts", ["id", "image_id"]).to_pydict()
        caption_ids = [t for t, img in zip(captions["id"], captions["image_id"]) if img in wanted]
        if store.mark_deleted("texts", caption_ids):
            self.job.report.changed.add("texts")
        n = store.mark_deleted("images", ids)
        if n:
            if replaced:
                self.job.report.replaced += n
            else:
                self.job.report.deleted += n
            self.job.report.changed.add("images")

    def _finish(self, todo: list[ImageFile]) -> None:
        """Record files gone from disk as deletions; drop quarantine entries that no longer apply."""
        removed = [o.id for uri, olds in self.by_uri.items() if _under(uri, self.root) and uri not in self.seen
                   for o in olds]
        if removed:
            self._delete(removed, replaced=False)
            self.job.store.commit()
        embedded = {f.uri for f in todo} - self.rejected_now
        quarantine.prune(self.job.store.root, lambda e: _under(str(e.get("uri")), self.root)
                         and (e.get("uri") not in self.seen or e.get("uri") in embedded))


def _under(uri: str, root: Path) -> bool:
    r = str(root)
    return uri == r or uri.startswith(r.rstrip(os.sep) + os.sep)
