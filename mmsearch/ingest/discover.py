"""Finding inputs: image folders (with caption sidecars or a caption manifest) and text corpora.

The walk is streamed, sorted (so every run sees inputs in the same order) and safe: symlinked
folders are followed once each (a symlink loop cannot recurse), entries that are not regular files
(FIFOs, sockets, devices) are never opened, and anything that cannot be examined is reported to
``on_reject`` with a :mod:`.quarantine` reason instead of stopping the walk.

Names that are not valid UTF-8 are indexed: their ``uri`` (what is stored and shown) has the
undecodable bytes escaped as ``\\xNN``; ``path`` keeps the real name for opening the file.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

from ..config import COLLECTION_SUFFIX
from ..errors import ConfigError
from . import quarantine as q
from .corpora import TEXT_CORPUS_EXTENSIONS, TEXT_FIELDS, TextRecord, iter_text_records

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
JSONL_TEXT_FIELDS = TEXT_FIELDS

#: called with (uri, reason, error) for an entry that cannot be examined
OnReject = Callable[[str, str, str], None]

__all__ = ["COLLECTION_SUFFIX", "IMAGE_EXTENSIONS", "ImageFile", "TextRecord", "classify", "iter_image_files",
           "iter_text_records", "read_caption", "safe_uri"]


@dataclass(frozen=True, slots=True)
class ImageFile:
    """One image found on disk. ``caption`` comes from a caption manifest or a sidecar, if any."""

    uri: str  # absolute path, valid UTF-8 (stored in the collection)
    bytes: int
    mtime: float
    caption: str | None
    path: str | None = None  # the real path when it differs from ``uri`` (a non-UTF-8 name)

    @property
    def os_path(self) -> str:
        """The path to open."""
        return self.path or self.uri


def classify(path: Path) -> str:
    """'images' for a folder or an image file, 'texts' for a text corpus file; else ConfigError."""
    if not os.path.lexists(path):
        raise ConfigError(f"{str(path)!r} does not exist")
    if path.is_dir():
        return "images"
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "images"
    if suffix in TEXT_CORPUS_EXTENSIONS:
        return "texts"
    raise ConfigError(
        f"don't know how to index {str(path)!r}: give a folder of images, an image "
        f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or a text corpus ({', '.join(sorted(TEXT_CORPUS_EXTENSIONS))})"
    )


def safe_uri(path: str) -> str:
    """``path`` as valid UTF-8: undecodable bytes of a non-UTF-8 name become ``\\xNN``."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def iter_image_files(root: Path, *, captions: Mapping[str, str] | None = None,
                     on_reject: OnReject | None = None) -> Iterator[ImageFile]:
    """Images under ``root`` (recursive, sorted, hidden and ``*.mms`` folders skipped), streamed."""
    root = Path(os.path.normpath(Path(root).expanduser().absolute()))
    report = on_reject or _log_reject
    if not root.is_dir():
        found = _image_file(str(root), captions, report)
        if found is not None:
            yield found
        return
    visited: set[tuple[int, int]] = set()

    def on_walk_error(exc: OSError) -> None:
        report(safe_uri(str(exc.filename)), q.UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=on_walk_error):
        dirnames[:] = _subfolders(dirpath, dirnames, visited)
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                found = _image_file(os.path.join(dirpath, name), captions, report)
                if found is not None:
                    yield found


def _subfolders(dirpath: str, dirnames: list[str], visited: set[tuple[int, int]]) -> list[str]:
    """Folders to descend into: sorted, not hidden or collections, each real folder once (no loops)."""
    if not visited:
        st = os.stat(dirpath)
        visited.add((st.st_dev, st.st_ino))
    keep = []
    for d in sorted(dirnames):
        if d.startswith(".") or d.endswith(COLLECTION_SUFFIX):
            continue
        try:
            st = os.stat(os.path.join(dirpath, d))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in visited:
            log.info("not descending into %s: already visited (a symlink loop or a second link)", safe_uri(d))
            continue
        visited.add((st.st_dev, st.st_ino))
        keep.append(d)
    return keep


def _image_file(path: str, captions: Mapping[str, str] | None, report: OnReject) -> ImageFile | None:
    uri = safe_uri(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        report(uri, q.VANISHED, f"{type(exc).__name__}: {exc.strerror} (deleted, or a dangling symlink)")
        return None
    except OSError as exc:
        report(uri, q.UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}")
        return None
    if not stat.S_ISREG(st.st_mode):
        report(uri, q.NOT_A_FILE, "not a regular file (a FIFO, socket, device or folder with an image name)")
        return None
    caption = captions.get(path) if captions else None
    return ImageFile(uri=uri, bytes=st.st_size, mtime=st.st_mtime, caption=caption or read_caption(Path(path)),
                     path=None if uri == path else path)


def read_caption(image_path: Path) -> str | None:
    """The caption beside ``image.jpg``: ``image.txt``, else the caption/text field of ``image.json``."""
    text = _read_small(image_path.with_suffix(".txt"))
    if text is None:
        text = _json_caption(image_path.with_suffix(".json"))
    text = (text or "").strip()
    return text or None


def _json_caption(sidecar: Path) -> str | None:
    raw = _read_small(sidecar)
    if raw is None:
        return None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError:
        log.info("ignoring caption sidecar %s: not valid JSON", safe_uri(str(sidecar)))
        return None
    value = next((obj[k] for k in TEXT_FIELDS if isinstance(obj, dict) and isinstance(obj.get(k), str)), None)
    return value


def _read_small(path: Path, limit_bytes: int = 1 << 20) -> str | None:
    """A sidecar's text (at most ``limit_bytes``); None when absent, unreadable or not a regular file."""
    try:
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            return f.read(limit_bytes).decode("utf-8", errors="replace")
    except OSError:
        return None


def _log_reject(uri: str, reason: str, error: str) -> None:
    log.warning("skipping %s: %s (%s)", uri, reason, error)
