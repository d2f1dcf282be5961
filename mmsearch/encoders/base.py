"""The encoder protocol every model backend implements.

An encoder maps images and texts into one shared, L2-normalised embedding space. It is split in two
so ingestion can parallelise: ``image_transform`` (PIL image -> float tensor, picklable, runs in
decode worker processes) and ``encode_images`` (a batch of transformed tensors -> embeddings, runs
where the model is).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # keep `import mmsearch` free of torch
    import numpy as np
    import torch
    from PIL import Image


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec (see :func:`mmsearch.encoders.registry.parse_spec`)."""

    scheme: str  # "openclip" | "builtin" | a registered scheme
    arch: str
    pretrained: str | None = None  # an OpenCLIP tag, "random", or None for builtin
    weights_path: str | None = None

    def __str__(self) -> str:
        if self.scheme != "openclip":
            return f"{self.scheme}:{self.arch}"
        if self.weights_path:
            return f"openclip:{self.arch}@{self.weights_path}"
        return f"openclip:{self.arch}/{self.pretrained}"


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
    """Transform and embed PIL images in the current process (for queries and small batches).

    An encoder with an ``embed_pil_images(images)`` method of its own (the built-in model: without torch
    when its image tower runs in ONNX Runtime) does it its own way.
    """
    import numpy as np

    if not images:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    own = getattr(encoder, "embed_pil_images", None)
    if callable(own):
        return own(list(images))
    import torch

    transform = encoder.image_transform
    batch = torch.stack([torch.as_tensor(transform(img.convert("RGB"))) for img in images])  # NumPy or tensor
    return encoder.encode_images(batch)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation to float32; zero rows stay zero."""
    import numpy as np

    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pick_device(device: str | None = None) -> str:
    """The torch device to run on: the one given, else CUDA when available, else CPU.

    torch (seconds to import) is asked only where a CUDA device could exist at all (see
    :func:`cuda_may_be_available`): on a machine without an NVIDIA driver the answer is "cpu" at once.
    """
    if device:
        return device
    if not cuda_may_be_available():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cuda_may_be_available() -> bool:
    """False when ``torch.cuda.is_available()`` is certainly False, found without importing torch.

    That is: torch is not installed, ``CUDA_VISIBLE_DEVICES`` hides every device, the system is macOS,
    or a Linux machine has no GPU driver (no ``/proc/driver/nvidia``, ``/dev/nvidiactl`` or ``/dev/nvidia0``;
    no WSL GPU ``/dev/dxg``; no ROCm ``/dev/kfd``, which ROCm builds of torch report as CUDA). True means
    "ask torch".
    """
    import importlib.util
    import os

    if importlib.util.find_spec("torch") is None:
        return False
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if sys.platform == "darwin":
        return False
    if not sys.platform.startswith("linux"):
        return True
    markers = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")
    return any(os.path.exists(marker) for marker in markers)
