"""The encoder protocol every model backend implements.

An encoder maps images and texts into one shared, L2-normalised embedding space. It is split in two
so ingestion can parallelise: ``image_transform`` (PIL image -> float tensor, picklable, runs in
decode worker processes) and ``encode_images`` (a batch of transformed tensors -> embeddings, runs
where the model is).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # keep `import mmsearch` free of torch
    import numpy as np
    import torch
    from PIL import Image


@runtime_checkable
class Encoder(Protocol):
    """A dual image/text encoder into one space. Embeddings are float32 and L2-normalised."""

    #: the canonical spec string stamped into a collection's manifest
    spec: str
    #: embedding dimension
    dim: int
    #: identifies the image preprocessing (size, crop, normalisation); part of the persisted contract
    preprocess_id: str

    @property
    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """A picklable callable turning one RGB PIL image into a CHW float tensor."""
        ...

    def encode_images(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a stacked batch (N, C, H, W) of transformed images -> (N, dim) float32, unit norm."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, dim) float32, unit norm."""
        ...


def embed_pil_images(encoder: Encoder, images: Sequence[Image.Image]) -> np.ndarray:
    """Transform and embed PIL images in the current process (for queries and small batches)."""
    import numpy as np
    import torch

    if not images:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    transform = encoder.image_transform
    batch = torch.stack([transform(img.convert("RGB")) for img in images])
    return encoder.encode_images(batch)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation to float32; zero rows stay zero."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pick_device(device: str | None = None) -> str:
    """The torch device to run on: the one given, else CUDA when available, else CPU."""
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"
