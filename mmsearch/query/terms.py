"""Turning query terms (text, image, vector, item id) into unit vectors, batched by kind."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, Union

import numpy as np

from ..encoders.base import Encoder, embed_pil_images
from ..errors import QueryError
from .combine import Q

if TYPE_CHECKING:
    from PIL import Image

ImageQuery = Union[str, Path, bytes, "Image.Image", np.ndarray]


def embed_terms(encoder: Callable[[], Encoder], terms: Sequence[Q], dim: int,
                vectors_of_ids: Callable[[list[int]], np.ndarray]) -> np.ndarray:
    """(len(terms), dim) unit vectors: all texts in one encoder call, all images in one, ids in one lookup."""
    out = np.zeros((len(terms), dim), dtype=np.float32)
    texts = [(i, t.text) for i, t in enumerate(terms) if t.text is not None]
    images = [(i, t.image) for i, t in enumerate(terms) if t.image is not None]
    ids = [(i, int(t.id)) for i, t in enumerate(terms) if t.id is not None]
    for i, t in enumerate(terms):
        if t.vector is not None:
            out[i] = check_vector(t.vector, dim)
    if texts:
        for _, text in texts:
            if not isinstance(text, str) or not text.strip():
                raise QueryError("a text query is empty")
        out[[i for i, _ in texts]] = encoder().encode_texts([s for _, s in texts])
    if images:
        out[[i for i, _ in images]] = embed_pil_images(encoder(), [load_image(img) for _, img in images])
    if ids:
        out[[i for i, _ in ids]] = vectors_of_ids([item for _, item in ids])
    return out


def check_vector(vector: Any, dim: int) -> np.ndarray:
    """A query vector as float32 of the right dimension, normalised."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.shape[0] != dim:
        raise QueryError(f"the query vector has {v.shape[0]} dimensions; this collection's model has {dim}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        raise QueryError("the query vector is zero or not finite")
    return v / norm


def load_image(image: ImageQuery) -> Image.Image:
    """A query image (path, bytes, PIL image, HxWx3 array) as an upright RGB PIL image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        if isinstance(image, Image.Image):
            img = image
        elif isinstance(image, np.ndarray):
            img = Image.fromarray(image)
        elif isinstance(image, (bytes, bytearray)):
            img = Image.open(io.BytesIO(image))
        else:
            img = Image.open(Path(image).expanduser())
        return ImageOps.exif_transpose(img).convert("RGB")
    except Image.DecompressionBombError as exc:
        raise QueryError(f"the query image is too large: {exc}") from exc
    except (OSError, UnidentifiedImageError, TypeError, ValueError) as exc:
        raise QueryError(f"cannot read the query image: {exc}") from exc
