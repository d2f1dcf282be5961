"""The built-in model's image preprocessing, in PIL and NumPy: RGB on white, resize, centre crop, [-1, 1].

:class:`Lite0Transform` is what the decode workers run; its :meth:`~Lite0Transform.split_uint8` cut lets them ship
uint8 pixels and scale whole batches afterwards (NumPy batches in NumPy, tensors in torch), bit-identical to the
whole transform. With ``tensors=False`` (or ``None`` in a process without torch) nothing here imports torch: the
encoder asks for ``None`` on the CPU, where its batches are NumPy arrays.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

#: the transform's scaling of uint8 pixels: x * 2/255 - 1, i.e. (x/255 - 0.5) / 0.5
SCALE = 2.0 / 255.0
SHIFT = 1.0
#: Pillow's ``reducing_gap``: a source more than 2x this many times the crop is box-reduced by a whole factor
#: first, then resampled (3.0: Pillow's "indistinguishable from fair resampling in most cases")
REDUCING_GAP = 3.0


class Lite0Transform:
    """PIL image -> (3, crop, crop) float32 pixels in [-1, 1]; picklable, runs in decode workers.

    ``tensors``: True, a torch tensor; False, a NumPy array (no torch); None, a tensor when torch is already
    imported in this process (a caller about to stack tensors has imported it) and otherwise a NumPy array, so
    that nothing imports torch for it. The values are the same either way.

    Transparent pixels are composited on white (emoji, icons and flags are drawn for a light
    background); the shorter side is resized to ``resize_px`` (bicubic) and the centre cropped.
    """

    def __init__(self, resize_px: int = 224, crop_px: int = 224, *, tensors: bool | None = True) -> None:
        self.resize_px = resize_px
        self.crop_px = crop_px
        self.tensors = tensors

    def __repr__(self) -> str:
        return f"Lite0Transform(resize_px={self.resize_px}, crop_px={self.crop_px}, tensors={self.tensors})"

    def __call__(self, image: Image.Image) -> Any:
        pixels = self.array(image)
        torch = sys.modules.get("torch") if self.tensors is None else None
        if self.tensors is False or (self.tensors is None and torch is None):
            return pixels
        import torch

        return torch.from_numpy(pixels)

    def array(self, image: Image.Image) -> np.ndarray:
        """The pixels as a (3, crop, crop) float32 NumPy array."""
        pixels = np.asarray(self.resized(image), dtype=np.float32) * np.float32(SCALE) - np.float32(SHIFT)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def split_uint8(self) -> Lite0Split:
        """The cut for decode workers: they ship the resized uint8 pixels, the scaling runs per batch."""
        return Lite0Split(Lite0Head(self))

    def resized(self, image: Image.Image) -> Image.Image:
        """The PIL part: RGB on white, shorter side resized, centre crop."""
        image = to_rgb_on_white(image)
        width, height = image.size
        scale = self.resize_px / min(width, height)
        size = (max(self.crop_px, round(width * scale)), max(self.crop_px, round(height * scale)))
        left = (size[0] - self.crop_px) // 2
        top = (size[1] - self.crop_px) // 2
        if size == image.size:
            return image.crop((left, top, left + self.crop_px, top + self.crop_px))
        from PIL import Image

        # resample only the crop (its box in the source's coordinates): the pixels of resize-then-crop, without
        # resampling what the crop throws away; a source over REDUCING_GAP times the crop is first box-reduced
        # by a whole factor
        sx, sy = width / size[0], height / size[1]
        box = (left * sx, top * sy, (left + self.crop_px) * sx, (top + self.crop_px) * sy)
        return image.resize((self.crop_px, self.crop_px), Image.Resampling.BICUBIC, box=box,
                            reducing_gap=REDUCING_GAP)


class Lite0Head:
    """Picklable: a PIL image -> its resized pixels as a (3, crop, crop) uint8 array (the workers' half)."""

    def __init__(self, transform: Lite0Transform) -> None:
        self.transform = transform

    def __repr__(self) -> str:
        return f"Lite0Head({self.transform!r})"

    def __call__(self, image: Image.Image) -> np.ndarray:
        pixels = np.asarray(self.transform.resized(image), dtype=np.uint8)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


@dataclass(frozen=True)
class Lite0Split:
    """:class:`Lite0Transform` cut after its PIL steps: :attr:`head` runs in the workers, :meth:`finish` on batches."""

    head: Lite0Head
    #: the batch arithmetic, x * a - b (as ``mmsearch.ingest.transfer.SplitTransform`` names it)
    multiply_subtract: tuple[float, float] = (SCALE, SHIFT)

    def finish(self, batch: Any) -> Any:
        """(N, 3, H, W) uint8 batch -> float32 exactly as the whole transform gives: a NumPy array in NumPy,
        a torch tensor in torch (on its device)."""
        a, b = self.multiply_subtract
        if isinstance(batch, np.ndarray):
            x = batch.astype(np.float32)
            x *= np.float32(a)
            x -= np.float32(b)
            return x
        import torch

        return batch.to(torch.float32).mul_(a).sub_(b)


def to_rgb_on_white(image: Image.Image) -> Image.Image:
    """``image`` as RGB, transparent pixels composited on white."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
