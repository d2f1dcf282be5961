"""Decoding and preprocessing images in worker processes.

A bad input never raises out of a worker: it comes back as a :class:`Decoded` with ``error`` set,
and the pipeline records it in the quarantine.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .discover import ImageFile


@dataclass
class Decoded:
    """The result of decoding one image file."""

    index: int
    tensor: torch.Tensor | None
    width: int = 0
    height: int = 0
    sha256: str | None = None
    error: str | None = None


def decode_one(path: str, transform: Callable[[Image.Image], torch.Tensor], index: int = 0) -> Decoded:
    """Read, hash, decode (EXIF-rotated, RGB) and transform one image file."""
    try:
        data = open(path, "rb").read()
        with Image.open(io.BytesIO(data)) as raw:
            rgb = ImageOps.exif_transpose(raw).convert("RGB")
            width, height = rgb.size
            tensor = transform(rgb)
    except UnidentifiedImageError:
        return Decoded(index, None, error="not a recognised image format (or a corrupt image)")
    except Exception as exc:  # any decode failure is data, not a crash
        return Decoded(index, None, error=f"{type(exc).__name__}: {exc}")
    return Decoded(index, tensor, width, height, hashlib.sha256(data).hexdigest())


class _DecodeDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, files: Sequence[ImageFile], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Decoded:
        return decode_one(self.files[i].uri, self.transform, i)


def _keep_list(batch: list[Decoded]) -> list[Decoded]:
    return batch


def decode_batches(
    files: Sequence[ImageFile], transform: Callable[[Image.Image], torch.Tensor], *, batch_size: int, workers: int
) -> Iterator[list[Decoded]]:
    """Yield decoded batches in input order; decoding runs ``workers`` processes ahead of the caller."""
    loader: Any = torch.utils.data.DataLoader(
        _DecodeDataset(files, transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_keep_list,
        prefetch_factor=2 if workers > 0 else None,
    )
    yield from loader
