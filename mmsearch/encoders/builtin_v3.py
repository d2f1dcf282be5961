"""``builtin:v3``: ``builtin:v2`` plus 1,636 emoji concepts as exemplar classes (Twemoji).

v2 added the world's flags as classes defined by exemplar images (see :mod:`.builtin_exemplars`). v3 keeps
them unchanged and adds one exemplar class per emoji concept of the Unicode emoji set (flags, which v2 already
has, and skin-tone components left out), each defined by its Twemoji drawing (CC-BY 4.0, from the npm package
``emoji-datasource-twitter``; attribution in ``assets/README.md``). Its class-bank row is the mean sentence
embedding of the concept's names ("grinning face", "grinning face emoji", "an icon of grinning face", its
short names).

The emoji exemplars are compared in a smaller feature than the flags: the mean of the four quadrant features
of v2's "grid2" (1,280-d, so the shipped bank stays ~4 MB; emoji, unlike flags, are told apart by content, not
layout). The image graph is v2's (same ONNX file); the emoji logits are ``scale * cos + bias`` with v2's flag
calibration (65, -30), placed beside the ImageNet and flag logits before the same softmax. Texts embed exactly
as in v1 and v2 (same sentence encoder, same centring mean).

The bank is built by ``python tools/build_builtin_assets_v3.py`` in the repository (registry packages only,
deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelUnavailableError
from .base import l2_normalise
from .builtin_exemplars import ExemplarBank, load_exemplar_bank, read_shipped_bank
from .builtin_recipes import ASSETS_DIR, RECIPES, ExemplarRecipe

#: the emoji exemplars' feature: the mean of grid2's four quadrant blocks (1,280-d)
EMOJI_FEATURE = "quadmean"


def quadmean(grid2: np.ndarray) -> np.ndarray:
    """(N, 4C) grid2 features -> (N, C), the mean of the four quadrant blocks."""
    grid2 = np.asarray(grid2, dtype=np.float32)
    return grid2.reshape(grid2.shape[0], 4, grid2.shape[1] // 4).mean(axis=1)


@dataclass(frozen=True)
class V3Recipe(ExemplarRecipe):
    """v2's recipe (ImageNet + flag exemplar classes, v1's class bank and mean) plus an emoji exemplar bank."""

    #: the version whose flag exemplar bank is reused unchanged
    flags_version: str = "v2"
    emoji_scale: float = 65.0
    emoji_bias: float = -30.0

    @property
    def exemplars_path(self) -> Path:
        return ASSETS_DIR / f"builtin_{self.flags_version}_exemplars.npz"

    @property
    def emoji_path(self) -> Path:
        return ASSETS_DIR / f"builtin_{self.version}_emoji.npz"

    def load_exemplars(self, dim: int) -> CompositeExemplars:
        """The flag bank (v2's) and the emoji bank, as one set of exemplar classes."""
        return CompositeExemplars(load_exemplar_bank(self, dim), load_emoji_bank(self, dim), self.emoji_scale,
                                  self.emoji_bias)


V3_RECIPE = V3Recipe(
    version="v3", resize_px=224, crop_px=224, temperature=2.0, descriptions_per_class=10, seed=0,
    base_bank="v1", feature="grid2", exemplar_scale=65.0, exemplar_bias=-30.0,
    flags_version="v2", emoji_scale=65.0, emoji_bias=-30.0,
)
RECIPES.setdefault("v3", V3_RECIPE)  # importing this module makes builtin:v3 known to get_recipe


@dataclass(frozen=True)
class EmojiBank:
    """One exemplar per class: (classes, 1280) unit features, (classes, dim) class-bank rows, ids, names."""

    features: np.ndarray
    class_bank: np.ndarray
    class_ids: tuple[str, ...]
    names: tuple[str, ...]

    def similarities(self, grid2: np.ndarray) -> np.ndarray:
        return l2_normalise(quadmean(grid2)) @ self.features.T


class CompositeExemplars:
    """The exemplar classes of v3: v2's flags (in grid2) then the emoji (in quadmean), each with its own logit
    calibration. Quacks like :class:`ExemplarBank` where the encoder uses it (``logits``, ``class_bank``)."""

    def __init__(self, flags: ExemplarBank, emoji: EmojiBank, emoji_scale: float, emoji_bias: float) -> None:
        self.flags = flags
        self.emoji = emoji
        self.emoji_scale = emoji_scale
        self.emoji_bias = emoji_bias
        self.class_bank = np.concatenate([flags.class_bank, emoji.class_bank])
        self.class_ids = (*flags.class_ids, *emoji.class_ids)

    def logits(self, features: np.ndarray, scale: float, bias: float) -> np.ndarray:
        """(N, flags + emoji) logits of grid2 ``features``; ``scale``/``bias`` are the flags' calibration."""
        flag_logits = self.flags.logits(features, scale, bias)
        emoji_logits = self.emoji_scale * self.emoji.similarities(features) + self.emoji_bias
        return np.concatenate([flag_logits, emoji_logits.astype(np.float32)], axis=1)


def load_emoji_bank(recipe: V3Recipe, dim: int) -> EmojiBank:
    """The emoji bank shipped for ``recipe`` (checked against its JSON record's sha256)."""
    path = recipe.emoji_path
    record, arrays = read_shipped_bank(path, recipe.spec, "emoji", "build_builtin_assets_v3")
    features = l2_normalise(np.asarray(arrays["features"], dtype=np.float32))
    class_bank = np.asarray(arrays["class_bank"], dtype=np.float32)
    classes = record["classes"]
    if (record.get("feature") != EMOJI_FEATURE or class_bank.shape != (len(classes), dim)
            or features.shape[0] != len(classes)):
        raise ModelUnavailableError(recipe.spec, f"{path.name} was built for another feature or text model; reinstall mmsearch")
    return EmojiBank(features, class_bank, tuple(str(c["id"]) for c in classes), tuple(str(c["name"]) for c in classes))
