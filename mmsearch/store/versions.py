"""The version log of a collection: immutable version files, reader leases, and the writer's draft.

Every publish writes ``_versions/NNNNNNNN.json`` (the whole manifest of that version) with put-if-absent
semantics (a hard link that fails when the name exists: two writers can never both publish version N),
then renames a copy over ``manifest.json``, which names the current version. A version's files (shards,
deletion files, index files, metadata) are never rewritten in place: new content gets new names.

Readers hold a *lease* on the version they opened: a shared ``flock`` on its version file, dropped when
the reader lets go of it (or exits). Clean-up (:mod:`.vacuum`) removes a version only when no lease is
held on it *and* it was superseded longer ago than the retention (a grace period for readers that take
no lease: tools that read ``manifest.json`` directly, or another host over NFS).

``_draft.json`` is a writer's checkpoint inside a transaction (the shards it has committed so far), read
back only by the next writer, which resumes from it: an interrupted ``mmsearch index`` loses at most one
shard of work and no reader ever sees it half done.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path

from .atomic import atomic_path
from .lock import someone_holds

VERSIONS_DIR = "_versions"
DRAFT_NAME = "_draft.json"
_VERSION_FILE = re.compile(r"^(\d{8,})\.json$")


def version_path(root: Path, version: int) -> Path:
    """The file of ``version`` in the collection at ``root``."""
    return Path(root) / VERSIONS_DIR / f"{version:08d}.json"


def list_versions(root: Path) -> list[int]:
    """Version numbers that have a file, oldest first."""
    try:
        names = os.listdir(Path(root) / VERSIONS_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(m.group(1)) for m in map(_VERSION_FILE.match, names) if m)


def highest_number(root: Path) -> int:
    """The highest number any version file ever took, broken ones included (-1: none): new ones go above it."""
    try:
        names = os.listdir(Path(root) / VERSIONS_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return -1
    numbers = [int(n.split(".", 1)[0]) for n in names if n.split(".", 1)[0].isdigit()]
    return max(numbers, default=-1)


def write_version(root: Path, version: int, data: bytes) -> None:
    """Create the file of ``version``; :class:`FileExistsError` when another writer created it first."""
    with atomic_path(version_path(root, version), exclusive=True) as tmp:
        tmp.write_bytes(data)


class Lease:
    """A reader's hold on one version (a shared lock on its version file); :meth:`release` lets go."""

    def __init__(self, fd: int | None, version: int) -> None:
        self._fd = fd
        self.version = version

    def release(self) -> None:
        """Let go (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.release()


def take_lease(root: Path, version: int) -> Lease | None:
    """A lease on ``version``, or None when its file is gone (or being removed) — the caller reads again.

    A legacy collection (no version files yet) gets a lease that holds nothing.
    """
    path = version_path(root, version)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return Lease(None, version) if not list_versions(root) else None
    except OSError:
        return Lease(None, version)  # cannot lease (permissions, odd filesystem): the grace period still holds
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:  # removed between open and lock
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except OSError:
        return Lease(fd, version)
    return Lease(fd, version)


def remove_if_unleased(root: Path, version: int) -> bool:
    """Remove the file of ``version`` unless a reader holds a lease on it; True when removed."""
    path = version_path(root, version)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        path.unlink(missing_ok=True)  # still holding the exclusive lock: no reader can lease it meanwhile
    finally:
        os.close(fd)
    return True


def is_leased(root: Path, version: int) -> bool:
    """Whether some reader holds a lease on ``version`` now."""
    return someone_holds(version_path(root, version), fcntl.LOCK_EX)
