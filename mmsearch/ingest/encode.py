"""Feeding the encoder: batches in pinned memory when the model is on CUDA, uint8 pixels finished
(scaled, normalised) per batch where the model's transform allows it (see :mod:`.transfer`), and a
batch size that halves on out-of-memory instead of crashing (it stays halved for the rest of the run)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import statistics
import sys
import time
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from ..encoders.base import Encoder
from ..errors import EncoderError
from .transfer import split_transform

log = logging.getLogger(__name__)

T = TypeVar("T")
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA / MPS / CPU allocator out-of-memory errors."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


@contextlib.contextmanager
def share_cpus_with_workers(encoder: Encoder, workers: int) -> Iterator[None]:
    """While ``workers`` decode processes run, a CPU encoder uses the remaining cores (at least one).

    Otherwise torch's intra-op threads and the decoders fight over the same cores (OpenMP threads
    spin while waiting), which measured twice as slow on 2 cores. The thread count is restored after.
    """
    if workers <= 0 or str(getattr(encoder, "device", "cpu")).startswith("cuda"):
        yield
        return
    if "torch" not in sys.modules:  # an ONNX Runtime encoder: its threads are set when its session is made
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(max(1, min(saved, (os.cpu_count() or 1) - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


#: most decode processes the automatic split starts (each holds a decoded window; beyond this the encoder
#: is the bottleneck on every machine measured)
MAX_AUTO_WORKERS = 4
#: batches decoded in this process, beside the encoder, before the split is chosen from their costs
PROBE_BATCHES = 2
#: a worker count must beat decoding in this process by this factor (a process costs memory and start-up, and
#: the model below leaves out the slowdown of an encoder whose threads share their cores with decoders)
WORKER_MARGIN = 0.9


def split_cores(cores: int, decode_s: float, encode_s: float, *, ipc_s: float = 0.0,
                max_workers: int = MAX_AUTO_WORKERS) -> int:
    """Decode processes for ``cores`` CPUs when one image costs ``decode_s`` to decode (one core), ``encode_s``
    to encode (all cores) and ``ipc_s`` to send its pixels from a worker (pickle, pipe, unpickle: paid on each
    side): the count with the least predicted time per image.

    With 0 workers this process decodes while an encoder thread encodes the previous batch
    (:func:`~.stage.overlapped`): the slower of the decoding thread (``decode_s``) and the cores' total work
    (``encode_s`` on all of them, plus ``decode_s`` spread over them) sets the pace. ``w`` workers decode
    ``w`` at a time, but add the pixels' transfer to the cores' work and take nothing off the encoder's:
    ``max((decode_s + ipc_s) / w, encode_s + (decode_s + 2 * ipc_s) / cores)``. So workers only pay when one
    decoding thread cannot keep up with the encoder (many cores, a cheap encoder, large images); on 2 cores
    with the built-in model or ViT-B-32, 0 (measured: one worker made the built-in model 1.7x slower on large
    PNGs; benchmarks/README.md, Ingest)."""
    if cores <= 1:
        return 0
    best, best_time = 0, max(decode_s, encode_s + decode_s / cores)
    for w in range(1, min(max_workers, cores) + 1):
        predicted = max((decode_s + ipc_s) / w, encode_s + (decode_s + 2 * ipc_s) / cores)
        if predicted < best_time * WORKER_MARGIN:
            best, best_time = w, predicted
    return best


def gpu_workers() -> int:
    """Decode processes beside a CUDA encoder: it leaves the CPU to decoding, one worker per core (at most
    :data:`MAX_AUTO_WORKERS`)."""
    return max(1, min(MAX_AUTO_WORKERS, os.cpu_count() or 1))


def transfer_s(decoded: Any) -> float:
    """Seconds to pickle and unpickle one decoded image, as a worker's pipe does (one side's share of the
    transfer; the pipe's copies cost about as much again)."""
    start = time.perf_counter()
    pickle.loads(pickle.dumps(decoded, protocol=pickle.HIGHEST_PROTOCOL))
    return time.perf_counter() - start


def choose_workers(batcher: BatchEncoder, decode_times: Sequence[float], ipc_s: float) -> int:
    """Decode processes for the rest of a run, from its first batches (:func:`split_cores`): ``decode_times``,
    this process's decode of each of them, and the encoder's seconds per image so far (both measured while
    the other ran beside them, as they will). 0 when nothing was encoded yet."""
    cores = os.cpu_count() or 1
    if not batcher.encoded_images or not decode_times or cores <= 1:
        return 0
    decode_s = statistics.median(decode_times)
    encode_s = batcher.encode_seconds / batcher.encoded_images
    workers = split_cores(cores, decode_s, encode_s, ipc_s=ipc_s)
    log.info("cores: decode %.1f ms, transfer %.2f ms, encode %.1f ms per image on %d cores -> %d decode "
             "worker(s)", decode_s * 1e3, ipc_s * 1e3, encode_s * 1e3, cores, workers)
    return workers


class LazyEncoder:
    """An encoder loaded on first use (any attribute but :attr:`loaded`): an ingest that finds nothing to embed,
    and indexes that need no update, never load the model (an unchanged re-index took 8.7 s, 0.02 s of it
    ingest). ``load`` returns the encoder; it runs once."""

    def __init__(self, load: Callable[[], Encoder]) -> None:
        self._load: Callable[[], Encoder] | None = load
        self._encoder: Encoder | None = None

    @property
    def loaded(self) -> bool:
        """Whether the model was loaded."""
        return self._encoder is not None

    def get(self) -> Encoder:
        """The encoder, loaded now if it was not yet."""
        if self._encoder is None:
            assert self._load is not None
            self._encoder, self._load = self._load(), None
        return self._encoder

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_load", "_encoder"):
            raise AttributeError(name)
        return getattr(self.get(), name)


class BatchEncoder:
    """Wraps an :class:`Encoder` for the pipeline: stacking, pinning, OOM back-off. Asks the encoder nothing
    until something is embedded (it may be a :class:`LazyEncoder`)."""

    def __init__(self, encoder: Encoder, batch_size: int) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self._pinned: Any = None
        #: images embedded so far and the seconds it took (what :func:`choose_workers` reads)
        self.encoded_images = 0
        self.encode_seconds = 0.0

    @functools.cached_property
    def device(self) -> str:
        return str(getattr(self.encoder, "device", "cpu"))

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @functools.cached_property
    def numpy_batches(self) -> bool:
        """Whether batches are NumPy arrays: an encoder that declares ``numpy_input = True`` (it takes NumPy
        batches, e.g. an ONNX Runtime model), on the CPU. Nothing then imports torch here."""
        return bool(getattr(self.encoder, "numpy_input", False)) and not self.cuda

    @functools.cached_property
    def split(self) -> Any:
        return split_transform(self.encoder.image_transform, numpy=self.numpy_batches)

    @property
    def worker_transform(self) -> Any:
        """What the decode workers run: the uint8 head of the model's transform when it splits, else all of it."""
        return self.split.head if self.split is not None else self.encoder.image_transform

    def images(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Embed images from :attr:`worker_transform` (float32, or uint8 to be finished here) -> (N, dim) float32."""
        start = time.perf_counter()
        out = self._chunked(list(pixels), lambda part: self.encoder.encode_images(self._batch(part)))
        self.encode_seconds += time.perf_counter() - start
        self.encoded_images += len(out)
        return out

    def _batch(self, pixels: list[np.ndarray]) -> Any:
        batch = self._stack(pixels)
        if pixels[0].dtype != np.uint8:
            return batch
        if self.split is None:
            raise EncoderError("uint8 pixels reached an encoder whose transform does not split at ToTensor")
        if self.cuda:
            batch = batch.to(self.device, non_blocking=True)
        return self.split.finish(batch)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, dim) float32."""
        return self._chunked(list(texts), lambda part: self.encoder.encode_texts(part))

    def _stack(self, pixels: list[np.ndarray]) -> Any:
        """One (N, ...) tensor (a NumPy array for :attr:`numpy_batches`); on CUDA, written into a reused pinned
        buffer so the copy is asynchronous."""
        if self.numpy_batches:
            return np.stack(pixels)
        import torch

        if not self.cuda:
            return torch.from_numpy(np.stack(pixels))
        shape, dtype = (len(pixels), *pixels[0].shape), torch.from_numpy(pixels[0][:0]).dtype
        pinned = self._pinned
        if pinned is None or pinned.dtype != dtype or pinned.shape[1:] != shape[1:] or pinned.shape[0] < shape[0]:
            self._pinned = pinned = torch.empty((max(shape[0], self.batch_size), *shape[1:]), dtype=dtype).pin_memory()
        # safe to reuse: encode_images returns host arrays, so the previous copy has completed
        return torch.stack([torch.from_numpy(p) for p in pixels], out=pinned[: shape[0]])

    def _chunked(self, items: list[T], run: Callable[[list[T]], np.ndarray]) -> np.ndarray:
        parts, start = [], 0
        while start < len(items):
            part = items[start:start + self.batch_size]
            try:
                parts.append(np.asarray(run(part), dtype=np.float32))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self._back_off(exc)
                continue
            start += len(part)
        return np.concatenate(parts) if parts else np.zeros((0, self.encoder.dim), np.float32)

    def _back_off(self, exc: BaseException) -> None:
        if self.batch_size == 1:
            raise EncoderError(f"out of memory even with a batch of 1: {exc}") from exc
        self.batch_size = max(1, self.batch_size // 2)
        log.warning("encoder ran out of memory; continuing with batch size %d", self.batch_size)
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
