"""How decoded images travel from the decode workers to the encoder.

A model's preprocessing is usually PIL work (resize, crop, colour) followed by ``ToTensor`` and
``Normalize``. Run whole in the workers, it ships float32 pixels: 600 KB per 224 px image through the
worker pipes, the pinned buffer and the PCIe copy. Cut at ``ToTensor`` instead, the workers ship the
uint8 pixels (a quarter of the bytes) and the scaling and normalisation run once per batch in the main
process, on the GPU when the model is there. The cut is only taken when, on a probe image, it gives
results bit-identical to the whole transform, so embeddings do not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


class Uint8Head:
    """Picklable: the PIL steps of a transform, then the image as a (C, H, W) uint8 array."""

    def __init__(self, steps: list[Callable[[Any], Any]]) -> None:
        self.steps = steps

    def __repr__(self) -> str:
        return f"Uint8Head({self.steps!r})"

    def __call__(self, image: Any) -> np.ndarray:
        for step in self.steps:
            image = step(image)
        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


@dataclass(frozen=True)
class SplitTransform:
    """A transform cut at ``ToTensor``: :attr:`head` runs in the workers, :meth:`finish` on whole batches."""

    head: Uint8Head
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    multiply_subtract: tuple[float, float] | None = None  # instead of /255 (+ mean/std): x * a - b

    def finish(self, batch: Any) -> Any:
        """(N, C, H, W) uint8 tensor (any device) -> float32 exactly as the whole transform gives. A NumPy batch
        is finished in NumPy (an encoder that takes NumPy input: no torch is imported)."""
        if isinstance(batch, np.ndarray):
            return self._finish_numpy(batch)
        import torch

        if self.multiply_subtract is not None:
            a, b = self.multiply_subtract
            return batch.to(torch.float32).mul_(a).sub_(b)
        x = batch.to(torch.float32).div_(255)
        if self.mean is not None and self.std is not None:
            mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            x.sub_(mean).div_(std)
        return x

    def _finish_numpy(self, batch: np.ndarray) -> np.ndarray:
        """The same arithmetic in float32 NumPy (scalars cast to float32 first, as torch does)."""
        x = batch.astype(np.float32)
        if self.multiply_subtract is not None:
            a, b = self.multiply_subtract
            x *= np.float32(a)
            x -= np.float32(b)
            return x
        x /= np.float32(255)
        if self.mean is not None and self.std is not None:
            x -= np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
            x /= np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return x


def split_transform(transform: Any, *, numpy: bool = False) -> SplitTransform | None:
    """The cut of a torchvision ``Compose(PIL steps..., ToTensor(), [Normalize()])``, or the one a transform
    offers itself (a ``split_uint8()`` method); None for any other transform, or when the cut does not
    reproduce the whole transform exactly on a probe image. ``numpy``: the batches will be NumPy arrays
    (checked that way; a transform's own cut is then taken without importing torch or torchvision)."""
    if hasattr(transform, "split_uint8"):
        return _verified(transform, transform.split_uint8(), numpy=numpy)
    try:
        from torchvision import transforms as T
    except ImportError:
        return None
    if not isinstance(transform, T.Compose):
        return None
    steps = list(transform.transforms)
    cuts = [i for i, s in enumerate(steps) if isinstance(s, T.ToTensor)]
    if len(cuts) != 1:
        return None
    head, tail = steps[:cuts[0]], steps[cuts[0] + 1:]
    if len(tail) > 1 or (tail and not isinstance(tail[0], T.Normalize)):
        return None
    mean = std = None
    if tail:
        mean, std = tuple(float(v) for v in tail[0].mean), tuple(float(v) for v in tail[0].std)
    return _verified(transform, SplitTransform(Uint8Head(head), mean, std), numpy=numpy)


def _verified(transform: Any, split: SplitTransform, *, numpy: bool = False) -> SplitTransform | None:
    """``split`` if it gives exactly what ``transform`` gives on a probe image (with transparency), else None;
    ``numpy``: finishing a NumPy batch (no torch here; the transform itself may still use it)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    probe = Image.fromarray(rng.integers(0, 256, (61, 83, 4), dtype=np.uint8), "RGBA")
    try:
        whole = transform(probe)
        if numpy:
            cut = split.finish(split.head(probe)[None])[0]
            whole = whole.numpy() if hasattr(whole, "numpy") else np.asarray(whole)
            return split if whole.dtype == cut.dtype and np.array_equal(whole, cut) else None
        import torch

        cut = split.finish(torch.from_numpy(split.head(probe))[None])[0]
    except Exception:  # a step that is not PIL -> PIL after all
        return None
    return split if whole.dtype == cut.dtype and torch.equal(whole, cut) else None
