"""Feeding the encoder: batches in pinned memory when the model is on CUDA, and a batch size that
halves on out-of-memory instead of crashing (it stays halved for the rest of the run)."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np

from ..encoders.base import Encoder
from ..errors import EncoderError

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
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(max(1, min(saved, (os.cpu_count() or 1) - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(saved)


class BatchEncoder:
    """Wraps an :class:`Encoder` for the pipeline: stacking, pinning, OOM back-off."""

    def __init__(self, encoder: Encoder, batch_size: int) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.cuda = str(getattr(encoder, "device", "cpu")).startswith("cuda")
        self._pinned: Any = None

    def images(self, pixels: Sequence[np.ndarray]) -> np.ndarray:
        """Embed transformed images (each a float32 array) -> (N, dim) float32."""
        return self._chunked(list(pixels), lambda part: self.encoder.encode_images(self._stack(part)))

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, dim) float32."""
        return self._chunked(list(texts), lambda part: self.encoder.encode_texts(part))

    def _stack(self, pixels: list[np.ndarray]) -> Any:
        """One (N, ...) tensor; on CUDA, written into a reused pinned buffer so the copy is asynchronous."""
        import torch

        if not self.cuda:
            return torch.from_numpy(np.stack(pixels))
        shape = (len(pixels), *pixels[0].shape)
        if self._pinned is None or self._pinned.shape[1:] != shape[1:] or self._pinned.shape[0] < shape[0]:
            self._pinned = torch.empty((max(shape[0], self.batch_size), *shape[1:]), dtype=torch.float32).pin_memory()
        out = self._pinned[: shape[0]]
        # safe to reuse: encode_images returns host arrays, so the previous copy has completed
        return torch.stack([torch.from_numpy(p) for p in pixels], out=out)

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
