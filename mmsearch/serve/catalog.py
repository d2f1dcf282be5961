"""The collections a server holds, by name, and item lookups by id from their stored rows.

A served collection follows its directory: when a writer publishes a new version (``manifest.json`` is
renamed into place last, once the version is whole), the next request (checked at most every
``reload_check_s``) gets it, while requests already running finish on the old one, which stays readable.

The server never accepts a path from a client: items, thumbnails and images are looked up by id in
the collection's Parquet metadata (read once, cached), and a file is served only if it belongs to
the collection and lies inside its media roots.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, MMSearchError
from ..search import Collection
from ..store.manifest import MANIFEST_NAME
from .errors import ApiError

CollectionLike = Union[Collection, str, Path]
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MODALITY_OF = {"images": "image", "texts": "text"}
log = logging.getLogger(__name__)


@dataclass
class Item:
    """One stored row, in the Hit JSON form less the score."""

    id: int
    modality: str
    uri: str | None
    text: str | None
    caption: str | None
    metadata: dict[str, Any]
    labels: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The item's JSON form (the keys of ``Hit.to_dict()`` but ``score`` and ``good_match``)."""
        return {"id": self.id, "modality": self.modality, "uri": self.uri, "text": self.text,
                "caption": self.caption, "metadata": self.metadata, "labels": self.labels}


@dataclass
class Served:
    """A collection served under ``name``, with its metadata rows loaded on first lookup."""

    name: str
    collection: Collection
    media_roots: tuple[Path, ...] | None = None
    stamp: tuple[int, int, int] | None = None  # the manifest file this version was opened from
    checked_at: float = field(default_factory=time.monotonic)
    _rows: dict[str, tuple[pa.Table, np.ndarray]] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refreshed(self, every_s: float) -> Served:
        """This entry, or a new one opened from the collection's directory when its manifest has changed
        (looked at no more often than ``every_s``). A manifest that cannot be opened keeps this version."""
        now = time.monotonic()
        if now - self.checked_at < every_s:
            return self
        self.checked_at = now
        stamp = manifest_stamp(self.collection.path)
        if stamp is None or stamp == self.stamp:
            return self
        try:
            fresh = _open(self.collection.path)
        except MMSearchError as exc:
            log.warning("collection %r changed on disk but cannot be opened (%s); still serving the old version",
                        self.name, exc)
            self.stamp = stamp
            return self
        log.info("collection %r changed on disk: serving the new version", self.name)
        return Served(self.name, fresh, self.media_roots, stamp, now)

    def item(self, item_id: int) -> Item:
        """The item with ``item_id`` (404 when the collection has none)."""
        for modality in ("images", "texts"):
            table, ids = self._table(modality)
            pos = int(np.searchsorted(ids, item_id))
            if pos < len(ids) and ids[pos] == item_id:
                item = _item(modality, table.slice(pos, 1).to_pylist()[0])
                if modality == "images":
                    item.labels = self.collection.labels([item_id]).get(item_id, [])
                return item
        raise ApiError(404, f"collection {self.name!r} has no item with id {item_id}", code="unknown_id")

    def roots(self) -> tuple[Path, ...]:
        """Folders whose files may be served: the configured ones, else the folder holding every image."""
        if self.media_roots is not None:
            return self.media_roots
        uris = self._table("images")[0].column("uri").to_pylist()
        if not uris:
            return ()
        common = os.path.commonpath([os.path.dirname(u) for u in uris])
        return (Path(os.path.realpath(common)),)

    def _table(self, modality: str) -> tuple[pa.Table, np.ndarray]:
        with self._lock:  # the rows of the very version the collection searches: ids and items always agree
            if modality not in self._rows:
                self._rows[modality] = self.collection.metadata(MODALITY_OF[modality])
            return self._rows[modality]

    def warm_rows(self) -> None:
        """Read the metadata rows now (and the media roots)."""
        self._table("images")
        self._table("texts")


def _item(modality: str, row: dict[str, Any]) -> Item:
    if modality == "images":
        meta = {k: row.get(k) for k in ("width", "height", "bytes", "mtime", "sha256")}
        return Item(int(row["id"]), "image", row.get("uri"), None, row.get("caption"), meta)
    meta = {k: row.get(k) for k in ("key", "image_id")}
    return Item(int(row["id"]), "text", row.get("source"), row.get("text"), None, meta)


def build_catalog(collections: Mapping[str, CollectionLike] | Sequence[CollectionLike | tuple[str | None, CollectionLike]],
                  *, media_roots: tuple[Path, ...] | None = None) -> dict[str, Served]:
    """Name and open the collections: a dict gives every name; a list may mix collections and
    ``(name, collection)`` pairs, the unnamed ones named by :func:`collection_names`."""
    items = list(collections.items()) if isinstance(collections, Mapping) else \
        [c if isinstance(c, tuple) else (None, c) for c in collections]
    if not items:
        raise ConfigError("give at least one collection to serve")
    opened = [(name, value if isinstance(value, Collection) else _open(value)) for name, value in items]
    names = collection_names([(name, col.path) for name, col in opened])
    return {name: Served(name, col, media_roots, manifest_stamp(col.path)) for name, (_, col) in zip(names, opened)}


def collection_names(items: Sequence[tuple[str | None, str | Path]]) -> list[str]:
    """The name each ``(name or None, directory)`` is served under: the name given, else the directory's name
    less ``.mms``; directories that share one get their parent folder's name in front (``a/photos.mms`` and
    ``b/photos.mms``: ``a-photos`` and ``b-photos``), then ``-2``, ``-3``... The same directory twice unnamed,
    or two given names alike, is an error."""
    given = [name for name, _ in items if name]
    for name in given:
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"collection name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    dup = next((n for n in given if given.count(n) > 1), None)
    if dup:
        raise ConfigError(f"two collections are both named {dup!r}; give each its own name")
    real = [os.path.realpath(path) if not name else None for name, path in items]
    for i, where in enumerate(real):
        if where is not None and where in real[:i]:
            raise ConfigError(f"{items[i][1]} is given twice (two collections both named "
                              f"{items[i][0] or _default_name(Path(items[i][1]))!r}); give it once")
    plain = [_default_name(Path(path)) for name, path in items if not name]
    taken, names = set(given), []
    for name, path in items:
        if not name:
            name = _default_name(Path(path))
            if plain.count(name) > 1:
                parent = _default_name(Path(os.path.abspath(path)).parent)
                name = f"{parent}-{name}"[:64] if parent != "collection" else name
            unique, n = name, 2
            while unique in taken:
                unique, n = f"{name[:60]}-{n}", n + 1
            name = unique
            taken.add(name)
        names.append(name)
    return names


def manifest_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of the collection's manifest: every commit renames a new file into place."""
    try:
        st = (Path(path) / MANIFEST_NAME).stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _open(path: str | Path) -> Collection:
    from ..api import open as open_collection

    return open_collection(path)


def _default_name(path: Path) -> str:
    name = path.name[:-4] if path.name.endswith(".mms") else path.name
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name).lstrip("-_.")[:64] or "collection"
