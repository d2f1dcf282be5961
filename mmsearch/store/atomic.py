"""Atomic file writes: write to a temporary name in the same directory, flush, fsync, rename.

A reader (or a re-run after ``kill -9``) sees either the old file or the complete new one, never a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

TMP_PREFIX = ".tmp-"


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under the process umask (``mkstemp`` gives 0600)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(final: Path, *, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success fsync it and rename it over ``final``.

    ``exclusive``: the file appears only if ``final`` does not exist yet (a hard link, which fails with
    :class:`FileExistsError` when another writer got there first: put-if-absent, as version logs do)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TMP_PREFIX + final.name + ".", dir=final.parent)
    try:
        os.fchmod(fd, _file_mode())  # collection files follow the umask, so a collection can be shared read-only
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        if exclusive:
            os.link(tmp, final)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    """Atomically replace ``final`` with ``data``."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def write_with_atomic(final: Path, writer: Callable[[Path], None]) -> None:
    """Atomically replace ``final`` with whatever ``writer(tmp_path)`` writes."""
    with atomic_path(final) as tmp:
        writer(tmp)


def write_npy_atomic(final: Path, array: Any) -> None:
    """Atomically replace ``final`` with ``array`` in NumPy's .npy format (a unique temporary per writer, so two
    processes filling the same cache file never mix their bytes)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(final, buffer.getvalue())


def remove_stale_temporaries(directory: Path) -> int:
    """Delete temporaries left by a killed run; returns how many were removed."""
    if not directory.is_dir():
        return 0
    removed = 0
    for p in directory.glob(TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed += 1
    return removed


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/filesystem allows it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
