"""The writer lock: one writer at a time per collection, across processes.

An OS advisory lock (``flock``) on ``<collection>/writer.lock``, held for the whole write (ingest, index
builds, the commit, the clean-up). The kernel drops it when the holder exits, however it exits (SIGKILL
included), so a lock is never stale and holding it proves every earlier writer is gone: that is what
lets the holder remove files no version lists. The file's text names the holder (pid, host, since,
command) for the message a waiting writer prints; it is advice only, the lock is the ``flock``.

Within one process, a thread that already holds the lock may take it again (nested opens count); other
threads wait like other processes do. ``flock`` is reliable on local filesystems; on NFS Linux emulates it
with POSIX locks (docs/sharing.md says so).

Why ``fcntl`` and not a library: ``filelock`` wraps the same call and adds nothing we use (no holder
description), and portalocker neither; mmsearch is POSIX-only already (fork-based decode workers).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CollectionBusyError, StoreError

LOCK_NAME = "writer.lock"
DEFAULT_WAIT_S = 10.0
_POLL_S = 0.05

_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


@dataclass
class _Held:
    fd: int
    thread: int
    count: int


class WriterLock:
    """The writer lock of the collection at ``root`` (taken by :meth:`acquire`, let go by :meth:`release`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.key = os.path.realpath(self.root / LOCK_NAME)
        self._owned = False

    def acquire(self, wait_s: float | None = DEFAULT_WAIT_S) -> WriterLock:
        """Take the lock, waiting up to ``wait_s`` seconds (0: fail at once; None: wait for ever)."""
        me = threading.get_ident()
        with _held_guard:
            held = _held.get(self.key)
            if held is not None and held.thread == me:
                held.count += 1
                self._owned = True
                return self
        fd = self._open()
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if wait_s is not None and waited >= wait_s:
                    holder = describe_holder(self.root)
                    os.close(fd)
                    raise CollectionBusyError(str(self.root), holder, wait_s) from None
                time.sleep(_POLL_S)
        _write_holder(fd)
        with _held_guard:
            _held[self.key] = _Held(fd, me, 1)
        self._owned = True
        return self

    def release(self) -> None:
        """Let go of the lock (the last nested holder in this thread unlocks the file)."""
        if not self._owned:
            return
        self._owned = False
        with _held_guard:
            held = _held.get(self.key)
            if held is None:
                return
            held.count -= 1
            if held.count > 0:
                return
            del _held[self.key]
        with contextlib.suppress(OSError):
            os.ftruncate(held.fd, 0)
        os.close(held.fd)  # closing the descriptor drops the flock

    @property
    def nested(self) -> bool:
        """Whether this thread took the lock more than once (an inner holder must not clean up after others)."""
        with _held_guard:
            held = _held.get(self.key)
            return held is not None and held.count > 1

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._owned

    def _open(self) -> int:
        try:
            return os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError as exc:
            raise StoreError(f"cannot write to collection {str(self.root)!r}: {exc.strerror} "
                             "(open it read-only, or index as a user who may write there)") from exc

    def __del__(self) -> None:  # a writer dropped without close(): let the lock go with it
        with contextlib.suppress(Exception):
            self.release()


def describe_holder(root: Path) -> str:
    """Who holds (or last held) the lock of ``root``, from the lock file's text."""
    try:
        info = json.loads((Path(root) / LOCK_NAME).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("since", 0))))
    return f"pid {info.get('pid')} on {info.get('host')} (since {since}: {info.get('command', '?')})"


def is_locked(root: Path) -> bool:
    """Whether some process holds the writer lock of ``root`` right now (``mmsearch info`` says who)."""
    return someone_holds(Path(root) / LOCK_NAME, fcntl.LOCK_SH)


def someone_holds(path: Path, probe: int) -> bool:
    """Whether another open file holds a ``flock`` on ``path`` that conflicts with ``probe`` (LOCK_SH finds an
    exclusive holder, LOCK_EX any holder); False when the file is missing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, probe | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _write_holder(fd: int) -> None:
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": command})
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode("utf-8"), 0)
