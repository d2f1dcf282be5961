"""Ordered, bounded, watchdogged image decoding in worker processes.

:func:`decode_stream` takes a stream of paths and yields one :class:`~.decode.Decoded` per path, in
input order, while up to ``window`` paths are being decoded ahead of the caller (so decoding overlaps
the caller's encoding, and memory is bounded by the window, not the corpus).

Each worker has its own task and result pipes (a killed worker cannot corrupt a shared queue) and a
small shared slot saying which input it is decoding since when. Every input has two time limits: the
worker's own alarm (``timeout_s``, which interrupts Python code and blocking reads) and the parent's
watchdog (a little later), which kills a worker stuck inside C code and starts a new one. A worker that
dies (a codec segfault) has the input it was decoding quarantined as ``crashed``; its other inputs are
decoded again elsewhere. Workers die with the parent (``PR_SET_PDEATHSIG`` on Linux, else a parent check).
"""

from __future__ import annotations

import collections
import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Iterable, Iterator

from ..errors import IngestError
from . import quarantine as q
from .decode import Decoded, DecodeSettings, batched, decode_image

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PARENT_CHECK_S = 1.0
_MAX_BLAMELESS_RESTARTS = 20


def hard_timeout_s(timeout_s: float | None) -> float | None:
    """The watchdog's limit: the worker's own alarm gets the first chance to report a timeout."""
    return None if not timeout_s else timeout_s * 1.5 + 2.0


def decode_stream(paths: Iterable[str], settings: DecodeSettings, *, workers: int, window: int) -> Iterator[Decoded]:
    """Decode ``paths`` in order; ``workers=0`` decodes in this process (alarm-only time limit)."""
    if workers <= 0:
        for seq, path in enumerate(paths):
            yield decode_image(path, settings, seq)
        return
    pool = _Pool(settings, workers=workers, window=max(window, workers))
    try:
        yield from pool.run(paths)
    finally:
        pool.close()


@dataclass
class _Worker:
    process: Any
    tasks: Connection
    results: Connection
    slot: Any  # RawArray('d', 2): [seq being decoded or -1, monotonic start time]
    outstanding: collections.deque[tuple[int, str]] = field(default_factory=collections.deque)


class _Pool:
    """The parent side: feeds workers, reorders results, enforces time limits, replaces dead workers."""

    def __init__(self, settings: DecodeSettings, *, workers: int, window: int) -> None:
        self.settings = settings
        self.window = window
        self.restarts = 0
        self.hard_timeout_s = hard_timeout_s(settings.timeout_s)
        self.ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.workers = [self._start() for _ in range(workers)]
        self.ready: dict[int, Decoded] = {}

    def run(self, paths: Iterable[str]) -> Iterator[Decoded]:
        feed = enumerate(paths)
        next_seq, submitted, exhausted = 0, 0, False
        while True:
            while not exhausted and submitted - next_seq < self.window:
                item = next(feed, None)
                if item is None:
                    exhausted = True
                else:
                    self._submit(item)
                    submitted += 1
            if next_seq in self.ready:
                yield self.ready.pop(next_seq)
                next_seq += 1
            elif exhausted and next_seq >= submitted:
                return
            else:
                self._collect()

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
        for w in self.workers:
            try:
                w.tasks.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 2.0
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            _close_conns(w)

    # -- internals -------------------------------------------------------------------------------
    def _start(self) -> _Worker:
        task_r, task_w = self.ctx.Pipe(duplex=False)
        result_r, result_w = self.ctx.Pipe(duplex=False)
        slot = self.ctx.RawArray("d", [-1.0, 0.0])
        process = self.ctx.Process(target=_worker_main, args=(self.settings, task_r, result_w, slot, os.getpid()),
                                   daemon=True, name="mmsearch-decode")
        process.start()
        task_r.close()
        result_w.close()
        return _Worker(process, task_w, result_r, slot)

    def _submit(self, item: tuple[int, str], worker: _Worker | None = None) -> None:
        w = worker or min(self.workers, key=lambda w: len(w.outstanding))
        w.outstanding.append(item)
        try:
            w.tasks.send(item)
        except (OSError, ValueError):
            pass  # the worker died; _collect notices and resubmits what it held

    def _collect(self) -> None:
        """Wait for results (or a time limit), then handle dead and stuck workers."""
        by_conn = {w.results: w for w in self.workers}
        sentinels = {w.process.sentinel: w for w in self.workers}
        for ready in wait([*by_conn, *sentinels], timeout=self._wait_s()):
            if ready in by_conn:
                self._receive(by_conn[ready])
        for w in list(self.workers):
            if not w.process.is_alive():
                self._replace(w, q.CRASHED, f"the decoder crashed its worker (exit code {w.process.exitcode})")
            elif self._stuck(w):
                self._replace(w, q.TIMEOUT, f"decoding took longer than {self.hard_timeout_s:g}s (worker killed)")

    def _receive(self, w: _Worker) -> None:
        while True:
            try:
                if not w.results.poll():
                    return
                decoded: Decoded = w.results.recv()
            except (EOFError, OSError):
                return  # the worker is gone; _collect replaces it
            self.ready[decoded.seq] = decoded
            w.outstanding = collections.deque(t for t in w.outstanding if t[0] != decoded.seq)

    def _wait_s(self) -> float | None:
        if self.hard_timeout_s is None:
            return _PARENT_CHECK_S
        starts = [w.slot[1] for w in self.workers if w.slot[0] >= 0]
        if not starts:
            return _PARENT_CHECK_S
        return max(0.01, min(_PARENT_CHECK_S, min(starts) + self.hard_timeout_s - time.monotonic()))

    def _stuck(self, w: _Worker) -> bool:
        return (self.hard_timeout_s is not None and w.slot[0] >= 0
                and time.monotonic() - w.slot[1] > self.hard_timeout_s)

    def _replace(self, w: _Worker, reason: str, error: str) -> None:
        """Kill ``w``, fail the input it was decoding, hand the rest of its inputs to a new worker."""
        blamed = int(w.slot[0])
        self.restarts += 1
        if blamed < 0 and self.restarts > _MAX_BLAMELESS_RESTARTS:
            raise IngestError(f"decode workers keep dying without a culprit input ({error}); try --workers 0")
        if w.process.is_alive():
            w.process.kill()
        w.process.join()
        self._receive(w)  # results it sent before dying still count
        _close_conns(w)
        log.warning("decode worker %s: %s", "killed" if reason == q.TIMEOUT else "died", error)
        fresh = self._start()
        self.workers[self.workers.index(w)] = fresh
        for seq, path in w.outstanding:
            if seq == blamed:
                self.ready[seq] = Decoded(seq, reason=reason, error=error)
            else:
                self._submit((seq, path), fresh)


def _close_conns(w: _Worker) -> None:
    for conn in (w.tasks, w.results):
        conn.close()


# -- the worker process ---------------------------------------------------------------------------
def _worker_main(settings: DecodeSettings, tasks: Connection, results: Connection, slot: Any, parent: int) -> None:
    """Decode tasks until told to stop; results go out through a sender thread so decoding never waits."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _single_threaded()
    outbox: queue.SimpleQueue[Decoded | None] = queue.SimpleQueue()
    sender = threading.Thread(target=_send_all, args=(outbox, results), daemon=True)
    sender.start()
    for seq, path in _tasks(tasks, parent):
        slot[1] = time.monotonic()
        slot[0] = seq
        decoded = decode_image(path, settings, seq)
        slot[0] = -1.0
        outbox.put(decoded)
    outbox.put(None)
    sender.join()


def _tasks(tasks: Connection, parent: int) -> Iterator[tuple[int, str]]:
    while True:
        try:
            if not tasks.poll(_PARENT_CHECK_S):
                if os.getppid() != parent:
                    return
                continue
            task = tasks.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        yield task


def _send_all(outbox: queue.SimpleQueue[Decoded | None], results: Connection) -> None:
    while (decoded := outbox.get()) is not None:
        try:
            results.send(decoded)
        except (OSError, ValueError):
            return


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the task loop checks the parent instead
    if os.getppid() != parent:
        os._exit(0)


def _single_threaded() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def decode_batches(files: Iterable[Any], transform: Any, *, batch_size: int, workers: int,
                   timeout_s: float | None = 30.0) -> Iterator[list[Decoded]]:
    """Decoded batches (in input order) of image files (objects with ``uri`` or ``os_path``); no dedup."""
    settings = DecodeSettings(transform=transform, timeout_s=timeout_s)
    paths = (getattr(f, "os_path", None) or f.uri for f in files)
    yield from batched(decode_stream(paths, settings, workers=workers, window=2 * batch_size + 2 * workers), batch_size)
