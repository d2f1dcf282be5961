"""The quarantine: every rejected input with the reason, one JSON object per line.

Each entry is ``{"uri", "reason", "error", "bytes", "mtime", "time"}``. ``reason`` is one of
:data:`REASONS`; ``error`` is the underlying message. An input rejected for a lasting reason is not
retried while its size and mtime are unchanged; one rejected for a passing reason
(:data:`RETRIED_REASONS`: unreadable, vanished) is retried on every run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable

from ..store.atomic import write_bytes_atomic

QUARANTINE_NAME = "quarantine.jsonl"

EMPTY = "empty"  # a zero-byte file
TRUNCATED = "truncated"  # the image data ends early
CORRUPT = "corrupt"  # a recognised format whose data cannot be decoded
NOT_AN_IMAGE = "not-an-image"  # no image format recognised (e.g. text with a .jpg name)
TOO_LARGE = "too-large"  # a decompression bomb: more pixels than max_image_pixels even at reduced size
UNREADABLE = "unreadable"  # permissions, symlink loops, I/O errors
VANISHED = "vanished"  # deleted (or a dangling symlink) between discovery and decoding
NOT_A_FILE = "not-a-file"  # a FIFO, socket or device with an image name: never opened
TIMEOUT = "timeout"  # decoding took longer than decode_timeout_s
CRASHED = "crashed"  # the decoder killed its worker process (e.g. a segfault in a codec)
BAD_RECORD = "bad-record"  # a text-corpus row that cannot be read
REASONS = (EMPTY, TRUNCATED, CORRUPT, NOT_AN_IMAGE, TOO_LARGE, UNREADABLE, VANISHED, NOT_A_FILE, TIMEOUT,
           CRASHED, BAD_RECORD)
RETRIED_REASONS = frozenset({UNREADABLE, VANISHED})

Key = tuple[str, "int | None", "float | None"]


def record(root: Path, uri: str, reason: str, error: str, *, size: int | None = None,
           mtime: float | None = None) -> None:
    """Append one rejected input to ``root/quarantine.jsonl`` (flushed line by line)."""
    entry = {"uri": uri, "reason": reason, "error": error, "bytes": size, "mtime": mtime, "time": time.time()}
    with open(Path(root) / QUARANTINE_NAME, "a", encoding="utf-8", errors="backslashreplace") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def read(root: Path) -> list[dict[str, object]]:
    """All quarantine entries; a torn last line from a killed run is skipped."""
    path = Path(root) / QUARANTINE_NAME
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def known(root: Path) -> set[Key]:
    """(uri, bytes, mtime) of inputs rejected for a lasting reason: unchanged ones are not retried."""
    return {_key(e) for e in read(root) if e.get("reason") not in RETRIED_REASONS}


def prune(root: Path, drop: Callable[[dict[str, object]], bool]) -> int:
    """Atomically rewrite the quarantine without the entries ``drop`` selects; returns how many went.

    Also collapses repeated entries for the same input and reason to the latest one.
    """
    entries = read(root)
    kept = _latest_per_input(e for e in entries if not drop(e))
    if len(kept) == len(entries):
        return 0
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in kept)
    write_bytes_atomic(Path(root) / QUARANTINE_NAME, text.encode("utf-8", "backslashreplace"))
    return len(entries) - len(kept)


def _latest_per_input(entries: Iterable[dict[str, object]]) -> list[dict[str, object]]:
    latest: dict[tuple[object, ...], dict[str, object]] = {}
    for e in entries:
        k = (*_key(e), e.get("reason"))
        latest.pop(k, None)  # re-insert so the order follows the latest occurrence
        latest[k] = e
    return list(latest.values())


def _key(entry: dict[str, object]) -> Key:
    return (str(entry.get("uri")), entry.get("bytes"), entry.get("mtime"))  # type: ignore[return-value]
