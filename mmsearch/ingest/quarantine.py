"""The quarantine: every rejected input with the reason, one JSON object per line."""

from __future__ import annotations

import json
import time
from pathlib import Path

QUARANTINE_NAME = "quarantine.jsonl"


def record(root: Path, uri: str, reason: str, error: str, *, size: int | None = None,
           mtime: float | None = None) -> None:
    """Append one rejected input to ``root/quarantine.jsonl`` (flushed line by line)."""
    entry = {"uri": uri, "reason": reason, "error": error, "bytes": size, "mtime": mtime, "time": time.time()}
    with open(Path(root) / QUARANTINE_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def read(root: Path) -> list[dict[str, object]]:
    """All quarantine entries; a torn last line from a killed run is skipped."""
    path = Path(root) / QUARANTINE_NAME
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries


def known(root: Path) -> set[tuple[str, int | None, float | None]]:
    """(uri, bytes, mtime) of quarantined inputs: unchanged ones are not retried."""
    return {(str(e.get("uri")), e.get("bytes"), e.get("mtime")) for e in read(root)}  # type: ignore[misc]
