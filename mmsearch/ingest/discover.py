"""Finding inputs: image folders (with optional caption sidecars) and text corpora."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
TEXT_CORPUS_EXTENSIONS = frozenset({".txt", ".jsonl"})
COLLECTION_SUFFIX = ".mms"
JSONL_TEXT_FIELDS = ("text", "caption", "content")


@dataclass(frozen=True)
class ImageFile:
    """One image found on disk; ``caption`` comes from a ``name.txt`` sidecar, if any."""

    uri: str  # absolute path
    bytes: int
    mtime: float
    caption: str | None


@dataclass(frozen=True)
class TextRecord:
    """One text of a corpus; ``key`` identifies it within its source across runs."""

    key: str
    text: str


def classify(path: Path) -> str:
    """'images' for a folder or an image file, 'texts' for a text corpus file; else ConfigError."""
    if path.is_dir():
        return "images"
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "images"
    if suffix in TEXT_CORPUS_EXTENSIONS:
        return "texts"
    if not path.exists():
        raise ConfigError(f"{str(path)!r} does not exist")
    raise ConfigError(
        f"don't know how to index {str(path)!r}: give a folder of images, an image "
        f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or a text corpus ({', '.join(sorted(TEXT_CORPUS_EXTENSIONS))})"
    )


def iter_image_files(root: Path) -> Iterator[ImageFile]:
    """Images under ``root`` (recursive, sorted, hidden and ``*.mms`` folders skipped)."""
    root = Path(root).expanduser().absolute()
    if root.is_file():
        yield _image_file(root)
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.endswith(COLLECTION_SUFFIX))
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                try:
                    yield _image_file(Path(dirpath) / name)
                except OSError:
                    continue  # vanished or unreadable between listing and stat: nothing to index


def _image_file(path: Path) -> ImageFile:
    st = path.stat()
    return ImageFile(uri=str(path), bytes=st.st_size, mtime=st.st_mtime, caption=read_caption(path))


def read_caption(image_path: Path) -> str | None:
    """The caption in ``image.txt`` beside ``image.jpg``, stripped; None if absent or empty."""
    sidecar = image_path.with_suffix(".txt")
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    return text or None


def iter_text_records(path: Path) -> Iterator[TextRecord]:
    """Texts of a corpus: one per non-empty line of a .txt; ``text`` field of each .jsonl line."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield from _unique(_txt_records(path))
    elif suffix == ".jsonl":
        yield from _unique(_jsonl_records(path))
    else:
        raise ConfigError(f"{str(path)!r} is not a .txt or .jsonl text corpus")


def _txt_records(path: Path) -> Iterator[TextRecord]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            text = line.strip()
            if text:
                yield TextRecord(key=_text_key(text), text=text)


def _jsonl_records(path: Path) -> Iterator[TextRecord]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text = next(str(obj[k]) for k in JSONL_TEXT_FIELDS if isinstance(obj, dict) and k in obj)
            except (json.JSONDecodeError, StopIteration) as exc:
                raise ConfigError(
                    f"{path}:{lineno}: each line must be a JSON object with a "
                    f"{' / '.join(JSONL_TEXT_FIELDS)} field"
                ) from exc
            key = f"id:{obj['id']}" if "id" in obj else _text_key(text)
            yield TextRecord(key=key, text=text.strip())


def _unique(records: Iterator[TextRecord]) -> Iterator[TextRecord]:
    seen: set[str] = set()
    for rec in records:
        if rec.key not in seen and rec.text:
            seen.add(rec.key)
            yield rec


def _text_key(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
