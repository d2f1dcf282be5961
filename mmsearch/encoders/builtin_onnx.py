"""The built-in model's image tower in ONNX Runtime (NumPy in, NumPy out; no torch).

The graph is exported once from PyTorch (:mod:`.builtin_torch`) into the model cache, under a name keyed by the
weights' content, the input size, the opset and the export format (not by the torch/timm versions: the export is
checked against PyTorch when it is made), so that a cached graph serves without importing either.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .builtin_recipes import lite0_weights_path
from .minilm import cpu_session, file_digest

ONNX_OPSET = 17
#: bump when the exported image graph changes: the cache file name changes with it
ONNX_FORMAT = 2


class OnnxImageRunner:
    """An exported image graph in an ONNX Runtime CPU session: ``logits``, and ``features`` when exported with them."""

    backend = "onnx"

    def __init__(self, path: Path) -> None:
        self.session = cpu_session(path, "delete the file to re-export it")
        self.path = path

    def logits(self, batch: Any) -> np.ndarray:
        """The ImageNet-1k logits (N, 1000) of a transformed batch (NumPy array or tensor), float32."""
        return self.session.run(["logits"], {"pixels": as_pixels(batch)})[0]

    def features_and_logits(self, batch: Any, feature: str) -> tuple[np.ndarray, np.ndarray]:
        """(image features, ImageNet logits); the graph must have been exported with that ``feature``."""
        features, logits = self.session.run(["features", "logits"], {"pixels": as_pixels(batch)})
        return features, logits


def as_pixels(batch: Any) -> np.ndarray:
    """A batch as a contiguous float32 NumPy array (a tensor is moved to the host first)."""
    if not isinstance(batch, np.ndarray):
        batch = batch.detach().cpu().numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


def onnx_file_name(spec: str, size_px: int, feature: str | None = None, cache_dir: Path | None = None) -> str:
    """The image graph's cache file name for ``spec``'s weights, ``size_px`` inputs and ``feature`` output."""
    weights = lite0_weights_path(spec)
    if cache_dir is None:
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    else:
        digest = file_digest(weights, cache_dir)
    key = f"{digest[:12]}-{size_px}-{ONNX_OPSET}-f{ONNX_FORMAT}"
    kind = f"-{feature}" if feature else ""  # no suffix: the logits-only graph of builtin:v1
    return f"builtin-lite0{kind}-static{size_px}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
